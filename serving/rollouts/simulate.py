"""Monte Carlo rollouts of the gateway's traffic through the real decision code: A/A and power.

Each simulated rollout has its own users. Per user: a sticky bucket in [0, 1) (the candidate gets
the users below its share, which grows 10% -> 50% as `assign_variant`'s nested buckets do), a
request rate (lognormal or Pareto: a few users send most requests), an error rate and a score
probability drawn from a Beta (heterogeneous users), a rating rate (users differ in how often they
rate) and a latency multiplier. Per evaluation ("look") every running rollout gets
Poisson(requests_per_look) requests from its users by rate, at its current step; errors drift the
same way for both versions (e.g. 1% -> 4% over the run). After every look the rollout's per-unit
aggregates (the UnitTable rows the store computes in SQL) go through the real path:
stats.Moments -> stats.stratified_difference -> policy.judge -> policy.decide; a rollout advances,
holds, promotes or rolls back as the evaluator would make it.

The aggregates are kept as stats.Moments and updated per look only for the users who sent a request
(the sums are additive over units), which is what makes 1,000 rollouts x 40 looks fast; a test checks
them against Moments.of the dense cells.

    python -m serving.rollouts.simulate [--rollouts 1000] [--out benchmarks/reports/rollouts/simulation-units.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from serving.rollouts.policy import GuardVerdict, RolloutSpec, decide, judge
from serving.rollouts.stats import UNIT_WEIGHT_CAP, Arm, Comparison, Moments, stratified_difference, unit_terms

GUARD_METRICS = ("error_rate", "ttft_p95", "feedback")


@dataclass(frozen=True)
class Scenario:
    """Traffic and truths; pairs are (control, candidate)."""

    name: str
    users: int = 4000
    requests_per_look: float = 200.0
    looks: int = 40
    activity_sigma: float = 0.0  # lognormal sigma of per-user request rates (0: all alike)
    activity_pareto: float | None = None  # Pareto shape of per-user request rates (overrides sigma)
    concentration: float | None = None  # per-user rates ~ Beta(mean k, (1 - mean) k); None: all at the mean
    error_rate: tuple[float, float] = (0.02, 0.02)
    error_drift: float = 1.0  # both versions' error rates times this by look drift_looks (linear, then flat)
    drift_looks: int | None = None  # None: the drift spans every look
    feedback_mean: tuple[float, float] = (0.55, 0.55)
    rating_share: float = 0.5  # mean share of a user's requests that get a score
    rating_concentration: float | None = None  # users differ in how often they rate (Beta); None: all alike
    ttft_median_s: tuple[float, float] = (0.2, 0.2)
    ttft_sigma: float = 0.5  # lognormal shape per request
    ttft_user_sigma: float = 0.0  # lognormal per-user latency multiplier (long prompts)


INDEPENDENT = Scenario("independent requests: 4,000 users of ~2 requests, homogeneous")
HEAVY = Scenario(
    "300 heavy-tailed users, rates Beta(1,1)-like",
    users=300,
    activity_pareto=1.2,
    concentration=2.0,
    feedback_mean=(0.5, 0.5),
    rating_concentration=2.0,
    ttft_user_sigma=0.5,
)
MILD = Scenario(
    "2,000 users, rates Beta(5,5)-like",
    users=2000,
    activity_sigma=1.0,
    concentration=10.0,
    feedback_mean=(0.5, 0.5),
    rating_concentration=10.0,
    ttft_user_sigma=0.3,
)
DRIFT = Scenario(
    "2,000 users, step 10% -> 50% while both versions' errors drift 1% -> 4% (over looks 1-15)",
    users=2000,
    activity_sigma=1.0,
    concentration=10.0,
    error_rate=(0.01, 0.01),
    error_drift=4.0,
    drift_looks=15,  # load grows while the rollout is at 10% and around the step to 50%
    rating_concentration=10.0,
)
AA_SCENARIOS = (INDEPENDENT, HEAVY, MILD, DRIFT)
POWER_SCENARIOS = (
    (replace(MILD, name="2,000 users Beta(5,5), candidate feedback +0.10", feedback_mean=(0.5, 0.6)), "promote"),
    (replace(MILD, name="2,000 users Beta(5,5), candidate feedback -0.10", feedback_mean=(0.5, 0.4)), "rollback"),
    (replace(MILD, name="2,000 users Beta(5,5), candidate errors +5 points", error_rate=(0.02, 0.07)), "rollback"),
    (replace(MILD, name="2,000 users Beta(5,5), candidate TTFT median x1.3", ttft_median_s=(0.2, 0.26)), "rollback"),
)


@dataclass
class SimResult:
    scenario: str
    rollouts: int
    outcomes: dict[str, int]  # rollback / promote / undecided
    rollback_reasons: dict[str, int]  # which guard (or "no_show") caused each rollback
    median_looks_to_decision: float | None
    rates: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rates = {k: v / self.rollouts for k, v in self.outcomes.items()}


def _beta(rng: np.random.Generator, mean: float, k: float | None, shape: tuple[int, ...]) -> NDArray:
    if k is None:
        return np.full(shape, mean)
    mean = min(max(mean, 1e-6), 1 - 1e-6)
    return rng.beta(mean * k, (1 - mean) * k, shape)


@dataclass
class _Users:
    """Per rollout and user: bucket, request-rate CDF, error and score probabilities (control), rating
    rate, latency multiplier; per rollout the frozen TTFT threshold."""

    bucket: NDArray
    cdf: NDArray
    error: NDArray
    score: NDArray
    rating: NDArray
    latency: NDArray
    threshold: NDArray

    @classmethod
    def draw(cls, sc: Scenario, rollouts: int, min_samples: int, rng: np.random.Generator) -> _Users:
        shape = (rollouts, sc.users)
        if sc.activity_pareto is not None:
            activity = rng.pareto(sc.activity_pareto, shape) + 1.0
        else:
            activity = rng.lognormal(0.0, sc.activity_sigma, shape) if sc.activity_sigma else np.ones(shape)
        cdf = np.cumsum(activity, axis=1)
        cdf /= cdf[:, -1:]
        latency = rng.lognormal(0.0, sc.ttft_user_sigma, shape) if sc.ttft_user_sigma else np.ones(shape)
        users = cls(
            rng.random(shape),
            cdf,
            _beta(rng, sc.error_rate[0], sc.concentration, shape),
            _beta(rng, sc.feedback_mean[0], sc.concentration, shape),
            _beta(rng, sc.rating_share, sc.rating_concentration, shape),
            latency,
            np.zeros(rollouts),
        )
        # The threshold: p95 of the control's first min_samples TTFTs (users by request rate).
        who = users.pick(np.repeat(np.arange(rollouts), min_samples), rng)
        ttft = sc.ttft_median_s[0] * latency.ravel()[who] * np.exp(sc.ttft_sigma * rng.standard_normal(who.size))
        users.threshold = np.quantile(ttft.reshape(rollouts, min_samples), 0.95, axis=1)
        return users

    def pick(self, rollout: NDArray, rng: np.random.Generator) -> NDArray:
        """A user per request of `rollout`, by request rate: flat index rollout * users + user."""
        n_users = self.cdf.shape[1]
        flat = (self.cdf + np.arange(self.cdf.shape[0])[:, None]).ravel()
        at = np.searchsorted(flat, rollout + rng.random(rollout.size), side="right")
        return np.minimum(at, (rollout + 1) * n_users - 1)


class _Aggregates:
    """Every guard's per-unit cells (rollouts, users, guards, 2 x compared steps) and their Moments,
    kept in step. Column 2s: the candidate at step s, 2s + 1: the control."""

    def __init__(self, rollouts: int, users: int, spec: RolloutSpec):
        steps, g = len(spec.steps) - 1, len(GUARD_METRICS)
        c = 2 * steps
        self.total = np.zeros((rollouts, users, g, c))
        self.count = np.zeros((rollouts, users, g, c))
        self.strata = np.repeat(np.arange(steps), 2)
        self.candidate = np.tile([True, False], steps)
        self.n = np.zeros((rollouts, g, c))  # observations per column
        self.t = np.zeros((rollouts, g, c))  # their sum per column
        self.col_units = np.zeros((rollouts, g, c), dtype=np.int64)
        self.arm_units = np.zeros((rollouts, g, 2), dtype=np.int64)
        self.a, self.b = np.zeros((rollouts, g, c)), np.zeros((rollouts, g, c))
        self.aa = np.zeros((rollouts, g, c, c))
        self.ab, self.bb = np.zeros_like(self.aa), np.zeros_like(self.aa)
        self.units = np.zeros((rollouts, g), dtype=np.int64)

    def add(self, rollout: NDArray, user: NDArray, column: NDArray, count: NDArray, total: NDArray) -> None:
        """Add requests (count, total: (requests, guards)) and update the moments of the users they touch.

        In one look a rollout is at one step and a user on one variant there, so each touched user
        changes in one column j: the product sums change by a rank-one update in row and column j."""
        n_users, g, c = self.total.shape[1:]
        keys, inverse = np.unique((rollout * n_users + user) * c + column, return_inverse=True)
        inc_n = np.stack([np.bincount(inverse, count[:, k], keys.size) for k in range(g)], axis=1)  # (m, g)
        inc_t = np.stack([np.bincount(inverse, total[:, k], keys.size) for k in range(g)], axis=1)
        cell, j = keys // c, keys % c
        if np.unique(cell).size != cell.size:
            raise AssertionError("a user changed in two columns in one look: steps or variants are not sticky")
        r, u = cell // n_users, cell % n_users
        old_n, old_t = self.count[r, u], self.total[r, u]  # (m, g, c)
        rows = np.arange(cell.size)
        oj_n, oj_t = old_n[rows, :, j], old_t[rows, :, j]  # (m, g)
        self.count[r, u, :, j] = oj_n + inc_n
        self.total[r, u, :, j] = oj_t + inc_t
        at = (r[:, None] * g + np.arange(g)) * c + j[:, None]  # (m, g): flat (rollout, guard, j)
        self._products(at, j, unit_terms(old_t, old_n), unit_terms(oj_t, oj_n), unit_terms(oj_t + inc_t, oj_n + inc_n))
        self._counts(r, j, at, old_n, oj_n, inc_n, inc_t)

    def _scatter(self, at: NDArray, values: NDArray, like: NDArray) -> NDArray:
        return np.bincount(at.ravel(), values.ravel(), like.size).reshape(like.shape)

    def _products(self, at: NDArray, j: NDArray, old: tuple, before: tuple, after: tuple) -> None:
        """aa, ab, bb and a, b after each touched unit's column j went from `before` to `after`."""
        c = self.total.shape[3]
        (old_a, old_b), da, db = old, after[0] - before[0], after[1] - before[1]  # old: (m, g, c); da: (m, g)
        row_at = at[..., None] * c + np.arange(c)  # (rollout, guard, j, k)
        col_at = (at - j[:, None])[..., None] * c + np.arange(c) * c + j[:, None, None]  # (rollout, guard, k, j)
        diag = at * c + j[:, None]
        for name, x0, dx, y0, dy in (
            ("aa", old_a, da, old_a, da),
            ("ab", old_a, da, old_b, db),
            ("bb", old_b, db, old_b, db),
        ):
            # (x0 + dx e_j)(y0 + dy e_j)^T - x0 y0^T = dx e_j y0^T + x0 dy e_j^T + dx dy e_j e_j^T
            target = getattr(self, name)
            target += self._scatter(row_at, dx[..., None] * y0, target)
            target += self._scatter(col_at, x0 * dy[..., None], target)
            target += self._scatter(diag, dx * dy, target)
        self.a += self._scatter(at, da, self.a)
        self.b += self._scatter(at, db, self.b)

    def _counts(
        self, r: NDArray, j: NDArray, at: NDArray, old_n: NDArray, oj_n: NDArray, inc_n: NDArray, inc_t: NDArray
    ) -> None:
        """Observations, sums, and units seen per column, per guard and per arm."""
        g = self.total.shape[2]
        self.n += self._scatter(at, inc_n, self.n)
        self.t += self._scatter(at, inc_t, self.t)
        self.col_units += self._scatter(at, (oj_n == 0) & (inc_n > 0), self.col_units).astype(np.int64)
        seen = old_n > 0  # (m, g, c) before
        rg = r[:, None] * g + np.arange(g)
        self.units += self._scatter(rg, ~seen.any(-1) & (inc_n > 0), self.units).astype(np.int64)
        in_arm = self.candidate[j]
        seen_arm = np.where(in_arm[:, None], seen[..., self.candidate].any(-1), seen[..., ~self.candidate].any(-1))
        arm_at = rg * 2 + (~in_arm).astype(np.int64)[:, None]
        self.arm_units += self._scatter(arm_at, ~seen_arm & (inc_n > 0), self.arm_units).astype(np.int64)

    def moments(self, rows: NDArray, guard: int, per_request: bool = False) -> Moments:
        if per_request:
            return self.request_moments(rows, guard)
        return Moments(
            self.a[rows, guard], self.b[rows, guard], self.aa[rows, guard], self.ab[rows, guard],
            self.bb[rows, guard], self.units[rows, guard], self.strata, self.candidate,
        )  # fmt: skip

    def request_moments(self, rows: NDArray, guard: int) -> Moments:
        """For contrast, the analysis this replaced: every request its own unit (observations 0/1),
        steps pooled. The same estimator then is the per-request difference of means."""
        n, t = self.n[rows, guard], self.t[rows, guard]
        n2 = np.stack([n[:, self.candidate].sum(1), n[:, ~self.candidate].sum(1)], axis=1)
        t2 = np.stack([t[:, self.candidate].sum(1), t[:, ~self.candidate].sum(1)], axis=1)
        diag = np.eye(2)
        return Moments(
            t2, n2, t2[:, :, None] * diag, t2[:, :, None] * diag, n2[:, :, None] * diag,
            n2.sum(1).astype(np.int64), np.zeros(2, dtype=np.int64), np.array([True, False]),
        )  # fmt: skip

    def comparisons(self, rows: NDArray, guard: int, alpha: float, per_request: bool = False) -> list[Comparison]:
        """The real stratified comparison for the given rollouts (arm means are not needed to decide)."""
        diff, lo, hi, variance, used = stratified_difference(self.moments(rows, guard, per_request), alpha)
        n = self.n[rows, guard]
        n_c, n_s = n[:, self.candidate].sum(1), n[:, ~self.candidate].sum(1)
        units = np.stack([n_c, n_s], axis=1) if per_request else self.arm_units[rows, guard]
        nan = float("nan")
        return [
            Comparison(
                Arm(int(n_c[i]), int(units[i, 0]), nan, nan, nan),
                Arm(int(n_s[i]), int(units[i, 1]), nan, nan, nan),
                float(diff[i]),
                float(lo[i]),
                float(hi[i]),
                float(variance[i]),
                int(used[i]),
            )  # fmt: skip
            for i in range(rows.size)
        ]


