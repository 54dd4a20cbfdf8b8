"""Retrieval evaluation: metrics, full-catalog search and recommendation evaluation."""
