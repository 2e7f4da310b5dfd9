"""Statistics of an A/B test on proportions (closed forms; scipy is not a dependency).

* :func:`wilson_interval`: the Wilson score interval of one proportion,
  ``(p̂ + z²/2n ± z·sqrt(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n)`` (Wilson 1927).
* :func:`two_proportion_z_test`: the pooled two-proportion z-test, valid when the sample size
  is fixed in advance and the data are looked at once.
* :func:`msprt`: the mixture sequential probability ratio test (Robbins 1970; Johari, Koomen,
  Pekelis & Walsh, "Peeking at A/B tests", KDD 2017, eq. 11; Johari et al., "Always valid
  inference", Operations Research 2022). For the difference ``θ = p_B - p_A`` estimated by
  ``θ̂`` with variance ``V = p̂_A(1-p̂_A)/n_A + p̂_B(1-p̂_B)/n_B`` and a normal mixing
  distribution ``θ ~ N(0, τ²)`` over the alternative, the likelihood ratio is

      Λ = sqrt(V / (V + τ²)) · exp( θ̂² τ² / (2 V (V + τ²)) )

  and the always-valid p-value after looks 1..t is ``p_t = min(1, min_{s<=t} 1/Λ_s)``.
  Under H0 ``Λ`` is a (near-)martingale with mean 1, so by Ville's inequality
  ``P(sup_t Λ_t >= 1/α) <= α``: one may look every day and stop the first time ``p_t < α``
  while keeping the false-positive rate at ``α``. (``V`` is the plug-in binomial variance, as
  in Optimizely's Stats Engine; the guarantee is then asymptotic, which the simulator checks.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_NORMAL = NormalDist()
DEFAULT_TAU = 0.05
"""Default mixing standard deviation: the size of absolute effect on a proportion the test is
most sensitive to (5 percentage points; click-through rates here are ~0.1-0.2)."""


def z_quantile(alpha: float) -> float:
    """The two-sided critical value ``z_{1-α/2}`` (1.95996 for α = 0.05)."""
    return _NORMAL.inv_cdf(1 - alpha / 2)


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The Wilson score interval (lower, upper) for ``successes`` out of ``n``; (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    z = z_quantile(alpha)
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


@dataclass(frozen=True)
class ZTest:
    """``diff`` = p_B - p_A, its unpooled normal ``ci`` (1-α), the pooled ``z`` and two-sided ``p``."""

    diff: float
    ci: tuple[float, float]
    z: float
    p: float


def two_proportion_z_test(x_a: int, n_a: int, x_b: int, n_b: int, alpha: float = 0.05) -> ZTest:
    """Pooled two-proportion z-test of p_A = p_B: ``z = (p̂_B - p̂_A) / sqrt(p̂(1-p̂)(1/n_A + 1/n_B))``
    with ``p̂ = (x_A + x_B) / (n_A + n_B)``; p = 2(1 - Φ(|z|)). A degenerate case (no data, or
    every unit the same) gives z = 0, p = 1."""
    if n_a <= 0 or n_b <= 0:
        return ZTest(0.0, (-1.0, 1.0), 0.0, 1.0)
    p_a, p_b = x_a / n_a, x_b / n_b
    pooled = (x_a + x_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    half = z_quantile(alpha) * se
    diff = p_b - p_a
    if se_pooled == 0:
        return ZTest(diff, (diff - half, diff + half), 0.0, 1.0)
    z = diff / se_pooled
    return ZTest(diff, (diff - half, diff + half), z, 2 * (1 - _NORMAL.cdf(abs(z))))


def msprt_likelihood_ratio(x_a: int, n_a: int, x_b: int, n_b: int, tau: float = DEFAULT_TAU) -> float:
    """``Λ`` of the module docstring for the data so far (1.0 when the variance is still 0)."""
    if n_a <= 0 or n_b <= 0:
        return 1.0
    p_a, p_b = x_a / n_a, x_b / n_b
    variance = p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b
    if variance <= 0:
        return 1.0
    tau2 = tau * tau
    exponent = (p_b - p_a) ** 2 * tau2 / (2 * variance * (variance + tau2))
    return math.sqrt(variance / (variance + tau2)) * math.exp(min(exponent, 700.0))


def msprt(looks: list[tuple[int, int, int, int]], tau: float = DEFAULT_TAU) -> list[float]:
    """Always-valid p-values after each look; ``looks`` are cumulative ``(x_A, n_A, x_B, n_B)``,
    one per look (e.g. per day). Non-increasing; stop the first time one is below α."""
    p_values, running = [], 1.0
    for x_a, n_a, x_b, n_b in looks:
        running = min(running, 1.0 / msprt_likelihood_ratio(x_a, n_a, x_b, n_b, tau))
        p_values.append(running)
    return p_values
