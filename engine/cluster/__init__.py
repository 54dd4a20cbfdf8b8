"""Scale-out: shard servers and the router that fans out to them."""
