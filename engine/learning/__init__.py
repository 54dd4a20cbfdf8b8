"""One learning round (dataset → train → gate → build → Reload), its ledger and rollback, and a
shopper simulator for tests and benchmarks."""
