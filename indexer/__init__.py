"""Aisle indexer: embeds the catalog and builds, publishes and reads sharded FAISS indexes."""
