"""Exact re-ranking of ANN candidates: numba kernels, stored vectors, columns, filters and specs."""
