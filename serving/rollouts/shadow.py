"""The shadow stage: before its first canary step, a rollout can mirror a share of the stable
version's requests to the candidate (serving/gateway/shadow.py). Users get only the stable answer;
the candidate's answers are logged as their own rows (excluded="shadow", at step SHADOW_STEP) and
compared with the control's live answers at that step by the same per-user statistics as a canary
step (report.read_rollout reads store.shadow_units for it), counted apart from live traffic.

A rollout in its shadow stage has step == SHADOW_STEP and weights {candidate: 0, control: 100}.
At each evaluation, `decide_shadow` returns:

- rollback: some guard shows the candidate worse than the control by more than its margin
  (error rate, TTFT, and feedback when mirrored answers are scored, e.g. by graders): no user has
  seen the candidate;
- hold: either side has fewer than min_samples requests, or an error-rate / TTFT / grader guard
  has no verdict yet (too few users, or the graders have not scored enough mirrored answers yet:
  they score off the request path, after the row is logged); the users' feedback guard does not
  hold the stage (users never see shadow answers, so only graders can score them);
- advance: enough samples and every error-rate / TTFT / grader guard has a verdict and none
  failed -> the first canary step (spec.steps[0]).

With `min_gain` and a grader as `better_on` (rule "better"), the stage also answers whether the
candidate is worth a canary, on the same mirrored requests both versions answered (each user's
two means are over the same requests, so the per-user, cluster-robust variance of the difference
is small where the versions mostly agree): rollback once that grader's gain is shown below
min_gain (policy.futile: no user saw the candidate), advance only once it is shown above 0, hold
in between.

A gain shown there is the gain on the requests that were paired. It stands for all of the stage's
live traffic only if the requests without a graded pair (mirrors dropped under load, candidate
errors, answers the grader did not score) could not take it back. Over all of the stage's live
requests the gain is (1 - u) x (the paired gain) + u x (the unpaired ones' gain), u the unpaired
share; the unpaired ones' gain is at worst -1 (scores are in [0, 1]), so when lo x (1 - u) > u, lo
the paired gain's lower bound, the gain holds for all of them whatever the missing pairs would have
shown. The advance records what the stage showed (`gain_shown`); the canary's last step reads the
stage's *final* pairs (`carried_gain`: mirrors in flight and answers not yet graded at the advance
have paired since) and, when the bound holds, promotes once every live guard has a verdict and none
failed (policy.decide); otherwise the canary must show the gain itself.
"""

from __future__ import annotations

from typing import Any

from serving.rollouts.policy import (
    GRADER_PREFIX,
    Decision,
    GuardVerdict,
    RolloutSpec,
    evaluate_guard,
    futile,
    gain_interval,
    guard_rollback,
)
from serving.rollouts.report import cells_of
from serving.store import RolloutRecord, Store
from serving.store.shadow import SHADOW_STEP

# Guards every mirrored answer gives a reading for (graders score mirrored answers too); only the
# users' feedback guard may stay pending.
SERVICE_GUARDS = ("error_rate", "ttft_p95")


def _needs_verdict(metric: str) -> bool:
    return metric in SERVICE_GUARDS or metric.startswith(GRADER_PREFIX)


__all__ = ["SHADOW_STEP", "decide_shadow", "in_shadow", "shadow_percent"]


def in_shadow(rollout: RolloutRecord) -> bool:
    return rollout.step == SHADOW_STEP


