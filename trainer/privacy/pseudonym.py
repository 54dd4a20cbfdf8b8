"""Keyed pseudonyms for shoppers' user ids: HMAC-SHA256 under a secret key that never lives in
the index, with the key id in every pseudonym so keys can rotate.

A pseudonym is ``<key id>.<first 32 hex digits of HMAC-SHA256(key, user id)>`` (128 bits).
Keys come from ``AISLE_USER_KEYS`` (inline) or the file ``AISLE_USER_KEYS_FILE`` names: one
``KEY_ID:SECRET`` per line (or comma-separated inline), the current key first, the previous one
second. After a rotation, lookups try the current key's pseudonym, then the previous one's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_KEYS = "AISLE_USER_KEYS"
ENV_KEYS_FILE = "AISLE_USER_KEYS_FILE"
DIGEST_HEX = 32  # 128 bits of the HMAC: collisions are out of reach for any shop's user count
MIN_SECRET_CHARS = 16
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_PSEUDONYM = re.compile(rf"[A-Za-z0-9_-]{{1,32}}\.[0-9a-f]{{{DIGEST_HEX}}}")


@dataclass(frozen=True)
class UserKey:
    key_id: str
    secret: bytes

    def __post_init__(self) -> None:
        if not _KEY_ID.fullmatch(self.key_id):
            raise ValueError(f"user key id {self.key_id!r} must be 1-32 of [A-Za-z0-9_-]")
        if len(self.secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"user key {self.key_id!r}: the secret must be at least {MIN_SECRET_CHARS} bytes"
            )

    def __repr__(self) -> str:  # the secret never reaches a log line
        return f"UserKey({self.key_id!r})"

    def pseudonym(self, user_id: str) -> str:
        digest = hmac.new(self.secret, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"{self.key_id}.{digest.hexdigest()[:DIGEST_HEX]}"


class Pseudonymizer:
    """Maps raw user ids to pseudonyms under the current key (and the previous one, for lookups
    of what was stored before a rotation)."""

    def __init__(self, current: UserKey, previous: UserKey | None = None) -> None:
        if previous is not None and previous.key_id == current.key_id:
            raise ValueError(f"the current and previous user keys share the id {current.key_id!r}")
        self.current = current
        self.previous = previous

    @property
    def key_id(self) -> str:
        return self.current.key_id

    def pseudonym(self, user_id: str) -> str:
        """The current key's pseudonym of `user_id`; "" stays "" (no user)."""
        return self.current.pseudonym(user_id) if user_id else ""

    def candidates(self, user_id: str) -> tuple[str, ...]:
        """The pseudonyms `user_id` may be stored under, current key first."""
        if not user_id:
            return ()
        if self.previous is None:
            return (self.current.pseudonym(user_id),)
        return (self.current.pseudonym(user_id), self.previous.pseudonym(user_id))


def is_pseudonym(value: str) -> bool:
    return bool(_PSEUDONYM.fullmatch(value))


def parse_keys(text: str, source: str) -> Pseudonymizer:
    """Keys from ``KEY_ID:SECRET`` entries (lines or commas; ``#`` comments), current first.

    Raises:
        ValueError: no key, more than two, or a malformed entry (the message names `source`,
            never a secret).
    """
    entries = [
        e.strip()
        for line in text.splitlines()
        if not line.strip().startswith("#")
        for e in line.split(",")
        if e.strip()
    ]
    if not 1 <= len(entries) <= 2:
        raise ValueError(
            f"{source}: give the current user key and at most one previous one "
            f"(KEY_ID:SECRET each), got {len(entries)}"
        )
    keys = []
    for n, entry in enumerate(entries, 1):
        key_id, sep, secret = entry.partition(":")
        if not sep:
            raise ValueError(f"{source}: entry {n} is not KEY_ID:SECRET")
        try:
            keys.append(UserKey(key_id.strip(), secret.strip().encode("utf-8")))
        except ValueError as error:
            raise ValueError(f"{source}: entry {n}: {error}") from None
    return Pseudonymizer(keys[0], keys[1] if len(keys) > 1 else None)


def from_environment(
    environ: Mapping[str, str] | None = None, keys_file: str | Path | None = None
) -> Pseudonymizer | None:
    """The deployment's pseudonymizer: `keys_file`, else $AISLE_USER_KEYS_FILE, else
    $AISLE_USER_KEYS; None when none is set (user ids are then kept as given)."""
    env = os.environ if environ is None else environ
    path = keys_file or env.get(ENV_KEYS_FILE)
    if path:
        return parse_keys(Path(path).read_text(encoding="utf-8"), str(path))
    inline = env.get(ENV_KEYS)
    if inline:
        return parse_keys(inline, f"${ENV_KEYS}")
    return None
