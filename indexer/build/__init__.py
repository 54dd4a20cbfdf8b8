"""Building index versions: embed, shard, FAISS, tune, publish; on one machine or on Spark; compaction."""
