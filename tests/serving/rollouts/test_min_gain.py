"""`better_on` and `min_gain` (policy.futile, shadow._gain_open): a rollout whose score guard shows
the candidate's gain below min_gain is rolled back -- in a shadow stage, on the same requests both
versions answered, before any user sees it -- and a shadow stage's comparisons take their own share
of alpha. The data are per user, with heavy-tailed request counts, as the gateway's traffic is."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from serving.rollouts.actions import new_rollout
from serving.rollouts.policy import GuardSpec, RolloutSpec, decide, evaluate_guard, futile
from serving.rollouts.shadow import SHADOW_STEP, decide_shadow, outweighs_unpaired
from serving.rollouts.stats import Cells, comparisons, futility_upper
from tests.serving.rollouts.test_policy import spec as policy_spec
from tests.serving.rollouts.test_policy import verdicts

GRADER = "grader:grounded"
GUARDS = (GuardSpec("error_rate", 0.0), GuardSpec("ttft_p95", 0.05), GuardSpec(GRADER, 0.0))


def spec(**changes: object) -> RolloutSpec:
    base = {"min_samples": 20, "interval_s": 5.0, "guards": GUARDS, "better_on": GRADER, "min_gain": 0.05}
    return policy_spec(**{**base, "stages": 2, **changes})


def paired(users: int, gain: float, seed: int, reps: int = 1, q: float = 0.2, base: float = 0.6) -> Cells:
    """A shadow step's grader cells: each user's requests (Pareto, mean ~3) answered by both versions.
    The candidate's score equals the control's on a request except with probability q, where it is
    drawn anew with mean base + gain / q: a true gain of `gain` per request."""
    rng = np.random.default_rng(seed)
    n = np.minimum(np.ceil(rng.pareto(1.5, (reps, users)) + 1), 40)
    per_request = rng.random((reps, users, 40)) < base
    redrawn = rng.random((reps, users, 40)) < base + gain / q
    flip = rng.random((reps, users, 40)) < q
    live = np.arange(40) < n[..., None]
    control = (per_request & live).sum(-1)
    candidate = (np.where(flip, redrawn, per_request) & live).sum(-1)
    total = np.stack([candidate, control], -1).astype(float)
    return Cells(total, np.stack([n, n], -1), np.array([SHADOW_STEP, SHADOW_STEP]), np.array([True, False]))


def shadow_verdicts(s: RolloutSpec, grades: Cells) -> list:
    quiet = Cells(np.zeros_like(grades.total), grades.count, grades.strata, grades.candidate)  # no errors, no slow
    cells = {"error_rate": quiet, "ttft_p95": quiet, GRADER: grades}
    return [evaluate_guard(s, g, cells[g.metric]) for g in s.guards]


def test_validation_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="min_gain applies to promote_when 'better' only"):
        spec(promote_when="no_regression")
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match=f"min_gain must be a number in \\(0, 1\\).*{bad}"):
            spec(min_gain=bad)
    with pytest.raises(ValueError, match="better_on 'error_rate' must be a score"):
        spec(better_on="error_rate")
    with pytest.raises(ValueError, match="reads guard 'grader:other', which is not among the guards"):
        spec(better_on="grader:other")
    with pytest.raises(ValueError, match="stages must be 1, or 2"):
        spec(stages=3)
    s = spec()
    assert RolloutSpec.from_json(s.to_json()) == s
    old = {
        k: v for k, v in spec(better_on="feedback", min_gain=None, guards=(GuardSpec("feedback", 0),)).to_json().items()
    }
    for key in ("better_on", "min_gain", "stages"):  # a rollout stored before these fields existed
        old.pop(key)
    assert RolloutSpec.from_json(old) == spec(
        better_on="feedback", min_gain=None, stages=1, guards=(GuardSpec("feedback", 0),)
    )


def test_a_shadow_stage_takes_its_own_share_of_alpha() -> None:
    s = spec(stages=1)
    canary_only = RolloutSpec.from_json(new_rollout("r", "a@v2", "a@v1", s, "none", 0.0).config)
    shadowed = RolloutSpec.from_json(new_rollout("r", "a@v2", "a@v1", s, "none", 0.0, shadow=100).config)
    assert canary_only.guard_alpha == pytest.approx(0.05 / 3)
    assert shadowed.guard_alpha == pytest.approx(0.05 / 6)  # 3 guards x 2 stages: still <= alpha overall


def test_the_canary_rolls_back_a_candidate_shown_to_gain_less_than_min_gain() -> None:
    s = spec(better_on="feedback", guards=(GuardSpec("error_rate", 0.0), GuardSpec("feedback", 0.0)), stages=1)
    equal_many = verdicts(s, feedback=(0.5, 0.5), users=5000)
    d = decide(s, 0, (20_000, 20_000), equal_many)  # at the first step already: the interval is valid at every look
    assert d.outcome == "rollback" and "below min_gain 0.05" in d.reason and "feedback" in d.reason
    equal_few = verdicts(s, feedback=(0.5, 0.5), users=100)  # interval too wide to say either
    assert decide(s, 1, (400, 400), equal_few).outcome == "hold"
    assert decide(s, 1, (20_000, 20_000), verdicts(s, feedback=(0.5, 0.7), users=5000)).outcome == "promote"
    without = spec(better_on="feedback", min_gain=None, guards=s.guards, stages=1)
    assert decide(without, 1, (20_000, 20_000), verdicts(without, users=5000)).outcome == "hold"


def test_paired_shadow_answers_settle_the_gain_question_that_unpaired_ones_cannot() -> None:
    s = spec()
    same = shadow_verdicts(s, paired(400, 0.0, seed=1))
    d = decide_shadow(s, (1200, 1200), same)
    assert d.outcome == "rollback" and d.step_index == SHADOW_STEP
    assert "below min_gain 0.05" in d.reason and "no user saw it" in d.reason
    # The same users' scores, but the candidate's from other requests (as a canary step would see
    # them): the per-user difference no longer cancels, and nothing is decided.
    unpaired = paired(400, 0.0, seed=1)
    other = paired(400, 0.0, seed=2)
    mixed = Cells(
        np.stack([other.total[..., 0], unpaired.total[..., 1]], -1), unpaired.count, unpaired.strata, unpaired.candidate
    )
    held = decide_shadow(s, (1200, 1200), shadow_verdicts(s, mixed))
    assert held.outcome == "hold" and "not yet shown better than control nor below min_gain" in held.reason
    better = decide_shadow(s, (1200, 1200), shadow_verdicts(s, paired(400, 0.15, seed=3)))
    assert (better.outcome, better.step_index) == ("advance", 0)
    few = decide_shadow(s, (60, 60), shadow_verdicts(s, paired(25, 0.0, seed=4)))
    assert few.outcome == "hold"


def one_sided(users: int, gain: float, seed: int, reps: int, base: float = 0.7) -> Cells:
    """Like `paired`, but the candidate only fixes answers (each control miss with probability
    gain / (1 - base)) and breaks none: few differences, all one way (review, 2026-12-07)."""
    rng = np.random.default_rng(seed)
    n = np.minimum(np.ceil(rng.pareto(1.5, (reps, users)) + 1), 40)
    control = rng.random((reps, users, 40)) < base
    candidate = control | (rng.random((reps, users, 40)) < gain / (1 - base))
    live = np.arange(40) < n[..., None]
    total = np.stack([(candidate & live).sum(-1), (control & live).sum(-1)], -1).astype(float)
    return Cells(total, np.stack([n, n], -1), np.array([SHADOW_STEP, SHADOW_STEP]), np.array([True, False]))


@pytest.mark.parametrize("scenario", ["symmetric", "one_sided"])
def test_a_candidate_that_truly_gains_min_gain_is_rarely_rolled_back_at_any_look(scenario: str) -> None:
    """False futility <= the guard's share of alpha (here 0.05 / 6), looking every 20 users from the
    20th (MIN_UNITS) on: 1,000 simulated shadow stages whose candidate gains exactly min_gain. In the
    one-sided scenario the plug-in interval alone claims futility far more often (checked below):
    stats.futility_upper's variance floor is what keeps it under the bound."""
    s = spec()
    gain, reps, users = s.min_gain or 0.0, 1000, 400
    cells = paired(users, gain, seed=11, reps=reps) if scenario == "symmetric" else one_sided(users, gain, 11, reps)
    rolled_back = np.zeros(reps, dtype=bool)
    plug_in = np.zeros(reps, dtype=bool)
    for k in range(20, users + 1, 20):
        look = Cells(cells.total[:, :k], cells.count[:, :k], cells.strata, cells.candidate)
        rolled_back |= futility_upper(look, s.guard_alpha, gain) < gain  # what futile() reads
        plug_in |= np.array([cmp.diff_hi for cmp in comparisons(look, s.guard_alpha)]) < gain
    # Binomial(1000, 0.0083): mean 8.3, sd 2.9; 4 sd above the bound fails only if the bound does not hold.
    assert rolled_back.sum() <= 1000 * s.guard_alpha + 4 * np.sqrt(1000 * s.guard_alpha)
    if scenario == "one_sided":
        assert plug_in.sum() > 1000 * s.guard_alpha + 4 * np.sqrt(1000 * s.guard_alpha)
    equal = paired(users, 0.0, seed=12, reps=200)
    assert np.mean(futility_upper(equal, s.guard_alpha, gain) < gain) > 0.9  # an equal candidate is told apart