def shadow_percent(value: object) -> float:
    """The share of the control's requests mirrored, validated: (0, 100]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
        raise ValueError(f"shadow must be a percentage in (0, 100], e.g. 20, got {value!r}")
    return float(value)


def decide_shadow(
    spec: RolloutSpec, step_counts: tuple[int, int], verdicts: list[GuardVerdict], live_requests: int | None = None
) -> Decision:
    """One evaluation of a rollout in its shadow stage. step_counts: (mirrored candidate, control)
    requests of the pairs; live_requests: all of the stage's live requests (None: unknown)."""
    where = {"prefix": "shadow stage: ", "suffix": "; no user saw it"}
    failed = guard_rollback(spec, verdicts, SHADOW_STEP, **where) or futile(spec, verdicts, SHADOW_STEP, **where)
    if failed is not None:
        return failed
    candidate_n, control_n = step_counts
    if min(candidate_n, control_n) < spec.min_samples:
        return Decision(
            "hold",
            f"shadow stage: waiting for {spec.min_samples} requests per variant "
            f"(candidate mirrored {candidate_n}, control {control_n})",
            SHADOW_STEP,
        )
    pending = [v.metric for v in verdicts if v.verdict == "pending" and _needs_verdict(v.metric)]
    if pending:
        reason = f"shadow stage: no verdict yet (too few users or grader scores): {', '.join(pending)}"
        return Decision("hold", reason, SHADOW_STEP)
    if spec.min_gain is not None and spec.better_on.startswith(GRADER_PREFIX):
        return _gain_decision(spec, verdicts, live_requests)
    return Decision(
        "advance",
        f"shadow stage passed ({candidate_n} mirrored requests, no guard failed): canary at {spec.steps[0]}%",
        0,
    )


def outweighs_unpaired(lo: float | None, pairs: int, live_requests: int | None) -> bool:
    """Whether a paired gain with lower bound `lo` holds for all of the stage's live requests: lo x
    (1 - u) > u, u the share without a graded pair (all of them when the count is unknown)."""
    if lo is None or not live_requests:
        return False
    unpaired = max(0.0, 1.0 - pairs / live_requests)
    return lo * (1 - unpaired) > unpaired


def _gain_decision(spec: RolloutSpec, verdicts: list[GuardVerdict], live_requests: int | None) -> Decision:
    """min_gain with a grader as better_on: hold until the gain is shown above 0 (futility, checked
    before, ends it below min_gain), then advance, recording what the stage showed (`gain_shown`)."""
    v = next(v for v in verdicts if v.metric == spec.better_on)
    gain = gain_interval(v)
    shown = "no interval yet" if gain is None else f"gain [{gain[0]:+.4f}, {gain[1]:+.4f}]"
    if v.verdict != "better" or gain is None:
        reason = f"shadow stage: {v.metric} not yet shown better than control nor below min_gain {spec.min_gain}"
        return Decision("hold", f"{reason} ({shown})", SHADOW_STEP)
    recorded = {"metric": v.metric, "lo": gain[0], "hi": gain[1], "pairs": v.candidate.n, "live": live_requests}
    reason = (
        f"shadow stage: {v.metric} shows the candidate better on {v.candidate.n} graded pairs of {live_requests} "
        f"live requests ({shown}, always-valid {1 - spec.guard_alpha:.1%} interval), no guard failed: canary at "
        f"{spec.steps[0]}%; it promotes on this stage's final pairs if the live requests without one cannot "
        "take the gain back, else on its own live evidence"
    )
    return Decision("advance", reason, 0, gain_shown=recorded)


def carried_gain(store: Store, rollout: RolloutRecord, spec: RolloutSpec) -> dict[str, Any] | None:
    """The shadow stage's gain as its final pairs show it, for the canary's promotion rule (None: the
    stage showed none). Read once the stage is over, so mirrors that were in flight and answers the
    grader had not scored yet when it advanced count as the pairs they became, and only what never
    paired (dropped, failed, unscored) counts as unpaired. The always-valid interval holds at every
    n at once, so its running intersection does too (Howard et al. 2021): the bounds are the tighter
    of those the stage recorded at its advance and those of its final pairs. `carries` is
    lo x (1 - u) > u, u from the final pairs (module docstring)."""
    shown = rollout.config.get("gain_shown")
    if not shown:
        return None
    guard = next(g for g in spec.guards if g.metric == spec.better_on)
    cells = cells_of(store.shadow_scores(rollout.name, guard.metric), rollout.candidate, "feedback", {})
    v = evaluate_guard(spec, guard, cells)
    gain = gain_interval(v)
    live = store.shadow_live_requests(rollout.name)
    lo, hi = shown["lo"], shown["hi"]
    if gain is not None:
        lo, hi = max(lo, gain[0]), min(hi, gain[1])
    carries = outweighs_unpaired(lo, v.candidate.n, live)
    return {"metric": guard.metric, "lo": lo, "hi": hi, "pairs": v.candidate.n, "live": live, "carries": carries}
