"""``distill_query``: make a model dir's fast query tower (``trainer.encoder.fast_tower``).

Variants (``FAST_TOWER_VARIANTS``):

- ``"int8"``: the full query tower's ONNX graph with its weights quantised to int8
  (``onnxruntime.quantization.quantize_dynamic``); no training.
- ``"student"``: the teacher's BERT cut to ``layers`` of its own layers, distilled, exported to
  ONNX (and, with ``quantize``, int8-quantised as well).
- ``"static"``: one vector per token, distilled (model2vec's design: the teacher's vector of
  each token alone, SIF-weighted, then trained end to end); numpy at serving time.

The model dir written is the teacher's (copied unless ``out`` is the teacher itself) plus the
full tower's ONNX export plus ``query_fast/``; its ``model_fingerprint`` is the teacher's, so an
index built with the teacher serves with the fast tower without a reindex.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.catalog import Catalog, read_catalog
from trainer.data.labels import read_labels
from trainer.distill.queries import labeled_queries, synthesised_queries
from trainer.distill.students import (
    FitSettings,
    StaticStudent,
    TransformerStudent,
    auto_steps,
    fit,
    sif_weights,
    student_layers,
    student_vectors,
    token_vectors,
)
from trainer.encoder.fast_tower import (
    DEFAULT_FAST_TOWER,
    FAST_TOWER_DIR,
    FAST_TOWER_VARIANTS,
    STATIC_FILE,
    STATIC_TOKENIZER,
    FastTowerInfo,
    StaticTower,
    write_fast_tower_info,
)
from trainer.encoder.load import Encoder, l2_normalize, load_encoder
from trainer.encoder.model_dir import PROJECTION_FILE, check_model_dir, norm_tower
from trainer.encoder.onnx_export import export_query_tower, write_query_onnx
from trainer.encoder.onnx_tower import QUERY_ONNX_FILE, OnnxTower, query_onnx_path
from trainer.encoder.torch_tower import TorchTower
from trainer.text import item_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """What ``aisle-train distill-query`` does.

    ``teacher``: the model dir whose query tower is distilled (its item tower is kept as is).
    ``out``: the model dir to write (the teacher itself → the fast tower is added in place).
    ``catalog`` / ``train``: items (for synthesised queries and the teacher's item vectors) and
    optional labeled queries. ``synth_queries``: how many catalog queries to make.
    ``max_items``: the most catalog rows read for synthesised queries (None = all).
    """

    teacher: Path
    out: Path
    catalog: Path | None = None
    train: Path | None = None
    variant: str = DEFAULT_FAST_TOWER
    layers: int = 2
    quantize: bool = False
    synth_queries: int = 20_000
    holdout_fraction: float = 0.05
    fit: FitSettings = field(default_factory=FitSettings)
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.variant not in FAST_TOWER_VARIANTS:
            raise ValueError(f"variant must be one of {FAST_TOWER_VARIANTS}, got {self.variant!r}")
        if self.variant != "int8" and self.catalog is None:
            raise ValueError(f"variant {self.variant!r} is trained: it needs --catalog")
        if not 0 < self.holdout_fraction < 0.5:
            raise ValueError(f"holdout_fraction must be in (0, 0.5), got {self.holdout_fraction}")
        steps = self.fit.steps
        if self.synth_queries < 0 or (steps is not None and steps < 1) or self.fit.batch_size < 2:
            raise ValueError("synth_queries must be >= 0, steps >= 1 and batch_size >= 2")


@dataclass(frozen=True)
class DistillResult:
    out: Path
    info: FastTowerInfo


def dense_part(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The towers' own part of Encoder vectors (the trigram sketch dropped), unit rows."""
    return l2_normalize(np.ascontiguousarray(vectors[:, :dim], dtype=np.float32))


def prepare_out(teacher: Path, out: Path, *, export: bool = True) -> None:
    """Make ``out`` the teacher's model dir with a current full-tower ONNX export: a copy of
    every file (so its ``model_fingerprint`` is the teacher's), unless ``out`` is the teacher
    (then the export is added only with ``export``: the static variant does not need it, and
    ``aisle-train --export-onnx false`` asked for none).

    Raises:
        ValueError: the teacher is not a model dir, or ``out`` exists and is not empty.
    """
    if out.exists() and out.resolve() == teacher.resolve():
        if export:
            _ensure_export(out)
        return
    check_model_dir(teacher)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(
            f"out dir {str(out)!r} already exists and is not empty; pick a new path or delete it "
            "(or pass the teacher itself as --out to add the fast tower in place)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built beside out and renamed into place, so a reader never sees half a model dir.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        shutil.copytree(teacher, tmp, ignore=_COPY_IGNORE, dirs_exist_ok=True)
        _ensure_export(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_COPY_IGNORE = shutil.ignore_patterns(".git", "onnx", "openvino", FAST_TOWER_DIR, "*.tmp")


def _ensure_export(model_dir: Path) -> None:
    try:
        load_encoder(model_dir, backend="onnx", query_tower="full")
    except ValueError:
        export_query_tower(model_dir)  # missing or stale: (re-)export in place


def _pairs(config: DistillConfig) -> tuple[Catalog, list[str], list[int]]:
    """(catalog, queries, their positive item rows): labeled + synthesised, distinct, shuffled;
    the last ``holdout_fraction`` of them are held out."""
    assert config.catalog is not None
    catalog = read_catalog(config.catalog)
    pairs = []
    if config.train is not None:
        pairs = labeled_queries(read_labels(config.train), catalog)
    pairs += synthesised_queries(catalog, limit=config.synth_queries, seed=config.fit.seed)
    unique = list(dict(reversed(pairs)).items())  # the first row given for each text
    if len(unique) < 20:
        raise ValueError(f"only {len(unique)} distinct queries: give more catalog or --train")
    rng = np.random.default_rng(config.fit.seed)
    unique = [unique[i] for i in rng.permutation(len(unique))]
    return catalog, [p[0] for p in unique], [p[1] for p in unique]


def distill_query(config: DistillConfig) -> DistillResult:
    """Distil ``config.variant`` into ``config.out`` (see the module doc); returns its info.

    Raises:
        ValueError: bad settings or data, or a teacher that is not a model dir.
    """
    started = time.perf_counter()
    teacher_dir, out = Path(config.teacher), Path(config.out)
    prepare_out(teacher_dir, out, export=config.variant != "static")
    # ONNX (the export is there unless the static variant was added in place without one)
    encoder = load_encoder(out, backend="auto", query_tower="full", num_threads=config.num_threads)
    info = encoder.info
    with tempfile.TemporaryDirectory(prefix=".query_fast.", dir=out) as tmp:
        work = Path(tmp) / FAST_TOWER_DIR
        work.mkdir()
        metrics: dict[str, Any] = {}
        if config.variant == "int8":
            quantize_onnx(query_onnx_path(out, info), work / QUERY_ONNX_FILE)
            kind, variant = "onnx", "int8"
            heldout = list(_PROBES)
            if config.catalog is not None:
                _, texts, _ = _pairs(config)
                heldout = texts[-_n_heldout(len(texts), config) :]
        else:
            catalog, texts, rows = _pairs(config)
            n_train = len(texts) - _n_heldout(len(texts), config)
            steps = config.fit.steps or auto_steps(n_train, config.fit.batch_size)
            settings = replace(config.fit, max_length=info.max_query_length, steps=steps)
            logger.info(
                "distilling the %s query tower of %s: %d queries (%d held out), %d items, "
                "%d steps of %d queries; the teacher's vectors first",
                config.variant,
                out,
                len(texts),
                len(texts) - n_train,
                len(set(rows)),
                steps,
                settings.batch_size,
            )
            teacher_q, items, heldout = _teacher_targets(encoder, catalog, texts, rows, config)
            tower = TorchTower(
                out / norm_tower(info.query_tower), pooling=info.pooling, device="cpu"
            )
            if config.variant == "student":
                layer_ids = student_layers(tower.model.config.num_hidden_layers, config.layers)
                student: TransformerStudent | StaticStudent = TransformerStudent(tower, layer_ids)
                variant = f"student-{len(layer_ids)}l"
            else:
                student = _static_student(tower, texts[:n_train])
                variant = "static"
            before = student_vectors(student, heldout, info.max_query_length)
            metrics["heldout_cosine_before"] = _mean_cosine(before, teacher_q[n_train:])
            losses = fit(student, texts[:n_train], teacher_q[:n_train], items[:n_train], settings)
            metrics["final_loss"] = round(float(np.mean(losses[-50:])), 5)
            metrics["steps"] = len(losses)
            metrics["train_queries"] = n_train
            if isinstance(student, TransformerStudent):
                kind = "onnx"
                _export_student(student, tower, info, encoder.fingerprint, work)
                if config.quantize:
                    quantize_onnx(work / QUERY_ONNX_FILE, work / QUERY_ONNX_FILE)
                    variant += "-int8"
            else:
                kind = "static"
                _save_static(student, tower, work)
        fast = _open_fast(kind, work)
        got = dense_part(_normalised(fast.encode(heldout, info.max_query_length)), info.dim)
        want = dense_part(encoder.encode_queries(heldout), info.dim)
        metrics["heldout_cosine"] = _mean_cosine(got, want)
        metrics["heldout_queries"] = len(heldout)
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        fast_info = FastTowerInfo(
            kind=kind,
            variant=variant,
            item_fingerprint=encoder.fingerprint,
            dim=info.dim,
            max_length=info.max_query_length,
            teacher=info.base_model,
            metrics=metrics,
        )
        write_fast_tower_info(work, fast_info)
        _swap_in(work, out / FAST_TOWER_DIR)
    logger.info("wrote the %s fast query tower of %s: %s", variant, out, metrics)
    return DistillResult(out=out, info=fast_info)


def _normalised(x: np.ndarray) -> np.ndarray:
    return l2_normalize(np.ascontiguousarray(x, dtype=np.float32))


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(np.mean(np.sum(a * b, axis=1))), 5)


# Held-out probes of the int8 variant when no catalog is given.
_PROBES = (
    "red velvet sofa",
    "cordless drill 20v",
    "usb c cable",
    "waterproof hiking boots women size 8",
    "oak desk with drawers",
    "x",
)


def _n_heldout(n: int, config: DistillConfig) -> int:
    return max(1, int(n * config.holdout_fraction))


def _teacher_targets(
    encoder: Encoder, catalog: Catalog, texts: list[str], rows: list[int], config: DistillConfig
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(teacher query vectors (n, dim), positive item vectors (n, dim), held-out texts)."""
    dim = encoder.info.dim
    t0 = time.perf_counter()
    teacher_q = dense_part(encoder.encode_queries(texts, batch_size=64), dim)
    unique = sorted(set(rows))
    item_vectors = dense_part(
        _item_vectors(encoder, [item_text(catalog.record(r)) for r in unique]), dim
    )
    where = {r: i for i, r in enumerate(unique)}
    items = item_vectors[[where[r] for r in rows]]
    logger.info(
        "teacher vectors: %d queries, %d items in %.1fs",
        len(texts),
        len(unique),
        time.perf_counter() - t0,
    )
    return teacher_q, items, texts[-_n_heldout(len(texts), config) :]


def _item_vectors(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """The teacher's item vectors; with shared towers through the ONNX export (the same
    graph, several times faster than torch on a CPU), else the torch item tower."""
    info = encoder.info
    onnx_path = query_onnx_path(encoder.model_dir, info)
    if not info.shared_towers or not onnx_path.is_file():
        return encoder.encode_items(texts, batch_size=64)
    tower = OnnxTower(onnx_path, num_threads=None)
    order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths per batch
    out = np.zeros((len(texts), info.dim), dtype=np.float32)
    for start in range(0, len(texts), 64):
        rows = order[start : start + 64]
        out[rows] = tower.encode([texts[r] for r in rows], info.max_item_length)
    return out


def _static_student(tower: TorchTower, texts: list[str]) -> StaticStudent:
    started = time.perf_counter()
    logger.info("static: the teacher's vector of each of its %d tokens first", len(tower.tokenizer))
    vectors = l2_normalize(token_vectors(tower))  # (vocab, dim) unit rows
    logger.info("static: token vectors in %.1fs", time.perf_counter() - started)
    vectors *= sif_weights(tower.tokenizer, texts)[:, None]
    return StaticStudent(vectors, tower.tokenizer)


def _save_static(student: StaticStudent, tower: TorchTower, work: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"embeddings": student.embeddings()}, str(work / STATIC_FILE))
    tower.tokenizer.backend_tokenizer.save(str(work / STATIC_TOKENIZER))


def _export_student(
    student: TransformerStudent, teacher: TorchTower, info: Any, fingerprint: str, work: Path
) -> None:
    """Save the student as a Hugging Face dir, then export it to ONNX as the teacher's own
    export is (``write_query_onnx``), recording the teacher's fingerprint."""
    hf = work.parent / "hf"
    student.model.save_pretrained(str(hf))
    teacher.tokenizer.save_pretrained(str(hf))
    if student.projection is not None:
        from safetensors.torch import save_file

        save_file(student.projection, str(hf / PROJECTION_FILE))
    tower = TorchTower(hf, pooling=info.pooling, device="cpu")
    write_query_onnx(tower, info, work / QUERY_ONNX_FILE, fingerprint)


def quantize_onnx(src: Path, dest: Path) -> None:
    """int8 dynamic quantisation of an Aisle ONNX query tower (weights int8 per output channel,
    activations quantised on the fly), keeping its metadata (tokenizer, fingerprint). Per
    channel: on all-MiniLM-L6-v2 it kept a mean cosine of 0.992 to the float vectors over 150
    Home Depot dev queries, per tensor 0.963."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    meta = {p.key: p.value for p in model.metadata_props}
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        quantized = Path(tmp) / "int8.onnx"
        quantize_dynamic(model, str(quantized), weight_type=QuantType.QInt8, per_channel=True)
        out = onnx.load(str(quantized))
        del out.metadata_props[:]
        for key, value in meta.items():
            out.metadata_props.add(key=key, value=value)
        onnx.save(out, str(quantized))
        os.replace(quantized, dest)


def _open_fast(kind: str, work: Path) -> OnnxTower | StaticTower:
    if kind == "static":
        return StaticTower(work)
    return OnnxTower(work / QUERY_ONNX_FILE, num_threads=1)


def _swap_in(work: Path, final: Path) -> None:
    """Replace ``final`` with ``work``: the old tower stays whole until the new one is in."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(work, final)
    shutil.rmtree(old, ignore_errors=True)
