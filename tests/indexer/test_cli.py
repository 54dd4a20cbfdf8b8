"""Tests for the aisle-index command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.cli import main


def test_build_then_info(tmp_path, catalog, tiny_model_dir, capsys):
    root = tmp_path / "index"
    args = ["build", "--catalog", str(catalog[0]), "--out", str(root)]
    args += ["--model", str(tiny_model_dir), "--shards", "2", "--batch-size", "16"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out == f"{root / 'versions' / '1'}\n"  # only the published path on stdout
    assert Path(out.strip()).is_dir()

    assert main(["info", str(root)]) == 0
    info = capsys.readouterr().out
    assert "version:     1" in info and "items:       200" in info
    assert "shards:      2" in info and "factory:     Flat" in info
    assert str(tiny_model_dir.resolve()) in info and "versions:    [1] (current: 1)" in info


def test_bad_catalog_exits_2(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "products.jsonl"
    path.write_text('{"item_id": "A", "title": "lamp"}\n{"item_id": "B", "title": "  "}\n')
    args = ["build", "--catalog", str(path), "--out", str(tmp_path / "index")]
    assert main([*args, "--model", str(tiny_model_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert lines[-1].startswith("aisle-index: error: ") and "products.jsonl:2" in lines[-1]
    assert not (tmp_path / "index" / "CURRENT").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shards", "0"], "shards must be an integer >= 1"),
        (["--factory", "IVF4096,Flat"], "needs at least 4096 to train"),
        (["--catalog", "/nonexistent.jsonl"], "catalog file not found"),
    ],
)
def test_bad_config_exits_2(tmp_path, catalog, tiny_model_dir, capsys, extra, message):
    args = ["build", "--catalog", str(catalog[0]), "--out", str(tmp_path)]
    assert main([*args, "--model", str(tiny_model_dir), *extra]) == 2
    assert message in capsys.readouterr().err


def test_info_on_non_index_exits_2(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aisle-index: error: ") and "aisle-index build" in err


def test_help_explains_root(capsys):
    with pytest.raises(SystemExit) as info:
        main(["build", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "ROOT" in text and "default: Flat" in text and "all-MiniLM-L6-v2" in text
