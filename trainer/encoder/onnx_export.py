"""Export a model dir's query tower to one ONNX file, so queries encode on ONNX Runtime.

The graph takes token ids (``input_ids``, ``attention_mask`` and, for BERT, ``token_type_ids``;
int64, shape (batch, seq), both axes dynamic) and returns ``sentence_embedding``: the pooled,
projected (when the tower has ``projection.safetensors``) and, when the model normalises,
L2-normalised (batch, dim) float32 vector. The file's metadata carries the tokenizer and the
model fingerprint, so ``trainer.encoder.load.load_encoder(..., backend="onnx")`` needs neither torch
nor transformers and can tell when the export is stale.

CLI: ``python -m trainer.encoder.onnx_export MODEL_DIR [--out OUT_DIR] [--opset N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trainer.encoder.load import l2_normalize
from trainer.encoder.model_dir import (
    MODEL_INFO_NAME,
    ModelInfo,
    check_model_dir,
    is_default_model_dir,
    model_fingerprint,
    norm_tower,
    read_model_info,
    write_model_info,
)
from trainer.encoder.onnx_tower import ONNX_META_KEYS, ONNX_OUTPUT_NAME, QUERY_ONNX_FILE, OnnxTower
from trainer.encoder.torch_tower import TorchTower, pool_embeddings
from trainer.io import atomic_path
from trainer.progress import heartbeat

logger = logging.getLogger(__name__)

# Exported and ORT outputs agree to ~1e-7 on float32; anything near this bound means a broken
# graph (a shape baked in, a mask ignored), not rounding.
PARITY_ATOL = 1e-4
# Checked at export: lengths from 2 tokens to past max_query_length (truncation), an empty
# text, and batches with padding.
_PROBE_TEXTS = (
    "red velvet sofa",
    "",
    "stainless steel cordless drill with two 20v batteries, a charger and a hard carrying case "
    "for the garage or the workshop, plus twelve drill bits and a magnetic bit holder",
    "usb c cable",
    "Café crème, 12 oz (340 g) – naïve blend",
    "x",
    "waterproof hiking boots women size 8",
)
# Copying a model dir leaves out other exports a hub repo may carry (large, and not ours).
_COPY_IGNORE = shutil.ignore_patterns(".git", "onnx", "openvino", "*.onnx", "*.onnx_data")


def export_query_tower(
    model_dir: str | Path, out_dir: str | Path | None = None, *, opset: int | None = None
) -> Path:
    """Export the query tower of ``model_dir`` to ONNX and check it against torch.

    Without ``out_dir`` the file is written into the model dir itself
    (``<model_dir>/<query_tower>/query_tower.onnx``, replacing an older export). With
    ``out_dir``, a new model dir is made there: a copy of ``model_dir`` plus ``aisle_model.json``
    (so a plain Hugging Face dir keeps its base-model name) plus the export; that is the way to
    export the packaged base model, whose dir must not be written to. Either way the result
    appears atomically, and only after ORT reproduced torch's vectors within ``PARITY_ATOL`` on
    probe texts.

    Args:
        model_dir: a plain Hugging Face dir or an Aisle model dir.
        out_dir: where to create the copy; must not exist yet (or be an empty dir).
        opset: ONNX opset; None → the exporter's default.

    Returns:
        The path of the written ONNX file.

    Raises:
        ValueError: the dir is not a model dir, is the packaged model (without ``out_dir``),
            ``out_dir`` is not empty, the export fails, or ORT's vectors differ from torch's.
        ImportError: torch's ONNX exporter needs ``onnx`` and ``onnxscript``
            (``pip install aisle[train]``).
    """
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 17):
        raise ValueError(f"opset must be an int >= 17 or None (exporter default), got {opset!r}")
    src = Path(model_dir)
    info = check_model_dir(src)
    if out_dir is not None and Path(out_dir).resolve() != src.resolve():
        # Loading torch and the tower, tracing, saving and the parity check: a minute or more
        # of silence on a small CPU without the heartbeat.
        with heartbeat(f"exporting the query tower of {src.name} to ONNX", logger):
            return _export_into_copy(src, Path(out_dir), info, opset)
    if is_default_model_dir(src):
        raise ValueError(
            f"{str(src)!r} is the packaged base model, which must not be written to; pass an "
            "out dir to export into a copy (python -m trainer.encoder.onnx_export DIR --out OUT)"
        )
    tower_dir = src / norm_tower(info.query_tower)
    if not os.access(tower_dir, os.W_OK):
        raise ValueError(
            f"cannot write into {str(tower_dir)!r}; pass an out dir to export into a copy"
        )
    with heartbeat(f"exporting the query tower of {src.name} to ONNX", logger):
        return _export(src, info, opset)


def _export_into_copy(src: Path, dest: Path, info: ModelInfo, opset: int | None) -> Path:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(
            f"out dir {str(dest)!r} already exists and is not empty; pick a new path or delete it"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Built beside dest and renamed into place, so a reader never sees half a model dir.
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        shutil.copytree(src, tmp, ignore=_COPY_IGNORE, dirs_exist_ok=True)
        # The fingerprint covers aisle_model.json, so write the info first, then fingerprint.
        info = replace(info, fingerprint="")
        write_model_info(tmp, info)
        write_model_info(tmp, replace(info, fingerprint=model_fingerprint(tmp)))
        onnx_path = _export(tmp, read_model_info(tmp), opset)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote model dir %s (a copy of %s with the ONNX query tower)", dest, src)
    return dest / onnx_path.relative_to(tmp)


def _export(model_dir: Path, info: ModelInfo, opset: int | None) -> Path:
    """Export the query tower into its own dir; returns the ONNX file's path."""
    tower_dir = model_dir / norm_tower(info.query_tower)
    fingerprint = model_fingerprint(model_dir)
    tower = TorchTower(tower_dir, pooling=info.pooling, device="cpu")
    if tower.dim != info.dim:
        raise ValueError(
            f"the query tower of {str(model_dir)!r} outputs {tower.dim} dims but "
            f"{MODEL_INFO_NAME} says dim={info.dim}; fix the file or the tower"
        )
    final = tower_dir / QUERY_ONNX_FILE
    write_query_onnx(tower, info, final, fingerprint, opset=opset)
    logger.info(
        "exported the query tower to %s (%.1f MB, model fingerprint %s)",
        final.relative_to(model_dir),
        final.stat().st_size / 1e6,
        fingerprint[:12],
    )
    return final


