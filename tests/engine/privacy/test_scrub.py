"""Query text hygiene."""

from __future__ import annotations

import pytest

from engine.privacy.scrub import QueryScrubber, luhn_valid, scrubber_of


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mail me at jo.smith+shop@mail.example.co.uk please", "mail me at [email] please"),
        ("call +44 20 7946 0958 now", "call [phone] now"),
        ("call (415) 555-0199", "call [phone]"),
        ("card 4111 1111 1111 1111 ok", "card [card] ok"),
        ("card 4111-1111-1111-1111", "card [card]"),
        ("2x4 lumber 8 ft", "2x4 lumber 8 ft"),
        ("tv 55 inch 4k 2024", "tv 55 inch 4k 2024"),
        ("sku 123", "sku 123"),
    ],
)
def test_scrubs_what_identifies_a_person_and_keeps_product_text(text, expected) -> None:
    assert QueryScrubber()(text) == expected


def test_a_digit_run_that_fails_luhn_is_not_a_card() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert "[card]" not in QueryScrubber(phones=False)("order 4111111111111112")


def test_scrubbing_is_configurable() -> None:
    assert scrubber_of("none")("a@b.example") == "a@b.example"
    only = scrubber_of("emails")
    assert only("a@b.example 4111111111111111") == "[email] 4111111111111111"
    with pytest.raises(ValueError, match="unknown query scrubbing"):
        scrubber_of("emails,ssn")
