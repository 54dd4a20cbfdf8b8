"""The serving snapshot: one model and the index built with it, loaded, cached and kept live."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from engine.search.errors import FailedPrecondition, NotFound, Unavailable
from engine.search.ranked import RankingStage, open_ranking
from engine.search.retriever import FilterCache, LocalRetriever, Retriever
from engine.search.types import EncodingConfig, IndexSummary
from indexer.lexical.files import LEXICAL_META_FILE
from indexer.lexical.index import LexicalIndex, LexicalState
from indexer.live.index import LiveIndex
from indexer.live.view import LiveView
from indexer.rerank.columns import ItemColumns
from indexer.rerank.vectors import VectorStore
from indexer.storage.layout import IndexRoot, resolve_version_dir
from indexer.storage.manifest import IndexFormatError, load_manifest
from indexer.storage.sharding import shard_of
from indexer.version import IndexVersion
from trainer.encoder.load import Encoder, load_encoder
from trainer.encoder.model_dir import default_model_dir, model_fingerprint
from trainer.text import item_text

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot:
    """One model and the index built with it, with what re-ranking needs; swapped as a whole.

    `index` is the catalog (item ids, records, manifest): an IndexVersion, or a LiveView (one
    consistent state of a live index: a version plus the upserts and deletes since) when `live`
    is set. `retriever` searches its vectors, here or on shard servers; `vectors` are the stored
    vectors when this process holds them (None on a router). Every request works on one
    snapshot.
    """

    encoder: Encoder
    index: IndexVersion | LiveView
    summary: IndexSummary
    columns: ItemColumns
    retriever: Retriever
    filters: FilterCache
    vectors: VectorStore | None = None
    live: LiveIndex | None = None
    version_dir: Path | None = None
    lexical: LexicalIndex | None = None  # the BM25 channel, when the version has one
    # The BM25 postings of the same moment as `index` and `vectors`: the lexical index changes
    # with live updates, and a search on this snapshot must not see rows it does not have.
    # None: the lexical index's current state (a snapshot whose BM25 never changes).
    lexical_state: LexicalState | None = None
    dead_rows: tuple[int, ...] = ()  # rows deleted or replaced since the version was built
    ranking: RankingStage | None = None  # the learned ranker, when the version has one


def local_snapshot(
    encoder: Encoder,
    index: IndexVersion | LiveView,
    columns: ItemColumns,
    vectors: VectorStore,
    version_dir: Path,
    *,
    live: LiveIndex | None = None,
    lexical: LexicalIndex | None = None,
    dead_rows: tuple[int, ...] = (),
    ranking: RankingStage | None = None,
) -> Snapshot:
    """A Snapshot whose vectors this process holds and searches (a LocalRetriever)."""
    filters = FilterCache(columns)
    return Snapshot(
        encoder=encoder,
        index=index,
        summary=IndexSummary.of(index.manifest, index.n_items),
        columns=columns,
        retriever=LocalRetriever(index, vectors, columns, filters, dead_rows),
        filters=filters,
        vectors=vectors,
        live=live,
        version_dir=version_dir,
        lexical=lexical,
        lexical_state=None if lexical is None else lexical.state,
        dead_rows=dead_rows,
        ranking=ranking if lexical is not None else None,
    )


MODELS_ENV = "AISLE_MODELS"
MODELS_DIR = "models"


def find_model_dir(version_dir: Path) -> Path:
    """The model dir an index version was built with, looked up on this machine.

    An index built elsewhere (in CI, on a build cluster) names its model by an absolute path
    that may not exist here; the model is then found by its content fingerprint, in order:

    1. the manifest's ``model_path``, when that dir exists;
    2. ``ROOT/models/<fingerprint>/``: a model copied beside the index root's ``versions/``;
    3. ``<dir>/<fingerprint>/`` for each dir of ``$AISLE_MODELS`` (``os.pathsep``-separated);
    4. the packaged base model (all-MiniLM-L6-v2), when the fingerprint is its own.

    ``<fingerprint>`` is the manifest's ``model_fingerprint`` (``aisle-index info ROOT`` prints
    it). The fingerprint of the dir found is checked when the index opens.

    Raises:
        IndexFormatError: no candidate exists; the message lists where it looked.
    """
    manifest = load_manifest(version_dir / "manifest.json")
    fingerprint = manifest.model_fingerprint
    candidates = [Path(manifest.model_path)]
    if version_dir.parent.name == "versions":
        candidates.append(version_dir.parent.parent / MODELS_DIR / fingerprint)
    for base in filter(None, os.environ.get(MODELS_ENV, "").split(os.pathsep)):
        candidates.append(Path(base) / fingerprint)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    try:
        packaged = default_model_dir()
        if model_fingerprint(packaged) == fingerprint:
            return packaged
    except ValueError:
        pass  # the packaged model is not installed, or not readable
    tried = ", ".join(str(c) for c in candidates)
    raise IndexFormatError(
        f"{version_dir}: the model it was built with (fingerprint {fingerprint[:12]}) is not on "
        f"this machine (looked in {tried}, and the packaged base model); pass --model DIR with "
        f"a copy of that model, or put the copy at ROOT/{MODELS_DIR}/{fingerprint} or "
        f"${MODELS_ENV}/{fingerprint}"
    )


def open_model(
    version_dir: Path, model_dir: str | Path | None, encoding: EncodingConfig | None
) -> tuple[str, Encoder]:
    """(fingerprint, query encoder) of ``model_dir``, or without it of the model the index
    version was built with (``find_model_dir``)."""
    encoding = encoding or EncodingConfig()
    if model_dir is None:
        model_dir = find_model_dir(version_dir)
    fingerprint = model_fingerprint(model_dir)
    encoder = load_encoder(
        model_dir,
        backend=encoding.backend,
        num_threads=encoding.encoder_threads,
        query_tower=encoding.query_tower,
    )
    return fingerprint, encoder


def load_snapshot(
    index_path: str | Path,
    model_dir: str | Path | None = None,
    *,
    encoding: EncodingConfig | None = None,
) -> Snapshot:
    """Open an index (root or version dir) and the model that embedded it.

    Without `model_dir` the model is looked up as ``find_model_dir`` says. Raises
    IndexFormatError when the index is corrupt, or when the model does not match the one the
    index was built with. The query
    encoder backend and threads come from `encoding` (ONNX Runtime when the model dir has the
    export: no torch in the serving process until an item text must be encoded).
    """
    version_dir = resolve_version_dir(index_path)
    fingerprint, encoder = open_model(version_dir, model_dir, encoding)
    log.info(
        "query encoder: the %s query tower, %s backend", encoder.query_tower, encoder.query_backend
    )
    if version_dir.parent.name == "versions":
        # Inside an index root: live updates (Upsert/Delete) go through its update log, and
        # the updates logged since this version was built are replayed now.
        live = LiveIndex.open(
            version_dir, verify=True, expected_fingerprint=fingerprint, encoder=encoder
        )
        lexical = _open_lexical(version_dir)
        if lexical is not None:  # bring BM25 up to the replayed updates
            sync_lexical(lexical, live.snapshot(), live.n_base, set())
        ranking = open_ranking(version_dir, live.base, encoder)
        return live_snapshot(encoder, live, version_dir, lexical, ranking)
    index = IndexVersion.open(version_dir, verify=True, expected_fingerprint=fingerprint)
    return local_snapshot(
        encoder,
        index,
        ItemColumns.from_table(index.items),
        index.vector_store(),  # the compact copy (f16/i8) when the build kept one
        version_dir,
        lexical=_open_lexical(version_dir),
        ranking=open_ranking(version_dir, index, encoder),
    )


def _open_lexical(version_dir: Path) -> LexicalIndex | None:
    """The version's BM25 index (its files were checksummed with the rest), or None."""
    if not (version_dir / LEXICAL_META_FILE).exists():
        return None
    return LexicalIndex.load(version_dir)


