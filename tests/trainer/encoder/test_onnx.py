"""Tests for trainer.encoder.onnx_export and the ONNX Runtime query backend (onnx_tower, load)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import make_tiny_model
from trainer.encoder.load import load_encoder
from trainer.encoder.model_dir import (
    ModelInfo,
    default_model_dir,
    model_fingerprint,
    read_model_info,
    write_model_info,
)
from trainer.encoder.onnx_export import export_query_tower, main
from trainer.encoder.onnx_tower import ONNX_META_KEYS, QUERY_ONNX_FILE

# Varied lengths (one past 32 tokens, so truncation is exercised), an empty text, accents and
# symbols; encoded together they pad to the longest.
TEXTS = [
    "a red velvet sofa",
    "stainless steel cordless drill with two batteries and a charger, a hard case, twelve "
    "bits, a magnetic holder and a belt clip for the garage, the deck or the workshop",
    "usb c cable",
    "",
    "kids",
    "Oak desk, 48 inch, with three drawers; easy assembly (tools included)",
    "zzqx 42!",
    "Café crème – naïve 12 oz",
    "blue   cotton  shirt",
]


@pytest.fixture(scope="module")
def onnx_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model with its query tower exported (shared: copy it to change it)."""
    model_dir = tmp_path_factory.mktemp("onnx") / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    export_query_tower(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def torch_xq(tiny_model_dir: Path) -> np.ndarray:
    return load_encoder(tiny_model_dir, backend="torch").encode_queries(TEXTS)


def test_export_is_one_self_contained_file_with_dynamic_axes(
    onnx_model_dir: Path, tiny_model_dir: Path
) -> None:
    import onnx
    from onnx.external_data_helper import uses_external_data

    path = onnx_model_dir / QUERY_ONNX_FILE
    new_files = {p.name for p in onnx_model_dir.iterdir()} - {
        p.name for p in tiny_model_dir.iterdir()
    }
    assert new_files == {QUERY_ONNX_FILE}  # no external data file, no temp file left behind
    model = onnx.load(str(path), load_external_data=False)
    assert not any(uses_external_data(t) for t in model.graph.initializer)
    inputs = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }
    assert inputs == {
        name: ["batch", "seq"] for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    (output,) = model.graph.output
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == ["batch", 32]
    meta = {p.key: p.value for p in model.metadata_props}
    # The export is not part of the model's identity: the fingerprint is unchanged by it.
    assert meta[ONNX_META_KEYS["fingerprint"]] == model_fingerprint(onnx_model_dir)
    assert model_fingerprint(onnx_model_dir) == model_fingerprint(tiny_model_dir)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_onnx_queries_match_torch(
    onnx_model_dir: Path, torch_xq: np.ndarray, batch_size: int
) -> None:
    encoder = load_encoder(onnx_model_dir, backend="onnx")
    assert encoder.query_backend == "onnx"
    xq = encoder.encode_queries(TEXTS, batch_size=batch_size)
    assert xq.shape == (len(TEXTS), 32)
    assert xq.dtype == np.float32
    np.testing.assert_allclose(xq, torch_xq, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(xq, axis=1), 1.0, atol=1e-5)


def test_onnx_truncation_matches_torch(onnx_model_dir: Path, tiny_model_dir: Path) -> None:
    onnx_encoder = load_encoder(onnx_model_dir, backend="onnx", num_threads=1)
    torch_encoder = load_encoder(tiny_model_dir, backend="torch")
    for max_length in (4, 9, 32):  # switching lengths must not leave the tokenizer stale
        np.testing.assert_allclose(
            onnx_encoder.encode_queries(TEXTS, max_length=max_length),
            torch_encoder.encode_queries(TEXTS, max_length=max_length),
            atol=1e-5,
        )


def test_items_under_onnx_backend_use_torch(onnx_model_dir: Path, tiny_model_dir: Path) -> None:
    encoder = load_encoder(onnx_model_dir, backend="onnx")
    expected = load_encoder(tiny_model_dir, backend="torch").encode_items(TEXTS)
    np.testing.assert_allclose(encoder.encode_items(TEXTS, batch_size=4), expected, atol=1e-6)


def test_backend_selection(onnx_model_dir: Path, tiny_model_dir: Path) -> None:
    assert load_encoder(onnx_model_dir).query_backend == "onnx"  # auto, export present
    assert load_encoder(onnx_model_dir, backend="torch").query_backend == "torch"
    assert load_encoder(tiny_model_dir).query_backend == "torch"  # auto, no export
    with pytest.raises(ValueError, match="python -m trainer.encoder.onnx_export"):
        load_encoder(tiny_model_dir, backend="onnx")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_encoder(onnx_model_dir, backend="tensorrt")
    with pytest.raises(ValueError, match="runs on the CPU"):
        load_encoder(onnx_model_dir, backend="onnx", device="cuda:0")


def test_stale_export_falls_back_or_raises(
    onnx_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = shutil.copytree(onnx_model_dir, tmp_path / "model")
    # Any change to what the fingerprint covers makes the export stale (here: the max lengths).
    write_model_info(model_dir, replace(read_model_info(model_dir), max_query_length=16))
    with caplog.at_level(logging.WARNING, logger="trainer.encoder"):
        assert load_encoder(model_dir).query_backend == "torch"
    assert "stale" in caplog.text and "trainer.encoder.onnx_export" in caplog.text
    with pytest.raises(ValueError, match="stale"):
        load_encoder(model_dir, backend="onnx")


def test_corrupt_export_falls_back_or_raises(
    onnx_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = shutil.copytree(onnx_model_dir, tmp_path / "model")
    (model_dir / QUERY_ONNX_FILE).write_bytes(b"not an onnx file")
    with caplog.at_level(logging.WARNING, logger="trainer.encoder"):
        assert load_encoder(model_dir).query_backend == "torch"
    assert "cannot load the ONNX query tower" in caplog.text
    with pytest.raises(ValueError, match="cannot load the ONNX query tower"):
        load_encoder(model_dir, backend="onnx")


def test_export_refuses_the_packaged_model_dir() -> None:
    src = default_model_dir()
    with pytest.raises(ValueError, match="packaged base model.*out dir"):
        export_query_tower(src)
    assert not (src / QUERY_ONNX_FILE).exists()


def test_export_rejects_a_bad_opset(onnx_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="opset"):
        export_query_tower(onnx_model_dir, opset=9)


_TORCH_FREE = """
import json, sys

class NoTorch:  # any import of torch or transformers fails the run
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} must not be imported")
        return None

sys.meta_path.insert(0, NoTorch())
from trainer.encoder.load import load_encoder

texts = json.loads(sys.argv[2])
out = {}
for backend in ("onnx", "auto"):
    encoder = load_encoder(sys.argv[1], backend=backend)
    out[backend] = {"backend": encoder.query_backend, "xq": encoder.encode_queries(texts).tolist()}
try:
    encoder.encode_items(["x"])
except ValueError as exc:
    out["item_error"] = str(exc)
print(json.dumps(out))
"""


def test_onnx_backend_runs_without_torch(onnx_model_dir: Path, torch_xq: np.ndarray) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-c", _TORCH_FREE, str(onnx_model_dir), json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for backend in ("onnx", "auto"):
        assert out[backend]["backend"] == "onnx"
        np.testing.assert_allclose(np.array(out[backend]["xq"]), torch_xq, atol=1e-5)
    # Items need the torch tower, loaded on first use: without torch that is a clear error.
    assert "needs torch" in out["item_error"]


@pytest.mark.slow
def test_cli_exports_into_a_copy(
    tiny_model_dir: Path, tmp_path: Path, torch_xq: np.ndarray
) -> None:
    out = tmp_path / "exported"
    assert main([str(tiny_model_dir), "--out", str(out)]) == 0
    assert not (tiny_model_dir / QUERY_ONNX_FILE).exists()  # the source is left alone
    assert (out / QUERY_ONNX_FILE).is_file()
    info = read_model_info(out)
    assert info.base_model == tiny_model_dir.resolve().name
    assert info.fingerprint == model_fingerprint(out)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    encoder = load_encoder(out, backend="onnx")
    np.testing.assert_allclose(encoder.encode_queries(TEXTS), torch_xq, atol=1e-5)
    assert main([str(tiny_model_dir), "--out", str(out)]) == 1  # not empty: refused


@pytest.mark.slow
def test_separate_towers_with_projection_cls_pooling_no_normalize(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    model_dir = tmp_path / "model"
    query_dir = make_tiny_model(model_dir / "query_tower", hidden_size=32, seed=0)
    make_tiny_model(model_dir / "item_tower", hidden_size=16, seed=1)
    generator = torch.Generator().manual_seed(0)
    projection = {
        "weight": torch.randn(16, 32, generator=generator),
        "bias": torch.randn(16, generator=generator),
    }
    save_file(projection, str(query_dir / "projection.safetensors"))
    info = ModelInfo(
        base_model="tiny",
        pooling="cls",
        dim=16,
        shared_towers=False,
        query_tower="query_tower",
        item_tower="item_tower",
        normalize=False,
    )
    write_model_info(model_dir, info)

    path = export_query_tower(model_dir)
    assert path == model_dir / "query_tower" / QUERY_ONNX_FILE
    onnx_encoder = load_encoder(model_dir, backend="onnx")
    torch_encoder = load_encoder(model_dir, backend="torch")
    xq = onnx_encoder.encode_queries(TEXTS, batch_size=7)
    assert xq.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(xq, torch_encoder.encode_queries(TEXTS), atol=1e-5)
    assert not np.allclose(np.linalg.norm(xq, axis=1), 1.0)  # normalize=False is honoured
    np.testing.assert_allclose(
        onnx_encoder.encode_items(TEXTS), torch_encoder.encode_items(TEXTS), atol=1e-6
    )


@pytest.mark.slow
def test_real_model_export_matches_torch(tmp_path: Path) -> None:
    src = default_model_dir()
    out = tmp_path / "minilm"
    export_query_tower(src, out)
    assert read_model_info(out).base_model == "all-MiniLM-L6-v2"
    onnx_encoder = load_encoder(out, backend="onnx", num_threads=1)
    torch_encoder = load_encoder(src, backend="torch")
    expected = torch_encoder.encode_queries(TEXTS)
    for batch_size in (1, 7):
        xq = onnx_encoder.encode_queries(TEXTS, batch_size=batch_size)
        assert xq.shape == (len(TEXTS), 384)
        np.testing.assert_allclose(xq, expected, atol=1e-5)
