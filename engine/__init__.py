"""Aisle engine: the search domain, the gRPC edge, scale-out, the server and the Python client."""
