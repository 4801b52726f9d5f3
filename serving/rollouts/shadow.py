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
"""

from __future__ import annotations

from serving.rollouts.policy import (
    GRADER_PREFIX,
    Decision,
    GuardVerdict,
    RolloutSpec,
    futile,
    gain_interval,
    guard_rollback,
)
from serving.store import RolloutRecord
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


def decide_shadow(spec: RolloutSpec, step_counts: tuple[int, int], verdicts: list[GuardVerdict]) -> Decision:
    """One evaluation of a rollout in its shadow stage. step_counts: (mirrored candidate, control) requests."""
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
    open_gain = _gain_open(spec, verdicts)
    if open_gain is not None:
        return Decision("hold", open_gain, SHADOW_STEP)
    return Decision(
        "advance",
        f"shadow stage passed ({candidate_n} mirrored requests, no guard failed): canary at {spec.steps[0]}%",
        0,
    )


def _gain_open(spec: RolloutSpec, verdicts: list[GuardVerdict]) -> str | None:
    """Why the stage waits on the gain question (min_gain with a grader as better_on), or None."""
    if spec.min_gain is None or not spec.better_on.startswith(GRADER_PREFIX):
        return None
    v = next(v for v in verdicts if v.metric == spec.better_on)
    if v.verdict == "better":
        return None
    gain = gain_interval(v)
    shown = "" if gain is None else f" (gain [{gain[0]:+.4f}, {gain[1]:+.4f}])"
    return f"shadow stage: {v.metric} not yet shown better than control nor below min_gain {spec.min_gain}{shown}"
