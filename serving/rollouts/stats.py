"""Always-valid comparisons at the unit of assignment, stratified by rollout step.

The gateway assigns a rollout's variant sticky per user (`assign_variant` over the A/B key), so
one user's requests are not independent: a user who sends many requests with a high error rate
moves their variant's rate by much more than a per-request variance allows for. A test that
treats requests as independent then rejects a true null far more often than alpha (41% of A/A
rollouts with 300 heavy-tailed users, docs/rollouts.md). Everything here is therefore computed
per *unit* (the user the variant is sticky for), from per-unit aggregates (store.UnitTable):

1. Unit means with capped weights. In one step, unit i of variant v has `count` observations
   (requests, or ratings for feedback) with sum `total`; its mean is m_i = total / count and its
   weight w_i = min(count, cap). A variant's estimate at step s is the weighted mean of its units'
   means, theta_sv = sum w_i m_i / sum w_i. The cap bounds what one user can move the estimate:
   a key that rates a thousand answers weighs as much as one that rates `cap`.
2. Stratified by step (Cochran-Mantel-Haenszel style). Each step s compares candidate and control
   within the step, d_s = theta_s,candidate - theta_s,control, so allocation changes (10% -> 50%)
   plus drift shared by both versions cannot bias the comparison; the steps are combined as
   d = sum_s omega_s d_s with omega_s proportional to 1 / (1/W_s,candidate + 1/W_s,control).
3. Cluster-robust (delta-method / sandwich) variance over units: d is a smooth function of
   per-unit sums, with influence of unit i IF_i = sum over the unit's (step, variant) cells of
   +-omega_s w_i (m_i - theta_sv) / W_sv; V = K/(K-1) sum_i IF_i^2 (K units; the CR1 correction
   of Liang and Zeger, Biometrika 73(1), 1986; Cameron and Miller, "A practitioner's guide to
   cluster-robust inference", J. Human Resources 50(2), 2015). A user seen in two steps, on either
   variant, is one cluster. One pseudo-unit of variance 1/4 per cell keeps V above 0 when no
   errors have been seen.
4. Always valid: the normal-mixture boundary on d with the plug-in variance V,

       |d - delta| < sqrt( V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)) ),

   the mixture SPRT of Johari, Koomen, Pekelis and Walsh ("Peeking at A/B tests", KDD 2017;
   "Always valid inference", Operations Research 70(3), 2022). With a consistent plug-in variance
   it is an asymptotic confidence sequence in the sense of Waudby-Smith, Arbour, Sinha, Kennedy
   and Ramdas, "Time-uniform central limit theory and asymptotic confidence sequences" (Annals of
   Statistics, 2024): valid at every look as the number of units grows. Being asymptotic, its
   error rates at our sizes are shown by the simulation (simulate.py) rather than proved.

Everything is numpy, vectorised over leading axes: the simulation evaluates a thousand rollouts at
once with the same functions the evaluator calls on one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

# The mixture's prior scale on the difference (rate or score points): the interval is tightest when
# tau^2 is near V when decisions are made; 0.05 suits hundreds to thousands of units.
MSPRT_TAU = 0.05
# The most observations one unit counts for in one step (requests, ratings): see point 1 above.
UNIT_WEIGHT_CAP = 10.0
PSEUDO_VARIANCE = 0.25  # the variance of one pseudo-unit per cell: the most a [0, 1] value can have

F = NDArray[np.float64]


def mixture_radius(variance: ArrayLike, alpha: float, tau: float = MSPRT_TAU) -> F:
    """Half-width of the two-sided normal-mixture confidence sequence for an estimate of variance V."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    v = np.maximum(np.asarray(variance, dtype=np.float64), 1e-300)
    t2 = tau * tau
    return np.sqrt(v * (v + t2) / t2 * (2.0 * np.log(1.0 / alpha) + np.log((v + t2) / v)))


def msprt_diff(
    mean_c: ArrayLike,
    var_c: ArrayLike,
    n_c: ArrayLike,
    mean_s: ArrayLike,
    var_s: ArrayLike,
    n_s: ArrayLike,
    alpha: float,
    tau: float = MSPRT_TAU,
) -> tuple[F, F]:
    """Always-valid (lo, hi) for mean_c - mean_s from two independent samples' variances and sizes."""
    v = np.asarray(var_c, dtype=np.float64) / np.asarray(n_c, dtype=np.float64)
    v = v + np.asarray(var_s, dtype=np.float64) / np.asarray(n_s, dtype=np.float64)
    diff = np.asarray(mean_c, dtype=np.float64) - np.asarray(mean_s, dtype=np.float64)
    radius = mixture_radius(v, alpha, tau)
    return diff - radius, diff + radius


@dataclass(frozen=True)
class Cells:
    """One guard's per-unit aggregates, dense: `total` and `count` of shape (..., units, columns);
    column j holds step `strata[j]` of the candidate when `candidate[j]`, else of the control (a
    unit is on one variant per step: its column of the other variant is 0). Leading axes are
    independent rollouts."""

    total: NDArray
    count: NDArray
    strata: NDArray  # (columns,) step index of each column
    candidate: NDArray  # (columns,) bool


