"""The rollout state machine and its decision policy (pure: no I/O, no clock).

A rollout moves an adapter name's traffic from its stable version (control) to a candidate in
steps, e.g. 10% -> 50% -> 100%. Reaching the last step (100) is promotion: the stable pointer
moves to the candidate and the rollout ends. At each evaluation, `decide` returns one outcome:

- rollback: some guard shows the candidate worse than control by more than the guard's margin
  (always-valid interval, see stats.py), candidate -> 0%, reason recorded; or the candidate has no
  observations at this step while the control has min_samples from enough users that the
  candidate's share of them would surely have included some (its adapter fails for everyone and
  nothing of it is logged);
- hold: a variant has fewer than min_samples requests at this step, or, at the last step before
  100, the promotion rule is not met yet (an inconclusive rollout holds until a person decides);
- advance: enough samples at this step and no guard failed -> next step;
- promote: at the last step before 100, enough samples and the promotion rule holds.

Promotion rules (`promote_when`): "better" (default) -- the guard named by `better_on` (feedback, or
a grader's score) shows the candidate better than control, so an A/A rollout promotes with
probability <= alpha; "not_worse" -- every
guard shows the candidate no worse than its margin (non-inferiority); "no_regression" -- no guard
failed and every guard has its min_samples (Flagger-style: promote on the absence of shown harm;
not evidence that the candidate is better).

A guard gives a verdict only once each variant has min_samples observations over the rollout from
at least MIN_UNITS users; before that it is pending (and cannot roll back).

Futility (`min_gain`, with "better" only): once the `better_on` guard's always-valid interval shows
the candidate's gain below min_gain, the rollout is rolled back -- the candidate cannot be the
improvement it was shipped for. Its upper bound is the same estimate's with the variance no smaller
than a gain of min_gain would give (stats.futility_upper), so it is never below the interval's own
upper bound: a false futility claim is a miss of that interval, and costs no extra alpha. The floor
matters where the versions rarely disagree (a candidate that fixes a few answers and breaks none),
where the plug-in variance alone understates the spread early on.

Alpha is split evenly over the guards and over the rollout's stages (a shadow stage and the canary
steps are compared on separate data: Bonferroni over both), so the chance that *any* guard ever
makes a false claim (a false rollback or a false promotion) over the whole rollout is <= alpha.
"""

from __future__ import annotations

import enum
import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

from serving.rollouts.stats import Arm, Cells, Comparison, compare, futility_upper

Metric = str  # one of METRICS, or "grader:NAME" (a grader's mean score, docs/graders.md)
METRICS: tuple[str, ...] = ("error_rate", "ttft_p95", "feedback")
GRADER_PREFIX = "grader:"
GRADER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")  # graders[].name (a metric label, a score source)
HIGHER_IS_BETTER = "feedback"  # and every grader: scores in [0, 1]
PromoteWhen = Literal["better", "not_worse", "no_regression"]
Method = Literal["msprt"]
Outcome = Literal["advance", "hold", "promote", "rollback", "pause"]


