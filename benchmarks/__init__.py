"""Aisle benchmarks: latency, recall-vs-speed, retrieval quality and throughput."""
