"""Building index versions: embed, shard, FAISS, tune, publish; locally or on Spark; compaction."""
