"""The shadow stage's gain question through the real gateway, request log, graders and evaluator
(fake engine): with --better-on grader:NAME --min-gain G, a candidate whose mirrored answers grade
like the control's is rolled back before any user sees it, and one that grades better advances to
the canary (serving/rollouts/shadow.py, policy.futile)."""

from __future__ import annotations

from fakes.servers import wait_for
from serving.rollouts.policy import RolloutSpec
from serving.rollouts.shadow import carried_gain
from tests.serving.rollouts.test_rollout_gateway import FAST, start, status, users
from tests.serving.rollouts.test_shadow import dirs, serving, shadow_body, two_versions

__all__ = ["dirs", "two_versions"]  # the fixtures


def spec_of(rollout) -> RolloutSpec:
    return RolloutSpec.from_json(rollout.config)


GRADED = {
    **FAST,
    "adapters": [{"name": "bot", "capture": "bodies"}],
    "graders": [{"name": "json_valid", "kind": "json_valid", "applies_to": ["bot"]}],
}
GAIN = {
    "min_samples": 20,
    "guards": ["error_rate:0.05", "grader:json_valid:0"],
    "promote_when": "better",
    "better_on": "grader:json_valid",
    "min_gain": 0.05,
}


def test_a_candidate_that_grades_like_the_control_is_rolled_back_in_shadow(two_versions, db_url: str) -> None:
    same = {"bot@v1": '{"ok": 1}', "bot@v2": '{"ok": 2}'}
    eng, gateway = serving(two_versions, {"store.url": db_url, **GRADED}, replies=same)
    with eng, gateway as gw:
        assert start(gw.url, "same", **shadow_body(**GAIN)).status_code == 201
        # Identical grades leave only the variance floor a 0.05 gain implies (stats.futility_upper):
        # ~400 users bring the bound under 0.05.
        answers = users(gw.url, 400)
        final = wait_for(lambda: (s := status(gw.url, "same"))["state"] != "running" and s, timeout_s=60)
    assert {r.headers["x-loraplane-adapter"] for r in answers} == {"bot@v1"}
    assert final["state"] == "rolled_back" and final["stage"] == "rolled_back", final
    assert "shadow stage: guard grader:json_valid: candidate gains" in final["reason"]
    assert "below min_gain 0.05" in final["reason"] and "no user saw it" in final["reason"]
    assert final["better_on"] == "grader:json_valid" and final["min_gain"] == 0.05


def test_a_candidate_that_grades_better_goes_on_to_the_canary(two_versions, db_url: str) -> None:
    better = {"bot@v1": "not json", "bot@v2": '{"ok": 2}'}
    eng, gateway = serving(two_versions, {"store.url": db_url, **GRADED}, replies=better)
    with eng, gateway as gw:
        assert start(gw.url, "better", **shadow_body(**GAIN)).status_code == 201
        users(gw.url, 60)
        moved = wait_for(lambda: (s := status(gw.url, "better"))["step"] == 0 and s, timeout_s=30)
        config = gw.state.store.get_rollout("better").config
        advanced = [a.reason for a in gw.state.store.audit_log("better") if a.action.endswith("advance")]
        # Once the stage is over, its final pairs: what the canary's last step reads to promote on.
        rollout = gw.state.store.get_rollout("better")
        final = wait_for(lambda: (c := carried_gain(gw.state.store, rollout, spec_of(rollout))) and c["carries"] and c)
    assert moved["state"] == "running" and moved["stage"] == "canary", moved
    assert config["stages"] == 2  # the shadow stage took its share of alpha
    shown = config["gain_shown"]  # what the stage showed when it advanced
    assert shown["metric"] == "grader:json_valid" and shown["lo"] > 0 and shown["pairs"] <= shown["live"] <= 60
    assert "it promotes on this stage's final pairs" in advanced[0]
    # Every graded answer differs by 1 point: the gain's lower bound far outweighs the few requests
    # without a graded pair, so the canary may promote on it (with no live guard failing).
    assert final["metric"] == "grader:json_valid" and final["pairs"] >= shown["pairs"] and final["lo"] > 0.5


def test_a_grader_guard_without_captured_answers_is_refused_naming_capture(two_versions, db_url: str) -> None:
    """Graders score only captured answers: such a rollout would hold forever without a verdict."""
    uncaptured = {**GRADED, "adapters": []}
    eng, gateway = serving(two_versions, {"store.url": db_url, **uncaptured})
    with eng, gateway as gw:
        refused = start(gw.url, "blind", **shadow_body(**GAIN))
        assert refused.status_code == 400 and "--capture bodies" in refused.json()["error"]["message"]
        assert start(gw.url, "blind", **shadow_body(**GAIN, capture="bodies")).status_code == 201


def test_the_shadow_stage_compares_only_requests_both_versions_answered_and_the_grader_scored(store) -> None:
    """Review, 2026-12-07: the hard requests are the ones whose mirrors drop out under load. The
    control's side used to keep them (all its live answers), so an equal candidate looked better.
    Now each side holds only pairs: a mirrored live row and its mirror (`mirror_of`), and for a
    grader's scores only pairs it scored both answers of."""
    from serving.store.records import FeedbackRecord, RequestRecord
    from serving.store.shadow import SHADOW, SHADOW_STEP

    def row(rid: str, variant: str, unit: str, **extra) -> RequestRecord:
        return RequestRecord(rid, 1.0, "chat", "bot", variant, "k", 200, 0.1, rollout="r", ttft_s=0.01,
                             unit=unit, step=SHADOW_STEP, **extra)  # fmt: skip

    rows, grades = [], []
    for u in range(30):
        unit = f"{u:032x}"
        for i, hard in enumerate((False, True)):  # one easy request (mirrored), one hard (its mirror dropped)
            live = f"live-{u}-{i}"
            rows.append(row(live, "bot@v1", unit))
            grades.append((live, "bot@v1", unit, None, 0.0 if hard else 1.0))
            if not hard:
                rows.append(row(f"mirror-{u}", "bot@v2", unit, excluded=SHADOW, mirror_of=live))
                grades.append((f"mirror-{u}", "bot@v2", unit, SHADOW, 1.0))
    rows.append(row("mirror-orphan", "bot@v2", "f" * 32, excluded=SHADOW, mirror_of="not-logged"))
    rows.append(row("mirror-ungraded", "bot@v2", f"{0:032x}", excluded=SHADOW, mirror_of="live-0-1"))
    store.write_requests(rows)
    store.put_feedback(
        [
            FeedbackRecord(
                rid, s, "k", "bot", v, rollout="r", unit=u, step=SHADOW_STEP, excluded=x, source="grader:json_valid"
            )
            for rid, v, u, x, s in grades
        ]  # fmt: skip
    )
    units = list(store.shadow_units("r", ttft_threshold_s=None))
    per_variant = {v: sum(u.requests for u in units if u.variant == v) for v in ("bot@v1", "bot@v2")}
    assert per_variant == {"bot@v1": 31, "bot@v2": 31}  # 30 easy pairs + live-0-1 with its (ungraded) mirror
    scores = list(store.shadow_scores("r", "grader:json_valid"))
    totals = {v: (sum(s.score_sum for s in scores if s.variant == v), sum(s.score_n for s in scores if s.variant == v))
              for v in ("bot@v1", "bot@v2")}  # fmt: skip
    assert totals == {"bot@v1": (30.0, 30), "bot@v2": (30.0, 30)}  # the hard, unmirrored 0s are not the control's
