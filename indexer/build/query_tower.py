"""The ONNX query tower next to an index: `aisle-index build` makes sure the model it embeds
with can encode queries with ONNX Runtime (about 3x faster than torch at batch 1 on a CPU),
so the documented path (build, then serve) serves the fast encoder.

- No --model (the packaged all-MiniLM-L6-v2, which must not be written to): a copy of it with
  the export is made once at ROOT/models/<fingerprint> and the index is built with that copy
  (same weights, same vectors; aisle-serve finds it there). A root whose versions were built
  with the packaged model itself keeps it (a new fingerprint would break replaying live
  updates across versions): the log says how to switch.
- --model DIR without the export: DIR is the caller's; the log says the one command to run.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

from indexer.build.config import BuildConfig
from indexer.storage.layout import IndexRoot
from indexer.storage.manifest import load_manifest
from trainer.encoder.model_dir import (
    default_model_dir,
    model_fingerprint,
    read_model_info,
)
from trainer.encoder.onnx_tower import query_onnx_path

logger = logging.getLogger(__name__)
MODELS_DIR = "models"  # engine.search.snapshot looks for ROOT/models/<fingerprint>
HOW = "python -m trainer.encoder.onnx_export {model}"


def _exported_copies(models: Path, base_model: str) -> dict[str, Path]:
    """fingerprint → dir, for the model dirs under ROOT/models with an ONNX query tower."""
    found: dict[str, Path] = {}
    if not models.is_dir():
        return found
    for candidate in sorted(models.iterdir()):
        try:
            if (
                candidate.is_dir()
                and query_onnx_path(candidate).is_file()
                and read_model_info(candidate).base_model == base_model
            ):
                found[model_fingerprint(candidate)] = candidate
        except ValueError:
            continue  # not a model dir
    return found


def _current_fingerprint(root: IndexRoot) -> str | None:
    try:
        current = root.current()
    except (OSError, ValueError):
        return None
    if current is None:
        return None
    try:
        return load_manifest(root.version_dir(current) / "manifest.json").model_fingerprint
    except (OSError, ValueError):
        return None


def with_query_tower(config: BuildConfig) -> BuildConfig:
    """`config`, with the packaged model swapped for a copy that has the ONNX query tower
    where that is safe (see the module doc); otherwise unchanged, with a log line saying how
    to get the fast encoder. An export that cannot run (no `onnx`/`onnxscript`) is a warning,
    not a failed build."""
    if config.model is not None:
        model = Path(config.model)
        try:
            has_onnx = query_onnx_path(model).is_file()
        except ValueError:
            return config  # not a model dir: the build says so
        if not has_onnx:
            logger.warning(
                "%s has no ONNX query tower: aisle-serve will encode queries with torch (about "
                "3x slower on a CPU); export it once with `%s`",
                model,
                HOW.format(model=model),
            )
        return config
    packaged = default_model_dir()
    if query_onnx_path(packaged).is_file():
        return config
    root = IndexRoot(config.out)
    models = Path(config.out) / MODELS_DIR
    copies = _exported_copies(models, read_model_info(packaged).base_model)
    current = _current_fingerprint(root)
    if current is not None and current not in copies:
        logger.warning(
            "%s was built with the packaged model, which has no ONNX query tower: aisle-serve "
            "will encode queries with torch; to serve ONNX, build into a new root, or export a "
            "copy (`%s --out MODEL`) and build with --model MODEL",
            config.out,
            HOW.format(model=packaged),
        )
        return config
    if current is not None or copies:
        copy = copies.get(current) if current is not None else next(iter(copies.values()))
        logger.info("embedding with %s (the packaged model with its ONNX query tower)", copy)
        return dataclasses.replace(config, model=copy)
    try:
        from trainer.encoder.onnx_export import export_query_tower
    except ImportError as error:
        logger.warning(
            "cannot export the ONNX query tower (%s; `pip install aisle[train]`): aisle-serve "
            "will encode queries with torch",
            error,
        )
        return config
    models.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=models))
    try:
        export_query_tower(packaged, staging)
    except (ImportError, ValueError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        logger.warning(
            "could not export the ONNX query tower (%s): aisle-serve will encode queries with "
            "torch",
            error,
        )
        return config
    copy = models / model_fingerprint(staging)
    if copy.exists():
        shutil.rmtree(staging)
    else:
        staging.rename(copy)
    logger.info("embedding with %s (the packaged model with its ONNX query tower)", copy)
    return dataclasses.replace(config, model=copy)
