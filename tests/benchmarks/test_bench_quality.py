"""bench_quality's choice of training config and model per dataset (no data, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_quality as Q
from trainer.training.config import TrainConfig


def _config(path: Path, *names: str) -> Path:
    blocks = [
        f'[[datasets]]\nname = "{n}"\ncatalog = "c.jsonl"\ntrain = "t.jsonl"\n'
        f'task = "{"recommend" if n == "scientific" else "search"}"\n'
        for n in names
    ]
    path.write_text("batch_size = 8\n\n" + "\n".join(blocks))
    return path


def test_each_dataset_gets_the_config_that_lists_it(tmp_path: Path) -> None:
    search = _config(tmp_path / "search.toml", "homedepot", "esci")
    recommend = _config(tmp_path / "rec.toml", "scientific")
    by_dataset = Q.configs_by_dataset([search, recommend])
    assert {name: path.name for name, (path, _) in by_dataset.items()} == {
        "homedepot": "search.toml",
        "esci": "search.toml",
        "scientific": "rec.toml",
    }
    assert by_dataset["esci"][1]["batch_size"] == 8


def test_a_dataset_in_two_configs_is_refused(tmp_path: Path) -> None:
    one = _config(tmp_path / "one.toml", "homedepot")
    two = _config(tmp_path / "two.toml", "esci", "homedepot")
    with pytest.raises(SystemExit, match="'homedepot' is in two training configs"):
        Q.configs_by_dataset([one, two])


def test_model_args_for_all_datasets_or_one() -> None:
    datasets = ["homedepot", "esci", "scientific"]
    assert Q.parse_model_args(["m/all"], datasets) == {d: Path("m/all") for d in datasets}
    assert Q.parse_model_args(["m/all", "scientific=m/rec"], datasets) == {
        "homedepot": Path("m/all"),
        "esci": Path("m/all"),
        "scientific": Path("m/rec"),
    }
    # "=" in a directory name that is not a dataset prefix is part of the path.
    assert Q.parse_model_args(["runs/lr=5e-5"], ["esci"]) == {"esci": Path("runs/lr=5e-5")}


@pytest.mark.parametrize("preset", sorted(Q.PRESETS))
def test_shipped_presets_cover_every_dataset_once(preset: str) -> None:
    by_dataset = Q.configs_by_dataset(Q.PRESETS[preset].train_configs)
    assert set(by_dataset) == {*Q.SEARCH_DATASETS, "scientific"}
    for path, raw in by_dataset.values():
        # A valid training config as it stands (the data paths are not opened here).
        TrainConfig(**{**raw, "out": Path("unused")})
        assert raw.get("holdout_fraction", 0) > 0, f"{path}: the fusion is tuned on the hold-out"