def unit_terms(total: ArrayLike, count: ArrayLike, cap: float = UNIT_WEIGHT_CAP) -> tuple[F, F]:
    """(a, b) = (w m, w) per unit and column: the capped weight times the unit mean, and the weight."""
    count = np.asarray(count, dtype=np.float64)
    w = np.minimum(count, cap)
    return w * np.asarray(total, dtype=np.float64) / np.maximum(count, 1.0), w


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of the stratified estimate and its cluster-robust variance: sums over
    units of a, b (shape (..., C)) and of their products per column pair (..., C, C), and the number
    of units with any weight. Additive over units, so a simulation can update them incrementally."""

    a: F
    b: F
    aa: F
    ab: F  # ab[j, k] = sum_i a_ij b_ik
    bb: F
    units: NDArray
    strata: NDArray
    candidate: NDArray

    @classmethod
    def of(cls, cells: Cells, cap: float = UNIT_WEIGHT_CAP) -> Moments:
        a, b = unit_terms(cells.total, cells.count, cap)
        return cls(
            a.sum(axis=-2),
            b.sum(axis=-2),
            np.einsum("...ij,...ik->...jk", a, a),
            np.einsum("...ij,...ik->...jk", a, b),
            np.einsum("...ij,...ik->...jk", b, b),
            (b > 0).any(axis=-1).sum(axis=-1),
            cells.strata,
            cells.candidate,
        )


def _gather(x: F, index: NDArray) -> F:
    """x[..., index] with index -1 meaning 0 (a step without that variant)."""
    padded = np.concatenate([x, np.zeros((*x.shape[:-1], 1))], axis=-1)
    return padded[..., np.where(index < 0, x.shape[-1], index)]


def step_weights(mo: Moments) -> tuple[NDArray, NDArray, NDArray, F, NDArray]:
    """(steps, candidate column per step, control column per step (-1: none), omega, both): how the
    stratified difference weighs each step, omega_s proportional to the harmonic of the two arms'
    weights, 0 where a step lacks either arm (both: the steps that have the two)."""
    steps = np.unique(mo.strata)
    where = {(int(s), bool(c)): j for j, (s, c) in enumerate(zip(mo.strata, mo.candidate, strict=True))}
    cand = np.array([where.get((int(s), True), -1) for s in steps], dtype=np.int64)
    ctrl = np.array([where.get((int(s), False), -1) for s in steps], dtype=np.int64)
    w_c, w_s = _gather(mo.b, cand), _gather(mo.b, ctrl)  # (..., S)
    both = (w_c > 0) & (w_s > 0)
    safe_c, safe_s = np.maximum(w_c, 1e-300), np.maximum(w_s, 1e-300)
    harmonic = np.where(both, safe_c * safe_s / (safe_c + safe_s), 0.0)
    omega = harmonic / np.maximum(harmonic.sum(axis=-1, keepdims=True), 1e-300)
    return steps, cand, ctrl, omega, both


def stratified_difference(mo: Moments, alpha: float, tau: float = MSPRT_TAU) -> tuple[F, F, F, F, NDArray]:
    """(diff, lo, hi, variance, strata used) of candidate - control for every leading index.

    Where no step has both variants yet: diff NaN, bounds [-1, 1], variance inf."""
    steps, cand, ctrl, omega, both = step_weights(mo)
    theta = mo.a / np.maximum(mo.b, 1e-300)  # per column
    diff = (omega * (_gather(theta, cand) - _gather(theta, ctrl))).sum(axis=-1)
    # Influence of unit i: sum_j c_j (a_ij - theta_j b_ij), c_j = +-omega_s(j) / B_j.
    step_of = np.searchsorted(steps, mo.strata)
    sign = np.where(mo.candidate, 1.0, -1.0)
    c = sign * omega[..., step_of] / np.maximum(mo.b, 1e-300)
    cj, ck = c[..., :, None], c[..., None, :]
    tj, tk = theta[..., :, None], theta[..., None, :]
    quad = mo.aa - tk * mo.ab - tj * np.swapaxes(mo.ab, -1, -2) + tj * tk * mo.bb
    spread = np.maximum((cj * ck * quad).sum(axis=(-2, -1)), 0.0)
    correction = mo.units / np.maximum(mo.units - 1, 1)
    pseudo = (omega[..., step_of] ** 2 * PSEUDO_VARIANCE / np.maximum(mo.b, 1.0) ** 2).sum(axis=-1)
    variance = correction * spread + pseudo
    used = both.sum(axis=-1)
    radius = mixture_radius(variance, alpha, tau)
    none = used == 0
    diff = np.where(none, np.nan, diff)
    return (
        diff,
        np.where(none, -1.0, diff - radius),
        np.where(none, 1.0, diff + radius),
        np.where(none, np.inf, variance),
        used,
    )


@dataclass(frozen=True)
class Arm:
    """One variant over the whole rollout: observations, units, the capped-weight mean of its units'
    means and that mean's always-valid interval (for people to read; decisions use the difference)."""

    n: int
    units: int
    mean: float
    lo: float
    hi: float


