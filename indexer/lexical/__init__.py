"""The BM25 lexical channel: text analysis, BM25 math, the index and its files."""
