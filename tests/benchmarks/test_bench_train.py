"""bench_train's steady-state summary: which tokens count as one pass, which as fed."""

from __future__ import annotations

from benchmarks.bench_train import StepTiming, summarize


def _steps(calls: list[tuple[int, int, bool]], n: int = 3) -> list[StepTiming]:
    return [StepTiming(end=float(k), compute_s=0.5, pairs=4, calls=list(calls)) for k in range(n)]


def test_cached_steps_count_the_graph_pass_as_the_tokens_per_pair() -> None:
    # gradient caching: two calls without a graph (pass 1), then the same two with one
    calls = [(4, 10, False), (4, 30, False), (4, 10, True), (4, 30, True)]
    summary = summarize(_steps(calls), warmup=1, setup_s=0.0)
    assert summary["tokens_per_pair"] == 40.0  # 10 + 30: one forward and backward a pair
    assert summary["tokens_fed_per_pair"] == 80.0  # both passes
    assert summary["padded_query_len_mean"] is None  # four calls a step: no query/item split
    assert summary["pairs_per_s"] == 4.0 and summary["encoder_calls_per_step"] == 4.0


def test_plain_steps_split_query_and_item_lengths_and_packed_ones_count_tokens() -> None:
    summary = summarize(_steps([(4, 8, True), (4, 20, True)]), warmup=1, setup_s=0.0)
    assert (summary["padded_query_len_mean"], summary["padded_item_len_mean"]) == (8.0, 20.0)
    assert summary["tokens_per_pair"] == summary["tokens_fed_per_pair"] == 28.0
    # padding-free: 1-D lookups of the real tokens, recorded as (tokens, 0)
    packed = summarize(_steps([(30, 0, False), (50, 0, True)]), warmup=1, setup_s=0.0)
    assert packed["tokens_per_pair"] == 12.5 and packed["tokens_fed_per_pair"] == 20.0
    assert packed["padded_item_len_mean"] is None
