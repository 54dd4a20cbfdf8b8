"""Tests for trainer.losses: the sampled softmax against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.training.losses import in_batch_accuracy, sampled_softmax_loss


def _unit(*rows: tuple[float, ...]) -> torch.Tensor:
    x = torch.tensor(rows, dtype=torch.float32)
    return x / x.norm(dim=1, keepdim=True)


# Two queries, their two positives and one extra (hard) negative, in 2-D so every cosine is
# easy to write down: angles 0, 90, 45 degrees.
XQ = _unit((1.0, 0.0), (0.0, 1.0))
XB = _unit((1.0, 0.0), (0.0, 1.0), (1.0, 1.0))
C = math.cos(math.pi / 4)  # cos 45° = 0.7071...


def _ce(logits: list[float], target: int) -> float:
    """Cross-entropy of one row, by hand: log-sum-exp minus the target logit."""
    finite = [v for v in logits if v != -math.inf]
    return math.log(sum(math.exp(v) for v in finite)) - logits[target]


def test_reference_with_logq_and_a_hard_negative() -> None:
    t = 0.5
    log_q = torch.tensor([math.log(0.75), math.log(0.25)])
    loss = sampled_softmax_loss(XQ, XB, temperature=t, log_q=log_q)
    # Row 0 sims (1, 0, c), row 1 sims (0, 1, c); logQ is subtracted from the two in-batch
    # columns only (the hard negative was not sampled by popularity).
    row0 = [1 / t - math.log(0.75), 0 / t - math.log(0.25), C / t]
    row1 = [0 / t - math.log(0.75), 1 / t - math.log(0.25), C / t]
    expected = (_ce(row0, 0) + _ce(row1, 1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # And without logQ: plain softmax over cos / t.
    plain = sampled_softmax_loss(XQ, XB, temperature=t)
    expected_plain = (_ce([2, 0, 2 * C], 0) + _ce([0, 2, 2 * C], 1)) / 2
    assert plain.item() == pytest.approx(expected_plain, rel=1e-6)
    assert loss.item() != pytest.approx(plain.item())


def test_logq_correction_of_a_popular_item() -> None:
    # A popular positive (large q) gets a *smaller* corrected logit when it is a negative for
    # others, so it is pushed down less: the loss of the row that has it as a negative falls.
    t = 0.5
    uniform = sampled_softmax_loss(XQ[1:], XB[1:2], temperature=t)  # trivially 0 (1 column)
    assert uniform.item() == pytest.approx(0.0, abs=1e-6)
    popular_first = torch.tensor([math.log(0.9), math.log(0.1)])
    rows = [
        _ce([2 - math.log(0.9), 0 - math.log(0.1)], 0),
        _ce([0 - math.log(0.9), 2 - math.log(0.1)], 1),
    ]
    loss = sampled_softmax_loss(XQ, XB[:2], temperature=t, log_q=popular_first)
    assert loss.item() == pytest.approx(sum(rows) / 2, rel=1e-6)


def test_uniform_logq_changes_nothing() -> None:
    # Subtracting the same constant from every in-batch column is a softmax no-op (without
    # extra columns).
    log_q = torch.full((2,), math.log(0.5))
    a = sampled_softmax_loss(XQ, XB[:2], temperature=0.1, log_q=log_q)
    b = sampled_softmax_loss(XQ, XB[:2], temperature=0.1)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_mask_removes_negatives_but_never_the_positive() -> None:
    t = 0.5
    mask = torch.tensor([[True, True, False], [False, False, True]])  # (0,0) must be ignored
    loss = sampled_softmax_loss(XQ, XB, temperature=t, mask=mask)
    row0 = [2.0, -math.inf, 2 * C]  # column 1 masked for row 0; its own positive stays
    row1 = [0.0, 2.0, -math.inf]  # the hard negative masked for row 1
    assert loss.item() == pytest.approx((_ce(row0, 0) + _ce(row1, 1)) / 2, rel=1e-6)
    # Masking everything but the positive gives zero loss.
    full = sampled_softmax_loss(XQ, XB, temperature=t, mask=torch.ones(2, 3, dtype=torch.bool))
    assert full.item() == pytest.approx(0.0, abs=1e-7)


def test_weights_make_a_weighted_mean() -> None:
    t = 0.5
    rows = [_ce([2, 0, 2 * C], 0), _ce([0, 2, 2 * C], 1)]
    weights = torch.tensor([1.0, 0.25])
    loss = sampled_softmax_loss(XQ, XB, temperature=t, weights=weights)
    assert loss.item() == pytest.approx((rows[0] + 0.25 * rows[1]) / 1.25, rel=1e-6)


def test_symmetric_adds_the_item_to_query_direction() -> None:
    t = 0.5
    xq = _unit((1.0, 0.0), (1.0, 1.0))
    xb = _unit((1.0, 0.2), (0.0, 1.0))
    s = (xq @ xb.T).tolist()  # (2, 2)
    forward = [_ce([s[0][0] / t, s[0][1] / t], 0), _ce([s[1][0] / t, s[1][1] / t], 1)]
    backward = [_ce([s[0][0] / t, s[1][0] / t], 0), _ce([s[0][1] / t, s[1][1] / t], 1)]
    loss = sampled_softmax_loss(xq, xb, temperature=t, symmetric=True)
    expected = sum(0.5 * (f + b) for f, b in zip(forward, backward, strict=True)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_learnable_temperature_gets_a_gradient() -> None:
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    loss = sampled_softmax_loss(XQ, XB, temperature=1.0 / log_scale.exp())
    loss.backward()
    assert log_scale.grad is not None and log_scale.grad.item() != 0.0


def test_gradient_flows_to_both_sides() -> None:
    xq = XQ.clone().requires_grad_(True)
    xb = XB.clone().requires_grad_(True)
    sampled_softmax_loss(xq, xb, temperature=0.05).backward()
    assert xq.grad.abs().sum() > 0 and xb.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"xb": XB[:1]}, "at least B=2 rows"),
        ({"xb": torch.ones(3, 5)}, "need xq"),
        ({"log_q": torch.zeros(3)}, "log_q must have shape"),
        ({"mask": torch.zeros(2, 2, dtype=torch.bool)}, "mask must have shape"),
        ({"weights": torch.ones(3)}, "weights must have shape"),
    ],
)
def test_shape_errors(kwargs, match) -> None:
    args = {"xb": XB, **kwargs}
    xb = args.pop("xb")
    with pytest.raises(ValueError, match=match):
        sampled_softmax_loss(XQ, xb, temperature=0.1, **args)


def test_in_batch_accuracy() -> None:
    xb = _unit((0.0, 1.0), (1.0, 0.0))  # swapped: both rows score the wrong column highest
    assert in_batch_accuracy(XQ, XB).item() == 1.0
    assert in_batch_accuracy(XQ, xb).item() == 0.0
    # Masking the winning wrong column of row 0 leaves only its positive.
    mask = torch.tensor([[False, True], [False, False]])
    assert in_batch_accuracy(XQ, xb, mask).item() == 0.5