def _traffic(sc: Scenario, users: _Users, rows: NDArray, share: NDArray, look: int, rng: np.random.Generator) -> dict:
    """One look's requests of the running rollouts `rows`: per request its rollout, user, whether the
    candidate answered, and per guard (count, total)."""
    n = rng.poisson(sc.requests_per_look, rows.size)
    rollout = np.repeat(rows, n)
    flat = users.pick(rollout, rng)
    user = flat % users.cdf.shape[1]
    cand = users.bucket.ravel()[flat] < share[rollout]
    span = max((sc.drift_looks or sc.looks) - 1, 1)
    drift = 1.0 + (sc.error_drift - 1.0) * min(look / span, 1.0)
    p_err = np.clip(users.error.ravel()[flat] * drift + cand * (sc.error_rate[1] - sc.error_rate[0]), 0, 1)
    median = np.where(cand, sc.ttft_median_s[1], sc.ttft_median_s[0])
    ttft = median * users.latency.ravel()[flat] * np.exp(sc.ttft_sigma * rng.standard_normal(rollout.size))
    rated = rng.random(rollout.size) < users.rating.ravel()[flat]
    p_score = np.clip(users.score.ravel()[flat] + cand * (sc.feedback_mean[1] - sc.feedback_mean[0]), 0, 1)
    ones = np.ones(rollout.size)
    count = np.stack([ones, ones, rated * 1.0], axis=1)  # columns: GUARD_METRICS
    total = np.stack(
        [
            rng.random(rollout.size) < p_err,
            ttft > users.threshold[rollout],
            rated & (rng.random(rollout.size) < p_score),
        ],
        axis=1,
    )
    return {"rollout": rollout, "user": user, "candidate": cand, "count": count, "total": total * 1.0}


