"""The on-disk format of the lexical index: file names, ``save`` and ``load``.

A version dir holds ``lexical.json`` (format version, analyzer, BM25 params, statistics,
vocabulary), ``lexical.df.npy`` (document frequencies) and one ``shard_NNN.lexical.npz`` of
postings per shard. ``LexicalIndex`` gets ``save`` and ``load`` from the mixin here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.lexical.analysis import ANALYZER
from indexer.lexical.bm25 import BM25Params, _Postings, _State
from indexer.storage.manifest import IndexFormatError
from trainer.io import write_atomic

if TYPE_CHECKING:
    from indexer.lexical.index import LexicalIndex

__all__ = [
    "FORMAT_VERSION",
    "LEXICAL_DF_FILE",
    "LEXICAL_META_FILE",
    "lexical_file_names",
    "lexical_shard_file_name",
]

FORMAT_VERSION = 1
LEXICAL_META_FILE = "lexical.json"  # params, statistics, vocabulary
LEXICAL_DF_FILE = "lexical.df.npy"  # (n_terms,) int64 document frequencies


def lexical_shard_file_name(shard: int) -> str:
    """The shard's postings: ``indptr``, ``docs``, ``weights``, ``rows`` arrays in one .npz."""
    return f"shard_{shard:03d}.lexical.npz"


def lexical_file_names(n_shards: int) -> list[str]:
    """Every file ``LexicalIndex.save`` writes, relative to the version dir."""
    return [LEXICAL_META_FILE, LEXICAL_DF_FILE] + [
        lexical_shard_file_name(s) for s in range(n_shards)
    ]


class _LexicalFiles:
    """LexicalIndex's ``save`` and ``load`` (the index itself is in ``indexer.lexical``)."""

    # Set by LexicalIndex.__init__.
    params: BM25Params
    n_shards: int
    n_docs: int
    avg_doc_len: float
    _vocab: dict[str, int]
    _df: np.ndarray
    _state: _State

    def save(self, directory: str | Path) -> list[str]:
        """Write the index into ``directory`` (an index version dir being built).

        Only a freshly built or loaded index is saved: live changes belong to the update log,
        which replays them on top of the saved index.

        Returns:
            The names written, relative to ``directory`` (``lexical_file_names(n_shards)``).

        Raises:
            ValueError: the index has live changes, or does not hold every shard.
        """
        state = self._state
        if state.segments or any(p is not None and len(p.dead) for p in state.shards):
            raise ValueError(
                "this lexical index has live updates; save the built index (build it again) "
                "and let the update log replay the changes"
            )
        if any(p is None for p in state.shards):
            raise ValueError("save needs every shard loaded (this index was loaded with shards=)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = sorted(self._vocab, key=self._vocab.__getitem__)
        meta = {
            "format_version": FORMAT_VERSION,
            "analyzer": ANALYZER,
            "k1": self.params.k1,
            "b": self.params.b,
            "n_docs": self.n_docs,
            "avg_doc_len": self.avg_doc_len,
            "n_shards": self.n_shards,
            "shard_docs": [p.n_docs for p in state.shards],  # type: ignore[union-attr]
            "vocab": vocab,
        }
        write_atomic(directory / LEXICAL_META_FILE, json.dumps(meta).encode("utf-8"))
        write_atomic(directory / LEXICAL_DF_FILE, _npy_bytes(self._df))
        for s, p in enumerate(state.shards):
            assert p is not None
            buf = io.BytesIO()
            np.savez(buf, indptr=p.indptr, docs=p.docs, weights=p.weights, rows=p.rows)
            write_atomic(directory / lexical_shard_file_name(s), buf.getvalue())
        return lexical_file_names(self.n_shards)

    @classmethod
    def load(cls, directory: str | Path, *, shards: Sequence[int] | None = None) -> LexicalIndex:
        """Read an index ``save`` wrote.

        Args:
            directory: the dir holding ``lexical_file_names(n_shards)``.
            shards: load only these shards' postings (a shard server); None = all.

        Raises:
            IndexFormatError: a missing or corrupt file, another format version or analyzer.
        """
        directory = Path(directory)
        meta_path = directory / LEXICAL_META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            df = np.load(directory / LEXICAL_DF_FILE, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise IndexFormatError(f"{directory}: cannot read the lexical index: {e}") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{meta_path}: lexical format {meta.get('format_version')!r}, this code reads "
                f"{FORMAT_VERSION}; rebuild the index"
            )
        if meta.get("analyzer") != ANALYZER:
            raise IndexFormatError(
                f"{meta_path}: built with analyzer {meta.get('analyzer')!r}, this code uses "
                f"{ANALYZER!r}; queries would not match its terms: rebuild the index"
            )
        vocab = {t: i for i, t in enumerate(meta["vocab"])}
        n_shards = int(meta["n_shards"])
        if len(vocab) != len(df) or df.ndim != 1:
            raise IndexFormatError(f"{directory}: {len(vocab)} terms but df has {df.shape}")
        wanted = set(range(n_shards)) if shards is None else {int(s) for s in shards}
        if not wanted <= set(range(n_shards)):
            raise ValueError(f"shards must be in [0, {n_shards}), got {sorted(wanted)}")
        loaded: list[_Postings | None] = []
        for s in range(n_shards):
            if s not in wanted:
                loaded.append(None)
                continue
            path = directory / lexical_shard_file_name(s)
            try:
                with np.load(path, allow_pickle=False) as z:
                    p = _Postings(
                        indptr=z["indptr"],
                        docs=z["docs"],
                        weights=z["weights"],
                        rows=z["rows"],
                        shards=np.full(len(z["rows"]), s, dtype=np.int32),
                    )
            except (OSError, ValueError, KeyError) as e:
                raise IndexFormatError(f"{path}: cannot read lexical shard: {e}") from e
            if len(p.indptr) != len(vocab) + 1 or p.n_docs != meta["shard_docs"][s]:
                raise IndexFormatError(f"{path}: does not match {LEXICAL_META_FILE}")
            loaded.append(p)
        return cls(
            params=BM25Params(k1=meta["k1"], b=meta["b"]),
            vocab=vocab,
            df=df,
            n_docs=int(meta["n_docs"]),
            avg_doc_len=float(meta["avg_doc_len"]),
            n_shards=n_shards,
            shards=loaded,
        )


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
