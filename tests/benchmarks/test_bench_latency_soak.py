"""The soak summary of bench_latency: RSS slope after warm-up and open descriptors over time."""

from __future__ import annotations

import pytest

from benchmarks.bench_latency import soak_trend


def test_soak_trend_fits_the_slope_after_warm_up() -> None:
    # 120 s, one sample a second: a steep warm-up (caches filling), then 3 MB/min of growth.
    samples = [
        (float(t), 100.0 + (t if t < 30 else 30 + 3 * (t - 30) / 60), 40 + (t % 3))
        for t in range(121)
    ]
    trend = soak_trend(samples)
    assert trend["rss_mb_per_min"] == pytest.approx(3.0, abs=0.01)
    assert trend["warmup_s"] == 30.0
    assert trend["fds_first_last_max"] == [40, 40, 42]
    assert trend["rss_mb_first_last_max"][0] == 100.0
    assert trend["samples"] == 121
    assert len(trend["series_s_rss_mb_fds"]) <= 21


def test_soak_trend_without_samples() -> None:
    assert soak_trend([]) == {"rss_mb_per_min": None, "samples": 0}
