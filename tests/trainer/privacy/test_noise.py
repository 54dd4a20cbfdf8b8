"""DP noise has the stated scale; contributions are bounded per user."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from trainer.privacy.noise import DPConfig, add_noise, bounded_counts, private_counts


def test_contributions_are_bounded_per_user() -> None:
    pairs = [("u", i) for i in "abcdef"] + [("u", "a"), ("v", "a")]
    assert bounded_counts(pairs, 3) == {"a": 2, "b": 1, "c": 1}


@pytest.mark.parametrize(
    "config",
    [DPConfig(epsilon=1.0, max_items_per_user=5), DPConfig(epsilon=4.0, delta=1e-5)],
)
def test_noise_has_the_stated_distribution(config: DPConfig) -> None:
    n = 200_000
    noise = add_noise(np.zeros(n), config, np.random.default_rng(7))
    # The sample standard deviation within 2 % of the stated one (its own standard error is
    # well under 1 % at this n), and the shape is the mechanism's (Kolmogorov-Smirnov).
    assert abs(noise.std() / config.std() - 1) < 0.02
    if config.mechanism == "laplace":
        assert config.scale() == 5.0  # Δ1 = 5 items per user, ε = 1
        p = stats.kstest(noise, "laplace", args=(0, config.scale())).pvalue
    else:
        sigma = math.sqrt(10) * math.sqrt(2 * math.log(1.25 / 1e-5)) / 4.0
        assert config.scale() == pytest.approx(sigma)
        p = stats.kstest(noise, "norm", args=(0, config.scale())).pvalue
    assert p > 1e-3
    wrong = stats.kstest(noise, "laplace" if config.delta else "norm", args=(0, config.std()))
    assert wrong.pvalue < 1e-6  # the test can tell the mechanisms apart


def test_private_counts_cover_every_item_and_are_non_negative() -> None:
    config = DPConfig(epsilon=0.5, max_items_per_user=1)
    counts = private_counts([("u", "a")], ["a", "b", "c"], config, np.random.default_rng(0))
    assert counts.shape == (3,) and (counts >= 0).all()
    with pytest.raises(ValueError, match="epsilon"):
        DPConfig(epsilon=0)