def _look(spec: RolloutSpec, agg: _Aggregates, rows: NDArray, step: NDArray, per_request: bool) -> list:
    """The evaluator's decision for each running rollout: (row, Decision, verdicts)."""
    per_guard = [
        agg.comparisons(rows, GUARD_METRICS.index(g.metric), spec.guard_alpha, per_request) for g in spec.guards
    ]
    out = []
    for i, r in enumerate(rows):
        verdicts: list[GuardVerdict] = [
            judge(g, cmps[i], spec.min_samples) for g, cmps in zip(spec.guards, per_guard, strict=True)
        ]
        col = 2 * int(step[r])
        counts = (int(agg.n[r, 0, col]), int(agg.n[r, 0, col + 1]))  # requests (error_rate's counts)
        out.append((r, decide(spec, int(step[r]), counts, verdicts, int(agg.col_units[r, 0, col + 1])), verdicts))
    return out


def _simulate_chunk(
    spec: RolloutSpec, sc: Scenario, rollouts: int, rng: np.random.Generator, per_request: bool
) -> tuple[list, list]:
    users = _Users.draw(sc, rollouts, spec.min_samples, rng)
    agg = _Aggregates(rollouts, sc.users, spec)
    step = np.zeros(rollouts, dtype=np.int64)
    alive = np.ones(rollouts, dtype=bool)
    shares = np.array(spec.steps[:-1]) / 100.0
    ended: list[tuple[str, str | None, int]] = []
    for look in range(sc.looks):
        rows = np.flatnonzero(alive)
        if rows.size == 0:
            break
        share = np.zeros(rollouts)
        share[rows] = shares[step[rows]]
        req = _traffic(sc, users, rows, share, look, rng)
        column = 2 * step[req["rollout"]] + (~req["candidate"]).astype(np.int64)
        agg.add(req["rollout"], req["user"], column, req["count"], req["total"])
        for r, d, verdicts in _look(spec, agg, rows, step, per_request):
            if d.outcome in ("rollback", "promote"):
                alive[r] = False
                failed = next((v.metric for v in verdicts if v.verdict == "fail"), "no_show")
                ended.append((d.outcome, failed if d.outcome == "rollback" else None, look))
            else:
                step[r] = d.step_index
    return ended, [int(alive.sum())]


