"""Tests for the aisle-train command line: a short run, config files, clear errors (exit 2)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from trainer.cli import main
from trainer.data.synthetic import write_synthetic_dataset
from trainer.encoder.load import load_encoder
from trainer.encoder.model_dir import read_model_info
from trainer.encoder.onnx_tower import query_onnx_path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), n_items=150, n_queries=20, n_users=30, seed=1
    )


FAST = [
    "--export-onnx",
    "false",
    "--batch-size",
    "8",
    "--max-query-length",
    "16",
    "--max-item-length",
    "24",
    "--num-threads",
    "1",
    "--no-progress",
    "--lr",
    "1e-3",
]
# The tests that are not about the fast query tower skip it (aisle-train distils one by default).
NO_FAST_TOWER = ["--fast-query-tower", "none"]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    line = err[-1]
    assert line.startswith("aisle-train: error: ")
    return line


def test_one_dataset_from_flags(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], capsys
) -> None:
    out = tmp_path / "model"
    code = main(
        [
            "--catalog", str(data["products"]),
            "--train", str(data["labels_train"]),
            "--dev", str(data["labels_dev"]),
            "--base-model", str(tiny_model_dir),
            "--out", str(out),
            "--max-steps", "2",
            "--shared-towers", "false",
            "--projection-dim", "16",
            *FAST, *NO_FAST_TOWER,
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["out"] == str(out)
    assert summary["best_ndcg@10"] is not None  # evaluated on --dev at the end
    info = read_model_info(out)
    assert (info.dim, info.shared_towers, info.max_item_length) == (16, False, 24)
    assert load_encoder(out).encode_queries(["red sofa"]).shape == (1, 16)
    assert not query_onnx_path(out).exists()  # --export-onnx false


@pytest.mark.slow
def test_export_adds_the_onnx_query_tower(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], caplog
) -> None:
    out = tmp_path / "model"
    args = ["--catalog", str(data["products"]), "--train", str(data["labels_train"]),
            "--base-model", str(tiny_model_dir), "--out", str(out), "--max-steps", "1",
            "--projection-dim", "16", *FAST, *NO_FAST_TOWER, "--export-onnx", "true"]  # fmt: skip
    assert main(args) == 0
    # The ONNX query tower is exported when the exporter's packages are installed; without
    # them the run still succeeds and says how to export later.
    exporter = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript"))
    assert query_onnx_path(out).is_file() == bool(exporter)
    if exporter:
        np.testing.assert_allclose(
            load_encoder(out, backend="onnx").encode_queries(["red sofa", "drill"]),
            load_encoder(out, backend="torch").encode_queries(["red sofa", "drill"]),
            atol=1e-4,
        )
    else:
        assert "python -m trainer.encoder.onnx_export" in caplog.text


def test_config_file_with_two_tasks_and_flag_overrides(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], capsys
) -> None:
    config = tmp_path / "train.toml"
    config.write_text(
        f'out = "model"\nbase_model = "{tiny_model_dir}"\nmax_steps = 50\n'
        f'[[datasets]]\ncatalog = "{data["products"]}"\ntrain = "{data["labels_train"]}"\n'
        f'[[datasets]]\ncatalog = "{data["products"]}"\n'
        f'train = "{data["interactions_train"]}"\ndev = "{data["interactions_dev"]}"\n'
        'task = "recommend"\nweight = 0.5\n'
    )
    code = main(["--config", str(config), "--max-steps", "2", *FAST, *NO_FAST_TOWER])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2  # the flag beat the file's 50
    metrics = json.loads((tmp_path / "model" / "training_metrics.json").read_text())
    assert [d["task"] for d in metrics["config"]["datasets"]] == ["search", "recommend"]
    assert "recall@10" in next(iter(metrics["history"][-1]["datasets"].values()))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--train", "t.jsonl", "--out", "m"], "needs both --catalog and --train"),
        (["--catalog", "c.jsonl", "--train", "t.jsonl"], "--out .* is required"),
        (["--config", "missing.toml"], "cannot read config"),
        (["--catalog", "c.jsonl", "--train", "t.jsonl", "--out", "m", "--batch-size", "1"],
         "batch_size must be >= 2"),
        (["--catalog", "c.jsonl", "--train", "t.jsonl", "--out", "m", "--nproc", "0"],
         "--nproc must be >= 1"),
        (["--catalog", "c.jsonl", "--train", "t.jsonl", "--out", "m", "--lexical-rerank", "true"],
         "lexical_weight and lexical_rerank need it"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2(tmp_path: Path, monkeypatch, capsys, args, match) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    import re

    assert re.search(match, _error_line(capsys))


def test_bad_data_exits_2_before_training(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], capsys
) -> None:
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        json.dumps({"query_id": "1", "query": "sofa", "item_id": "B0NOTINCAT", "grade": 3}) + "\n"
    )
    args = ["--catalog", str(data["products"]), "--train", str(labels), "--out",
            str(tmp_path / "m"), "--base-model", str(tiny_model_dir)]  # fmt: skip
    assert main(args) == 2
    line = _error_line(capsys)
    assert "B0NOTINCAT" in line and "not in the catalog" in line
    assert not (tmp_path / "m").exists()

    bad_grade = tmp_path / "grades.jsonl"
    bad_grade.write_text(
        json.dumps({"query_id": "1", "query": "sofa", "item_id": "x", "grade": 7}) + "\n"
    )
    args[3] = str(bad_grade)
    assert main(args) == 2
    assert "grade 7 is not one of" in _error_line(capsys)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args[3] = str(empty)
    assert main(args) == 2
    assert "no labels" in _error_line(capsys)


def test_config_and_dataset_flags_conflict(tmp_path: Path, data: dict[str, Path], capsys) -> None:
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps(
            {"out": "m", "datasets": [{"catalog": "a", "train": "b"}]},
        )
    )
    assert main(["--config", str(config), "--catalog", str(data["products"]),
                 "--train", "x"]) == 2  # fmt: skip
    assert "give them there only" in _error_line(capsys)


def test_help_runs(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_aisle_train_adds_the_static_fast_query_tower_by_default(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], capsys, caplog
) -> None:
    from trainer.distill.students import auto_steps
    from trainer.encoder.fast_tower import read_fast_tower_info
    from trainer.encoder.model_dir import model_fingerprint

    out = tmp_path / "model"
    args = ["--catalog", str(data["products"]), "--train", str(data["labels_train"]),
            "--base-model", str(tiny_model_dir), "--out", str(out), "--max-steps", "1",
            *FAST]  # fmt: skip
    with caplog.at_level("INFO"):
        assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["fast_query_tower"] == "static"
    info = read_fast_tower_info(out)
    assert info.variant == "static" and info.item_fingerprint == model_fingerprint(out)
    # sized to the data: 150 items, 20 queries → a few hundred queries, about the fewest steps
    assert info.metrics["train_queries"] < 400
    assert info.metrics["steps"] == auto_steps(info.metrics["train_queries"], 64) <= 200
    assert "--fast-query-tower none skips it" in caplog.text and "ETA" in caplog.text
    assert load_encoder(out).query_tower == "fast"
    assert not query_onnx_path(out).exists()  # --export-onnx false holds: static needs none


def test_recommendation_only_runs_skip_the_fast_tower_with_an_info_line(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path], capsys, caplog
) -> None:
    from trainer.encoder.fast_tower import FAST_TOWER_DIR

    out = tmp_path / "model"
    args = ["--catalog", str(data["products"]), "--train", str(data["interactions_train"]),
            "--task", "recommend", "--base-model", str(tiny_model_dir), "--out", str(out),
            "--max-steps", "1", *FAST]  # fmt: skip
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fast_query_tower"] is None
    assert "no search dataset to distil it on" in caplog.text
    assert not (out / FAST_TOWER_DIR).exists()


def test_fast_query_tower_config_key_is_checked(tmp_path: Path, capsys) -> None:
    config = tmp_path / "train.toml"
    config.write_text('out = "m"\nfast_query_tower = "tiny"\n[[datasets]]\ncatalog = "c"\n'
                      'train = "t"\n')  # fmt: skip
    assert main(["--config", str(config)]) == 2
    assert "fast_query_tower must be one of" in _error_line(capsys)


@pytest.mark.slow
def test_fast_query_tower_flag_picks_another_variant(
    tmp_path: Path, tiny_model_dir: Path, data: dict[str, Path]
) -> None:
    from trainer.encoder.fast_tower import read_fast_tower_info
    from trainer.encoder.model_dir import model_fingerprint

    out = tmp_path / "model"
    args = ["--catalog", str(data["products"]), "--train", str(data["labels_train"]),
            "--base-model", str(tiny_model_dir), "--out", str(out), "--max-steps", "1",
            *FAST, "--fast-query-tower", "int8"]  # fmt: skip
    assert main(args) == 0
    info = read_fast_tower_info(out)
    assert (info.kind, info.variant) == ("onnx", "int8")
    assert info.item_fingerprint == model_fingerprint(out)
    assert load_encoder(out).query_tower == "fast"
