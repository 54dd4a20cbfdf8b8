"""The search domain, free of gRPC: request types, snapshots, the pipeline and the service."""