def simulate(
    spec: RolloutSpec, sc: Scenario, rollouts: int = 1000, seed: int = 0, chunk: int = 250, per_request: bool = False
) -> SimResult:
    """Run `rollouts` independent rollouts of `sc` for sc.looks evaluations each. per_request: decide
    on the per-request analysis this module's users replaced (for contrast only)."""
    rng = np.random.default_rng(seed)
    outcomes = {"rollback": 0, "promote": 0, "undecided": 0}
    reasons: dict[str, int] = {}
    looks: list[int] = []
    for start in range(0, rollouts, chunk):
        ended, (undecided,) = _simulate_chunk(spec, sc, min(chunk, rollouts - start), rng, per_request)
        outcomes["undecided"] += undecided
        for outcome, reason, look in ended:
            outcomes[outcome] += 1
            looks.append(look + 1)
            if reason is not None:
                reasons[reason] = reasons.get(reason, 0) + 1
    median = float(np.median(looks)) if looks else None
    return SimResult(sc.name, rollouts, outcomes, reasons, median)


def _row(result: SimResult) -> str:
    rates = " | ".join(f"{result.rates[k]:.1%}" for k in ("rollback", "promote", "undecided"))
    return f"| {result.scenario} | {rates} | {result.median_looks_to_decision} |"


