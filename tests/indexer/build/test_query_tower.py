"""aisle-index build leaves a model that aisle-serve encodes queries with via ONNX Runtime."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from indexer.build import query_tower
from indexer.build.config import BuildConfig
from indexer.build.query_tower import with_query_tower
from indexer.cli import main
from trainer.encoder.model_dir import model_fingerprint
from trainer.encoder.onnx_tower import query_onnx_path

pytest.importorskip("onnxscript", reason="the ONNX export needs the train extra")


@pytest.fixture()
def packaged(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    """A stand-in for the packaged base model: a plain Hugging Face dir (tiny, so fast)."""
    plain = Path(shutil.copytree(tiny_model_dir, tmp_path / "packaged" / "model"))
    monkeypatch.setattr(query_tower, "default_model_dir", lambda: plain)
    return plain


@pytest.mark.slow  # two builds and one ONNX export
def test_packaged_model_gets_an_onnx_copy_beside_the_index(tmp_path, catalog, packaged):
    root = tmp_path / "index"
    assert main(["build", "--catalog", str(catalog[0]), "--out", str(root)]) == 0
    (copy,) = (root / "models").iterdir()
    assert query_onnx_path(copy).is_file()
    assert copy.name == model_fingerprint(copy)  # where aisle-serve looks: ROOT/models/<fp>
    manifest = json.loads((root / "versions" / "1" / "manifest.json").read_text())
    assert manifest["model_fingerprint"] == copy.name
    assert not query_onnx_path(packaged).exists()  # the packaged dir is never written to
    # the next build reuses the copy (same fingerprint, nothing exported again)
    mtime = query_onnx_path(copy).stat().st_mtime_ns
    assert main(["build", "--catalog", str(catalog[0]), "--out", str(root)]) == 0
    assert [p.name for p in (root / "models").iterdir()] == [copy.name]
    assert query_onnx_path(copy).stat().st_mtime_ns == mtime
    second = json.loads((root / "versions" / "2" / "manifest.json").read_text())
    assert second["model_fingerprint"] == copy.name


@pytest.mark.slow  # an ONNX export
def test_serving_that_index_uses_onnx(tmp_path, catalog, packaged, caplog):
    from engine.search.snapshot import load_snapshot

    root = tmp_path / "index"
    assert main(["build", "--catalog", str(catalog[0]), "--out", str(root)]) == 0
    with caplog.at_level(logging.INFO):
        load_snapshot(root)
    assert "query encoder: the full query tower, onnx backend" in caplog.text


def test_a_root_built_with_the_packaged_model_keeps_it(tmp_path, catalog, packaged, caplog):
    root = tmp_path / "index"
    args = ["build", "--catalog", str(catalog[0]), "--out", str(root)]
    assert main([*args, "--no-onnx-export"]) == 0
    with caplog.at_level(logging.WARNING):
        config = with_query_tower(BuildConfig(catalog=catalog[0], out=root))
    assert config.model is None and not (root / "models").exists()
    assert "build into a new root, or export a copy" in caplog.text


def test_an_explicit_model_without_export_says_how(tmp_path, catalog, tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING):
        config = with_query_tower(
            BuildConfig(catalog=catalog[0], out=tmp_path, model=tiny_model_dir)
        )
    assert config.model == tiny_model_dir
    assert f"python -m trainer.encoder.onnx_export {tiny_model_dir}" in caplog.text
    assert not query_onnx_path(tiny_model_dir).exists()  # the caller's dir is left alone