class State(str, enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"

    @property
    def terminal(self) -> bool:
        return self in (State.PROMOTED, State.ROLLED_BACK)


@dataclass(frozen=True)
class GuardSpec:
    """metric and the worsening it tolerates, in the metric's own units (rate or score points)."""

    metric: Metric
    margin: float

    def __post_init__(self) -> None:
        if self.grader is not None:
            if not GRADER_NAME_RE.match(self.grader):
                raise ValueError(f"guard {self.metric!r}: grader name must match {GRADER_NAME_RE.pattern}")
        elif self.metric not in METRICS:
            raise ValueError(f"guard metric {self.metric!r} is not one of {', '.join(METRICS)} or grader:NAME")
        if not 0 <= self.margin < 1:
            raise ValueError(f"guard {self.metric} margin must be in [0, 1), got {self.margin}")

    @property
    def grader(self) -> str | None:
        """The grader's name for a "grader:NAME" guard, else None."""
        return self.metric[len(GRADER_PREFIX) :] if self.metric.startswith(GRADER_PREFIX) else None

    @property
    def higher_is_better(self) -> bool:
        return self.metric == HIGHER_IS_BETTER or self.grader is not None

    @classmethod
    def parse(cls, text: str) -> GuardSpec:
        """'error_rate:0.01' -> GuardSpec('error_rate', 0.01); 'grader:json_valid:0' -> ('grader:json_valid', 0)."""
        metric, sep, margin = text.rpartition(":")
        if not sep or not metric:
            raise ValueError(
                f"guard {text!r} must be METRIC:MARGIN, e.g. error_rate:0.01 or grader:json_valid:0 "
                f"(metrics: {', '.join(METRICS)}, grader:NAME)"
            )
        try:
            value = float(margin)
        except ValueError:
            raise ValueError(f"guard {text!r}: margin {margin!r} is not a number") from None
        return cls(metric, value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RolloutSpec:
    steps: tuple[int, ...]
    min_samples: int
    interval_s: float
    alpha: float
    guards: tuple[GuardSpec, ...]
    promote_when: PromoteWhen
    method: Method = "msprt"
    better_on: Metric = HIGHER_IS_BETTER  # the guard whose gain "better" (and min_gain) reads
    min_gain: float | None = None  # "better" only: roll back once the gain is shown below this
    stages: int = 1  # 2 with a shadow stage (its own comparisons: alpha is split over both)

    def __post_init__(self) -> None:
        steps = list(self.steps)
        if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError(f"steps {steps} must increase strictly within 1..100 and end at 100, e.g. 10,50,100")
        if len(steps) < 2:
            raise ValueError("steps need at least one step below 100 (where candidate and control are compared)")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples}")
        if self.interval_s <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {self.interval_s}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        metrics = [g.metric for g in self.guards]
        if len(metrics) != len(set(metrics)):
            raise ValueError(f"guards repeat a metric: {metrics}")
        if self.promote_when not in get_args(PromoteWhen):
            raise ValueError(f"promote_when {self.promote_when!r} is not one of {', '.join(get_args(PromoteWhen))}")
        if self.method != "msprt":
            raise ValueError(
                f"method {self.method!r} is not supported: only msprt (the unit-level mixture SPRT) is; "
                "the per-request empirical-Bernstein method ignored that variants are sticky per user"
            )
        self._check_gain_rule(metrics)
        if self.stages not in (1, 2):
            raise ValueError(f"stages must be 1, or 2 with a shadow stage, got {self.stages}")

    def _check_gain_rule(self, metrics: list[str]) -> None:
        if not isinstance(self.better_on, str):
            raise ValueError(f"better_on must be a guard's metric such as grader:NAME, got {self.better_on!r}")
        better_on = GuardSpec(self.better_on, 0.0)  # ValueError naming an unknown metric
        if not better_on.higher_is_better:
            raise ValueError(
                f"better_on {self.better_on!r} must be a score (feedback or grader:NAME), not a rate to keep low"
            )
        if self.promote_when == "better" and self.better_on not in metrics:
            raise ValueError(
                f"promote_when 'better' reads guard {self.better_on!r}, which is not among the guards "
                f"{metrics}; add --guard {self.better_on}:0, set --better-on, or pick no_regression"
            )
        if self.min_gain is not None:
            if self.promote_when != "better":
                raise ValueError(f"min_gain applies to promote_when 'better' only, not {self.promote_when!r}")
            gain = self.min_gain
            if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not 0 < gain < 1:
                raise ValueError(f"min_gain must be a number in (0, 1) score points, got {self.min_gain!r}")

    @property
    def guard_alpha(self) -> float:
        return self.alpha / (max(1, len(self.guards)) * self.stages)

    def weights(self, step_index: int) -> tuple[int, int]:
        """(candidate %, control %) at a step."""
        candidate = self.steps[step_index]
        return candidate, 100 - candidate

    def to_json(self) -> dict:
        return {**asdict(self), "steps": list(self.steps), "guards": [asdict(g) for g in self.guards]}

    @classmethod
    def from_json(cls, data: dict) -> RolloutSpec:
        guards = tuple(GuardSpec(g["metric"], float(g["margin"])) for g in data["guards"])
        return cls(
            tuple(data["steps"]),
            int(data["min_samples"]),
            float(data["interval_s"]),
            float(data["alpha"]),
            guards,
            data["promote_when"],
            data.get("method", "msprt"),
            data.get("better_on", HIGHER_IS_BETTER),
            None if data.get("min_gain") is None else float(data["min_gain"]),
            int(data.get("stages", 1)),
        )


Verdict = Literal["pending", "fail", "inconclusive", "not_worse", "better"]


@dataclass(frozen=True)
class GuardVerdict:
    """One guard's reading: worsening = how much worse the candidate is (positive = worse)."""

    metric: str
    verdict: Verdict
    margin: float
    worsening_lo: float | None
    worsening_hi: float | None
    candidate: Arm
    control: Arm
    # The better_on guard with min_gain: the upper bound on the gain that futility reads
    # (stats.futility_upper: the variance no smaller than a gain of min_gain would have).
    futility_hi: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


# Users per variant before any verdict: the cluster-robust variance needs a few dozen clusters.
MIN_UNITS = 20
# The candidate showing nothing at a step is a failure only if, with its share of the step's users,
# the chance that none of them is on the candidate is below this (see decide).
NO_SHOW_P = 0.001


def judge(guard: GuardSpec, cmp: Comparison, min_samples: int) -> GuardVerdict:
    """A guard's verdict from the always-valid interval on candidate - control."""
    arms = (cmp.candidate, cmp.control)
    if any(a.n < min_samples or a.units < MIN_UNITS for a in arms) or cmp.strata == 0:
        return GuardVerdict(guard.metric, "pending", guard.margin, None, None, cmp.candidate, cmp.control)
    # Higher error rate / exceedance is worse; lower feedback or grader score is worse.
    lo, hi = (-cmp.diff_hi, -cmp.diff_lo) if guard.higher_is_better else (cmp.diff_lo, cmp.diff_hi)
    if lo > guard.margin:
        verdict: Verdict = "fail"
    elif hi < 0:
        verdict = "better"
    elif hi <= guard.margin:
        verdict = "not_worse"
    else:
        verdict = "inconclusive"
    return GuardVerdict(guard.metric, verdict, guard.margin, lo, hi, cmp.candidate, cmp.control)


def evaluate_guard(spec: RolloutSpec, guard: GuardSpec, cells: Cells) -> GuardVerdict:
    """cells: the guard's per-unit aggregates (error counts, latency exceedances, scores)."""
    verdict = judge(guard, compare(cells, spec.guard_alpha), spec.min_samples)
    if spec.min_gain is None or guard.metric != spec.better_on or verdict.verdict == "pending":
        return verdict
    upper = float(futility_upper(cells, spec.guard_alpha, spec.min_gain)[0])
    return replace(verdict, futility_hi=upper)


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    step_index: int  # the step after the decision (candidate % = spec.steps[step_index])
    # A shadow stage that advanced on a gain shown on paired answers (rollouts/shadow.py): the metric,
    # its interval, pairs and live requests, kept in the rollout's config ("gain_shown"); the canary's
    # last step intersects it with the stage's final pairs (shadow.carried_gain).
    gain_shown: dict[str, Any] | None = None


def _promotable(
    spec: RolloutSpec, verdicts: list[GuardVerdict], gain_shown: dict[str, Any] | None = None
) -> tuple[bool, str]:
    if spec.promote_when == "no_regression":
        pending = [v.metric for v in verdicts if v.verdict == "pending"]
        if pending:
            return False, f"no verdict yet (too few observations or users): {', '.join(pending)}"
        return True, "no guard failed"
    if spec.promote_when == "not_worse":
        open_ = [v.metric for v in verdicts if v.verdict not in ("not_worse", "better")]
        if open_:
            return False, f"not yet shown within margin: {', '.join(open_)}"
        return True, "every guard within margin"
    gain = next(v for v in verdicts if v.metric == spec.better_on)
    if gain.verdict == "better":
        return True, f"{gain.metric} shows the candidate better than control"
    if gain_shown is not None and gain_shown.get("metric") == spec.better_on:
        # The shadow stage's final pairs (shadow.carried_gain): shown better beyond what its unpaired
        # requests could take back (its own share of alpha); the canary must show no harm, with a
        # verdict from every guard.
        lo, hi, pairs, live = (gain_shown.get(k) for k in ("lo", "hi", "pairs", "live"))
        stage = "no interval" if lo is None else f"gain [{lo:+.4f}, {hi:+.4f}] on {pairs} graded pairs of {live}"
        if not gain_shown.get("carries"):
            why = f"{gain.metric} not yet shown better live (verdict {gain.verdict}); the shadow stage's {stage}"
            return False, f"{why} does not outweigh the live requests without a pair"
        shown = f"{gain.metric} shown better in the shadow stage ({stage} live requests)"
        pending = [v.metric for v in verdicts if v.verdict == "pending"]
        if pending:
            return False, f"{shown}; live guards without a verdict yet: {', '.join(pending)}"
        return True, f"{shown} and no live guard failed"
    return False, f"{gain.metric} not yet shown better (verdict {gain.verdict})"


def gain_interval(v: GuardVerdict) -> tuple[float, float] | None:
    """A score guard's always-valid interval on the candidate's gain (candidate - control); None while pending."""
    if v.worsening_lo is None or v.worsening_hi is None:
        return None
    return -v.worsening_hi, -v.worsening_lo


def futile(
    spec: RolloutSpec, verdicts: list[GuardVerdict], step: int, prefix: str = "", suffix: str = ""
) -> Decision | None:
    """A rollback once the `better_on` guard shows the gain below min_gain (None otherwise, or without min_gain)."""
    if spec.min_gain is None:
        return None
    v = next(v for v in verdicts if v.metric == spec.better_on)
    gain = gain_interval(v)
    if gain is None or v.futility_hi is None or v.futility_hi >= spec.min_gain:
        return None
    return Decision(
        "rollback",
        f"{prefix}guard {v.metric}: candidate gains [{gain[0]:+.4f}, {v.futility_hi:+.4f}] (always-valid "
        f"{1 - spec.guard_alpha:.1%} interval), below min_gain {spec.min_gain}: not the improvement "
        f"it was shipped for{suffix}",
        step,
    )


def no_show(spec: RolloutSpec, step_index: int, step_counts: tuple[int, int], control_units: int | None) -> str | None:
    """Why the candidate counts as failed for showing nothing at this step, or None.

    With sticky assignment each user is on the candidate with probability p (its share), whatever
    they send, so a working candidate shows no user among K with probability (1 - p)^K."""
    candidate_n, control_n = step_counts
    if candidate_n > 0 or control_n < spec.min_samples:
        return None
    share = spec.steps[step_index] / 100
    if control_units is not None and (1 - share) ** control_units > NO_SHOW_P:
        return None
    users = "" if control_units is None else f" from {control_units} users"
    return (
        f"candidate has no observations at step {spec.steps[step_index]}% while control has "
        f"{control_n} requests{users}: the candidate fails for everyone (e.g. its adapter did not load) "
        "or its requests are not logged"
    )


def guard_rollback(
    spec: RolloutSpec, verdicts: list[GuardVerdict], step: int, prefix: str = "", suffix: str = ""
) -> Decision | None:
    """A rollback naming the first failed guard and its interval (None when no guard failed)."""
    for v in verdicts:
        if v.verdict == "fail":
            return Decision(
                "rollback",
                f"{prefix}guard {v.metric}: candidate worse by [{v.worsening_lo:.4f}, {v.worsening_hi:.4f}] "
                f"(always-valid {1 - spec.guard_alpha:.1%} interval), above margin {v.margin}{suffix}",
                step,
            )
    return None


def decide(
    spec: RolloutSpec,
    step_index: int,
    step_counts: tuple[int, int],
    verdicts: list[GuardVerdict],
    control_units: int | None = None,
    gain_shown: dict[str, Any] | None = None,
) -> Decision:
    """One evaluation of a running rollout. step_counts: (candidate, control) requests at this step;
    control_units: the control's users at this step (None: unknown, the no-show rule needs only counts)."""
    missing = no_show(spec, step_index, step_counts, control_units)
    if missing is not None:
        return Decision("rollback", missing, step_index)
    failed = guard_rollback(spec, verdicts, step_index) or futile(spec, verdicts, step_index)
    if failed is not None:
        return failed
    candidate_n, control_n = step_counts
    if min(candidate_n, control_n) < spec.min_samples:
        return Decision(
            "hold",
            f"waiting for {spec.min_samples} requests per variant at step {spec.steps[step_index]}% "
            f"(candidate {candidate_n}, control {control_n})",
            step_index,
        )
    last_compared = len(spec.steps) - 2
    if step_index < last_compared:
        return Decision("advance", f"{spec.min_samples}+ requests per variant and no guard failed", step_index + 1)
    ok, why = _promotable(spec, verdicts, gain_shown)
    if ok:
        return Decision("promote", why, len(spec.steps) - 1)
    return Decision("hold", why, step_index)


MANUAL: dict[str, tuple[tuple[State, ...], State]] = {
    "pause": ((State.RUNNING,), State.PAUSED),
    "resume": ((State.PAUSED,), State.RUNNING),
    "promote": ((State.RUNNING, State.PAUSED), State.PROMOTED),
    "rollback": ((State.RUNNING, State.PAUSED), State.ROLLED_BACK),
}


def manual_transition(state: State, action: str) -> State:
    """A person's action on a rollout; ValueError names the state it cannot leave that way."""
    if action not in MANUAL:
        raise ValueError(f"unknown action {action!r}; actions: {', '.join(MANUAL)}")
    allowed, target = MANUAL[action]
    if state not in allowed:
        raise ValueError(f"cannot {action} a rollout that is {state.value}")
    return target


def state_after(decision: Decision) -> State:
    return {"promote": State.PROMOTED, "rollback": State.ROLLED_BACK}.get(decision.outcome, State.RUNNING)
