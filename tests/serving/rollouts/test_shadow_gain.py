"""The shadow stage's gain question through the real gateway, request log, graders and evaluator
(fake engine): with --better-on grader:NAME --min-gain G, a candidate whose mirrored answers grade
like the control's is rolled back before any user sees it, and one that grades better advances to
the canary (serving/rollouts/shadow.py, policy.futile)."""

from __future__ import annotations

from fakes.servers import wait_for
from tests.serving.rollouts.test_rollout_gateway import FAST, start, status, users
from tests.serving.rollouts.test_shadow import dirs, serving, shadow_body, two_versions

__all__ = ["dirs", "two_versions"]  # the fixtures

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
    assert moved["state"] == "running" and moved["stage"] == "canary", moved
    assert config["stages"] == 2  # the shadow stage took its share of alpha


def test_a_grader_guard_without_captured_answers_is_refused_naming_capture(two_versions, db_url: str) -> None:
    """Graders score only captured answers: such a rollout would hold forever without a verdict."""
    uncaptured = {**GRADED, "adapters": []}
    eng, gateway = serving(two_versions, {"store.url": db_url, **uncaptured})
    with eng, gateway as gw:
        refused = start(gw.url, "blind", **shadow_body(**GAIN))
        assert refused.status_code == 400 and "--capture bodies" in refused.json()["error"]["message"]
        assert start(gw.url, "blind", **shadow_body(**GAIN, capture="bodies")).status_code == 201
