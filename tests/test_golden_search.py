"""The served results and index files of an ESCI build match the golden file, to the bit."""

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
    assert results["files"] == golden["files"]
    for mode in esci_search.MODES:
        assert results["search"][mode] == golden["search"][mode], mode
    assert results["similar"] == golden["similar"]
