"""The shadow stage through the real gateway, request log and evaluator, with the fake engine
(serving/gateway/shadow.py, serving/rollouts/shadow.py): users get only the stable version's
answers, the candidate's mirrored answers are logged on their own rows and never counted as live
traffic, a failing candidate is rolled back before any user sees it, a healthy one advances to the
first canary step, and mirroring stops while the gateway is at its in-flight share."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from fakes.servers import wait_for
from serving.gateway.abkey import unit_of
from serving.rollouts.cli import summary
from serving.store.models import FeedbackRow, RequestLogRow
from serving.store.records import USER_SOURCE
from serving.store.shadow import SHADOW_STEP
from tests.conftest import GatewayThread, free_port
from tests.serving import test_gateway_faults as faults
from tests.serving.rollouts.test_rollout_gateway import FAST, QUICK, gateway_app, start, status, users
from tests.serving.test_registry import make_adapter

dirs = faults.dirs  # the fixture: a base manifest and adapters bot, other, third @v1


@pytest.fixture
def two_versions(dirs):
    make_adapter(dirs[1], "bot", "v2")
    return dirs


def rows(gw: GatewayThread) -> list[RequestLogRow]:
    gw.state.control.writer.flush().result(10)
    with Session(gw.state.store.engine) as s:
        return list(s.scalars(sa.select(RequestLogRow).order_by(RequestLogRow.created_at)))


def serving(dirs, overrides: dict, **engine_settings) -> tuple[GatewayThread, GatewayThread]:
    eng = faults.engine(**{**QUICK, **engine_settings})
    return eng, GatewayThread(gateway_app(dirs, [eng.url], **overrides), free_port())


def logged(gw: GatewayThread, n: int) -> list[RequestLogRow]:
    """At least n rows (mirrors finish after their live request was answered)."""
    return wait_for(lambda: len(r := rows(gw)) >= n and r, timeout_s=15)


def shadow_body(**extra) -> dict:
    return {"candidate": "bot@v2", "steps": [50, 100], "interval_s": 0.3, "shadow": 100, **extra}


def test_users_get_only_stable_answers_and_shadow_rows_are_kept_apart(two_versions, db_url: str) -> None:
    overrides = {"store.url": db_url, **FAST, "rollouts.evaluator": False}
    eng, gateway = serving(two_versions, overrides)
    with eng, gateway as gw:
        assert start(gw.url, "r1", **shadow_body(min_samples=500)).status_code == 201
        answers = users(gw.url, 40)
        log = logged(gw, 80)
        live_units = gw.state.store.rollout_units("r1", ttft_threshold_s=None)
        shadow_units = gw.state.store.shadow_units("r1", ttft_threshold_s=None)
        mirrored = [r for r in log if r.excluded == "shadow"]
        rated = httpx.post(f"{gw.url}/v1/feedback", json={"id": mirrored[0].id, "score": 1.0}, timeout=10)
        gw.state.control.writer.flush().result(10)
        with Session(gw.state.store.engine) as s:
            feedback = s.get(FeedbackRow, (mirrored[0].id, USER_SOURCE))
        report = status(gw.url, "r1")
        metrics = httpx.get(f"{gw.url}/metrics").text
    assert {r.status_code for r in answers} == {200}
    assert {r.headers["x-loraplane-adapter"] for r in answers} == {"bot@v1"}  # nobody got the candidate
    live = [r for r in log if r.excluded is None]
    assert len(live) == 40 and {(r.variant, r.step) for r in live} == {("bot@v1", SHADOW_STEP)}
    assert len(mirrored) == 40 and {(r.variant, r.step, r.outcome) for r in mirrored} == {("bot@v2", SHADOW_STEP, "ok")}
    assert {r.unit for r in mirrored} == {unit_of(f"user:u{i}") for i in range(40)}  # same users as the live rows
    assert not {r.json()["id"] for r in answers} & {r.id for r in mirrored}  # a mirrored answer was never returned
    assert {u.variant for u in live_units} == {"bot@v1"}  # live statistics never count a shadow row
    assert {u.variant for u in shadow_units} == {"bot@v1", "bot@v2"}
    assert rated.status_code == 200 and feedback is not None and feedback.excluded == "shadow"  # gradable by id
    assert report["stage"] == "shadow" and report["shadow_percent"] == 100
    assert "running in shadow (100% of control's requests mirrored, none returned)" in summary(report)
    guards = len(report["guards"])  # a shadow stage takes its share of alpha: alpha / (guards x 2 stages)
    assert report["stages"] == 2 and report["guard_alpha"] == pytest.approx(report["alpha"] / (guards * 2))
    assert f"over {guards} guards x 2 stages: {report['alpha'] / (guards * 2):.4f} per guard" in summary(report)
    assert report["weights"] == {"bot@v2": 0, "bot@v1": 100}
    assert report["requests_at_step"] == {"candidate": 40, "control": 40}
    assert 'loraplane_shadow_requests_total{outcome="mirrored",rollout="r1"} 40.0' in metrics


def test_a_failing_candidate_is_rolled_back_in_shadow_before_any_user_sees_it(two_versions, db_url: str) -> None:
    overrides = {"store.url": db_url, **FAST}
    eng, gateway = serving(two_versions, overrides, fail_status={"bot@v2": 500})
    with eng, gateway as gw:
        body = shadow_body(min_samples=20, guards=["error_rate:0"], promote_when="no_regression")
        assert start(gw.url, "bad", **body).status_code == 201
        answers = users(gw.url, 60)
        final = wait_for(lambda: (s := status(gw.url, "bad"))["state"] != "running" and s, timeout_s=20)
        after = users(gw.url, 20, offset=500)
    assert final["state"] == "rolled_back", final
    assert "shadow stage: guard error_rate" in final["reason"] and "no user saw it" in final["reason"]
    assert final["step"] == SHADOW_STEP and final["weights"] == {"bot@v2": 0, "bot@v1": 100}
    served = {r.headers["x-loraplane-adapter"] for r in answers + after}
    assert served == {"bot@v1"} and {r.status_code for r in answers + after} == {200}


def test_graders_score_mirrored_answers_and_a_failing_grader_guard_rolls_back_in_shadow(
    two_versions, db_url: str
) -> None:
    """The candidate answers fine by every service metric but not in JSON: only a grader can see it.
    Mirrored answers are graded like live ones, and the shadow stage's grader guard reads them."""
    overrides = {
        "store.url": db_url,
        **FAST,
        "adapters": [{"name": "bot", "capture": "bodies"}],
        "graders": [{"name": "json_valid", "kind": "json_valid", "applies_to": ["bot"]}],
    }
    eng, gateway = serving(two_versions, overrides, replies={"bot@v1": '{"ok": 1}', "bot@v2": "not json"})
    with eng, gateway as gw:
        guards = ["error_rate:0.05", "grader:json_valid:0"]
        body = shadow_body(min_samples=20, guards=guards, promote_when="no_regression")
        assert start(gw.url, "judged", **body).status_code == 201
        answers = users(gw.url, 60)
        final = wait_for(lambda: (s := status(gw.url, "judged"))["state"] != "running" and s, timeout_s=30)
        mirrored = [r.id for r in rows(gw) if r.excluded == "shadow"]
        scores = gw.state.store.scores_of(mirrored, "grader:json_valid")
    assert {r.headers["x-loraplane-adapter"] for r in answers} == {"bot@v1"}
    assert scores and set(scores.values()) == {0.0}  # the mirrored answers were graded
    assert final["state"] == "rolled_back", final
    assert "shadow stage: guard grader:json_valid" in final["reason"] and "no user saw it" in final["reason"]


