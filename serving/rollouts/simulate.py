"""Monte Carlo rollouts through the real policy: A/A error rates and power under peeking.

Every simulated rollout is evaluated after every batch of requests with `policy.decide`, the
function the evaluator calls. Traffic follows the rollout's steps: each batch of `batch`
requests splits by the current step's weights. The always-valid intervals come from
`stats.running_cs` over each variant's whole stream, read at the end of every batch.

    result = simulate(spec, AA, rollouts=1000)
    result.rates["rollback"]  # false rollbacks in an A/A test: <= spec.alpha
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from serving.rollouts.policy import Decision, GuardVerdict, RolloutSpec, decide, judge
from serving.rollouts.stats import Comparison, Interval, eb_bounds, msprt_diff, regularised_variance, variance_process


@dataclass(frozen=True)
class Scenario:
    """(control, candidate) truths: error rate, median TTFT in seconds, mean feedback score."""

    name: str
    error_rate: tuple[float, float] = (0.02, 0.02)
    ttft_median_s: tuple[float, float] = (0.2, 0.2)
    feedback_mean: tuple[float, float] = (0.55, 0.55)
    ttft_sigma: float = 0.5  # lognormal shape
    feedback_rate: float = 0.5  # share of requests that get a score


AA = Scenario("A/A")


@dataclass
class SimResult:
    scenario: str
    rollouts: int
    outcomes: dict[str, int]  # rollback / promote / undecided
    rollback_guards: dict[str, int]  # which guard caused each rollback
    median_batches_to_decision: float | None
    rates: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rates = {k: v / self.rollouts for k, v in self.outcomes.items()}


@dataclass
class _Stream:
    """One guard metric of one variant in every rollout: running sums, shape (rollouts, length).
    The EB bounds are computed only where they are read (the end of each batch)."""

    total: NDArray
    total_sq: NDArray
    variance: NDArray  # the EB variance process V_t
    offset: int = 0  # observations left out at the start (latency threshold warm-up)

    @classmethod
    def of(cls, x: NDArray, offset: int = 0) -> _Stream:
        return cls(np.cumsum(x, axis=-1), np.cumsum(x * x, axis=-1), variance_process(x), offset)

    def at(self, n: int, alpha: float) -> tuple[NDArray, NDArray, NDArray, NDArray]:
        """(mean, lo, hi, regularised variance) of every rollout after n observations."""
        mean, lo, hi = eb_bounds(self.total[:, n - 1], self.variance[:, n - 1], n, alpha)
        return mean, lo, hi, regularised_variance(self.total[:, n - 1], self.total_sq[:, n - 1], n)


def _draw(spec: RolloutSpec, sc: Scenario, rollouts: int, length: int, rng: np.random.Generator) -> dict:
    """{(metric, variant): _Stream} for the spec's guards."""
    out: dict[tuple[str, str], _Stream] = {}
    metrics = {g.metric for g in spec.guards}
    control_ttft = sc.ttft_median_s[0] * np.exp(sc.ttft_sigma * rng.standard_normal((rollouts, length)))
    # The latency guard's threshold: the control's p95 over its first min_samples requests, frozen.
    threshold = np.quantile(control_ttft[:, : spec.min_samples], 0.95, axis=1, keepdims=True)
    for i, variant in enumerate(("control", "candidate")):
        if "error_rate" in metrics:
            out["error_rate", variant] = _Stream.of((rng.random((rollouts, length)) < sc.error_rate[i]) * 1.0)
        if "ttft_p95" in metrics:
            offset = spec.min_samples if variant == "control" else 0
            if variant == "control":
                ttft = control_ttft[:, offset:]
            else:
                ttft = sc.ttft_median_s[1] * np.exp(sc.ttft_sigma * rng.standard_normal((rollouts, length)))
            out["ttft_p95", variant] = _Stream.of((ttft > threshold) * 1.0, offset)
        if "feedback" in metrics:
            n = int(length * sc.feedback_rate) + 1
            out["feedback", variant] = _Stream.of((rng.random((rollouts, n)) < sc.feedback_mean[i]) * 1.0)
    return out


def _comparisons(spec: RolloutSpec, streams: dict, metric: str, totals: list[int], rate: float) -> list[Comparison]:
    """Every rollout's Comparison for one guard after totals = [candidate, control] requests."""
    picked = []
    for variant, requests in zip(("candidate", "control"), totals, strict=True):
        st = streams[metric, variant]
        n = int(requests * rate) if metric == "feedback" else requests - st.offset
        picked.append((st, n))
    (c, nc), (s, ns) = picked
    rollouts = c.total.shape[0]
    if nc <= 0 or ns <= 0:
        empty = Interval(0, float("nan"), 0.0, 1.0)
        return [Comparison(empty, empty, -1.0, 1.0)] * rollouts
    alpha = spec.guard_alpha / 2.0  # each variant's own interval, as stats.compare
    (mc, lc, hc, vc), (ms, ls, hs, vs) = c.at(nc, alpha), s.at(ns, alpha)
    if spec.method == "msprt":
        lo, hi = msprt_diff(mc, vc, nc, ms, vs, ns, spec.guard_alpha)
    else:
        lo, hi = lc - hs, hc - ls
    return [
        Comparison(
            Interval(nc, float(mc[r]), float(lc[r]), float(hc[r])),
            Interval(ns, float(ms[r]), float(ls[r]), float(hs[r])),
            float(lo[r]),
            float(hi[r]),
        )
        for r in range(rollouts)
    ]


def simulate(
    spec: RolloutSpec, sc: Scenario, rollouts: int = 1000, batch: int = 100, batches: int = 40, seed: int = 0
) -> SimResult:
    """Run `rollouts` independent rollouts for up to `batches` evaluations each."""
    rng = np.random.default_rng(seed)
    streams = _draw(spec, sc, rollouts, batch * batches, rng)
    alive = np.ones(rollouts, dtype=bool)
    ended_at = np.full(rollouts, -1)
    outcomes = {"rollback": 0, "promote": 0, "undecided": 0}
    guards: dict[str, int] = {}
    step, totals, at_step = 0, [0, 0], [0, 0]  # running rollouts share one schedule
    for k in range(batches):
        candidate = round(batch * spec.steps[step] / 100)
        for i, n in enumerate((candidate, batch - candidate)):
            totals[i] += n
            at_step[i] += n
        next_steps = set()
        per_guard = [_comparisons(spec, streams, g.metric, totals, sc.feedback_rate) for g in spec.guards]
        for r in np.flatnonzero(alive):
            verdicts: list[GuardVerdict] = [
                judge(g, cmps[r], spec.min_samples) for g, cmps in zip(spec.guards, per_guard, strict=True)
            ]
            d: Decision = decide(spec, step, (at_step[0], at_step[1]), verdicts)
            if d.outcome in ("rollback", "promote"):
                alive[r], ended_at[r] = False, k
                outcomes[d.outcome] += 1
                if d.outcome == "rollback":
                    metric = next(v.metric for v in verdicts if v.verdict == "fail")
                    guards[metric] = guards.get(metric, 0) + 1
            else:
                next_steps.add(d.step_index)
        if len(next_steps) > 1:
            raise AssertionError(f"running rollouts disagree on the next step: {next_steps}")
        if next_steps and (new := next_steps.pop()) != step:
            step, at_step = new, [0, 0]
    outcomes["undecided"] = int(alive.sum())
    decided = ended_at[ended_at >= 0]
    median = float(np.median(decided) + 1) if decided.size else None
    return SimResult(sc.name, rollouts, outcomes, guards, median)
