"""Aisle trainer: data schema and readers, the encoder, the two-tower model and its training."""
