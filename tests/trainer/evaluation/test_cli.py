"""Tests for trainer.evaluation.cli and its presets (trainer.evaluation.presets): EvalConfig
settings and the command line end to end with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import SEARCH_RECORDS, search_labels
from trainer.evaluation.cli import EvalConfig, main
from trainer.evaluation.presets import dataset_preset, infer_dataset


def test_presets_and_config() -> None:
    assert dataset_preset("ESCI").gains == "esci" and dataset_preset("esci").recall_grade == 3
    assert dataset_preset("homedepot").gains == "grade"
    assert dataset_preset("homedepot").recall_grade == 2
    assert dataset_preset("scientific").task == "recommendation"
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_preset("movielens")
    assert infer_dataset("/data/homedepot/products.jsonl.gz") == "homedepot"
    assert infer_dataset("/tmp/x/products.jsonl.gz") is None

    config = EvalConfig(catalog=Path("/d/esci/products.jsonl.gz"), labels=Path("l.jsonl"))
    assert config.settings() == ("esci", "esci", 3, (10, 100))
    config = EvalConfig(
        catalog=Path("/d/x/p.jsonl"), labels=Path("l"), dataset="homedepot", ks=(5,)
    )
    assert config.settings() == ("homedepot", "grade", 2, (5,))
    config = EvalConfig(catalog=Path("p"), labels=Path("l"), gains="esci", recall_grade=2)
    assert config.settings() == (None, "esci", 2, (10, 100))
    config = EvalConfig(
        catalog=Path("/d/scientific/p"), interactions_train=Path("t"), interactions_dev=Path("d")
    )
    assert config.task == "recommendation" and config.settings()[3] == (10, 50)

    with pytest.raises(ValueError, match="cannot tell which dataset"):
        EvalConfig(catalog=Path("p.jsonl"), labels=Path("l"))
    with pytest.raises(ValueError, match="not both or neither"):
        EvalConfig(catalog=Path("p"), dataset="esci")
    with pytest.raises(ValueError, match="needs both"):
        EvalConfig(catalog=Path("p"), interactions_train=Path("t"))
    with pytest.raises(ValueError, match="evaluated as recommendation"):
        EvalConfig(catalog=Path("p"), labels=Path("l"), dataset="scientific")
    with pytest.raises(ValueError, match="batch_size"):
        EvalConfig(catalog=Path("p"), labels=Path("l"), dataset="esci", batch_size=0)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_search_and_recommendation(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "esci"  # the directory name selects the ESCI convention
    data.mkdir()
    catalog = _write_jsonl(data / "products.jsonl", SEARCH_RECORDS)
    labels = search_labels()
    rows = [
        {"query_id": q, "query": labels.queries[q], "item_id": i, "grade": g}
        for q, judged in labels.judgments.items()
        for i, g in judged.items()
    ]
    labels_path = _write_jsonl(data / "labels_dev.jsonl", rows)
    out = tmp_path / "out" / "report.json"
    argv = ["--model", str(tiny_model_dir), "--catalog", str(catalog), "--labels", str(labels_path)]
    assert main([*argv, "--ks", "1,10", "--json", str(out), "--cache-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "search: 3 queries over 6 items (esci)" in table and "recall@1" in table
    report = json.loads(out.read_text())
    assert report["metrics"]["ndcg@10"] == {"mean": 1.0, "stderr": 0.0, "n": 2}
    assert report["info"]["dataset"] == "esci" and report["info"]["recall_grade"] == 3

    train = _write_jsonl(
        tmp_path / "train.jsonl",
        [{"user_id": "u", "item_id": i, "position": p} for p, i in enumerate(["S1", "S2"])],
    )
    dev = _write_jsonl(tmp_path / "dev.jsonl", [{"user_id": "u", "item_id": "S2", "position": 2}])
    rec = ["--model", str(tiny_model_dir), "--catalog", str(catalog)]
    rec += ["--interactions-train", str(train), "--interactions-dev", str(dev)]
    assert main([*rec, "--dataset", "scientific"]) == 0
    assert "recommendation: 1 users over 6 items" in capsys.readouterr().out

    # bad input: exit 2 with a message that says what to do
    assert main([*rec, "--labels", str(labels_path)]) == 2
    assert "not both or neither" in capsys.readouterr().err
    assert main([*argv, "--dataset", "scientific"]) == 2
    assert "evaluated as recommendation" in capsys.readouterr().err
