"""Opaque page tokens: where the next page starts, bound to one request and one index version."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from google.protobuf.message import Message

from engine.search.errors import FailedPrecondition, InvalidArgument

MAX_DEPTH = 10_000  # deepest result position a page may reach (offset + k)
MAX_TOKEN_CHARS = 256  # tokens this server issues are ~80 characters


@dataclass(frozen=True)
class PageToken:
    offset: int
    index_version: int
    request_digest: str


def request_digest(request: Message, *, token_field: str = "page_token") -> str:
    """A digest of the request with its page token cleared: a token only fits the same request."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField(token_field)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:16]


def encode_token(token: PageToken) -> str:
    payload = json.dumps(
        {"o": token.offset, "v": token.index_version, "d": token.request_digest},
        separators=(",", ":"),
    ).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _parse(text: str) -> PageToken | None:
    """The token `text` encodes, or None when it is not one this server issued. Any bytes may
    arrive here, so the checks are on shape (an object of two ints and a str), never by
    converting whatever JSON it holds (a 1e400 is inf, int(inf) raises OverflowError)."""
    if len(text) > MAX_TOKEN_CHARS:
        return None  # also bounds the JSON's nesting depth far below the recursion limit
    try:
        padded = text + "=" * (-len(text) % 4)
        raw = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, RecursionError):  # binascii.Error, UnicodeError, JSONDecodeError
        return None
    if not isinstance(raw, dict):
        return None
    offset, version, digest = raw.get("o"), raw.get("v"), raw.get("d")
    if not all(type(v) is int for v in (offset, version)) or not isinstance(digest, str):
        return None
    return PageToken(offset, version, digest)


def decode_token(text: str, *, digest: str, index_version: int, field: str = "page_token") -> int:
    """The offset a page token points at; errors say why a token does not fit and name
    `field` (e.g. "requests[3].page_token" in a batch)."""
    token = _parse(text)
    if token is None:
        raise InvalidArgument.field(field, "not a token this server issued")
    if token.request_digest != digest:
        raise InvalidArgument.field(
            field, "belongs to a different request; send the same request with it"
        )
    if token.index_version != index_version:
        raise FailedPrecondition(
            f"{field} was issued for index version {token.index_version}, "
            f"now serving {index_version}: start again from the first page"
        )
    if not 0 < token.offset < MAX_DEPTH:
        raise InvalidArgument.field(field, "offset out of range")
    return token.offset
