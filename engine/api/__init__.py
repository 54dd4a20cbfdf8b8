"""The gRPC edge: validation, paging, servicers, the interceptor, limits and metrics."""
