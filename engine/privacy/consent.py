"""Shoppers' consent, by pseudonym, persisted durably in one JSON file beside the event log
(``consent.json``, format in trainer.privacy.exclusions, which the training-set builders read);
rewritten atomically on every change."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

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
    """Thread-safe consent by pseudonym. `default` answers for shoppers who never chose."""

    def __init__(self, directory: str | Path, default: Preferences | None = None) -> None:
        self.path = Path(directory) / CONSENT_FILE
        self.default = default or Preferences()
        self._lock = threading.Lock()
        self._prefs: dict[str, dict] = read_consent(self.path.parent)

    def get(self, candidates: tuple[str, ...]) -> Preferences:
        """The first of `candidates` (a user's pseudonyms, current key first) with a choice."""
        with self._lock:
            return self._get(candidates)

    def set(
        self,
        candidates: tuple[str, ...],
        personalization: bool | None = None,
        use_for_training: bool | None = None,
    ) -> Preferences:
        """Set (under the current pseudonym, `candidates[0]`) what is given; the rest keeps its
        value. Durable when this returns."""
        with self._lock:
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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(prefs, sort_keys=True, indent=1))
            self._prefs = prefs
            return Preferences(new["personalization"], new["use_for_training"], False)

    def _get(self, candidates: tuple[str, ...]) -> Preferences:
        for pseudonym in candidates:
            p = self._prefs.get(pseudonym)
            if p is not None:
                return Preferences(p["personalization"], p["use_for_training"], False)
        return self.default

    def forget(self, candidates: tuple[str, ...]) -> bool:
        """Drop the user's stored choice (erasure); whether there was one."""
        with self._lock:
            if not any(c in self._prefs for c in candidates):
                return False
            prefs = {k: v for k, v in self._prefs.items() if k not in candidates}
            write_atomic(self.path, json.dumps(prefs, sort_keys=True, indent=1))
            self._prefs = prefs
            return True