@dataclass(frozen=True)
class Comparison:
    """candidate - control, stratified by step: estimate, always-valid bounds, variance, steps used."""

    candidate: Arm
    control: Arm
    diff: float
    diff_lo: float
    diff_hi: float
    variance: float
    strata: int


def arm_summaries(
    cells: Cells, alpha: float, cap: float = UNIT_WEIGHT_CAP, tau: float = MSPRT_TAU
) -> list[tuple[NDArray, ...]]:
    """For (candidate, control): (n, units, mean, lo, hi) pooled over steps, per leading index."""
    out: list[tuple[NDArray, ...]] = []
    for mask in (cells.candidate, ~cells.candidate):
        count = cells.count[..., mask].sum(axis=-1)  # per unit, all steps
        total = cells.total[..., mask].sum(axis=-1)
        w = np.minimum(count, cap).astype(np.float64)
        m = total / np.maximum(count, 1)
        weight = w.sum(axis=-1)
        mean = (w * m).sum(axis=-1) / np.maximum(weight, 1e-300)
        units = (count > 0).sum(axis=-1)
        resid = w * (m - mean[..., None]) / np.maximum(weight, 1e-300)[..., None]
        variance = units / np.maximum(units - 1, 1) * (resid**2).sum(axis=-1)
        variance = variance + PSEUDO_VARIANCE / np.maximum(weight, 1.0) ** 2
        radius = mixture_radius(variance, alpha, tau)
        empty = units == 0
        lo = np.where(empty, 0.0, np.clip(mean - radius, 0.0, 1.0))
        hi = np.where(empty, 1.0, np.clip(mean + radius, 0.0, 1.0))
        out.append((count.sum(axis=-1), units, np.where(empty, np.nan, mean), lo, hi))
    return out


def comparisons(cells: Cells, alpha: float, cap: float = UNIT_WEIGHT_CAP) -> list[Comparison]:
    """One Comparison per rollout (leading axis of length R, or none for one rollout).

    Each variant's own interval is at alpha / 2, the difference's at alpha."""
    if cells.total.ndim == 2:
        cells = Cells(cells.total[None], cells.count[None], cells.strata, cells.candidate)
    diff, lo, hi, variance, used = stratified_difference(Moments.of(cells, cap), alpha)
    arms = arm_summaries(cells, alpha / 2.0, cap)
    out = []
    for r in range(diff.shape[0]):
        c, s = (Arm(int(a[0][r]), int(a[1][r]), float(a[2][r]), float(a[3][r]), float(a[4][r])) for a in arms)
        out.append(Comparison(c, s, float(diff[r]), float(lo[r]), float(hi[r]), float(variance[r]), int(used[r])))
    return out


def compare(cells: Cells, alpha: float, cap: float = UNIT_WEIGHT_CAP) -> Comparison:
    """The always-valid comparison of one rollout (cells without leading axes)."""
    return comparisons(cells, alpha, cap)[0]


def futility_upper(cells: Cells, alpha: float, gain: float, cap: float = UNIT_WEIGHT_CAP) -> F:
    """The always-valid upper bound on candidate - control that a futility claim ("the gain is below
    `gain`") reads, per leading index: diff + radius(max(V, V_gain)).

    The plug-in V understates the variance when the versions rarely disagree: a candidate that
    fixes a few answers and breaks none has per-request differences of 0 or 1, and while few 1s have
    been seen V is near its floor and the interval near 0, so "below gain" would be claimed of a
    candidate that truly gains it (review, 2026-12-07: 6.5% instead of alpha / 6). V_gain is the
    variance the stratified difference would have if every per-request difference were 0 or 1
    with mean `gain` -- the least a 0/1 score's difference with that mean can have -- computed with
    the estimate's own weights: sum over candidate columns of omega_s^2 gain (1 - gain)
    sum_i w_i^2 / k_i / W^2. For scores between 0 and 1 it is conservative (a claim needs more data)."""
    if cells.total.ndim == 2:
        cells = Cells(cells.total[None], cells.count[None], cells.strata, cells.candidate)
    mo = Moments.of(cells, cap)
    diff, _, _, variance, used = stratified_difference(mo, alpha)
    count = np.asarray(cells.count, dtype=np.float64)
    w = np.minimum(count, cap)
    spread = (w * w / np.maximum(count, 1.0)).sum(axis=-2) / np.maximum(mo.b, 1e-300) ** 2  # (..., C)
    steps, _, _, omega, _ = step_weights(mo)  # the estimate's own step weights
    per_column = omega[..., np.searchsorted(steps, mo.strata)]  # (..., C)
    v_gain = gain * (1.0 - gain) * (per_column**2 * spread * cells.candidate).sum(axis=-1)
    upper = diff + mixture_radius(np.maximum(variance, v_gain), alpha)
    return np.where(used == 0, 1.0, upper)
