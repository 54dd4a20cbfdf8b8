"""Data schema and readers: catalog, labels, interactions, a synthetic dataset; no torch."""
