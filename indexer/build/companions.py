"""Files published beside the FAISS shards of a version: the lexical (BM25) index, users' items."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from indexer.lexical.index import LexicalIndex
from indexer.storage.users import USERS_FILE, users_table, write_users
from trainer.data.labels import read_interactions
from trainer.text import item_text

logger = logging.getLogger(__name__)


def write_companions(
    staging: Path,
    catalog: Any,
    shard_ids: np.ndarray,
    n_shards: int,
    *,
    lexical: bool = True,
    interactions: Path | None = None,
) -> dict[str, Any]:
    """Write the lexical index (same item text and shard assignment as the dense side, corpus
    statistics global to the catalog) and, given an interactions file, each user's recent items
    into `staging`. Returns build info for the manifest."""
    info: dict[str, Any] = {}
    if lexical:
        t = time.perf_counter()
        texts = [item_text(r) for r in catalog.records()]
        index = LexicalIndex.build(
            texts, np.arange(len(texts), dtype=np.int64), shard_ids, n_shards
        )
        files = index.save(staging)
        info["lexical"] = {
            "files": files,
            "terms": index.n_terms,
            "seconds": round(time.perf_counter() - t, 3),
        }
        logger.info("lexical index: %d terms in %.1f s", index.n_terms, time.perf_counter() - t)
    if interactions is not None:
        table = users_table(read_interactions(interactions), set(catalog.item_ids))
        write_users(table, staging / USERS_FILE)
        info["users"] = {"interactions": str(Path(interactions).resolve()), "users": table.num_rows}
        logger.info("users: %d with recent items", table.num_rows)
    return info