def write_query_onnx(
    tower: TorchTower, info: ModelInfo, final: Path, fingerprint: str, *, opset: int | None = None
) -> None:
    """Export ``tower`` (a query tower on torch) to the ONNX file ``final``, recording
    ``fingerprint`` (the model whose vector space it maps into) in its metadata; written
    atomically, and only once ORT reproduced torch within ``PARITY_ATOL`` on probe texts.
    ``trainer.distill`` uses it for student query towers."""
    tokenizer = tower.tokenizer
    if getattr(tokenizer, "backend_tokenizer", None) is None or tokenizer.pad_token_id is None:
        raise ValueError(
            f"the query tower for {str(final)!r} needs a fast tokenizer with a pad token "
            "(tokenizer.json); re-save it with transformers' AutoTokenizer"
        )
    metadata = {
        ONNX_META_KEYS["fingerprint"]: fingerprint,
        ONNX_META_KEYS["tokenizer"]: tokenizer.backend_tokenizer.to_str(),
        ONNX_META_KEYS["pad_token"]: str(tokenizer.pad_token),
        ONNX_META_KEYS["pad_token_id"]: str(int(tokenizer.pad_token_id)),
        ONNX_META_KEYS["pad_token_type_id"]: str(int(tokenizer.pad_token_type_id)),
        ONNX_META_KEYS["padding_side"]: tokenizer.padding_side,
        ONNX_META_KEYS["truncation_side"]: tokenizer.truncation_side,
        ONNX_META_KEYS["max_positions"]: str(tower.max_positions),
        ONNX_META_KEYS["pooling"]: info.pooling,
        ONNX_META_KEYS["normalize"]: str(info.normalize).lower(),
    }
    # Replaced only once ORT reproduced torch on the written file (else the old one stays).
    with atomic_path(final) as tmp:
        program = _torch_export(tower, info, opset)
        program.model.metadata_props.update(metadata)
        # One self-contained file: MiniLM's 90 MB of weights are far below protobuf's 2 GB cap.
        program.save(str(tmp), external_data=False)
        _check_parity(tmp, tower, info)


