"""The on-disk format of the lexical index: file names, ``write_lexical``, ``read_lexical``.

A version dir holds ``lexical.json`` (format version, analyzer, BM25 params, statistics,
vocabulary), ``lexical.df.npy`` (document frequencies) and one ``shard_NNN.lexical.npz`` of
postings per shard. What they hold is a ``LexicalBuild``; ``LexicalIndex.save`` and ``load``
go through here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.lexical.analysis import ANALYZER
from indexer.lexical.bm25 import BM25Params, Postings
from indexer.storage.manifest import IndexFormatError
from trainer.io import write_atomic

__all__ = [
    "FORMAT_VERSION",
    "LEXICAL_DF_FILE",
    "LEXICAL_META_FILE",
    "LexicalBuild",
    "lexical_file_names",
    "lexical_shard_file_name",
    "read_lexical",
    "write_lexical",
]

FORMAT_VERSION = 1
LEXICAL_META_FILE = "lexical.json"  # params, statistics, vocabulary
LEXICAL_DF_FILE = "lexical.df.npy"  # (n_terms,) int64 document frequencies


def lexical_shard_file_name(shard: int) -> str:
    """The shard's postings: ``indptr``, ``docs``, ``weights``, ``rows`` arrays in one .npz."""
    return f"shard_{shard:03d}.lexical.npz"


def lexical_file_names(n_shards: int) -> list[str]:
    """Every file ``write_lexical`` writes, relative to the version dir."""
    return [LEXICAL_META_FILE, LEXICAL_DF_FILE] + [
        lexical_shard_file_name(s) for s in range(n_shards)
    ]


@dataclass(frozen=True)
class LexicalBuild:
    """A built lexical index as its files hold it: BM25 parameters, the statistics frozen at
    build time, the vocabulary and each shard's postings."""

    params: BM25Params
    vocab: dict[str, int]  # term -> id, ids 0..n_terms-1 (an index takes it over and extends it)
    df: np.ndarray  # (n_terms,) int64 document frequencies
    n_docs: int  # N
    avg_doc_len: float  # avgdl, in terms
    shards: tuple[Postings | None, ...]  # per shard; None: a shard not loaded in this process


def write_lexical(directory: str | Path, build: LexicalBuild) -> list[str]:
    """Write ``build`` (every shard loaded, nothing dead) into ``directory``.

    Returns:
        The names written, relative to ``directory`` (``lexical_file_names(n_shards)``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = sorted(build.vocab, key=build.vocab.__getitem__)
    meta = {
        "format_version": FORMAT_VERSION,
        "analyzer": ANALYZER,
        "k1": build.params.k1,
        "b": build.params.b,
        "n_docs": build.n_docs,
        "avg_doc_len": build.avg_doc_len,
        "n_shards": len(build.shards),
        "shard_docs": [p.n_docs for p in build.shards],  # type: ignore[union-attr]
        "vocab": vocab,
    }
    write_atomic(directory / LEXICAL_META_FILE, json.dumps(meta).encode("utf-8"))
    write_atomic(directory / LEXICAL_DF_FILE, _npy_bytes(build.df))
    for s, p in enumerate(build.shards):
        assert p is not None and not len(p.dead)
        buf = io.BytesIO()
        np.savez(buf, indptr=p.indptr, docs=p.docs, weights=p.weights, rows=p.rows)
        write_atomic(directory / lexical_shard_file_name(s), buf.getvalue())
    return lexical_file_names(len(build.shards))


def read_lexical(directory: str | Path, *, shards: Sequence[int] | None = None) -> LexicalBuild:
    """Read what ``write_lexical`` wrote.

    Args:
        directory: the dir holding ``lexical_file_names(n_shards)``.
        shards: read only these shards' postings (a shard server); None = all.

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
    loaded: list[Postings | None] = []
    for s in range(n_shards):
        if s not in wanted:
            loaded.append(None)
            continue
        path = directory / lexical_shard_file_name(s)
        try:
            with np.load(path, allow_pickle=False) as z:
                p = Postings(
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
    return LexicalBuild(
        params=BM25Params(k1=meta["k1"], b=meta["b"]),
        vocab=vocab,
        df=np.asarray(df, dtype=np.int64),
        n_docs=int(meta["n_docs"]),
        avg_doc_len=float(meta["avg_doc_len"]),
        shards=tuple(loaded),
    )


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
