"""aisle.v1: generated stubs; regenerate with `python proto/generate.py`."""