def test_futile_reads_the_better_on_guard_only() -> None:
    s = spec()
    grades = paired(400, 0.0, seed=1)
    v = shadow_verdicts(s, grades)
    assert futile(s, v, SHADOW_STEP) is not None
    assert futile(spec(min_gain=None), shadow_verdicts(spec(min_gain=None), grades), SHADOW_STEP) is None


def test_a_default_min_gain_does_not_refuse_a_rollout_with_another_rule() -> None:
    from serving.config import RolloutsConfig

    cfg = RolloutsConfig(min_gain=0.05)
    assert cfg.spec().min_gain == 0.05
    assert cfg.spec(promote_when="no_regression").min_gain is None
    with pytest.raises(ValueError, match="min_gain applies to promote_when 'better' only"):
        cfg.spec(promote_when="no_regression", min_gain=0.05)  # asked for both: named


def test_min_gain_0_switches_a_configured_default_off_for_one_rollout() -> None:
    from serving.config import RolloutsConfig

    cfg = RolloutsConfig(min_gain=0.05)
    assert cfg.spec(min_gain=0).min_gain is None and cfg.spec(min_gain=0.0).min_gain is None
    assert cfg.spec(min_gain=0.1).min_gain == 0.1
    with pytest.raises(ValueError, match="min_gain must be a number in"):
        cfg.spec(min_gain=False)  # a boolean is not a gain, nor a way to switch it off
    with pytest.raises(ValueError, match="min_gain must be a number in"):
        cfg.spec(min_gain=-0.1)


