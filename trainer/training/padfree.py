"""A padding-free training forward for BERT encoders on CPU.

A padded batch makes every linear layer of the encoder (the query, key, value and output
projections, the feed-forward pair: nearly all of a step's FLOPs) work on the pad positions too.
Even after the trainer sorts a batch by length before cutting it into mini-batches, Home Depot's
pairs carry ~13 % padding (26.3 real tokens a pair, 30.1 padded). On a CPU, where compute is
the limit, that is ~13 % of the step. ``PaddingFreeBert`` runs the same ``BertModel`` (its own
modules and parameters, nothing copied) on the real tokens only: the embeddings, every
projection, layer norm, activation and residual see a packed (tokens, hidden) matrix; only the
attention scores are computed per text, padded to the mini-batch's longest one and masked as
Hugging Face masks them.

Dropout is the other CPU cost: ``torch.bernoulli_`` draws one Mersenne Twister number per
element, ~16 % of a MiniLM training step on two cores (19 dropout calls per forward, two
forwards per step with gradient caching). ``fast_dropout`` draws its keep/drop decisions (the
same distribution, not the same masks) from 16 random bits per element (four per 64-bit draw of
the same generator, so the RNG state still replays them: gradient caching's second pass gets the
same masks), keeping an element with probability 1 - round(p x 65536) / 65536 (p = 0.1:
0.0000061 off) and scaling by its inverse.

On GPUs neither pays: padding is cheap there, and the packing index would be a host-device
sync. The trainer uses this only for training-mode forwards on CPU (``padding_free = "auto"``);
evaluation, export and serving keep the Hugging Face forward, and the vectors are the same up to
float rounding (tested).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_BITS = 65536  # 16-bit draws


def keep_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """Inverted dropout's keep decisions for ``x``: a bool mask in ``x``'s shape (True = kept)
    and the scale 1 / (1 - q) for the kept elements (q = round(p x 65536) / 65536; see the
    module docstring)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p!r}")
    threshold = round(p * _BITS)  # drop when the draw < threshold
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
    words.random_(-(2**63), None)  # full 64-bit range: four independent 16-bit fields
    draws = words.view(torch.int16)[:n].view(x.shape)
    # int16 reads the 16 bits as [-32768, 32767]: a draw u in [0, 65536) is u - 32768.
    return draws >= threshold - _BITS // 2, _BITS / (_BITS - threshold)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``x`` with 16-bit random draws (see the module docstring).

    Args:
        x: any float tensor.
        p: drop probability in [0, 1).
        training: False (or p == 0) returns ``x`` unchanged.
    """
    if not training or p == 0.0:
        return x
    keep, scale = keep_mask(x, p)
    return torch.mul(x, keep).mul_(scale)


def dropout_add(
    x: torch.Tensor, residual: torch.Tensor, p: float, training: bool = True
) -> torch.Tensor:
    """``fast_dropout(x, p) + residual`` in one pass (``torch.addcmul``)."""
    if not training or p == 0.0:
        return x + residual
    keep, scale = keep_mask(x, p)
    return torch.addcmul(residual, x, keep, value=scale)


class PaddingFreeBert:
    """Runs a Hugging Face ``BertModel`` on the real tokens of a padded batch.

    Not a module: it holds the model it runs (whose parameters train as usual) and adds no
    state. ``__call__`` returns the last hidden state in the padded layout (pads zero), as
    ``model(...).last_hidden_state`` would, so pooling is unchanged.

    With ``sparse_embedding_grad`` the word-embedding lookup gives a sparse gradient (the rows
    of the batch's tokens): a dense one is a zero-filled vocabulary x hidden matrix per backward
    call (30,522 x 384 for MiniLM, 32 calls a step with gradient caching), ~5 % of a CPU step.
    The first forward with a graph after the gradient was cleared sets it to one dense zero
    matrix, into which autograd adds each backward call's sparse rows in place (an index_add;
    sparse + sparse would concatenate, copying every earlier row again), so the optimizer and
    clipping see a dense gradient. ``dense_gradients`` turns dense any sparse one left (a
    gradient cleared between forward and backward). Not under DDP, which reduces dense ones.
    """

    def __init__(self, model: nn.Module, *, sparse_embedding_grad: bool = False) -> None:
        reason = self.unsupported(model)
        if reason:
            raise ValueError(f"padding-free forward: {reason}")
        self.model = model
        self.sparse_embedding_grad = sparse_embedding_grad
        config = model.config
        self.heads = int(config.num_attention_heads)
        self.head_dim = int(config.hidden_size) // self.heads

    @staticmethod
    def unsupported(model: nn.Module) -> str:
        """Why ``model`` cannot run padding-free ("" when it can): only an encoder-only
        ``BertModel`` with absolute positions, whose every layer has the standard parts."""
        try:
            from transformers import BertModel
        except ImportError:  # pragma: no cover - transformers is a dependency
            return "transformers is not installed"
        if not isinstance(model, BertModel):
            return f"{type(model).__name__} is not a BertModel"
        config = model.config
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            return "a decoder BERT"
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            return f"position_embedding_type {config.position_embedding_type!r}"
        if getattr(config, "chunk_size_feed_forward", 0):
            return "chunked feed-forward"
        if config.hidden_size % config.num_attention_heads:
            return "hidden_size is not a multiple of the heads"
        return ""

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) ids and mask (1 = token) → (batch, seq, hidden), pads zero."""
        model = self.model
        training = model.training
        batch, seq = input_ids.shape
        real = attention_mask.reshape(-1).nonzero().squeeze(1)  # (tokens,) flat positions
        emb = model.embeddings
        positions = real % seq
        words = emb.word_embeddings
        weight = words.weight
        if (
            self.sparse_embedding_grad
            and weight.requires_grad
            and weight.grad is None
            and torch.is_grad_enabled()
        ):  # the step's sparse gradients accumulate into this in place (class docstring)
            weight.grad = torch.zeros_like(weight)
        dense = words.sparse
        words.sparse = self.sparse_embedding_grad  # the module's own call: its hooks still run
        try:
            tokens = words(input_ids.reshape(-1)[real])
        finally:
            words.sparse = dense
        h = tokens + emb.position_embeddings(positions) + emb.token_type_embeddings.weight[0]
        h = fast_dropout(emb.LayerNorm(h), emb.dropout.p, training)
        keys = attention_mask.to(torch.bool)
        bias = torch.zeros((batch, 1, 1, seq), dtype=h.dtype, device=h.device)
        bias.masked_fill_(~keys[:, None, None, :], torch.finfo(h.dtype).min)
        for layer in model.encoder.layer:
            h = self._layer(layer, h, real, bias, batch, seq, training)
        hidden = h.new_zeros((batch * seq, h.shape[-1])).index_copy_(0, real, h)
        return hidden.view(batch, seq, -1)

    def _layer(
        self,
        layer: Any,
        h: torch.Tensor,
        real: torch.Tensor,
        bias: torch.Tensor,
        batch: int,
        seq: int,
        training: bool,
    ) -> torch.Tensor:
        attn = layer.attention
        sa = attn.self
        weight = torch.cat([sa.query.weight, sa.key.weight, sa.value.weight])
        qkv_bias = torch.cat([sa.query.bias, sa.key.bias, sa.value.bias])
        qkv = F.linear(h, weight, qkv_bias)  # (tokens, 3 * hidden)
        padded = qkv.new_zeros((batch * seq, qkv.shape[-1])).index_copy_(0, real, qkv)
        q, k, v = padded.view(batch, seq, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim)) + bias
        probs = fast_dropout(torch.softmax(scores, dim=-1), sa.dropout.p, training)
        context = torch.matmul(probs, v).transpose(1, 2).reshape(batch * seq, -1)[real]
        out = attn.output
        a = out.LayerNorm(dropout_add(out.dense(context), h, out.dropout.p, training))
        inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(a))
        ffn = layer.output
        return ffn.LayerNorm(dropout_add(ffn.dense(inner), a, ffn.dropout.p, training))


def dense_gradients(params: Any) -> None:
    """Turn every sparse ``.grad`` of ``params`` dense, in place (see ``PaddingFreeBert``)."""
    for param in params:
        if param.grad is not None and param.grad.is_sparse:
            param.grad = param.grad.to_dense()
