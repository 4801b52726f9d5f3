"""Graders: each kind scores (or counts why it could not), the model grader asks a real HTTP judge
(the mock engine with a fixed reply) through the openai client, and the queue drops and counts
work it has no room for. A grader that times out or answers no number stores nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from serving.config import load_config
from serving.errors import ConfigError
from serving.graders.config import GraderConfig
from serving.graders.judge import Budget, parse_score
from serving.graders.kinds import NoScore, build_grader
from serving.graders.queue import Grading
from serving.metrics import GatewayMetrics
from serving.store import FeedbackRecord, RequestRecord
from tests.serving.test_gateway_faults import BASE, engine

REQUEST = {"messages": [{"role": "user", "content": "give me JSON"}]}


def score(cfg: dict, answer: str, request: dict = REQUEST) -> float:
    return asyncio.run(build_grader(GraderConfig(**cfg)).score(request, answer))


def length_score(request: dict, answer: str) -> float | None:  # a python grader, by import path
    return None if answer == "?" else min(1.0, len(answer) / 10)


def broken(request: dict, answer: str) -> float:
    raise RuntimeError("grader bug")


def test_programmatic_kinds(tmp_path: Path) -> None:
    assert score({"name": "j", "kind": "json_valid"}, ' {"a": 1}\n') == 1.0
    assert score({"name": "j", "kind": "json_valid"}, "{'a': 1}") == 0.0
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}))
    js = {"name": "s", "kind": "json_schema", "params": {"schema_file": str(schema)}}
    assert score(js, '{"a": 3}') == 1.0
    assert score(js, '{"a": "3"}') == 0.0 and score(js, "nope") == 0.0
    rx = {"name": "r", "kind": "regex", "params": {"pattern": r"\d+"}}
    assert score(rx, "about 42 of them") == 1.0 and score(rx, "none") == 0.0
    full = {"name": "r", "kind": "regex", "params": {"pattern": r"\d+", "fullmatch": True}}
    assert score(full, "about 42") == 0.0 and score(full, "42") == 1.0
    py = {"name": "p", "kind": "python", "params": {"callable": f"{__name__}:length_score"}}
    assert score(py, "12345") == 0.5
    with pytest.raises(NoScore) as no:
        score(py, "?")  # None is no score
    assert no.value.reason == "unparsable"
    with pytest.raises(NoScore) as no:
        score({"name": "p", "kind": "python", "params": {"callable": f"{__name__}:broken"}}, "x")
    assert no.value.reason == "error"


def test_bad_grader_configs_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot import params.callable 'nowhere.mod:f'"):
        build_grader(GraderConfig(name="p", kind="python", params={"callable": "nowhere.mod:f"}))
    with pytest.raises(ConfigError, match=r"params.pattern is required.*params.model does not apply"):
        load_config(None, {"graders": [{"name": "r", "kind": "regex", "params": {"model": "x"}}]})
    with pytest.raises(ConfigError, match="grader names repeat"):
        load_config(None, {"graders": [{"name": "a", "kind": "json_valid"}, {"name": "a", "kind": "json_valid"}]})
    with pytest.raises(ConfigError, match=r"rollouts.guards name graders \['grader:nope'\]"):
        load_config(
            None, {"rollouts.guards": {"error_rate": 0, "grader:nope": 0}, "rollouts.promote_when": "not_worse"}
        )
    with pytest.raises(ConfigError, match="must contain {answer}"):
        load_config(
            None,
            {"graders": [{"name": "m", "kind": "model", "params": {"base_url": "u", "model": "m", "rubric": "x"}}]},
        )


def judge(url: str, **params) -> GraderConfig:
    rubric = "Rate from 1 to 10 how well this answers '{prompt}': {answer}. Reply with the number only."
    timeout_s = params.pop("timeout_s", 5.0)
    p = {"base_url": f"{url}/v1", "model": BASE, "rubric": rubric, "scale": "ten", **params}
    return GraderConfig(name="judge", kind="model", params=p, timeout_s=timeout_s)


def test_model_grader_scores_from_the_judges_reply() -> None:
    with engine(tokens=3, ttft_ms=1.0, itl_ms=0.0, replies={BASE: "Score: 7"}) as eng:
        grader = build_grader(judge(eng.url))
        assert asyncio.run(grader.score(REQUEST, '{"a": 1}')) == pytest.approx(6 / 9)
        assert "give me JSON" in grader.prompt(REQUEST, "A") and "A. Reply" in grader.prompt(REQUEST, "A")
    with engine(tokens=3, ttft_ms=1.0, itl_ms=0.0) as eng:  # answers words, no number
        with pytest.raises(NoScore) as no:
            asyncio.run(build_grader(judge(eng.url)).score(REQUEST, "x"))
        assert no.value.reason == "unparsable"


def test_parse_score_and_budget() -> None:
    assert parse_score("0.25", "unit") == 0.25 and parse_score("10/10", "ten") == 1.0
    for reply, scale in (("7", "unit"), ("-1", "ten"), ("great", "unit")):
        with pytest.raises(NoScore):
            parse_score(reply, scale)
    now = [0.0]
    budget = Budget(2, clock=lambda: now[0])
    assert budget.take() and budget.take() and not budget.take()
    now[0] = 60.0
    assert budget.take()


def record(rid: str, variant: str = "bot@v1", *, captured: bool = True, status: int = 200) -> RequestRecord:
    return RequestRecord(
        rid,
        1.0,
        "chat",
        "bot",
        variant,
        "app",
        status,
        0.1,
        rollout="r",
        unit="u1",
        step=0,
        request_body=REQUEST if captured else None,
        response_text='{"a": 1}' if captured else None,
    )


def grading(graders: list[dict], **kwargs) -> tuple[Grading, GatewayMetrics, list[FeedbackRecord]]:
    metrics, written = GatewayMetrics(), []
    cfg = load_config(None, {"graders": graders, "grading": kwargs})
    return Grading.from_config(cfg, metrics, written.append), metrics, written


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_queue_full_drops_and_counts_and_sampling_applies() -> None:
    async def run() -> tuple[Grading, GatewayMetrics, list[FeedbackRecord]]:
        g, metrics, written = grading(
            [
                {"name": "jv", "kind": "json_valid"},
                {"name": "never", "kind": "json_valid", "sample": 0.0},
                {"name": "elsewhere", "kind": "json_valid", "applies_to": ["other"]},
            ],
            queue_size=2,
        )
        for i in range(5):  # no worker yet: two fit, three are dropped
            g.offer(record(f"id-{i}"))
        g.offer(record("uncaptured", captured=False))
        g.offer(record("failed", status=500))
        g.offer(record("base", variant="none"))
        assert g.queue.qsize() == 2
        g.start()
        await asyncio.wait_for(g.queue.join(), 5)
        await g.stop()
        return g, metrics, written

    g, metrics, written = asyncio.run(run())
    assert value(metrics, "loraplane_grader_dropped_total", grader="jv", variant="bot@v1") == 3
    assert value(metrics, "loraplane_grader_scored_total", grader="jv", variant="bot@v1") == 2
    assert value(metrics, "loraplane_grader_score_sum", grader="jv", variant="bot@v1") == 2.0
    assert [w.response_id for w in written] == ["id-0", "id-1"]
    w = written[0]
    assert (w.source, w.key_name, w.score, w.variant, w.rollout, w.unit, w.step) == (
        "grader:jv",
        "grader:jv",
        1.0,
        "bot@v1",
        "r",
        "u1",
        0,
    )


def test_timeouts_and_unparsable_replies_are_counted_never_stored() -> None:
    async def run(url: str, times: int = 1, **params) -> tuple[GatewayMetrics, list[FeedbackRecord], float | None]:
        g, metrics, written = grading([judge(url, **params).model_dump(mode="json")])
        results = [await g.grade(g.graders[0], g_answer(g)) for _ in range(times)]
        await g.stop()
        return metrics, written, results[0]

    def g_answer(g: Grading):
        from serving.graders.queue import Answer

        return Answer(record("x"), REQUEST, '{"a": 1}')

    with engine(tokens=3, ttft_ms=3000.0, itl_ms=0.0, replies={BASE: "9"}) as slow:
        metrics, written, result = asyncio.run(run(slow.url, timeout_s=0.3))
    assert result is None and written == []
    assert value(metrics, "loraplane_grader_failed_total", grader="judge", variant="bot@v1", reason="timeout") == 1
    with engine(tokens=3, ttft_ms=1.0, itl_ms=0.0) as wordy:
        metrics, written, result = asyncio.run(run(wordy.url))
    assert result is None and written == []
    assert value(metrics, "loraplane_grader_failed_total", grader="judge", variant="bot@v1", reason="unparsable") == 1
    assert value(metrics, "loraplane_grader_scored_total", grader="judge", variant="bot@v1") == 0
    with engine(tokens=3, ttft_ms=1.0, itl_ms=0.0, replies={BASE: "9"}) as ok:
        metrics, written, result = asyncio.run(run(ok.url, times=2, per_minute=1))
    assert result == pytest.approx(8 / 9) and [w.source for w in written] == ["grader:judge"]
    assert value(metrics, "loraplane_grader_failed_total", grader="judge", variant="bot@v1", reason="budget") == 1
