"""make bench: run every benchmark and write benchmarks/REPORT.md with its tables and plots."""
