"""Student query towers and the loop that distils them (torch).

A student maps query token ids to a pooled vector in the teacher's space. Two kinds:

- ``TransformerStudent``: the teacher's BERT cut to a few of its own layers (embeddings, the
  chosen layers, pooling and projection all copied from the teacher), exported to ONNX after.
- ``StaticStudent``: one vector per token, a query is the mean of its tokens' vectors (the
  model2vec design). Rows start as the teacher's vector of the token alone, scaled by a SIF
  weight ``a / (a + p(token))`` from token frequencies of the distillation text, then are
  trained end to end.

``fit`` trains either on (query, positive item) pairs: the student's unit vector should land on
the teacher's (1 - cosine), and rank the teacher's in-batch item vectors as the teacher's query
vector does (KL between the two softmax distributions over the batch's items).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.encoder.torch_tower import TorchTower, pool_embeddings

logger = logging.getLogger(__name__)

SIF_COEFFICIENT = 1e-3
# FitSettings.steps=None: about AUTO_PASSES passes over the training queries, clipped to
# AUTO_STEPS (min, max): a test's few hundred queries take 100 steps (seconds), a shop's
# 20,000+ take the full 2000 (minutes on a CPU for the static tower). 20 passes: the static
# tower measured in docs/training.md (-1.7 % hybrid NDCG@10) had 1500 steps on ~4,800 queries;
# at 5 passes (359 steps) its held-out cosine to the teacher was 0.82, loss still falling.
AUTO_PASSES = 20
AUTO_STEPS = (100, 2000)


def auto_steps(n_queries: int, batch_size: int) -> int:
    """Training steps for ``n_queries`` queries in batches of ``batch_size`` (see AUTO_STEPS)."""
    lo, hi = AUTO_STEPS
    return int(min(hi, max(lo, math.ceil(AUTO_PASSES * n_queries / max(1, batch_size)))))


def student_layers(n_teacher: int, n_student: int) -> list[int]:
    """Which teacher layers a student of ``n_student`` layers keeps: evenly spaced, the last
    one always kept (it is the one whose outputs the pooling was trained on)."""
    if not 1 <= n_student <= n_teacher:
        raise ValueError(f"a student needs 1..{n_teacher} layers, got {n_student}")
    if n_student == 1:
        return [n_teacher - 1]
    return sorted({round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)})


def _torch() -> Any:
    import torch

    return torch


class TransformerStudent:
    """The teacher's transformer with only ``layers`` kept (a deep copy; the teacher is left
    alone). ``module`` is the trainable torch module; ``forward(batch)`` → (b, dim) pooled."""

    def __init__(self, teacher: TorchTower, layers: Sequence[int]) -> None:
        torch = _torch()
        model = copy.deepcopy(teacher.model).cpu().float()
        encoder_layers = model.encoder.layer
        model.encoder.layer = torch.nn.ModuleList([encoder_layers[i] for i in layers])
        model.config.num_hidden_layers = len(layers)
        self.model = model
        self.tokenizer = teacher.tokenizer
        self.pooling = teacher.pooling
        self.projection = (
            None
            if teacher.projection is None
            else {k: v.detach().clone().cpu() for k, v in teacher.projection.items()}
        )
        self.layers = list(layers)
        self.module = model

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, Any]:
        return dict(
            self.tokenizer(
                texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
        )

    def forward(self, batch: dict[str, Any]) -> Any:
        torch = _torch()
        hidden = self.model(**batch).last_hidden_state  # (b, seq, hidden)
        pooled = pool_embeddings(hidden, batch["attention_mask"], self.pooling)  # (b, hidden)
        if self.projection is not None:
            pooled = torch.nn.functional.linear(
                pooled, self.projection["weight"], self.projection.get("bias")
            )  # (b, dim)
        return pooled


class StaticStudent:
    """One trainable vector per token; a query is the mean of its tokens' vectors."""

    def __init__(self, embeddings: np.ndarray, tokenizer: Any) -> None:
        torch = _torch()
        self.tokenizer = tokenizer  # a transformers fast tokenizer (the teacher's)
        self.module = torch.nn.Embedding.from_pretrained(
            torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)), freeze=False
        )

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, Any]:
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=max_length,
            add_special_tokens=False,
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, batch: dict[str, Any]) -> Any:
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (b, seq, 1)
        vectors = self.module(batch["input_ids"]) * mask  # (b, seq, dim)
        return vectors.sum(1) / mask.sum(1).clamp(min=1.0)  # (b, dim)

    def embeddings(self) -> np.ndarray:
        return self.module.weight.detach().cpu().numpy().astype(np.float32)  # (vocab, dim)


