"""Scale-out: shard servers, and the router: a retriever over them for the same search service."""
