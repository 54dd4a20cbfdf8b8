"""Rollback: serve the previous champion again (the version before CURRENT, with its model)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from engine.learning import ledger
from indexer.storage.layout import IndexRoot
from indexer.storage.manifest import load_manifest

log = logging.getLogger(__name__)


def rollback(
    index: str | Path,
    *,
    to: int | None = None,
    server: str | None = None,
    admin_token: str | None = None,
) -> dict:
    """Point ``CURRENT`` back at the previous version (or ``to``), have the server at ``server``
    ``Reload`` it (model and index together: each version names its model by fingerprint), and
    append a rollback record to the ledger.

    Returns:
        The ledger record.

    Raises:
        ValueError: nothing to roll back to (no older kept version, or ``to`` is not one).
    """
    root = IndexRoot(Path(index).resolve())
    with root.build_lock():  # no round or build publishes meanwhile
        before = root.current()
        after = root.rollback(to)
    fingerprint = load_manifest(root.version_dir(after) / "manifest.json").model_fingerprint
    record = {
        "kind": "rollback",
        "from_version": before,
        "to_version": after,
        "fingerprint": fingerprint,
        "reloaded": None,
    }
    if server is not None:
        from engine.client import AisleClient

        with AisleClient(server, admin_token=admin_token) as client:
            response = client.reload(0)
        record["reloaded"] = {"server": server, "version": response.index.version}
    record["finished"] = datetime.now(UTC).isoformat()
    ledger.append(root.root, record)
    log.info("rolled back from version %s to %s (model %s)", before, after, fingerprint[:12])
    return record