def token_vectors(teacher: TorchTower, *, batch_size: int = 512) -> np.ndarray:
    """(vocab, dim): the teacher's pooled (and projected) vector of each token on its own
    (``[CLS] token [SEP]``), the static tower's starting point (model2vec's distillation)."""
    torch = _torch()
    tokenizer = teacher.tokenizer
    vocab = len(tokenizer)
    specials = [i for i in (tokenizer.cls_token_id, tokenizer.sep_token_id) if i is not None]
    out = np.zeros((vocab, teacher.dim), dtype=np.float32)
    model = teacher.model
    with torch.inference_mode():
        for start in range(0, vocab, batch_size):
            ids = torch.arange(start, min(vocab, start + batch_size)).unsqueeze(1)  # (b, 1)
            parts = [ids]
            if len(specials) == 2:
                parts = [torch.full_like(ids, specials[0]), ids, torch.full_like(ids, specials[1])]
            input_ids = torch.cat(parts, dim=1).to(teacher.device)  # (b, 3)
            mask = torch.ones_like(input_ids)
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            pooled = pool_embeddings(hidden, mask, teacher.pooling)  # (b, hidden)
            if teacher.projection is not None:
                pooled = torch.nn.functional.linear(
                    pooled, teacher.projection["weight"], teacher.projection.get("bias")
                )
            out[start : start + len(ids)] = pooled.float().cpu().numpy()
    return out


def sif_weights(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """(vocab,) SIF weights ``a / (a + p(token))`` from token counts in ``texts`` (add-one
    smoothed): frequent tokens ("for", "with") count little in a query's mean."""
    counts: Counter[int] = Counter()
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        counts.update(ids)
    vocab = len(tokenizer)
    freq = np.ones(vocab, dtype=np.float64)
    for token, count in counts.items():
        if token < vocab:
            freq[token] += count
    p = freq / freq.sum()
    return (SIF_COEFFICIENT / (SIF_COEFFICIENT + p)).astype(np.float32)


@dataclass(frozen=True)
class FitSettings:
    """The distillation loop's settings (``steps`` None: ``auto_steps`` of the queries)."""

    steps: int | None = None
    batch_size: int = 64
    lr: float = 1e-4
    temperature: float = 0.05
    rank_weight: float = 1.0  # weight of the ranking (KL) term beside 1 - cosine
    max_length: int = 32
    seed: int = 0


def fit(
    student: TransformerStudent | StaticStudent,
    texts: Sequence[str],
    teacher_q: np.ndarray,
    items: np.ndarray,
    settings: FitSettings,
) -> list[float]:
    """Train ``student`` in place on queries ``texts`` (n,), their teacher vectors ``teacher_q``
    (n, dim) unit rows, and their positive items' teacher vectors ``items`` (n, dim) unit rows.

    Returns the loss per step. Logs its progress with the time left (ETA) every 200 steps and
    once early (after 20 steps), when the rate is known.
    """
    torch = _torch()
    n = len(texts)
    if n < 2 or teacher_q.shape[0] != n or items.shape[0] != n:
        raise ValueError(f"fit needs >= 2 queries with one teacher and one item vector each, n={n}")
    steps = settings.steps if settings.steps is not None else auto_steps(n, settings.batch_size)
    generator = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    module = student.module
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    tq = torch.from_numpy(np.ascontiguousarray(teacher_q, dtype=np.float32))
    ti = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
    losses = []
    order = generator.permutation(n)
    cursor = 0
    started = time.perf_counter()
    batch_size = min(settings.batch_size, n)
    for step in range(steps):
        if cursor + batch_size > n:
            order, cursor = generator.permutation(n), 0
        rows = order[cursor : cursor + batch_size]
        cursor += batch_size
        batch = student.tokenize([texts[r] for r in rows], settings.max_length)
        s = torch.nn.functional.normalize(student.forward(batch), dim=-1, eps=1e-12)  # (b, dim)
        t, it = tq[rows], ti[rows]  # (b, dim), (b, dim)
        cosine = 1.0 - (s * t).sum(-1).mean()
        rank = torch.nn.functional.kl_div(
            torch.log_softmax(s @ it.T / settings.temperature, dim=-1),
            torch.log_softmax(t @ it.T / settings.temperature, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        loss = cosine + settings.rank_weight * rank
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 200 == 0 or step + 1 in (20, steps):
            rate = (step + 1) / (time.perf_counter() - started)
            logger.info(
                "distil step %d/%d loss %.4f (%.1f steps/s, ETA %.0fs)",
                step + 1,
                steps,
                float(np.mean(losses[-200:])),
                rate,
                (steps - step - 1) / rate,
            )
    module.eval()
    return losses


def student_vectors(
    student: TransformerStudent | StaticStudent, texts: Sequence[str], max_length: int
) -> np.ndarray:
    """(n, dim) unit student vectors of ``texts`` (torch, for evaluation)."""
    torch = _torch()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), 256):
            batch = student.tokenize(list(texts[start : start + 256]), max_length)
            vec = torch.nn.functional.normalize(student.forward(batch), dim=-1, eps=1e-12)
            out.append(vec.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
