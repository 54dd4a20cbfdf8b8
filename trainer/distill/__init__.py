"""Distilling a fast query tower from a model dir's full one (``aisle-train distill-query``)."""
