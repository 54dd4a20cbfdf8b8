"""Item vectors of a whole catalog from an encoder, cached on disk by content."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trainer.data.catalog import Catalog
from trainer.io import atomic_path
from trainer.text import item_text

logger = logging.getLogger(__name__)


class ItemQueryEncoder(Protocol):
    """What evaluation needs from ``trainer.encoder.load.Encoder``."""

    dim: int
    fingerprint: str

    def encode_queries(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray: ...

    def encode_items(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        show_progress: bool = False,
        max_length: int | None = None,
    ) -> np.ndarray: ...


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def catalog_vectors(
    encoder: ItemQueryEncoder,
    catalog: Catalog,
    *,
    max_item_length: int | None = None,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> tuple[np.ndarray, bool]:
    """Item vectors of the whole catalog, from ``item_text`` of each record, cached on disk.

    The cache file (``cache_dir/items-<key>.npy``, written atomically) is keyed by the model
    fingerprint, the max item length and a sha256 of the item texts, which changes with the
    catalog's content and with the item-text template alike.

    Returns:
        ((n_items, dim) float32 rows in catalog order, whether they came from the cache).
    """
    texts = [item_text(record) for record in catalog.records()]
    path = None
    if cache_dir is not None:
        length = item_length(encoder, max_item_length)
        key = hashlib.sha256(
            f"aisle-item-vectors-v1\0{encoder.fingerprint}\0{length}\0{_texts_digest(texts)}".encode()
        ).hexdigest()[:32]
        path = Path(cache_dir) / f"items-{key}.npy"
        if path.is_file():
            try:
                xb = np.load(path)
            except (OSError, ValueError) as exc:
                logger.warning("unreadable item vector cache %s (%s); re-encoding", path, exc)
            else:
                if xb.shape == (len(texts), encoder.dim) and xb.dtype == np.float32:
                    logger.info("item vectors from cache %s", path)
                    return xb, True
                logger.warning("item vector cache %s has shape %s; re-encoding", path, xb.shape)
    logger.info("encoding %d items", len(texts))
    xb = np.asarray(
        encoder.encode_items(
            texts, batch_size=batch_size, show_progress=show_progress, max_length=max_item_length
        ),
        dtype=np.float32,
    )  # (n_items, dim)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, xb)
        logger.info("cached item vectors in %s", path)
    return xb, False


def item_length(encoder: Any, max_item_length: int | None) -> int | None:
    """The item token cap in effect: the override, else the model's own (None if unknown)."""
    if max_item_length is not None:
        return max_item_length
    return getattr(getattr(encoder, "info", None), "max_item_length", None)


def encoder_info(encoder: Any) -> dict[str, Any]:
    """What a report records about the encoder: model dir, base model, fingerprint."""
    info = getattr(encoder, "info", None)
    return {
        "model": str(getattr(encoder, "model_dir", "")),
        "base_model": getattr(info, "base_model", None),
        "fingerprint": getattr(encoder, "fingerprint", None),
    }
