"""Who must not reach a training set: the files an events dir holds about shoppers' choices and
rights, read by the training-data builders (trainer.feedback) as well as by the server
(engine.privacy writes them).

``consent.json``: pseudonym → ``{"personalization": bool, "use_for_training": bool, "set": ISO
time}`` (only shoppers who chose). ``tombstones.jsonl``: one ``{"user_id": pseudonym,
"forgotten": ISO time}`` per erasure; a record of that user made at or before it is erased.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

CONSENT_FILE = "consent.json"
TOMBSTONES_FILE = "tombstones.jsonl"


def read_consent(directory: str | Path) -> dict[str, dict]:
    """pseudonym → the shopper's stored choice (empty without a consent file)."""
    path = Path(directory) / CONSENT_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path}: not a consent file ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a consent file (expected an object)")
    return data


def read_tombstones(directory: str | Path) -> dict[str, datetime]:
    """pseudonym → the latest time that user was forgotten."""
    path = Path(directory) / TOMBSTONES_FILE
    out: dict[str, datetime] = {}
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # a torn last line: that erasure was never acknowledged
            raw = json.loads(line)
            when = datetime.fromisoformat(raw["forgotten"])
            if raw["user_id"] not in out or out[raw["user_id"]] < when:
                out[raw["user_id"]] = when
    return out


def erased(tombstones: dict[str, datetime], user_id: str, when: datetime | None) -> bool:
    """Whether a record of `user_id` made at `when` was erased (made at or before the user's
    tombstone; a record with no time counts as erased)."""
    forgotten = tombstones.get(user_id)
    if forgotten is None:
        return False
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when is None or when <= forgotten


@dataclass(frozen=True)
class TrainingExclusions:
    """Whose records a training set leaves out: users who turned use_for_training off (or,
    with a deployment default of off, who never turned it on), and erased records."""

    consent: dict[str, dict]
    tombstones: dict[str, datetime]
    default_use_for_training: bool = True

    def allows(self, user_id: str | None, when: datetime | None) -> bool:
        if not user_id:
            return True  # an anonymous record belongs to no shopper
        if erased(self.tombstones, user_id, when):
            return False
        choice = self.consent.get(user_id)
        if choice is None:
            return self.default_use_for_training
        return bool(choice.get("use_for_training", self.default_use_for_training))


def training_exclusions(
    directory: str | Path, default_use_for_training: bool = True
) -> TrainingExclusions:
    """The events dir's consent and tombstones, for a training-set builder."""
    return TrainingExclusions(
        read_consent(directory), read_tombstones(directory), default_use_for_training
    )
