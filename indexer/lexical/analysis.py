"""Text analysis for the BM25 channel: fold, tokenize, drop stopwords, stem (``analyze``).

Analysis (``analyze``): NFKC, casefold, diacritics removed; tokens are runs of two or more
letters or runs of digits, so "2x4" -> 2, 4 and "12-Gauge" -> 12, gauge; English stopwords
(bm25s's list) dropped; Snowball English stems (PyStemmer). Splitting digits from letters and
keeping one-digit numbers beat bm25s's default pattern (``\\w\\w+``) on the Home Depot train split
(NDCG@10 0.251 vs 0.239, 2,000 queries) and matched it on ESCI.

An index is only valid with the analyzer it was built with: ``ANALYZER`` is saved with it and
checked on load (``indexer.lexical.files``).
"""

from __future__ import annotations

import re
import threading
import unicodedata
from typing import Any

__all__ = ["ANALYZER", "STOPWORDS_EN", "analyze"]

ANALYZER = "aisle-en-1"  # bump when `analyze` changes: an index is only valid with its analyzer

# bm25s's English list (bm25s.stopwords.STOPWORDS_EN), copied so serving needs no bm25s.
STOPWORDS_EN = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)
# Runs of 2+ letters, or runs of digits: "2x4" -> 2, 4 ("x" alone says nothing), "r2d2" -> 2, 2.
_TOKEN = re.compile(r"[^\W\d_]{2,}|\d+")
_local = threading.local()  # one stemmer per thread: PyStemmer objects are not thread-safe


def _stemmer() -> Any:
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        try:
            import Stemmer
        except ImportError as e:  # pragma: no cover - PyStemmer is a dependency
            raise ImportError(
                "the lexical index needs PyStemmer (Snowball stemmers): pip install PyStemmer"
            ) from e
        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer


def _fold(text: str) -> str:
    """NFKC + casefold + diacritics removed ("Crème" -> "creme", "５００" -> "500")."""
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKC", text).casefold()
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def analyze(text: str) -> list[str]:
    """The terms of ``text``, in order, as indexed and searched (see the module docstring)."""
    words = [w for w in _TOKEN.findall(_fold(text)) if w not in STOPWORDS_EN]
    return _stemmer().stemWords(words) if words else []
