"""Tests for the aisle-index command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.cli import main
from indexer.live.index import LiveIndex
from indexer.storage.log_record import UpdateLogError


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


def test_repair_log_lets_an_index_with_a_gap_in_its_log_open(flat_root_copy, capsys):
    """The log refuses to replay past a missing record and names the command; the command moves
    the tail aside (never deletes it) and the index opens with the records before the gap."""
    with LiveIndex.open(flat_root_copy) as live:
        for item_id in ("SKU0000", "SKU0001", "SKU0002"):
            live.delete([item_id])
    (path,) = (flat_root_copy / "updates").glob("log.*.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[2])  # seq 2 lost
    with pytest.raises(UpdateLogError, match="seq 2 is missing") as error:
        LiveIndex.open(flat_root_copy)
    assert f"aisle-index repair-log {flat_root_copy} --truncate-at 2" in str(error.value)

    assert main(["repair-log", str(flat_root_copy), "--truncate-at", "2"]) == 0
    quarantine = Path(capsys.readouterr().out.strip())
    assert quarantine.parent == flat_root_copy / "updates" / "quarantine"
    assert (quarantine / path.name).read_bytes() == lines[0] + lines[2]
    with LiveIndex.open(flat_root_copy) as live:
        assert live.seq == 1 and live.pending_updates == 1
        with pytest.raises(KeyError):
            live.row_of("SKU0000")  # seq 1, before the gap: replayed
        assert live.row_of("SKU0002") >= 0  # its delete was moved aside with the gap

    assert main(["repair-log", str(flat_root_copy), "--truncate-at", "5"]) == 2
    assert "no record from seq 5 on" in capsys.readouterr().err
