"""Opaque page tokens: where the next page starts, bound to one request and one index version."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from google.protobuf.message import Message

from engine.search.errors import FailedPrecondition, InvalidArgument

MAX_DEPTH = 10_000  # deepest result position a page may reach (offset + k)


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


def decode_token(text: str, *, digest: str, index_version: int) -> int:
    """The offset a page token points at; errors say why a token does not fit."""
    try:
        padded = text + "=" * (-len(text) % 4)
        raw = json.loads(base64.urlsafe_b64decode(padded.encode()))
        token = PageToken(int(raw["o"]), int(raw["v"]), str(raw["d"]))
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidArgument.field("page_token", "not a token this server issued") from error
    if token.request_digest != digest:
        raise InvalidArgument.field(
            "page_token", "belongs to a different request; send the same request with it"
        )
    if token.index_version != index_version:
        raise FailedPrecondition(
            f"page_token was issued for index version {token.index_version}, "
            f"now serving {index_version}: start again from the first page"
        )
    if not 0 < token.offset < MAX_DEPTH:
        raise InvalidArgument.field("page_token", "offset out of range")
    return token.offset
