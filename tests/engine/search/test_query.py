"""Tests for price expressions in queries: a table of (query -> text, min, max), then edges."""

from __future__ import annotations

import pytest

from engine.search.query import ParsedQuery, parse_query

N = None
# (query, remaining text, price_min, price_max)
CASES = [
    # upper bounds
    ("sofa under $500", "sofa", N, 500),
    ("tv below 500 dollars", "tv", N, 500),
    ("headphones less than $20", "headphones", N, 20),
    ("desk cheaper than 300 usd", "desk", N, 300),
    ("mug < $30", "mug", N, 30),
    ("mug <=30$", "mug", N, 30),
    ("lamp up to $80", "lamp", N, 80),
    ("sofa $500 or less", "sofa", N, 500),
    ("desk $1.5k max", "desk", N, 1500),
    ("desk under 1,200", "desk", N, 1200),
    ("rug under $19.99", "rug", N, 19.99),
    ("sofa for under $500", "sofa", N, 500),
    ("priced under 500 sofas", "sofas", N, 500),
    ("UNDER $500 SOFA", "SOFA", N, 500),
    ("sofa under 500", "sofa", N, 500),  # a bare number at the end: a price
    ("sofa under 5k", "sofa", N, 5000),
    ("k-cups under $5", "k-cups", N, 5),
    # lower bounds
    ("over $100", "", 100, N),
    ("drill above 50", "drill", 50, N),
    ("shoes more than $30", "shoes", 30, N),
    ("tv at least 400 dollars", "tv", 400, N),
    ("desk $100+", "desk", 100, N),
    ("watch $200 and up", "watch", 200, N),
    ("mixer from $40", "mixer", 40, N),
    ("grill >= $250", "grill", 250, N),
    # ranges
    ("rug between 20 and 50 dollars", "rug", 20, 50),
    ("lamp $20-$50", "lamp", 20, 50),
    ("lamp $20 - 50", "lamp", 20, 50),
    ("lamp $20 to $50", "lamp", 20, 50),
    ("chair from $20 to $50", "chair", 20, 50),
    ("lamp 20-50 dollars", "lamp", 20, 50),
    ("sofa between 200 and 500", "sofa", 200, 500),
    ("rug between 50 and 20 dollars", "rug", 20, 50),  # reversed: swapped
    ("lamp $20—$50", "lamp", 20, 50),
    # several expressions
    ("sofa over 200 under 500", "sofa", 200, 500),
    ("over $100 leather sofa under $900", "leather sofa", 100, 900),
    ("sofa under $900 under $500", "sofa", N, 500),  # the tightest bound wins
    # not prices
    ("tv under 50 inch", "tv under 50 inch", N, N),
    ('tv under 50"', 'tv under 50"', N, N),
    ("refrig. in black over 25 cu. ft.", "refrig. in black over 25 cu. ft.", N, N),
    ("iphone 12", "iphone 12", N, N),
    ("2x4 lumber", "2x4 lumber", N, N),
    ("size 10 under armour", "size 10 under armour", N, N),
    ("under armour shoes", "under armour shoes", N, N),
    ("cheap sofa", "cheap sofa", N, N),
    ("budget laptop", "budget laptop", N, N),
    ("toys for kids under 5", "toys for kids under 5", N, N),
    ("vitamins for women over 50", "vitamins for women over 50", N, N),
    ("air max 90", "air max 90", N, N),
    ("dewalt 20v max drill", "dewalt 20v max drill", N, N),
    ("lamp 20-50", "lamp 20-50", N, N),
    ("adapter from 2 to 4", "adapter from 2 to 4", N, N),
    ("30 amp 2-pole breaker", "30 amp 2-pole breaker", N, N),
    ("over the range microwave", "over the range microwave", N, N),
    ("under cabinet lighting", "under cabinet lighting", N, N),
    ("cabinet closet $100", "cabinet closet $100", N, N),  # a lone amount is no bound
    ("1/2 in. x 10 ft. pipe", "1/2 in. x 10 ft. pipe", N, N),
    ("sofa under 50 percent off", "sofa under 50 percent off", N, N),
    # people, but with a currency: a price
    ("toys for kids under $20", "toys for kids", N, 20),
    # mixed with brands that look like price words
    ("under armour shoes under $80", "under armour shoes", N, 80),
    ("size 10 under armour under $60", "size 10 under armour", N, 60),
    ("over the range microwave under $300", "over the range microwave", N, 300),
]


@pytest.mark.parametrize(("query", "text", "low", "high"), CASES)
def test_price_expressions(query, text, low, high):
    parsed = parse_query(query)
    assert (parsed.text, parsed.price_min, parsed.price_max) == (text, low, high), parsed
    if low is None and high is None:
        assert parsed.expressions == () and parsed.text == query  # untouched


def test_expressions_are_reported_as_typed():
    parsed = parse_query("Sofa over $100, leather, Under 900 Dollars")
    assert parsed.expressions == ("over $100", "Under 900 Dollars")
    assert parsed.text == "Sofa, leather"
    assert parse_query("sofa for under $500").expressions == ("for under $500",)


def test_unicode_robust():
    assert parse_query("sofa ＄５００ or less") == ParsedQuery(
        "sofa", None, 500.0, ("＄５００ or less",)
    )
    assert parse_query("sofa\u00a0under\u00a0$500").price_max == 500
    assert parse_query("lamp 20–50 €").price_min == 20  # en dash, euro after
    assert parse_query("lamp £20 to £50").price_max == 50
    assert parse_query("Lampe für Kinder unter 5") == ParsedQuery("Lampe für Kinder unter 5")
    assert parse_query("café table ≤ $90").text == "café table"


def test_contradictions_parse_nothing():
    assert parse_query("under $20 over $50") == ParsedQuery("under $20 over $50")


def test_only_a_price_leaves_empty_text():
    parsed = parse_query("  under $50 ")
    assert parsed.text == "" and parsed.price_max == 50


def test_separators_left_dangling_are_removed():
    assert parse_query("sofa, under $500, grey").text == "sofa, grey"
    assert parse_query("sofa - under $500").text == "sofa"
    assert parse_query("under $500: grey sofa").text == "grey sofa"


def test_whitespace_untouched_without_a_price():
    assert parse_query("red   sofa ").text == "red   sofa "
    assert parse_query("").text == ""


def test_rejects_non_strings():
    with pytest.raises(TypeError, match="str"):
        parse_query(None)  # type: ignore[arg-type]
