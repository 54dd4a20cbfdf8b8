"""The two-tower model: BERT query and item towers, pooling, optional projection, model dirs.

A tower is a Hugging Face encoder + pooling (mean or CLS) + an optional linear projection to a
smaller dim + L2 normalisation, exactly what ``trainer.encoder.load.Encoder`` computes at
inference time, so a saved model dir gives the same vectors there as ``TwoTowerModel`` gives
here. With ``shared_towers`` one tower encodes both queries and items (one set of weights, saved
at the model dir's root); otherwise each has its own copy, saved in ``query_tower/`` and
``item_tower/``. The ONNX export of the query tower is not written here (see
``trainer.encoder.onnx_export``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.encoder.model_dir import (
    MODEL_INFO_NAME,
    POOLINGS,
    PROJECTION_FILE,
    ModelInfo,
    default_model_dir,
    model_fingerprint,
    read_model_info,
    write_model_info,
)
from trainer.encoder.torch_tower import (
    load_hf_model,
    load_projection,
    no_transformers_progress_bar,
    pool_embeddings,
)
from trainer.encoder.trigram import LexicalSketch
from trainer.encoder.user import DEFAULT_HISTORY_DECAY
from trainer.training.padfree import PaddingFreeBert

logger = logging.getLogger(__name__)

QUERY_TOWER_DIR = "query_tower"
ITEM_TOWER_DIR = "item_tower"
TRAINING_METRICS_NAME = "training_metrics.json"
# 1/temperature is capped like CLIP's logit scale, so a learnable temperature cannot collapse
# to ~0 and blow the logits (and bf16 rounding) up.
MAX_LOGIT_SCALE = 100.0


class Tower(nn.Module):
    """One tower: token ids → pooled, projected, L2-normalised vectors.

    Attributes:
        encoder: the Hugging Face model (``AutoModel``), e.g. a ``BertModel``.
        pooling: "mean" or "cls".
        projection: ``nn.Linear(hidden, dim)`` or None (then dim = hidden size).
        tokenizer: the tower's tokenizer (not a module; saved with the tower).
        padding_free: a ``PaddingFreeBert`` over ``encoder`` that training-mode forwards use
            instead of the Hugging Face forward (set by ``trainer.training.setup``), or None.
    """

    def __init__(
        self, encoder: nn.Module, tokenizer: Any, pooling: str, projection: nn.Linear | None
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder = encoder
        pooler = getattr(encoder, "pooler", None)
        if isinstance(pooler, nn.Module):
            # BERT's pooler (dense + tanh on [CLS]) is not part of the embedding. Frozen, it
            # gets no gradient and no optimizer state, and DDP does not wait for its gradient.
            pooler.requires_grad_(False)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.projection = projection
        self.padding_free: PaddingFreeBert | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    @property
    def dim(self) -> int:
        return self.hidden_size if self.projection is None else self.projection.out_features

    @property
    def max_positions(self) -> int:
        return int(getattr(self.encoder.config, "max_position_embeddings", 0) or 0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) int64 ids and mask → (batch, dim) float32 unit vectors."""
        if self.padding_free is not None and self.training:
            hidden = self.padding_free(input_ids, attention_mask)  # (batch, seq, hidden)
        else:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state  # (batch, seq, hidden)
        pooled = pool_embeddings(hidden, attention_mask, self.pooling)  # (batch, hidden)
        if self.projection is not None:
            pooled = self.projection(pooled)  # (batch, dim)
        # Normalise in float32: under bf16 autocast the norm of a 384-vector loses digits.
        return F.normalize(pooled.float(), dim=-1)


