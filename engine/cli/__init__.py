"""The engine's console scripts: aisle-serve and aisle-search."""
