"""aisle-learn round / rollback / ledger from the command line: help, a round that finds nothing
to learn (the champion stays, the ledger says so), rollback, and bad input as exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.cli import learn
from indexer.build.config import BuildConfig
from indexer.build.local import build_index
from indexer.storage.layout import IndexRoot


@pytest.mark.parametrize("command", ["round", "rollback", "ledger"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        learn.main([command, "--help"])
    assert done.value.code == 0
    assert "--index" in capsys.readouterr().out


def test_round_without_feedback_keeps_the_champion_then_ledger_and_rollback(
    tmp_path, index_root, title_catalog, tiny_model_dir, capsys
):
    root = Path(shutil.copytree(index_root, tmp_path / "index"))
    shutil.rmtree(root / "events", ignore_errors=True)
    argv = ["round", "--index", str(root), "--model", str(tiny_model_dir)]
    assert learn.main([*argv, "--out", str(tmp_path / "models"), "--no-onnx"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["round"] == 1 and printed["outcome"] == "tie" and not printed["promoted"]
    assert learn.main(["ledger", "--index", str(root)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1]

    assert learn.main(["rollback", "--index", str(root)]) == 2  # one version: nothing older
    assert "no version older" in capsys.readouterr().err
    # without --judged the gate is ips; asking for the judged gate without one is refused
    assert json.loads(lines[0])["thresholds"]["gate"] == "ips"
    bad = [*argv, "--out", str(tmp_path / "models"), "--gate", "judged"]
    assert learn.main(bad) == 2
    assert "--judged" in capsys.readouterr().err
    build_index(BuildConfig(catalog=title_catalog[0], out=root, model=tiny_model_dir, shards=2))
    assert IndexRoot(root).current() == 2
    assert learn.main(["rollback", "--index", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["to_version"] == 1
    assert IndexRoot(root).current() == 1


def test_round_bad_input_exits_2(tmp_path, capsys):
    code = learn.main(
        ["round", "--index", str(tmp_path), "--model", str(tmp_path), "--out", str(tmp_path)]
    )
    assert code == 2
    assert "CURRENT" in capsys.readouterr().err
