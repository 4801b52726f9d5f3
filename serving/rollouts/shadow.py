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
errors, answers the grader has not scored yet) could not take it back. Over all of the stage's
live requests the gain is (1 - u) x (the paired gain) + u x (the unpaired ones' gain), u the
unpaired share; the unpaired ones' gain is at worst -1 (scores are in [0, 1]), so when
lo x (1 - u) > u, lo the paired gain's lower bound, the gain holds for all of them whatever the
missing pairs would have shown. Then the advance records it (`gain_shown`) and the canary promotes on it once
every live guard has a verdict and none failed (policy.decide); otherwise the canary must show the
gain itself. While the unpaired share is below min_gain (nearly everything paired: mostly grading
lag) the stage holds for the bound rather than advance without it; a gain that never clears it is
below min_gain, which futility ends.
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


def unpaired_share(pairs: int, live_requests: int | None) -> float:
    """The share of the stage's live requests without a graded pair (1.0 when unknown)."""
    if not live_requests:
        return 1.0
    return max(0.0, 1.0 - pairs / live_requests)


def _gain_decision(spec: RolloutSpec, verdicts: list[GuardVerdict], live_requests: int | None) -> Decision:
    """min_gain with a grader as better_on: hold until the gain is shown above 0 (futility, checked
    before, ends it below min_gain), then advance, recording the gain for the canary when the
    unpaired requests could not take it back (module docstring)."""
    v = next(v for v in verdicts if v.metric == spec.better_on)
    gain = gain_interval(v)
    shown = "no interval yet" if gain is None else f"gain [{gain[0]:+.4f}, {gain[1]:+.4f}]"
    if v.verdict != "better" or gain is None:
        reason = f"shadow stage: {v.metric} not yet shown better than control nor below min_gain {spec.min_gain}"
        return Decision("hold", f"{reason} ({shown})", SHADOW_STEP)
    pairs, unpaired = v.candidate.n, unpaired_share(v.candidate.n, live_requests)
    better = (
        f"shadow stage: {v.metric} shows the candidate better on {pairs} graded pairs of {live_requests} live "
        f"requests ({shown}, always-valid {1 - spec.guard_alpha:.1%} interval)"
    )
    if gain[0] * (1 - unpaired) > unpaired:  # the worst case of the unpaired requests cannot undo it
        recorded = {"metric": v.metric, "lo": gain[0], "hi": gain[1], "pairs": pairs, "live": live_requests}
        reason = (
            f"{better}, more than the {unpaired:.1%} of them without a graded pair could take back; no guard "
            f"failed: canary at {spec.steps[0]}%, promoted on this gain once every live guard has a verdict "
            "and none failed"
        )
        return Decision("advance", reason, 0, gain_shown=recorded)
    assert spec.min_gain is not None  # _gain_decision runs only with min_gain
    if unpaired < spec.min_gain:  # nearly everything paired: wait for the bound rather than lose it
        return Decision("hold", f"{better}; waiting until it outweighs the {unpaired:.1%} unpaired", SHADOW_STEP)
    reason = (
        f"{better}; {unpaired:.1%} of them have no graded pair, which could take the gain back: canary at "
        f"{spec.steps[0]}%, where the candidate must show it on live users"
    )
    return Decision("advance", reason, 0)
