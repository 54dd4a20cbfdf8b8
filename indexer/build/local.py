"""The single-machine build: embed the catalog in this process, build the shards one by one."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.build.config import BuildConfig
from indexer.build.embed import (
    ShardVectorWriter,
    StoredItemVectors,
    encode_chunks,
    item_text_chunks,
)
from indexer.build.pipeline import BuildJob, ShardBuild, ShardSettings, build_version, write_shard
from indexer.storage.layout import IndexRoot, rows_file_name, vectors_file_name
from indexer.storage.manifest import file_sha256
from trainer.data.catalog import read_catalog
from trainer.progress import progress_bar

__all__ = ["LocalEngine", "build_index"]

logger = logging.getLogger(__name__)

# Items embedded per chunk: bounds memory (texts + vectors of one chunk) for huge catalogs while
# keeping encoder calls large enough for length bucketing; also the progress-bar granularity.
_CHUNK_ITEMS = 2048


def build_index(config: BuildConfig) -> Path:
    """Embed ``config.catalog``, build ``config.shards`` FAISS shards and publish a new version.

    On any failure the staging dir is removed; earlier versions and ``CURRENT`` are untouched.

    Returns:
        The published version dir, ``<out>/versions/<n>``.
    """
    # Imported here so `import indexer.build.local` stays cheap (the encoder pulls in torch).
    from trainer.encoder.load import load_encoder

    started = time.perf_counter()
    catalog = read_catalog(config.catalog)
    if len(catalog) == 0:
        raise ValueError(f"{config.catalog}: the catalog has no items; nothing to index")
    logger.info("read %d items from %s", len(catalog), config.catalog)
    device = _encoder_device()
    encoder = load_encoder(config.model, device=device)
    stored = None
    if config.item_vectors is not None:  # header checks now; row checks as the rows are read
        stored = StoredItemVectors.open(config.item_vectors, len(catalog), encoder.dim)
    return build_version(config, catalog, encoder, LocalEngine(device, stored), started=started)


def _encoder_device() -> str:
    # Embedding is most of a build's time; use a GPU for it when torch sees one.
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    logger.info("encoding items on %s", device)
    return device


@dataclass(frozen=True)
class LocalEngine:
    """Embeds items and builds shards in this process (``indexer.build.pipeline.BuildEngine``):
    vectors go straight into per-shard files of the staging dir, shards are built in turn.

    Attributes:
        encoder_device: where the encoder runs ("cuda" or "cpu"), for the manifest.
        stored: item vectors read from a file (``BuildConfig.item_vectors``) instead of
            encoding the catalog; None = encode it.
    """

    encoder_device: str
    stored: StoredItemVectors | None = None

    @contextmanager
    def workspace(self, job: BuildJob, root: IndexRoot, version: int) -> Iterator[Path]:
        """The staging dir of ``version``; removed when the build fails."""
        staging = root.prepare_staging(version)
        try:
            yield staging
        except BaseException:
            root.discard_staging(version)
            raise

    def embed(self, job: BuildJob, version_dir: Path) -> float:
        """Encode the catalog (or read ``stored``) into ``version_dir``'s per-shard files."""
        config, catalog, encoder, stored = job.config, job.catalog, job.encoder, self.stored
        writer = ShardVectorWriter(version_dir, job.shard_ids, config.shards, encoder.dim)
        t_encode = time.perf_counter()
        desc = "embedding items" if stored is None else "reading item vectors"
        # The bar moves per encoder batch (rate and ETA from the start), not per chunk of
        # 2,048 items: a CPU embedding a large model took minutes per chunk.
        with progress_bar(len(catalog), desc) as bar:
            if stored is None:
                vector_chunks = encode_chunks(
                    encoder,
                    item_text_chunks(catalog.records(), _CHUNK_ITEMS),
                    batch_size=config.batch_size,
                    max_length=config.max_item_length,
                    on_batch=bar.update,
                )
            else:
                vector_chunks = stored.chunks(catalog, encoder, config, job.updates)
            start = 0
            for xb in vector_chunks:
                # Replayed upserts keep their logged vectors (same model).
                xb = job.updates.kept.patch(np.arange(start, start + len(xb)), xb)
                writer.write(xb)
                start += len(xb)
                if stored is not None:
                    bar.update(len(xb))
        writer.close()
        seconds = time.perf_counter() - t_encode
        logger.info(
            "%s %d items in %.1f s (%.0f items/s)",
            "embedded" if stored is None else f"read the vectors of {stored.path} for",
            len(catalog),
            seconds,
            len(catalog) / max(seconds, 1e-9),
        )
        return seconds

    def sample_vectors(self, job: BuildJob, version_dir: Path, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` read back from the shards' files."""
        parts = []
        for s in range(job.config.shards):
            shard_rows = np.load(version_dir / rows_file_name(s))  # ascending global rows
            xb = np.load(version_dir / vectors_file_name(s), mmap_mode="r")
            mine = rows[job.shard_ids[rows] == s]
            parts.append(np.asarray(xb[np.searchsorted(shard_rows, mine)], dtype=np.float32))
        return np.concatenate(parts)

    def build_shards(
        self, job: BuildJob, version_dir: Path, settings: ShardSettings
    ) -> list[ShardBuild]:
        """Build the shards one after another from their files in ``version_dir``."""
        shards = []
        for s in range(job.config.shards):
            xb = np.load(version_dir / vectors_file_name(s), mmap_mode="r")  # (n_s, dim) float32
            rows = np.load(version_dir / rows_file_name(s))  # (n_s,) int64 global rows
            shard = write_shard(version_dir, s, xb, rows, settings)
            del xb  # the memmap of a file write_shard may have replaced
            logger.info(
                "shard %d: %d items indexed on %s in %.1f s",
                s,
                shard.count,
                shard.device,
                shard.seconds,
            )
            shards.append(shard)
        return shards

    def build_info(self, job: BuildJob) -> dict[str, Any]:
        """The encoder's device, and the item vectors file when one was given."""
        info: dict[str, Any] = {"encoder_device": self.encoder_device}
        if self.stored is not None:
            info["item_vectors"] = {
                "path": str(self.stored.path.resolve()),
                "sha256": file_sha256(self.stored.path),
            }
        return info
