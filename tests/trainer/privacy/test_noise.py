"""DP noise has the stated scale; contributions are bounded per user."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.privacy.noise import DPConfig, add_noise, bounded_counts, private_counts


def laplace_cdf(x: np.ndarray, b: float) -> np.ndarray:
    return np.where(x < 0, 0.5 * np.exp(x / b), 1 - 0.5 * np.exp(-x / b))


def normal_cdf(x: np.ndarray, sigma: float) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(x / (sigma * math.sqrt(2))))


def ks_distance(sample: np.ndarray, cdf) -> float:
    """The Kolmogorov-Smirnov statistic of `sample` against `cdf`."""
    x = np.sort(sample)
    n = len(x)
    f = cdf(x)
    return float(max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max()))


def test_contributions_are_bounded_per_user() -> None:
    pairs = [("u", i) for i in "abcdef"] + [("u", "a"), ("v", "a")]
    assert bounded_counts(pairs, 3) == {"a": 2, "b": 1, "c": 1}


@pytest.mark.parametrize(
    "config",
    [DPConfig(epsilon=1.0, max_items_per_user=5), DPConfig(epsilon=4.0, delta=1e-5)],
)
def test_noise_has_the_stated_distribution(config: DPConfig) -> None:
    n = 100_000
    critical = 1.95 / math.sqrt(n)  # KS at a significance of 0.001
    noise = add_noise(np.zeros(n), config, np.random.default_rng(7))
    # The sample standard deviation within 2 % of the stated one (its own standard error is
    # well under 1 % at this n), and the shape is the mechanism's (Kolmogorov-Smirnov).
    assert abs(noise.std() / config.std() - 1) < 0.02
    laplace = lambda x: laplace_cdf(x, config.std() / math.sqrt(2))  # noqa: E731
    normal = lambda x: normal_cdf(x, config.std())  # noqa: E731
    if config.mechanism == "laplace":
        assert config.scale() == 5.0  # Δ1 = 5 items per user, ε = 1
        right, wrong = laplace, normal
    else:
        sigma = math.sqrt(10) * math.sqrt(2 * math.log(1.25 / 1e-5)) / 4.0
        assert config.scale() == pytest.approx(sigma)
        right, wrong = normal, laplace
    assert ks_distance(noise, right) < critical
    assert ks_distance(noise, wrong) > 3 * critical  # the test tells the mechanisms apart


def test_private_counts_cover_every_item_and_are_non_negative() -> None:
    config = DPConfig(epsilon=0.5, max_items_per_user=1)
    counts = private_counts([("u", "a")], ["a", "b", "c"], config, np.random.default_rng(0))
    assert counts.shape == (3,) and (counts >= 0).all()
    with pytest.raises(ValueError, match="epsilon"):
        DPConfig(epsilon=0)
