"""Statistics that survive peeking: always-valid confidence sequences for bounded means.

A rollout looks at its numbers every evaluation interval, for as long as it runs. A fixed-n test
(t-test, z-test) read that often rejects a true null far more often than its alpha. A *confidence
sequence* (CS) is a sequence of intervals that holds the true mean at *every* time at once with
probability >= 1 - alpha, so it may be read after every batch and acted on as soon as it excludes
a value:

    P(exists t >= 1: mu not in CS_t) <= alpha

Method: the empirical-Bernstein confidence sequence with the polynomial stitched boundary of
Howard, Ramdas, McAuliffe and Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Annals of Statistics 49(2), 2021 -- Theorem 4 (empirical Bernstein: for observations
in [a, b] and any predictable estimate X^_i in [a, b], S_t = sum(X_i - mu) is sub-exponential with
variance process V_t = sum((X_i - X^_i)^2) and scale c = b - a) with Theorem 1 / eq. (10)
(the stitched boundary u(v) below, valid for every t simultaneously, for v >= m). It is
nonasymptotic (exact for any sample size, no normal approximation) and variance-adaptive, which
matters for error rates near 0.

Two variants (candidate vs control), two methods for the difference of means:

- "eb": each variant gets its own EB CS at alpha/2; the difference lies in
  [lo_c - hi_s, hi_c - lo_s] at every time with probability >= 1 - alpha (union bound). Exact
  for any n, but about twice as wide as it needs to be.
- "msprt" (default): the mixture sequential probability ratio test of Johari, Koomen, Pekelis and
  Walsh, "Peeking at A/B tests: why it matters, and what to do about it", KDD 2017 (and
  "Always valid inference", Operations Research 70(3), 2022): the difference of means is
  approximately normal with variance V = var_c/n_c + var_s/n_s; mixing the likelihood ratio over
  a N(0, tau^2) prior on the effect gives the always-valid interval

      |diff - theta| < sqrt( V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)) ).

  It is valid as n grows (a normal approximation), so the A/A simulation in
  tests/serving/rollouts/test_simulate.py is what shows its false-decision rates stay under
  alpha at our sample sizes (min_samples per variant before any verdict).

Everything here is pure numpy and vectorised over leading axes, so the A/A simulation can run
thousands of rollouts at once with the same code the evaluator calls on one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

# Boundary shape (Howard et al. 2021, eq. (10)): eta = spacing of the stitched epochs, s = the
# polynomial's exponent (their defaults eta=2, s=1.4), M_INTRINSIC = the intrinsic time (variance)
# below which the boundary is held flat. Smaller m tightens early intervals, loosens late ones.
ETA = 2.0
S_EXP = 1.4
M_INTRINSIC = 5.0
_ZETA_S = 3.1055  # Riemann zeta(1.4)


def stitched_boundary(v: ArrayLike, alpha: float, c: float = 1.0, m: float = M_INTRINSIC) -> NDArray[np.float64]:
    """One-sided boundary u(v): P(exists t: S_t >= u(max(V_t, m))) <= alpha for a sub-gamma S_t.

    u(v) = sqrt(k1^2 v l(v) + k2^2 c^2 l(v)^2) + c k2 l(v),
    l(v) = s log log(eta v / m) + log(zeta(s) / (alpha log(eta)^s)),
    k1 = (eta^1/4 + eta^-1/4) / sqrt 2,  k2 = (sqrt eta + 1) / 2.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    v = np.maximum(np.asarray(v, dtype=np.float64), m)
    k1 = (ETA**0.25 + ETA**-0.25) / np.sqrt(2.0)
    k2 = (np.sqrt(ETA) + 1.0) / 2.0
    ell = S_EXP * np.log(np.log(ETA * v / m)) + np.log(_ZETA_S / (alpha * np.log(ETA) ** S_EXP))
    return np.sqrt(k1**2 * v * ell + k2**2 * c**2 * ell**2) + c * k2 * ell


@dataclass(frozen=True)
class Interval:
    """Running mean and its always-valid interval after n observations (n may be 0: [lo, hi] = [0, 1])."""

    n: int
    mean: float
    lo: float
    hi: float


