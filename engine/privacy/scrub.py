"""Query text hygiene: e-mail addresses, phone numbers and card-like digit runs (Luhn-checked)
are replaced by placeholders before a query is written to a log."""

from __future__ import annotations

import re
from dataclasses import dataclass

EMAIL = "[email]"
PHONE = "[phone]"
CARD = "[card]"

_EMAIL = re.compile(r"[\w.+%-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
# 13-19 digits, optionally grouped by single spaces or dashes (how card numbers are typed).
_CARD = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![\d])")
# A phone number: optional +country, then 7-15 digits with common separators.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d(?:[ .-]?\d){6,14}(?!\w)"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


@dataclass(frozen=True)
class QueryScrubber:
    """What to scrub (all on by default; `enabled=False` keeps query text as given)."""

    enabled: bool = True
    emails: bool = True
    phones: bool = True
    cards: bool = True

    def __call__(self, text: str) -> str:
        if not self.enabled or not text:
            return text
        if self.emails:
            text = _EMAIL.sub(EMAIL, text)
        if self.cards:
            text = _CARD.sub(_card, text)
        if self.phones:
            text = _PHONE.sub(PHONE, text)
        return text


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match[0])
    return CARD if luhn_valid(digits) else match[0]


def scrubber_of(spec: str) -> QueryScrubber:
    """A scrubber from a comma list of what to scrub: "emails,phones,cards" (the default),
    "none", or any subset.

    Raises:
        ValueError: an unknown name.
    """
    names = {n.strip() for n in spec.split(",") if n.strip()}
    if names == {"none"}:
        return QueryScrubber(enabled=False)
    unknown = names - {"emails", "phones", "cards"}
    if unknown:
        raise ValueError(
            f"unknown query scrubbing {sorted(unknown)}: use emails, phones, cards or none"
        )
    return QueryScrubber(emails="emails" in names, phones="phones" in names, cards="cards" in names)