def _query_graph(tower: TorchTower, info: ModelInfo) -> Any:
    """The torch module that is exported: tokens → the vector ``Encoder`` would return."""
    import torch

    class QueryGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = tower.model
            self.projection = None
            if tower.projection is not None:
                weight = tower.projection["weight"]
                self.projection = torch.nn.Linear(
                    weight.shape[1], weight.shape[0], bias="bias" in tower.projection
                )
                with torch.no_grad():
                    self.projection.weight.copy_(weight)
                    if "bias" in tower.projection:
                        self.projection.bias.copy_(tower.projection["bias"])

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            hidden = self.model(
                input_ids=input_ids, attention_mask=attention_mask, **extra
            ).last_hidden_state  # (batch, seq, hidden)
            pooled = pool_embeddings(hidden, attention_mask, info.pooling)  # (batch, hidden)
            if self.projection is not None:
                pooled = self.projection(pooled)  # (batch, dim)
            if info.normalize:
                # eps keeps an all-zero row zero (no NaN), as Encoder's numpy normalisation does.
                pooled = torch.nn.functional.normalize(pooled, dim=-1, eps=1e-12)
            return pooled

    return QueryGraph().eval()


def _torch_export(tower: TorchTower, info: ModelInfo, opset: int | None) -> Any:
    """torch.onnx.export (the torch.export-based exporter) → an ``ONNXProgram``."""
    import torch

    input_names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tower.tokenizer.model_input_names:
        input_names.append("token_type_ids")  # BERT's segment ids: all 0 for one text
    # Two texts of different lengths: a padded batch, with batch (2) != seq, so the exporter
    # cannot specialise either axis or confuse one with the other.
    example = tower.tokenizer(
        ["red sofa", "a blue velvet sofa with oak legs"],
        padding=True,
        truncation=True,
        max_length=info.max_query_length,
        return_tensors="pt",
    )
    kwargs = {name: example[name] for name in input_names}
    dynamic_shapes = {name: {0: "batch", 1: "seq"} for name in input_names}
    graph = _query_graph(tower, info)
    try:
        with _quiet_exporter(), torch.no_grad():
            return torch.onnx.export(
                graph,
                (),
                kwargs=kwargs,
                dynamic_shapes=dynamic_shapes,
                input_names=input_names,
                output_names=[ONNX_OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except ImportError:
        raise
    except Exception as exc:  # the exporter raises many types (TorchExportError, ...)
        raise ValueError(f"torch.onnx.export failed for the query tower: {exc}") from exc


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The exporter warns about things that do not concern us (torchvision ops it skips, axis
    # names shared by inputs, deprecations inside torch): keep CLI and test output readable.
    quiet = [
        logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")
    ]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)


def _check_parity(onnx_path: Path, tower: TorchTower, info: ModelInfo) -> None:
    """Raise ValueError unless ORT on ``onnx_path`` matches ``tower`` on the probe texts."""
    onnx_tower = OnnxTower(onnx_path, num_threads=1)
    texts = list(_PROBE_TEXTS)
    worst = 0.0
    for batch in [texts, *([t] for t in texts)]:  # padded batch, then one by one
        expected = tower.encode(batch, info.max_query_length)  # (b, dim)
        if info.normalize:
            expected = l2_normalize(expected)
        got = onnx_tower.encode(batch, info.max_query_length)  # (b, dim)
        if got.shape != expected.shape:
            raise ValueError(
                f"the ONNX query tower returned shape {got.shape}, torch {expected.shape}"
            )
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > PARITY_ATOL:
        raise ValueError(
            f"the ONNX query tower differs from torch by up to {worst:.2e} (> {PARITY_ATOL:g}); "
            "the export is broken, not written"
        )
    logger.debug("ONNX export matches torch within %.2e", worst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.encoder.onnx_export",
        description=(
            "Export a model dir's query tower to ONNX (one file) for torch-free query encoding "
            "with ONNX Runtime; checks the export against torch before writing it."
        ),
    )
    parser.add_argument("model_dir", type=Path, help="Aisle model dir or Hugging Face model dir")
    parser.add_argument(
        "--out",
        type=Path,
        help="make a new model dir here (copy + export) instead of writing into MODEL_DIR; "
        "needed for the packaged base model",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        export_query_tower(args.model_dir, args.out, opset=args.opset)
    except (ValueError, ImportError) as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
