"""Shoppers' consent, by pseudonym, persisted durably in one JSON file beside the event log
(``consent.json``, format in trainer.privacy.exclusions, which the training-set builders read);
rewritten atomically on every change."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from engine.privacy.logs import log_lock
from trainer.io import write_atomic
from trainer.privacy.exclusions import CONSENT_FILE, read_consent

# The user id a Recommend carries once the privacy edge found its shopper turned
# personalization off: longer than any real id or pseudonym, so no history is ever held under
# it, and logged as anonymous (no user) by the impression log.
NO_PERSONALIZATION = "\x00" * 256


@dataclass(frozen=True)
class Preferences:
    personalization: bool = True
    use_for_training: bool = True
    defaults: bool = True  # never set by the shopper: the deployment's defaults


class ConsentStore:
    """Consent by pseudonym, thread-safe and shared with other processes (aisle-events): every
    change re-reads the file under the events dir's file lock before rewriting it, and reads
    pick up a file another process replaced. `default` answers for shoppers who never chose."""

    def __init__(self, directory: str | Path, default: Preferences | None = None) -> None:
        self.path = Path(directory) / CONSENT_FILE
        self.default = default or Preferences()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._prefs: dict[str, dict] = {}
        self._refresh()

    def _refresh(self) -> None:
        """Re-read the file when it changed since the last read (one stat otherwise)."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp or stamp is None and self._prefs:
            self._prefs = read_consent(self.path.parent)
            self._stamp = stamp

    def get(self, candidates: tuple[str, ...]) -> Preferences:
        """The first of `candidates` (a user's pseudonyms, current key first) with a choice."""
        with self._lock:
            self._refresh()
            return self._get(candidates)

    def _get(self, candidates: tuple[str, ...]) -> Preferences:
        for pseudonym in candidates:
            p = self._prefs.get(pseudonym)
            if p is not None:
                return Preferences(p["personalization"], p["use_for_training"], False)
        return self.default

    def _write(self, prefs: dict[str, dict]) -> None:
        write_atomic(self.path, json.dumps(prefs, sort_keys=True, indent=1))
        self._prefs = prefs
        st = os.stat(self.path)
        self._stamp = (st.st_ino, st.st_mtime_ns)

    def set(
        self,
        candidates: tuple[str, ...],
        personalization: bool | None = None,
        use_for_training: bool | None = None,
    ) -> Preferences:
        """Set (under the current pseudonym, `candidates[0]`) what is given; the rest keeps its
        value. Durable when this returns."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, log_lock(self.path.parent):
            self._stamp = None
            self._refresh()
            current = self._get(candidates)
            new = {
                "personalization": (
                    current.personalization if personalization is None else personalization
                ),
                "use_for_training": (
                    current.use_for_training if use_for_training is None else use_for_training
                ),
                "set": datetime.now(UTC).isoformat(),
            }
            prefs = {k: v for k, v in self._prefs.items() if k not in candidates}
            prefs[candidates[0]] = new
            self._write(prefs)
            return Preferences(new["personalization"], new["use_for_training"], False)

    def forget(self, candidates: tuple[str, ...]) -> bool:
        """Drop the user's stored choice (erasure); whether there was one."""
        if not self.path.parent.is_dir():
            return False
        with self._lock, log_lock(self.path.parent):
            self._stamp = None
            self._refresh()
            if not any(c in self._prefs for c in candidates):
                return False
            self._write({k: v for k, v in self._prefs.items() if k not in candidates})
            return True