def sync_lexical(
    lexical: LexicalIndex, view: LiveView, rows_before: int, dead_before: set[int]
) -> None:
    """Apply to BM25 what the live index changed since a view with `rows_before` rows and
    `dead_before` dead rows: index the new live rows' texts, drop rows deleted or replaced."""
    dead = {int(r) for r in view.dead_rows()}
    new_rows = [r for r in range(rows_before, view.n_rows) if r not in dead]
    if new_rows:
        ids = [view.item_id(r) for r in new_rows]
        lexical.upsert(
            np.asarray(new_rows, dtype=np.int64),
            [item_text(view.record(r)) for r in new_rows],
            shard_of(ids, lexical.n_shards),
        )
    # Rows at or past rows_before that are dead were never indexed.
    gone = sorted(r for r in dead - dead_before if r < rows_before)
    if gone:
        lexical.delete(np.asarray(gone, dtype=np.int64))


def live_snapshot(
    encoder: Encoder,
    live: LiveIndex,
    version_dir: Path,
    lexical: LexicalIndex | None = None,
    ranking: RankingStage | None = None,
) -> Snapshot:
    """A Snapshot of the live index's current state (taken again after each update)."""
    view = live.snapshot()
    return local_snapshot(
        encoder,
        view,
        view.columns(),
        view.vector_store(),
        version_dir,
        live=live,
        dead_rows=tuple(int(r) for r in view.dead_rows()),
        lexical=lexical,
        ranking=ranking,
    )


def is_known(snap: Snapshot, item_id: str) -> bool:
    """Whether `item_id` is an item of the snapshot's index."""
    try:
        snap.index.row_of(item_id)
    except KeyError:
        return False
    return True


def resolve_version(index_path: Path, version: int = 0) -> Path:
    """The version dir that `version` names in the index at `index_path`: with 0, what CURRENT
    names (or `index_path` itself, a version dir); NotFound when `version` is not published.
    Raises IndexFormatError when `index_path` holds no version to serve."""
    if version == 0:
        return resolve_version_dir(index_path)
    root = IndexRoot(index_path)
    if version not in root.versions():
        raise NotFound(
            f"index version {version} is not published in {index_path}; "
            f"available: {root.versions()}"
        )
    return root.version_dir(version)


def load_version(index_path: Path, version: int, load: Callable[[Path], T]) -> T:
    """`load` of the version dir `version` names (resolve_version), with what goes wrong as the
    API says it: a corrupt index is FAILED_PRECONDITION, one that cannot be read UNAVAILABLE."""
    try:
        return load(resolve_version(index_path, version))
    except IndexFormatError as error:
        raise FailedPrecondition(f"cannot load index version: {error}") from error
    except (OSError, ValueError) as error:
        raise Unavailable(f"cannot load index version: {error}") from error
