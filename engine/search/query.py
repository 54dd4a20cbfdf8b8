"""Query understanding: price expressions ("under $500", "$20-$50") become price bounds.

``parse_query`` finds the price expressions shoppers type, turns them into inclusive bounds
(``price_min <= price <= price_max``) and removes them from the text that is encoded.

Rules (``AMOUNT`` is a number such as ``500``, ``1,200``, ``19.99`` or ``1.5k``, with or without a
currency marker: ``$`` (also fullwidth / small), ``€``, ``£``, ``usd``, ``dollar(s)``, ``bucks``,
``eur``, ``euro(s)``, before or after it):

- upper bound: ``under | below | less than | cheaper than | lower than | no more than | at most |
  < | <= | ≤ AMOUNT``; ``up to | max | maximum | sub AMOUNT`` and ``AMOUNT or less | and under |
  and below | or under | or below | max`` only with a currency marker ("air max 90" is a shoe).
- lower bound: ``over | above | more than | greater than | at least | > | >= | ≥ AMOUNT``;
  ``from | starting at | min | minimum AMOUNT`` and ``AMOUNT+ | and up | or more | and above |
  and over | plus`` only with a currency marker.
- range: ``between A and B`` (or a dash), and with a currency marker ``from A to B``,
  ``A - B``, ``A to B`` ("2-4", "20 to 50 amp", "adapter from 2 to 4" are not prices).
  Reversed bounds are swapped.

A number without a currency marker ("sofa under 500") counts only where nothing else can
follow it: at the end of the query (or before another price expression), so a unit after it
makes it a size ("tv under 50 inch", "over 25 cu. ft."), and never right after a word about
people within three words before it ("toys for kids under 5", "vitamins for women over 50" are
ages). A word saying price right before the expression (``price``, ``priced``, ``costing``,
...) makes any number a price. ``cheap`` / ``budget`` and a lone amount ("$100 cabinet") are
left alone; "under armour" has no number, so it stays a brand.

Several expressions combine (the tightest bounds win); if they contradict each other
(min > max) nothing is parsed. A lead-in ``for`` / ``at`` / ``priced`` ... before an expression is
removed with it, and so are separators left dangling at the ends. Matching is case-insensitive
on the original text; Unicode digits, dashes and spaces are accepted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["ParsedQuery", "parse_query"]


@dataclass(frozen=True)
class ParsedQuery:
    """A query with its price expressions taken out.

    Attributes:
        text: the query without the price expressions (whitespace collapsed); the input
            unchanged when there were none; "" when the query was only a price expression.
        price_min: inclusive lower price bound, or None.
        price_max: inclusive upper price bound, or None.
        expressions: the removed expressions as typed, in order of appearance (for the
            response, so the caller can show "Price: under $500").
    """

    text: str
    price_min: float | None = None
    price_max: float | None = None
    expressions: tuple[str, ...] = ()


_CUR_SYMBOL = r"[$＄﹩€£]"
_CUR_WORD = r"(?:usd|dollars?|bucks|eur|euros?)\b"
_CURRENCY = re.compile(rf"{_CUR_SYMBOL}|\b{_CUR_WORD}", re.IGNORECASE)
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:k(?![\w-]))?"
# One amount: an optional marker before, the number (not glued to letters or other digits),
# an optional marker after. "50in", "2x4", "v2" are not numbers here.
_AMOUNT = (
    rf"(?:(?:{_CUR_SYMBOL}|\busd\b|\bus\$)\s*)?(?<![\w.,]){_NUM}(?![\w]|[.,]\d)"
    rf"(?:\s*(?:{_CUR_SYMBOL}|\b{_CUR_WORD}))?"
)
_DASH = r"(?:-|–|—|‒|−|~|～)"
_LEAD = (
    r"(?:\b(?P<lead>(?:(?:that|which)\s+costs?|priced(?:\s+at)?|costing|costs?|prices?|for|at)"
    r")\s+)?"
)
_PRICE_LEAD = re.compile(r"pric|cost", re.IGNORECASE)  # lead-ins that say "price"

_MAX_WORDS = r"under|below|less\s+than|cheaper\s+than|lower\s+than|no\s+more\s+than|at\s+most"
_MAX_MARKED = r"up\s+to|max(?:imum)?|sub"
_MIN_WORDS = r"over|above|more\s+than|greater\s+than|at\s+least"
_MIN_MARKED = r"from|starting\s+(?:at|from)|min(?:imum)?"


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


_A = rf"(?P<a>{_AMOUNT})"
_B = rf"(?P<b>{_AMOUNT})"
_MAX_AFTER = r"or\s+less|and\s+under|and\s+below|or\s+under|or\s+below|max\b"
_MIN_AFTER = r"\+|and\s+up\b|or\s+more|and\s+above|and\s+over|plus\b"

# (kind, pattern, needs_marker): kind is "range", "max" or "min"; needs_marker: a bare number
# never counts for this form. Ranges come first so "from $20 to $50" is not read as "from $20".
_PATTERNS: list[tuple[str, re.Pattern[str], bool]] = [
    ("range", _compile(rf"{_LEAD}\bbetween\s+{_A}\s*(?:and|{_DASH}|to)\s*{_B}"), False),
    ("range", _compile(rf"{_LEAD}\bfrom\s+{_A}\s*(?:to|{_DASH})\s*{_B}"), True),
    ("range", _compile(rf"{_LEAD}{_A}\s*(?:{_DASH}|\bto\b)\s*{_B}"), True),
    ("max", _compile(rf"{_LEAD}{_A}\s*(?:{_MAX_AFTER})"), True),
    ("min", _compile(rf"{_LEAD}{_A}\s*(?:{_MIN_AFTER})"), True),
    ("max", _compile(rf"{_LEAD}(?:\b(?:{_MAX_WORDS})\b|<=?|≤|＜)\s*{_A}"), False),
    ("max", _compile(rf"{_LEAD}\b(?:{_MAX_MARKED})\b\s*{_A}"), True),
    ("min", _compile(rf"{_LEAD}(?:\b(?:{_MIN_WORDS})\b|>=?|≥|＞)\s*{_A}"), False),
    ("min", _compile(rf"{_LEAD}\b(?:{_MIN_MARKED})\b\s*{_A}"), True),
]

# Words about people: a bare number after them is an age ("gifts for men over 50").
_MAX_EXPRESSIONS = 8  # bounds the work on hostile input; real queries have one or two

_PEOPLE = frozenset(
    """kid kids child children boy boys girl girls baby babies toddler toddlers infant infants
    teen teens teenager teenagers men man women woman lady ladies adult adults senior seniors
    mom moms dad dads him her grandma grandpa grandparents people person age ages aged
    student students youth mens womens old olds year years yr yrs""".split()
)
_WORD = re.compile(r"\w+")
_REST_IS_END = re.compile(r"[\s.!?,;:)\]]*$")  # no quote: 50" is a size
_SPACE_BEFORE_PUNCT = re.compile(r"\s+(?=[,;:.!?])")
_REPEATED_SEPARATORS = re.compile(r"([,;:])(?:\s*[,;:])+")
_EDGE_JUNK = re.compile(r"^[\s,;:/|&+–—-]+|[\s,;:/|&+–—-]+$")


def _amount_value(amount: str) -> float:
    """The number in an amount ("$1,200" -> 1200.0, "1.5k" -> 1500.0)."""
    digits = re.search(_NUM, amount, re.IGNORECASE)
    assert digits is not None  # the amount matched _NUM
    number = digits.group(0).replace(",", "").lower()
    scale = 1000.0 if number.endswith("k") else 1.0
    return float(number.rstrip("k")) * scale  # float() reads any Unicode decimal digits


def _bare_number_ok(work: str, match: re.Match[str]) -> bool:
    """A bare number is a price at the end of the query, and not after a word about people."""
    if match.group("lead") and _PRICE_LEAD.search(match.group("lead")):
        return True
    if not _REST_IS_END.fullmatch(work, match.end()):
        return False
    before = _WORD.findall(work[: match.start()].lower())[-3:]
    return not any(w in _PEOPLE for w in before)


def parse_query(text: str) -> ParsedQuery:
    """Find price expressions in ``text`` and take them out (rules in the module docstring).

    Args:
        text: the raw query.

    Returns:
        The ``ParsedQuery``: remaining text, inclusive bounds (None = no bound), and the
        expressions removed.

    Raises:
        TypeError: ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"query must be a str, got {type(text).__name__}")
    if not any(c.isdigit() for c in text):
        return ParsedQuery(text=text)  # every price expression has a number: the common case
    work = text  # matched spans are blanked out here (same length, so offsets stay valid)
    found: list[tuple[int, int, str, float, float]] = []  # (start, end, kind, a, b)
    changed = True
    while changed and len(found) < _MAX_EXPRESSIONS:
        # Again after each find: a bare number may now be "at the end".
        changed = False
        for kind, pattern, needs_marker in _PATTERNS:
            for m in pattern.finditer(work):
                marked = any(
                    _CURRENCY.search(m.group(g))
                    for g in ("a", "b")
                    if g in m.groupdict() and m.group(g)
                )
                if needs_marker and not marked:
                    continue
                if not marked and not _bare_number_ok(work, m):
                    continue
                a = _amount_value(m.group("a"))
                b = _amount_value(m.group("b")) if kind == "range" else a
                if not (math.isfinite(a) and math.isfinite(b)):
                    continue
                found.append((m.start(), m.end(), kind, a, b))
                work = work[: m.start()] + " " * (m.end() - m.start()) + work[m.end() :]
                changed = True
                break  # offsets of later matches in this pass are stale: scan again
            if changed:
                break
    if not found:
        return ParsedQuery(text=text)

    lows: list[float] = []
    highs: list[float] = []
    for _, _, kind, a, b in found:
        if kind == "range":
            lows.append(min(a, b))
            highs.append(max(a, b))
        elif kind == "max":
            highs.append(a)
        else:
            lows.append(a)
    price_min = max(lows) if lows else None
    price_max = min(highs) if highs else None
    if price_min is not None and price_max is not None and price_min > price_max:
        return ParsedQuery(text=text)  # contradictory ("under $20 over $50"): trust none

    found.sort()
    expressions = tuple(text[s:e].strip() for s, e, *_ in found)
    remaining = _SPACE_BEFORE_PUNCT.sub("", " ".join(work.split()))
    remaining = _EDGE_JUNK.sub("", _REPEATED_SEPARATORS.sub(r"\1", remaining))
    return ParsedQuery(
        text=remaining, price_min=price_min, price_max=price_max, expressions=expressions
    )