def main(argv: list[str] | None = None) -> None:
    from serving.config import RolloutsConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON artifact here")
    parser.add_argument("--no-contrast", action="store_true", help="skip the per-request analysis rows")
    args = parser.parse_args(argv)
    spec = RolloutsConfig().spec()
    started = time.perf_counter()
    results = []
    print("| scenario | rollback | promote | undecided | median looks to a decision |\n|---|---|---|---|---|")
    runs = [(s, "A/A", False) for s in AA_SCENARIOS] + [(s, e, False) for s, e in POWER_SCENARIOS]
    if not args.no_contrast:
        runs += [(s, "A/A", True) for s in AA_SCENARIOS]
    for i, (sc, expected, per_request) in enumerate(runs):
        result = simulate(spec, sc, args.rollouts, seed=args.seed + i, per_request=per_request)
        if per_request:
            result.scenario = f"{sc.name} [per-request analysis, replaced]"
        results.append({**asdict(result), "traffic": asdict(sc), "expected": expected, "per_request": per_request})
        print(_row(result), flush=True)
    seconds = round(time.perf_counter() - started, 1)
    print(f"{seconds} s; unit weight cap {UNIT_WEIGHT_CAP}")
    if args.out is not None:
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
        report = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "loadavg": load,
            "spec": spec.to_json(),
            "unit_weight_cap": UNIT_WEIGHT_CAP,
            "rollouts_per_scenario": args.rollouts,
            "seconds": seconds,
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
