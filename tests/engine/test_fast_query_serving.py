"""Serving with a fast query tower: each kind loads on a real server and answers, Status says
which query tower is in use, and one index serves both towers (no reindex)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.client import AisleClient
from engine.search.types import EncodingConfig
from engine.server import ServerConfig, create_server
from tests.helpers import make_static_fast_tower
from trainer.distill.run import quantize_onnx
from trainer.encoder.fast_tower import FastTowerInfo, fast_tower_dir, write_fast_tower_info
from trainer.encoder.model_dir import model_fingerprint, read_model_info
from trainer.encoder.onnx_export import export_query_tower
from trainer.encoder.onnx_tower import QUERY_ONNX_FILE


@pytest.fixture(scope="module")
def fast_models(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """kind → a copy of the tiny model with that fast tower: "static" (random token vectors),
    "int8" (the tower's ONNX export quantised)."""
    root = tmp_path_factory.mktemp("fast_models")
    static = Path(shutil.copytree(tiny_model_dir, root / "static"))
    make_static_fast_tower(static)
    int8 = Path(shutil.copytree(tiny_model_dir, root / "int8"))
    export_query_tower(int8)
    tower = fast_tower_dir(int8)
    tower.mkdir()
    quantize_onnx(int8 / QUERY_ONNX_FILE, tower / QUERY_ONNX_FILE)
    info = read_model_info(int8)
    write_fast_tower_info(
        tower,
        FastTowerInfo(
            kind="onnx",
            variant="int8",
            item_fingerprint=model_fingerprint(int8),
            dim=info.dim,
            max_length=info.max_query_length,
        ),
    )
    return {"static": static, "int8": int8}


@pytest.mark.parametrize(
    ("kind", "query_tower", "expected"),
    [
        ("static", "auto", "fast"),
        ("int8", "auto", "fast"),
        ("int8", "fast", "fast"),
        ("int8", "full", "full"),
    ],
)
def test_server_loads_each_query_tower_and_answers(
    index_root: Path, fast_models: dict[str, Path], kind: str, query_tower: str, expected: str
) -> None:
    config = ServerConfig(
        index=index_root,
        model=fast_models[kind],
        port=0,
        workers=4,
        encoding=EncodingConfig(query_tower=query_tower),
    )
    server = create_server(config)
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            assert client.status().query_tower == expected
            response = client.search("red sofa", k=5)
            assert len(response.hits) == 5
            batch = [client.search(q, k=3) for q in ("usb cable", "oak desk", "zzqx")]
            assert [len(r.hits) for r in batch] == [3, 3, 3]
    finally:
        server.stop(0)


def test_serve_cli_refuses_fast_without_a_fast_tower(index_root: Path, tiny_model_dir: Path):
    from engine.cli.serve import main

    code = main(
        [
            "--index",
            str(index_root),
            "--model",
            str(tiny_model_dir),
            "--port",
            "0",
            "--query-tower",
            "fast",
        ]  # fmt: skip
    )
    assert code == 2


@pytest.mark.slow
def test_server_loads_a_distilled_student_tower_and_answers(
    index_root: Path, tiny_model_dir: Path, title_catalog, tmp_path: Path
) -> None:
    """The third variant, a 1-layer student distilled by aisle-train distill-query (an ONNX
    graph of its own), served on the index built with the teacher."""
    from trainer.cli import main as train_main
    from trainer.encoder.fast_tower import read_fast_tower_info

    model = tmp_path / "student"
    assert train_main(["distill-query", "--teacher", str(tiny_model_dir), "--out", str(model),
                       "--catalog", str(title_catalog[0]), "--variant", "student",
                       "--layers", "1", "--steps", "5", "--synth-queries", "100"]) == 0  # fmt: skip
    assert read_fast_tower_info(model).variant == "student-1l"
    config = ServerConfig(index=index_root, model=model, port=0, workers=4)
    server = create_server(config)
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            assert client.status().query_tower == "fast"
            assert len(client.search("red sofa", k=5).hits) == 5
    finally:
        server.stop(0)