def test_a_healthy_candidate_advances_from_shadow_to_the_first_canary_step(two_versions, db_url: str) -> None:
    overrides = {"store.url": db_url, **FAST}
    eng, gateway = serving(two_versions, overrides)
    with eng, gateway as gw:
        body = shadow_body(min_samples=20, guards=["error_rate:0.05"], promote_when="no_regression")
        assert start(gw.url, "good", **body).status_code == 201
        users(gw.url, 40)
        moved = wait_for(lambda: (s := status(gw.url, "good"))["step"] == 0 and s, timeout_s=20)
        canary = users(gw.url, 60, offset=1000)
        log = rows(gw)
        audit = httpx.get(f"{gw.url}/admin/audit", params={"subject": "good"}).json()["data"]
    assert moved["state"] == "running" and moved["stage"] == "canary", moved
    assert moved["weights"] == {"bot@v2": 50, "bot@v1": 50}
    advance = next(a for a in audit if a["action"] == "rollout.advance")
    assert "shadow stage passed" in advance["reason"] and advance["numbers"]["report"]["stage"] == "shadow"
    assert {r.headers["x-loraplane-adapter"] for r in canary} == {"bot@v1", "bot@v2"}  # users now see it
    canary_rows = [r for r in log if r.step == 0]
    assert all(r.excluded is None for r in canary_rows)  # no mirroring once the canary began


def test_mirroring_stops_while_the_gateway_is_at_its_in_flight_share(two_versions) -> None:
    # max_in_flight 4 x share 0.25 = 1: the live request itself fills it, so every mirror is dropped.
    overrides = {"rollouts.evaluator": False, "gateway.max_in_flight": 4, "rollouts.shadow_max_in_flight_share": 0.25}
    eng, gateway = serving(two_versions, overrides)
    with eng, gateway as gw:
        assert start(gw.url, "busy", **shadow_body(min_samples=500)).status_code == 201
        answers = [faults.chat(gw.url, "bot", user=f"u{i}") for i in range(10)]
        log = logged(gw, 10)
        metrics = httpx.get(f"{gw.url}/metrics").text
    assert {r.status_code for r in answers} == {200}
    assert [r for r in log if r.excluded == "shadow"] == []
    assert 'loraplane_shadow_requests_total{outcome="dropped",rollout="busy"} 10.0' in metrics


