"""The gRPC edge: proto ⇄ domain conversion, paging, servicers, the interceptor, limits, metrics."""
