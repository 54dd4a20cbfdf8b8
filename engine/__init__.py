"""Aisle engine: the gRPC server, request validation, search service and the Python client."""
