"""The one text template for items and queries, shared by training, indexing and serving."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from typing import Any

# The model truncates to max_item_length tokens anyway (128 tokens is well under 1,000 chars);
# the cap only keeps tokenisation cheap for items with very long descriptions.
MAX_ITEM_TEXT_CHARS = 2000

_SEPARATOR = ". "
# A part that already ends a sentence is followed by a plain space, so "Inc." + "Brand: X" does
# not become "Inc.. Brand: X".
_SENTENCE_END = (".", "!", "?", ":", ";")
_TAG = re.compile(r"<[^>]*>")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")


def _clean(value: Any) -> str:
    """Collapse all whitespace runs to one space and strip; ``None`` → ``""``."""
    if value is None:
        return ""
    return " ".join(str(value).split())


def _strip_html(value: str) -> str:
    # Tags become spaces so "<li>a</li><li>b</li>" keeps "a" and "b" apart, then the space a
    # closing inline tag leaves before punctuation ("<b>red</b>.") is dropped. Entities are
    # unescaped after the tags are gone so an escaped "&lt;b&gt;" stays visible text.
    if "<" not in value and "&" not in value:
        return value
    return html.unescape(_SPACE_BEFORE_PUNCT.sub(r"\1", _TAG.sub(" ", value)))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return list(value)
    return [value]


def _join(parts: Iterable[str]) -> str:
    out = ""
    for part in parts:
        if not part:
            continue
        if not out:
            out = part
        elif out.endswith(_SENTENCE_END):
            out = f"{out} {part}"
        else:
            out = f"{out}{_SEPARATOR}{part}"
    return out


def _cap(text: str, limit: int = MAX_ITEM_TEXT_CHARS) -> str:
    if len(text) <= limit:
        return text
    # Cut at the last space so no word is left half-tokenised.
    cut = text.rfind(" ", 0, limit + 1)
    return text[: cut if cut > 0 else limit].rstrip()


def item_text(record: Mapping[str, Any]) -> str:
    """The text the item tower sees for one catalog record.

    Template, parts joined by ". " and empty or missing parts skipped:
    ``title. Brand: <brand>. Color: <color>. Category: <A > B>. <bullet 1>. <description>``.
    Color is in because shoppers search by it ("red sofa") and titles often leave it out.
    The description has HTML tags stripped and entities unescaped; every part has its
    whitespace collapsed. A ``category`` given as a list is joined with " > ". The result is
    capped at ``MAX_ITEM_TEXT_CHARS`` characters (cut at a word boundary).

    Args:
        record: one catalog row as a mapping (e.g. ``Catalog.record(i)``); unknown keys are
            ignored.

    Returns:
        The item text, possibly ``""`` when the record has none of the fields.
    """
    title = _clean(record.get("title"))
    brand = _clean(record.get("brand"))
    color = _clean(record.get("color"))
    category_value = record.get("category")
    if isinstance(category_value, str) or category_value is None:
        category = _clean(category_value)
    else:
        category = " > ".join(c for c in (_clean(v) for v in _as_list(category_value)) if c)
    bullets = [
        _clean(_strip_html(str(b))) for b in _as_list(record.get("bullets")) if b is not None
    ]
    description_value = record.get("description")
    description = _clean(_strip_html(str(description_value))) if description_value else ""

    parts = [
        title,
        f"Brand: {brand}" if brand else "",
        f"Color: {color}" if color else "",
        f"Category: {category}" if category else "",
        *bullets,
        description,
    ]
    return _cap(_join(parts))


def query_text(query: str) -> str:
    """The text the query tower sees: the query with whitespace runs collapsed and stripped.

    Case and punctuation are left to the tokenizer, so serving and training see the same text.
    """
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    return " ".join(query.split())
