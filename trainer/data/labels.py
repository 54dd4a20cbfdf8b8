"""Labeled queries, query text and user interactions: their types and readers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from trainer.data.catalog import Catalog
from trainer.data.fields import required_field, to_int, to_str, to_weight
from trainer.data.rows import DataError, iter_rows

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Labeled queries


@dataclass(frozen=True)
class Labels:
    """Graded relevance judgments.

    Attributes:
        queries: query_id → query text, in order of first appearance in the file.
        judgments: query_id → {item_id: grade}.
        path: the source file.
        weights: query_id → {item_id: loss weight > 0} for the judgments whose row gave an
            optional ``weight`` (e.g. the inverse propensity weight of a judgment learned from
            shoppers' clicks); a judgment without one weighs 1.
    """

    queries: dict[str, str]
    judgments: dict[str, dict[str, int]]
    path: str
    weights: dict[str, dict[str, float]] | None = None

    def weight(self, query_id: str, item_id: str) -> float:
        """The loss weight of one judgment (1.0 unless its row gave a ``weight``)."""
        if not self.weights:
            return 1.0
        return self.weights.get(query_id, {}).get(item_id, 1.0)


def _add_query(
    path: Path,
    line: int,
    queries: dict[str, str],
    query_lines: dict[str, int],
    query_id: str,
    query: str,
) -> None:
    known = queries.get(query_id)
    if known is None:
        queries[query_id] = query
        query_lines[query_id] = line
    elif known != query:
        raise DataError(
            path,
            line,
            f"query_id {query_id!r} has query {query!r} here but {known!r} on line "
            f"{query_lines[query_id]}",
            field="query",
        )


def read_labels(path: str | Path, *, grades: tuple[int, ...] = (0, 1, 2, 3)) -> Labels:
    """Read graded judgments: rows with ``query_id``, ``query``, ``item_id`` and ``grade``.

    ``grade`` must be an integer in ``grades`` (a JSON float such as ``3.0`` is accepted when
    integral). An optional ``weight`` (a number > 0) scales the judgment's loss weight in
    training (``Labels.weight``). Other fields (``esci_label``, ``source_rating``,
    ``relevance``) are ignored.
    The same judgment repeated with the same grade is kept once (and logged).

    Raises:
        DataError: a missing field, an unknown grade, a query_id with two query texts, a
            (query_id, item_id) pair judged twice with different grades, or an empty file.
    """
    if not grades or not all(isinstance(g, int) and not isinstance(g, bool) for g in grades):
        raise ValueError(f"grades must be a non-empty tuple of ints, got {grades!r}")
    path = Path(path)
    allowed = set(grades)
    rows_iter, text = iter_rows(path)
    queries: dict[str, str] = {}
    query_lines: dict[str, int] = {}
    judgments: dict[str, dict[str, int]] = {}
    judgment_lines: dict[tuple[str, str], int] = {}
    weights: dict[str, dict[str, float]] = {}
    repeats = 0
    for line, obj in rows_iter:
        query_id = required_field(path, line, obj, "query_id", to_str, text)
        query = required_field(path, line, obj, "query", to_str, text)
        item_id = required_field(path, line, obj, "item_id", to_str, text)
        grade = required_field(path, line, obj, "grade", to_int, text)
        if grade not in allowed:
            raise DataError(
                path, line, f"grade {grade} is not one of {sorted(allowed)}", field="grade"
            )
        if obj.get("weight") is not None:
            weight = required_field(path, line, obj, "weight", to_weight, text)
            weights.setdefault(query_id, {})[item_id] = weight
        _add_query(path, line, queries, query_lines, query_id, query)
        per_query = judgments.setdefault(query_id, {})
        previous = per_query.get(item_id)
        if previous is None:
            per_query[item_id] = grade
            judgment_lines[(query_id, item_id)] = line
        elif previous != grade:
            raise DataError(
                path,
                line,
                f"item {item_id!r} is judged {grade} for query_id {query_id!r} here but "
                f"{previous} on line {judgment_lines[(query_id, item_id)]}",
                field="grade",
            )
        else:
            repeats += 1
    if not queries:
        raise DataError(path, None, "no labels")
    if repeats:
        logger.warning("%s: %d repeated identical judgments kept once", path, repeats)
    n_judgments = sum(len(j) for j in judgments.values())
    logger.info("read %d judgments for %d queries from %s", n_judgments, len(queries), path)
    return Labels(queries=queries, judgments=judgments, path=str(path), weights=weights or None)


def read_queries(path: str | Path) -> dict[str, str]:
    """Read a query file (``queries_<split>.jsonl``): query_id → query, in file order.

    Raises:
        DataError: a missing or empty field, a query_id with two query texts, or no queries.
    """
    path = Path(path)
    rows_iter, text = iter_rows(path)
    queries: dict[str, str] = {}
    query_lines: dict[str, int] = {}
    for line, obj in rows_iter:
        query_id = required_field(path, line, obj, "query_id", to_str, text)
        query = required_field(path, line, obj, "query", to_str, text)
        _add_query(path, line, queries, query_lines, query_id, query)
    if not queries:
        raise DataError(path, None, "no queries")
    return queries


def check_labels_against_catalog(labels: Labels, catalog: Catalog) -> None:
    """Fail if any judged item is missing from the catalog.

    Raises:
        DataError: on ``labels.path``, listing the first few unknown item ids and their count.
    """
    known = set(catalog.item_ids)
    unknown: dict[str, None] = {}
    for per_query in labels.judgments.values():
        for item_id in per_query:
            if item_id not in known:
                unknown.setdefault(item_id, None)
    if unknown:
        shown = ", ".join(repr(i) for i in list(unknown)[:5])
        more = f", ... ({len(unknown)} in all)" if len(unknown) > 5 else ""
        raise DataError(
            labels.path,
            None,
            f"{len(unknown)} judged item id(s) are not in the catalog {catalog.path}: "
            f"{shown}{more}",
            field="item_id",
        )


# ---------------------------------------------------------------------------------------------
# Interactions


@dataclass(frozen=True)
class Interactions:
    """User histories.

    Attributes:
        histories: user_id → item_ids ordered by position (users in order of first appearance).
        path: the source file.
    """

    histories: dict[str, list[str]]
    path: str


def read_interactions(path: str | Path) -> Interactions:
    """Read interactions: rows with ``user_id``, ``item_id`` and ``position`` (int >= 0).

    Positions need not start at 0 or be contiguous (a dev split holds only position n); other
    fields are ignored.

    Raises:
        DataError: a missing or mistyped field, a negative position, the same (user_id,
            position) twice, or no interactions.
    """
    path = Path(path)
    rows_iter, text = iter_rows(path)
    by_user: dict[str, dict[int, tuple[str, int]]] = {}  # user → position → (item, line)
    for line, obj in rows_iter:
        user_id = required_field(path, line, obj, "user_id", to_str, text)
        item_id = required_field(path, line, obj, "item_id", to_str, text)
        position = required_field(path, line, obj, "position", to_int, text)
        if position < 0:
            raise DataError(
                path, line, f"field 'position' must be >= 0, got {position}", field="position"
            )
        positions = by_user.setdefault(user_id, {})
        if position in positions:
            raise DataError(
                path,
                line,
                f"user {user_id!r} has position {position} twice (also on line "
                f"{positions[position][1]})",
                field="position",
            )
        positions[position] = (item_id, line)
    if not by_user:
        raise DataError(path, None, "no interactions")
    histories = {
        user: [positions[p][0] for p in sorted(positions)] for user, positions in by_user.items()
    }
    n_events = sum(len(h) for h in histories.values())
    logger.info("read %d interactions of %d users from %s", n_events, len(histories), path)
    return Interactions(histories=histories, path=str(path))