def test_the_shadow_stage_records_the_gain_it_showed_and_the_bound_on_unpaired_requests() -> None:
    s = spec()
    shown = shadow_verdicts(s, paired(400, 0.15, seed=3))  # better: gain interval about [+0.045, +0.10]
    grader = next(v for v in shown if v.metric == GRADER)
    pairs, lo = grader.candidate.n, -grader.worsening_hi
    assert grader.verdict == "better" and 0.03 < lo < 0.047
    d = decide_shadow(s, (1200, 1200), shown, live_requests=pairs + 20)
    assert (d.outcome, d.step_index) == ("advance", 0) and d.gain_shown is not None
    assert d.gain_shown["metric"] == GRADER and d.gain_shown["lo"] == pytest.approx(lo)
    assert (d.gain_shown["pairs"], d.gain_shown["live"]) == (pairs, pairs + 20)
    held = decide_shadow(s, (60, 60), shadow_verdicts(s, paired(25, 0.0, seed=4)), live_requests=60)
    assert held.outcome == "hold" and held.gain_shown is None
    # The bound: over all live requests the gain is >= lo x (1 - u) - u (the unpaired at worst -1).
    assert outweighs_unpaired(lo, pairs, pairs)  # every live request paired
    assert outweighs_unpaired(lo, pairs, round(pairs / 0.97))  # 3% unpaired: 0.97 lo > 0.03
    assert not outweighs_unpaired(lo, pairs, round(pairs / 0.955))  # 4.5%: 0.955 lo < 0.045
    assert not outweighs_unpaired(lo, pairs, None) and not outweighs_unpaired(None, pairs, pairs)
    assert outweighs_unpaired(0.5, 70, 100) and not outweighs_unpaired(0.5, 60, 100)  # 0.7 x 0.5 > 0.3; 0.3 < 0.4