def test_shadow_share_is_validated(two_versions) -> None:
    overrides = {"rollouts.evaluator": False}
    with GatewayThread(gateway_app(two_versions, [], **overrides), free_port()) as gw:
        for bad in (0, 150, "half", True):
            resp = start(gw.url, "r1", **shadow_body(shadow=bad))
            assert resp.status_code == 400 and "shadow must be a percentage" in resp.json()["error"]["message"], bad


def test_a_slow_streamed_mirror_never_holds_up_the_users_answer(two_versions) -> None:
    overrides = {"rollouts.evaluator": False, "store.log_flush_interval_s": 0.05}
    eng, gateway = serving(two_versions, overrides, slow_ms={"bot@v2": 1500.0})
    with eng, gateway as gw:
        assert start(gw.url, "slow", **shadow_body(min_samples=500)).status_code == 201
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            json={"model": "bot", "messages": faults.MSG, "stream": True, "user": "u1"},
            timeout=30,
        ) as resp:
            events = [line for line in resp.iter_lines() if line.startswith("data: ")]
        at_answer = rows(gw)  # the user has the whole stream; the mirror is still waiting on v2
        log = logged(gw, 2)
    assert resp.headers["x-loraplane-adapter"] == "bot@v1" and events[-1] == "data: [DONE]"
    assert [r.excluded for r in at_answer] == [None]
    (mirror,) = [r for r in log if r.excluded == "shadow"]
    assert mirror.variant == "bot@v2" and mirror.outcome == "ok"
    assert mirror.ttft_s is not None and mirror.ttft_s >= 1.5  # the mirrored stream was read to its end


def test_decide_shadow_waits_for_service_guards_only_and_rolls_back_on_any_failure() -> None:
    from serving.rollouts.policy import GuardSpec, GuardVerdict, RolloutSpec
    from serving.rollouts.shadow import decide_shadow
    from serving.rollouts.stats import Arm

    guards = (GuardSpec("error_rate", 0.0), GuardSpec("feedback", 0.0))
    spec = RolloutSpec((10, 50, 100), 20, 1.0, 0.05, guards, "no_regression")
    arm = Arm(30, 25, 0.0, 0.0, 0.1)

    def verdict(metric: str, v: str) -> GuardVerdict:
        return GuardVerdict(metric, v, 0.0, 0.1 if v == "fail" else None, 0.2 if v == "fail" else None, arm, arm)

    scored_by_nobody = [verdict("error_rate", "inconclusive"), verdict("feedback", "pending")]
    assert decide_shadow(spec, (30, 30), scored_by_nobody).outcome == "advance"
    assert decide_shadow(spec, (30, 30), scored_by_nobody).step_index == 0
    assert decide_shadow(spec, (19, 30), scored_by_nobody).outcome == "hold"  # too few mirrored
    too_few_users = [verdict("error_rate", "pending"), verdict("feedback", "pending")]
    assert decide_shadow(spec, (30, 30), too_few_users).outcome == "hold"
    graded_worse = [verdict("error_rate", "not_worse"), verdict("feedback", "fail")]
    assert decide_shadow(spec, (5, 30), graded_worse).outcome == "rollback"  # a failure needs no more samples


def test_a_request_assigned_in_shadow_is_mirrored_even_if_the_stage_ends_while_it_is_answered(two_versions) -> None:
    """Requests in flight when the shadow stage advances keep their pair: their mirror is logged at
    the shadow step (before, it was skipped, and each advance left the requests then in flight as
    live answers without a pair: 8 of 145 in a demo run)."""
    overrides = {**FAST, "rollouts.evaluator": True, "store.log_flush_interval_s": 0.05}
    eng, gateway = serving(two_versions, overrides, slow_ms={"bot@v1": 400.0})
    with eng, gateway as gw:
        body = shadow_body(min_samples=5, guards=["error_rate:0.5"], promote_when="no_regression")
        assert start(gw.url, "moving", **body).status_code == 201
        answers = users(gw.url, 48)  # 8 at a time, each answered in 0.4 s: the stage advances mid-traffic
        moved = wait_for(lambda: (s := status(gw.url, "moving"))["step"] == 0 and s, timeout_s=30)
        live_at_shadow = wait_for(lambda: [r for r in rows(gw) if r.step == SHADOW_STEP and r.excluded is None])

        def all_paired() -> list[RequestLogRow] | None:
            mirrors = [r for r in rows(gw) if r.excluded == "shadow"]
            return mirrors if {m.mirror_of for m in mirrors} >= {r.id for r in live_at_shadow} else None

        mirrors = wait_for(all_paired, timeout_s=15)
        canary_live = [r for r in rows(gw) if r.step == 0 and r.excluded is None]
    assert {r.status_code for r in answers} == {200} and moved["stage"] == "canary"
    assert canary_live, "the stage must have advanced while users were still asking"
    assert {m.step for m in mirrors} == {SHADOW_STEP}  # pairs of the shadow stage, whenever they finished
    assert {m.mirror_of for m in mirrors} <= {r.id for r in live_at_shadow}  # nothing assigned to the canary mirrored