class TwoTowerModel(nn.Module):
    """Query and item towers (possibly one shared module) and the softmax temperature.

    ``logit_scale`` = log(1 / temperature): a parameter when learnable, else a buffer.
    """

    def __init__(
        self,
        query_tower: Tower,
        item_tower: Tower,
        *,
        temperature: float = 0.05,
        learnable_temperature: bool = False,
        base_model: str = "",
    ) -> None:
        super().__init__()
        if not 0 < temperature <= 1:
            raise ValueError(f"temperature must be in (0, 1], got {temperature!r}")
        if query_tower.dim != item_tower.dim:
            raise ValueError(
                f"query tower outputs {query_tower.dim} dims but the item tower {item_tower.dim}"
            )
        self.query_tower = query_tower
        # Registering the same module twice would make state_dict hold two copies' keys;
        # a shared item tower is reached through the property instead.
        self.shared_towers = item_tower is query_tower
        if not self.shared_towers:
            self.item_tower_module = item_tower
        scale = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learnable_temperature:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)
        self.learnable_temperature = learnable_temperature
        self.base_model = base_model
        # Item batches are split into this many sub-batches of similar length, each padded to
        # its own longest text (see ``bucketed_forward``); the trainer sets 2 on CPU.
        self.length_buckets = 1

    @property
    def item_tower(self) -> Tower:
        return self.query_tower if self.shared_towers else self.item_tower_module

    @property
    def dim(self) -> int:
        return self.query_tower.dim

    def scale(self) -> torch.Tensor:
        """1 / temperature as a 0-d float32 tensor (clamped to ``MAX_LOGIT_SCALE``)."""
        return self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.scale().detach())

    def forward(
        self,
        query_ids: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        item_ids: torch.Tensor | None = None,
        item_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Encode a batch of queries and/or items in one call (one call per step for DDP).

        Returns:
            (xq (nq, dim) or None, xb (nb, dim) or None, scale 0-d tensor = 1/temperature).
        """
        xq = None if query_ids is None else self.query_tower(query_ids, query_mask)
        xb = None
        if item_ids is not None:
            xb = bucketed_forward(self.item_tower, item_ids, item_mask, self.length_buckets)
        return xq, xb, self.scale()


def bucketed_forward(
    tower: Tower, input_ids: torch.Tensor, attention_mask: torch.Tensor, buckets: int
) -> torch.Tensor:
    """``tower(input_ids, attention_mask)`` computed in ``buckets`` sub-batches of similar
    length, each cut to its own longest sequence, rows returned in input order.

    A random batch pads every text to its longest one; splitting it by length skips most of
    that padding (about 15 % less compute per step on Home Depot titles on CPU). The vectors
    are the same up to float rounding. Each bucket reads its length back from the tensor, a
    device sync, so on GPUs (where padding is cheap and syncs are not) keep ``buckets`` at 1.
    Expects right padding (``trainer.training.batches.pad_ids``).

    Returns:
        (batch, dim) float32.
    """
    n = input_ids.shape[0]
    if buckets <= 1 or n < 2 * buckets:
        return tower(input_ids, attention_mask)
    lengths = attention_mask.sum(dim=1)  # (batch,)
    order = torch.argsort(lengths, stable=True)  # (batch,) shortest first
    parts = []
    for rows in order.chunk(buckets):
        width = max(int(lengths[rows].max()), 1)
        parts.append(tower(input_ids[rows, :width], attention_mask[rows, :width]))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n, device=order.device)
    return torch.cat(parts)[inverse]  # (batch, dim) in input order


# ---------------------------------------------------------------------------------------------
# Building from a base model, saving and loading model dirs


def _load_hf_tower(
    tower_dir: Path, pooling: str, projection_dim: int | None, seed: int, *, dropout: bool
) -> Tower:
    tokenizer, encoder = load_hf_model(tower_dir)
    if not dropout:
        for module in encoder.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    hidden = int(encoder.config.hidden_size)
    saved = load_projection(tower_dir, hidden)
    projection = None
    if saved is not None:
        weight = saved["weight"]
        projection = nn.Linear(hidden, weight.shape[0], bias="bias" in saved)
        with torch.no_grad():
            projection.weight.copy_(weight)
            if "bias" in saved:
                projection.bias.copy_(saved["bias"])
        if projection_dim is not None and projection_dim != projection.out_features:
            raise ValueError(
                f"{str(tower_dir)!r} already projects to {projection.out_features} dims; "
                f"projection_dim={projection_dim} would need a new projection, drop the option"
            )
    elif projection_dim is not None and projection_dim != hidden:
        if not 0 < projection_dim <= hidden:
            raise ValueError(
                f"projection_dim must be in 1..{hidden} (the base model's hidden size), got "
                f"{projection_dim}"
            )
        projection = nn.Linear(hidden, projection_dim, bias=False)
        # A semi-orthogonal start keeps the base model's cosine geometry roughly intact (a
        # random Gaussian map would scramble it and throw the pre-training away at step 0).
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(hidden, projection_dim, generator=generator))
            projection.weight.copy_(q.T)  # (dim, hidden), orthonormal rows
    return Tower(encoder, tokenizer, pooling, projection)


def build_two_tower(
    base_model: str | Path | None = None,
    *,
    shared_towers: bool = True,
    projection_dim: int | None = None,
    pooling: str | None = None,
    temperature: float = 0.05,
    learnable_temperature: bool = False,
    dropout: bool = True,
    seed: int = 0,
) -> TwoTowerModel:
    """A two-tower model initialised from a base model dir, on CPU in float32.

    Args:
        base_model: a plain Hugging Face dir, or an Aisle model dir (its towers and pooling
            are loaded, e.g. to continue training); None → the packaged all-MiniLM-L6-v2.
        shared_towers: one tower for queries and items, or two copies trained apart. From an
            Aisle dir with separate towers, False keeps them; True is an error.
        projection_dim: add a linear projection to this many dims (orthogonal init); None or
            the hidden size = no projection.
        pooling: "mean" or "cls"; None = the base dir's own (mean for plain BERT dirs).
        temperature: initial softmax temperature; ``learnable_temperature`` trains it.
        dropout: keep the base model's dropout in training (False zeroes it).
        seed: seeds the projection's initialisation (the encoders come from the files).

    Raises:
        ValueError: the dir is missing or not a model dir, or the options do not fit it.
    """
    path = default_model_dir() if base_model is None else Path(base_model)
    info = read_model_info(path)  # validates the dir; synthesizes info for plain HF dirs
    pooling = info.pooling if pooling is None else pooling
    query_dir = path / info.query_tower
    item_dir = path / info.item_tower
    if info.shared_towers or not (path / MODEL_INFO_NAME).is_file():
        query = _load_hf_tower(query_dir, pooling, projection_dim, seed, dropout=dropout)
        item = (
            query
            if shared_towers
            else _load_hf_tower(item_dir, pooling, projection_dim, seed, dropout=dropout)
        )
    else:
        if shared_towers:
            raise ValueError(
                f"{str(path)!r} has separate query and item towers; train it with separate "
                "towers (shared_towers=False) or start from a shared-tower base"
            )
        query = _load_hf_tower(query_dir, pooling, projection_dim, seed, dropout=dropout)
        item = _load_hf_tower(item_dir, pooling, projection_dim, seed, dropout=dropout)
    base_name = info.base_model
    model = TwoTowerModel(
        query,
        item,
        temperature=temperature,
        learnable_temperature=learnable_temperature,
        base_model=base_name,
    )
    logger.info(
        "two-tower model from %s: %s towers, %s pooling, dim %d, temperature %.3g%s",
        path,
        "shared" if shared_towers else "separate",
        pooling,
        model.dim,
        temperature,
        " (learnable)" if learnable_temperature else "",
    )
    return model


def _save_tower(tower: Tower, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with no_transformers_progress_bar():
        # safetensors: the only format transformers 5 writes.
        tower.encoder.save_pretrained(str(out))
    tower.tokenizer.save_pretrained(str(out))
    if tower.projection is not None:
        from safetensors.torch import save_file

        tensors = {"weight": tower.projection.weight.detach().float().cpu().contiguous()}
        if tower.projection.bias is not None:
            tensors["bias"] = tower.projection.bias.detach().float().cpu().contiguous()
        save_file(tensors, str(out / PROJECTION_FILE), metadata={"format": "pt"})


def save_model_dir(
    model: TwoTowerModel,
    out_dir: str | Path,
    *,
    max_query_length: int,
    max_item_length: int,
    history_decay: float = DEFAULT_HISTORY_DECAY,
    lexical: LexicalSketch | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as an Aisle model dir that ``trainer.encoder.load.load_encoder`` loads.

    Layout: shared towers at the dir's root (so it is also a plain Hugging Face dir), separate
    ones in ``query_tower/`` and ``item_tower/``; each tower holds config.json,
    model.safetensors, the tokenizer files and, with a projection, ``projection.safetensors``.
    ``aisle_model.json`` records base model, pooling, lengths, dim, tower dirs, the user
    tower's ``history_decay``, the trigram sketch's settings (``lexical``, its IDF table in
    ``lexical_tower.safetensors``) and the fingerprint; ``training_metrics.json`` holds ``metrics``
    (not part of the fingerprint).

    The dir is built beside ``out_dir`` and renamed into place, so a reader never sees half a
    model; an existing ``out_dir`` is replaced.

    Returns:
        ``Path(out_dir)``.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        if model.shared_towers:
            _save_tower(model.query_tower, tmp)
            query_dir = item_dir = "."
        else:
            _save_tower(model.query_tower, tmp / QUERY_TOWER_DIR)
            _save_tower(model.item_tower, tmp / ITEM_TOWER_DIR)
            query_dir, item_dir = QUERY_TOWER_DIR, ITEM_TOWER_DIR
        info = ModelInfo(
            base_model=model.base_model or "unknown",
            pooling=model.query_tower.pooling,
            max_query_length=max_query_length,
            max_item_length=max_item_length,
            dim=model.dim,
            shared_towers=model.shared_towers,
            query_tower=query_dir,
            item_tower=item_dir,
            history_decay=history_decay,
            lexical=None if lexical is None else lexical.settings(),
        )
        if lexical is not None:
            lexical.save(tmp)
        write_model_info(tmp, info)
        write_model_info(tmp, replace(info, fingerprint=model_fingerprint(tmp)))
        if metrics is not None:
            text = json.dumps(metrics, indent=1, default=str) + "\n"
            (tmp / TRAINING_METRICS_NAME).write_text(text, encoding="utf-8")
        _default_permissions(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved model dir %s (dim %d)", out, model.dim)
    return out


def _default_permissions(root: Path) -> None:
    """mkdtemp/mkstemp create owner-only (0700/0600) entries; a model dir is read by other
    users (the server), so give it the umask's usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for path in root.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _replace_dir(new: Path, dest: Path) -> None:
    """Move ``new`` to ``dest``; an existing ``dest`` is moved aside first, then deleted."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dest, old)
    os.rename(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