def variance_process(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """V_t = sum_i (X_i - X^_i)^2 along the last axis, X^_i the running mean of X_1..X_{i-1} with a
    pseudo-observation of 1/2 (predictable: it never uses X_i itself)."""
    t = np.arange(1, x.shape[-1] + 1, dtype=np.float64)
    before = np.cumsum(x, axis=-1) - x
    return np.cumsum((x - (0.5 + before) / t) ** 2, axis=-1)


def eb_bounds(
    total: ArrayLike, variance: ArrayLike, n: ArrayLike, alpha: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(mean, lo, hi) of the two-sided EB CS from the running sum and V_t after n observations."""
    n = np.asarray(n, dtype=np.float64)
    mean = np.asarray(total, dtype=np.float64) / n
    radius = stitched_boundary(variance, alpha / 2.0) / n
    return mean, np.clip(mean - radius, 0.0, 1.0), np.clip(mean + radius, 0.0, 1.0)


def running_cs(x: ArrayLike, alpha: float) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Mean, lower and upper bound of the two-sided EB confidence sequence after each observation.

    x: observations in [0, 1] along the last axis (any leading axes: independent sequences).
    Returns three arrays of x's shape; index t-1 holds the interval after t observations.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError("observations must lie in [0, 1]")
    t = np.arange(1, x.shape[-1] + 1, dtype=np.float64)
    return eb_bounds(np.cumsum(x, axis=-1), variance_process(x), t, alpha)


def interval(x: ArrayLike, alpha: float) -> Interval:
    """The always-valid interval after all of x (one sequence)."""
    values = np.asarray(x, dtype=np.float64).ravel()
    if values.size == 0:
        return Interval(0, float("nan"), 0.0, 1.0)
    mean, lo, hi = running_cs(values, alpha)
    return Interval(int(values.size), float(mean[-1]), float(lo[-1]), float(hi[-1]))


@dataclass(frozen=True)
class Comparison:
    """candidate - control: each variant's interval at alpha/2 and the difference's bounds."""

    candidate: Interval
    control: Interval
    diff_lo: float
    diff_hi: float


def compare(candidate: ArrayLike, control: ArrayLike, alpha: float, method: str = "msprt") -> Comparison:
    """Always-valid bounds on mean(candidate) - mean(control) at level alpha.

    Each variant's own interval (for people to read) is its EB CS at alpha / 2."""
    c_x = np.asarray(candidate, dtype=np.float64).ravel()
    s_x = np.asarray(control, dtype=np.float64).ravel()
    c, s = interval(c_x, alpha / 2.0), interval(s_x, alpha / 2.0)
    if method == "eb" or c.n == 0 or s.n == 0:
        return Comparison(c, s, c.lo - s.hi, c.hi - s.lo)
    if method != "msprt":
        raise ValueError(f"method {method!r} is not one of msprt, eb")
    var_c = regularised_variance(c_x.sum(), (c_x**2).sum(), c.n)
    var_s = regularised_variance(s_x.sum(), (s_x**2).sum(), s.n)
    lo, hi = msprt_diff(c.mean, var_c, c.n, s.mean, var_s, s.n, alpha)
    return Comparison(c, s, float(lo), float(hi))


# The mixture's prior scale on the difference (rate or score points): the interval is tightest when
# tau^2 is near V at the time decisions are made; 0.05 suits hundreds to thousands of samples.
MSPRT_TAU = 0.05


def regularised_variance(total: ArrayLike, total_sq: ArrayLike, n: ArrayLike) -> NDArray[np.float64]:
    """Sample variance with one pseudo-observation of variance 1/4 (the most a [0, 1] value can
    have), so a run of identical values (no errors yet) never claims zero variance."""
    n = np.asarray(n, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    squares = np.asarray(total_sq, dtype=np.float64) - total**2 / np.maximum(n, 1.0)
    return (np.maximum(squares, 0.0) + 0.25) / (n + 1.0)


def msprt_diff(
    mean_c: ArrayLike,
    var_c: ArrayLike,
    n_c: ArrayLike,
    mean_s: ArrayLike,
    var_s: ArrayLike,
    n_s: ArrayLike,
    alpha: float,
    tau: float = MSPRT_TAU,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Always-valid (lo, hi) for mean_c - mean_s by the normal-mixture SPRT (Johari et al. 2017)."""
    v = np.asarray(var_c, dtype=np.float64) / np.asarray(n_c, dtype=np.float64)
    v = v + np.asarray(var_s, dtype=np.float64) / np.asarray(n_s, dtype=np.float64)
    t2 = tau * tau
    radius = np.sqrt(v * (v + t2) / t2 * (2.0 * np.log(1.0 / alpha) + np.log((v + t2) / v)))
    diff = np.asarray(mean_c, dtype=np.float64) - np.asarray(mean_s, dtype=np.float64)
    return diff - radius, diff + radius


def exceedance(latencies: ArrayLike, threshold_s: float) -> NDArray[np.float64]:
    """1.0 where a latency is above the threshold: the Bernoulli sequence the latency guard tests.

    The p95 itself is not a mean, so the guard tests what a p95 regression means: with a threshold
    frozen at the control's p95 before the comparison starts, a candidate whose p95 is above it
    exceeds the threshold more often than the control's 5%. A mean of 0/1 values in [0, 1] fits
    the confidence sequence above exactly.
    """
    return (np.asarray(latencies, dtype=np.float64) > threshold_s).astype(np.float64)
