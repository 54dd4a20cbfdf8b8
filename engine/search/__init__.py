"""The search domain, free of gRPC: types, snapshots, retrievers, the pipeline and the service."""
