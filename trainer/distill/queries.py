"""Distillation queries: the training queries plus queries synthesised from catalog text.

Each query comes with the catalog row of an item it should find (its positive), so the student can
be taught to rank the teacher's item vectors as the teacher does.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any

from trainer.data.catalog import Catalog
from trainer.data.labels import Labels
from trainer.text import query_text

_WORD = re.compile(r"[^\W_]+(?:[-'.][^\W_]+)*", re.UNICODE)
_ATTRIBUTES = ("color", "material", "size", "brand")


def labeled_queries(labels: Labels, catalog: Catalog) -> list[tuple[str, int]]:
    """(query text, catalog row of its best-graded item) per labeled query with a graded
    item in the catalog; queries whose best grade is 0 are left out."""
    rows = {item_id: i for i, item_id in enumerate(catalog.item_ids)}
    out = []
    for query_id, judged in labels.judgments.items():
        graded = [(grade, item) for item, grade in judged.items() if item in rows and grade > 0]
        if graded:
            best = max(graded)[1]
            out.append((query_text(labels.queries[query_id]), rows[best]))
    return out


def _category_leaf(record: Mapping[str, Any]) -> str:
    value = record.get("category")
    if isinstance(value, list | tuple):
        value = value[-1] if value else ""
    if isinstance(value, str) and ">" in value:
        value = value.rsplit(">", 1)[-1]
    return str(value or "").strip()


def synthesised_queries(
    catalog: Catalog, *, per_item: int = 2, limit: int | None = None, seed: int = 0
) -> list[tuple[str, int]]:
    """Queries made from catalog text, as shoppers type them: a few words of the title, brand +
    category, attribute phrases (color/material + category or title head). ``per_item`` queries
    per item at most, ``limit`` in all (a random sample of the items), deterministic for ``seed``.
    """
    rng = random.Random(seed)
    order = list(range(len(catalog)))
    rng.shuffle(order)
    if limit is not None:
        order = order[: max(1, -(-limit // max(per_item, 1)))]
    out: list[tuple[str, int]] = []
    for row in order:
        record = catalog.record(row)
        words = _WORD.findall(str(record.get("title", "")).lower())
        leaf = _category_leaf(record).lower()
        head = " ".join(words[: rng.randint(2, 3)]) if words else ""
        candidates = []
        if len(words) >= 2:
            start = rng.randint(0, max(0, len(words) - 3))
            candidates.append(" ".join(words[start : start + rng.randint(2, 5)]))
        brand = str(record.get("brand", "")).lower().strip()
        if brand and (leaf or head):
            candidates.append(f"{brand} {leaf or head}")
        for name in _ATTRIBUTES[:2]:
            value = record.get(name)
            if isinstance(value, str) and value.strip() and (leaf or head):
                candidates.append(f"{value.strip().lower()} {leaf or head}")
        if leaf and words:
            candidates.append(f"{words[-1]} {leaf}")
        if head:
            candidates.append(head)
        rng.shuffle(candidates)
        seen: set[str] = set()
        for text in candidates:
            text = query_text(text)
            if text and text not in seen and len(seen) < per_item:
                seen.add(text)
                out.append((text, row))
    return out[:limit] if limit is not None else out
