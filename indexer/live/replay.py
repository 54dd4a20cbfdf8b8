"""Replay of the update log onto a live index as it opens: records newer than its version.

A replayed update was acknowledged long ago, so it is applied as far as it still fits this
version (misfit columns and values dropped with a warning), and upserts whose vectors came from
another model (the index was rebuilt since) are re-embedded with the version's model. Works on
the ``LiveIndex``'s internals through its ``_apply_*`` methods, which the write path shares.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.live.records import TEXT_FIELDS, _check_vectors, conform_fields, conform_records
from indexer.storage.manifest import IndexFormatError, ModelMismatchError
from indexer.storage.update_log import LogRecord, UpdateLogError

if TYPE_CHECKING:
    from indexer.live.index import LiveIndex

logger = logging.getLogger(__name__)


def replay_log(live: LiveIndex) -> None:
    """Apply the update log's records newer than ``live``'s seq, each as far as it still fits.

    The last step of ``LiveIndex.__init__``, before its first view is published.

    Raises:
        UpdateLogError: the log was pruned past the seq this version holds.
        IndexFormatError: an upsert record without vectors.
        ModelMismatchError: upserts of another model that cannot be re-embedded.
    """
    truncated = live.log.truncated()
    if truncated is not None and truncated[0] > live._seq:
        raise UpdateLogError(
            f"index version {live.version} holds updates up to seq {live._seq}, but the "
            f"update log no longer has records up to seq {truncated[0]} (pruned with the "
            f"versions that held them): serve a newer version (aisle-index rollback --to) "
            f"or rebuild"
        )
    records = live.log.records(after=live._seq)
    for record in records:
        if record.op == "upsert":
            items = conform_records(record.items, live._schema, f"update seq {record.seq}")
            vectors = record.vectors
            if vectors is None:  # _decode_line never lets that through
                raise IndexFormatError(f"update seq {record.seq}: upsert without vectors")
            if record.fingerprint != live.manifest.model_fingerprint:
                vectors = _reembed(live, items, record)
            live._apply_upsert(record.seq, items, vectors)
        elif record.op == "delete":
            live._apply_delete(record.seq, list(record.item_ids))  # skips ids not live
        else:
            live._apply_attributes(record.seq, _replayable_attributes(live, record))
        live._seq = record.seq
        live._pending += 1
    if records:
        logger.info(
            "replayed %d update(s) (seq %d..%d) onto index version %d: %d live items",
            len(records),
            records[0].seq,
            records[-1].seq,
            live.base.version,
            live._n_live,
        )


def _replayable_attributes(live: LiveIndex, record: LogRecord) -> dict[str, dict[str, Any]]:
    out = {}
    for item_id, fields in record.attributes.items():
        where = f"update seq {record.seq}: item {item_id!r}"
        if live._live_row(item_id) is None:
            logger.warning("%s: attributes skipped: not in index version %d", where, live.version)
            continue
        text = [name for name in fields if name in TEXT_FIELDS or name == "item_id"]
        if text:
            logger.warning("%s: text columns %s cannot change without an upsert", where, text)
        fields = {k: v for k, v in fields.items() if k not in text}
        out[item_id] = conform_fields(fields, live._schema, where, keep_nulls=True)
    return out


def _reembed(live: LiveIndex, items: list[dict[str, Any]], record: LogRecord) -> np.ndarray:
    """Vectors for a replayed upsert made by another model (the index was rebuilt since)."""
    from trainer.text import item_text

    encoder = live._encoder
    if encoder is None:
        from trainer.encoder.load import load_encoder

        logger.info(
            "update seq %d has vectors of model %s; re-embedding with %s",
            record.seq,
            record.fingerprint,
            live.manifest.model_path,
        )
        try:
            encoder = live._encoder = load_encoder(live.manifest.model_path)
        except (ValueError, OSError) as e:
            raise ModelMismatchError(
                f"update seq {record.seq} holds vectors of model {record.fingerprint}, but "
                f"index version {live.base.version} uses {live.manifest.model_fingerprint} "
                f"and its model cannot be loaded to re-embed them ({e}); pass encoder="
            ) from e
    if encoder.fingerprint != live.manifest.model_fingerprint:
        raise ModelMismatchError(
            f"cannot re-embed update seq {record.seq}: the encoder has fingerprint "
            f"{encoder.fingerprint}, index version {live.base.version} needs "
            f"{live.manifest.model_fingerprint}"
        )
    vectors = encoder.encode_items([item_text(r) for r in items])
    return _check_vectors(vectors, len(items), live.dim)
