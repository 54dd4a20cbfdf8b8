"""The router's snapshot: model and catalog loaded locally, item vectors fetched from the shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aisle.v1 import shard_pb2
from engine.cluster.clients import ShardClients
from engine.cluster.request import _state, _unavailable
from engine.cluster.shard import vectors_from_bytes
from engine.search.snapshot import Snapshot, open_model
from engine.search.types import EncodingConfig, IndexSummary
from indexer.rerank.columns import ItemColumns
from indexer.storage.layout import resolve_version_dir
from indexer.version import IndexVersion


class RemoteVectors:
    """Stands in for a Snapshot's VectorStore: `gather` fetches stored vectors from the shards
    holding the rows (the router holds none)."""

    kind = "remote"

    def __init__(
        self, clients: ShardClients, row_shard: np.ndarray, version: int, dim: int
    ) -> None:
        self._clients = clients
        self._row_shard = row_shard  # (n,) int32: the shard holding each global row
        self._version = version
        self.n = len(row_shard)
        self.dim = dim

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """(m, dim) float32 vectors of global `rows`; UNAVAILABLE when a shard does not answer."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if not len(rows):
            return out
        shards = self._row_shard[rows]
        requests = {
            int(s): shard_pb2.GetShardVectorsRequest(
                rows=rows[shards == s].tolist(), index_version=self._version
            )
            for s in np.unique(shards)
        }
        fan = self._clients.call("GetShardVectors", requests, _state.end, self.check)
        if fan.missing:
            raise _unavailable(fan.missing, "the item vectors this request needs live there")
        for s, response in fan.responses.items():
            out[shards == s] = vectors_from_bytes(response.vectors, self.dim)
        return out

    def check(self, shard: int, response: Any) -> str | None:
        """Why a shard's response cannot be used (another shard or version), or None."""
        if response.shard != shard or response.index_version != self._version:
            return (
                f"answered for shard {response.shard} version {response.index_version}, "
                f"expected shard {shard} version {self._version}"
            )
        return None


def load_router_snapshot(
    index_path: str | Path,
    model_dir: str | Path | None,
    clients: ShardClients,
    encoding: EncodingConfig | None = None,
) -> Snapshot:
    """The model and the index version's catalog (attributes, ids, each row's shard), with
    `vectors` fetched from the shards: no shard's FAISS index or vectors are loaded here."""
    version_dir = resolve_version_dir(index_path)
    fingerprint, encoder = open_model(version_dir, model_dir, encoding)
    index = IndexVersion.open(version_dir, verify=True, expected_fingerprint=fingerprint, shards=())
    if clients.n_shards != index.manifest.n_shards:
        raise ValueError(
            f"--shard-addrs lists {clients.n_shards} shards, but {version_dir} has "
            f"{index.manifest.n_shards}; give one ';'-separated group of replicas per shard"
        )
    row_shard = np.empty(index.n_items, dtype=np.int32)
    for s in range(index.manifest.n_shards):
        row_shard[index.shard_rows(s)] = s
    summary = IndexSummary.of(index.manifest, index.n_items)
    return Snapshot(
        encoder=encoder,
        index=index,
        summary=summary,
        columns=ItemColumns.from_table(index.items),
        vectors=RemoteVectors(clients, row_shard, index.version, index.dim),
        version_dir=version_dir,  # users' recent items are read from here
    )
