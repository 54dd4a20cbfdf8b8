"""The served results and index files of an ESCI build match the golden file: to the bit on a
CPU like the recording one, vector-derived scores to 1e-5 on another (tests/golden/esci_search)."""

from __future__ import annotations

import json

import pytest

from tests.golden import esci_search

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (esci_search.DATA / "products.jsonl.gz").is_file(),
        reason=f"ESCI data not found at {esci_search.DATA}",
    ),
]


def test_esci_search_matches_golden() -> None:
    golden = json.loads(esci_search.GOLDEN.read_text())
    results = json.loads(json.dumps(esci_search.run()))
    assert esci_search.compare(results, golden) == []