def test_the_canary_promotes_on_a_carried_gain_once_every_live_guard_has_a_verdict_and_none_failed() -> None:
    s = spec(steps=(50, 100))
    carried = {"metric": GRADER, "lo": 0.04, "hi": 0.1, "pairs": 1371, "live": 1371, "carries": True}
    # The canary's own grader comparison (different users' requests: unpaired) is inconclusive, as it
    # is at the demo's size.
    a, b = paired(60, 0.0, seed=7), paired(60, 0.0, seed=8)
    step0 = np.array([0, 0])
    unpaired = Cells(np.stack([a.total[..., 0], b.total[..., 1]], -1), a.count, step0, a.candidate)
    quiet = Cells(np.zeros_like(a.total), a.count, step0, a.candidate)
    cells = {"error_rate": quiet, "ttft_p95": quiet, GRADER: unpaired}
    live = [evaluate_guard(s, g, cells[g.metric]) for g in s.guards]
    assert all(v.verdict not in ("pending", "better", "fail") for v in live), live
    assert decide(s, 0, (400, 400), live).outcome == "hold"  # without the carried gain: its own better
    d = decide(s, 0, (400, 400), live, gain_shown=carried)
    assert d.outcome == "promote" and "shown better in the shadow stage" in d.reason
    short = decide(s, 0, (400, 400), live, gain_shown={**carried, "live": 1500, "carries": False})
    assert short.outcome == "hold" and "does not outweigh the live requests without a pair" in short.reason
    other = {**carried, "metric": "grader:other"}
    assert decide(s, 0, (400, 400), live, gain_shown=other).outcome == "hold"  # another metric's gain: not this rule's
    pending = [replace(v, verdict="pending") if v.metric == "ttft_p95" else v for v in live]
    held = decide(s, 0, (400, 400), pending, gain_shown=carried)
    assert held.outcome == "hold" and "without a verdict yet: ttft_p95" in held.reason
    assert decide(s, 0, (10, 400), live, gain_shown=carried).outcome == "hold"  # min_samples first


def test_the_canary_reads_the_shadow_stages_final_pairs_with_the_running_intersection() -> None:
    """carried_gain: the final pairs' interval intersected with the one the stage recorded at its
    advance (an always-valid interval's running intersection is still valid): a final interval that
    crosses 0 again keeps the recorded lower bound; u comes from the final pairs."""
    from serving.rollouts.shadow import carried_gain
    from serving.store import RolloutRecord, UnitTable
    from serving.store.records import UnitStats

    rng = np.random.default_rng(11)
    rows = []
    for u in range(80):  # equal versions: the final interval straddles 0
        same = int(rng.integers(0, 4))
        for variant in ("a@v2", "a@v1"):
            rows.append(UnitStats(variant, SHADOW_STEP, f"{u:032x}", 3, 0, 0, float(same), 3))

    class FinalPairs:
        def __init__(self, live: int) -> None:
            self.live = live

        def shadow_scores(self, rollout: str, source: str) -> UnitTable:
            return UnitTable.of(rows)

        def shadow_live_requests(self, rollout: str) -> int:
            return self.live

    s = spec()
    recorded = {"metric": GRADER, "lo": 0.03, "hi": 0.4, "pairs": 200, "live": 210}
    rollout = RolloutRecord(
        name="r", adapter="a", candidate="a@v2", control="a@v1", state="running",
        weights={"a@v2": 50, "a@v1": 50}, config={**s.to_json(), "gain_shown": recorded}, step=0,
    )  # fmt: skip
    every = carried_gain(FinalPairs(240), rollout, s)  # type: ignore[arg-type]
    assert every is not None and every["pairs"] == 240 and every["live"] == 240
    assert every["lo"] == 0.03 and 0 < every["hi"] < 0.4 and every["carries"]  # recorded lo, final (tighter) hi
    assert not carried_gain(FinalPairs(260), rollout, s)["carries"]  # type: ignore[arg-type,index]  # 7.7% unpaired
    assert carried_gain(FinalPairs(240), replace(rollout, config=s.to_json()), s) is None  # type: ignore[arg-type]
