import json
from pathlib import Path

import numpy as np
import pytest

from loadtest.config import LoadtestConfig, parse_duration
from loadtest.errors import UsageError
from loadtest.scenarios import SCENARIOS, arrival_times, build_plan, load_prompts, scenario_named

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "data/demo/heldout.jsonl"


def plan_for(scenario: str, models: list[str], **overrides):
    cfg = LoadtestConfig(scenario=scenario, models=models, prompts=PROMPTS, **overrides)
    return build_plan(SCENARIOS[scenario], models, load_prompts(cfg.prompts), cfg.plan_options())


def test_unknown_scenario_lists_the_valid_ones():
    with pytest.raises(UsageError) as info:
        scenario_named("spike")
    assert all(name in str(info.value) for name in SCENARIOS)


def test_constant_arrivals_are_evenly_spaced_and_bounded_by_duration():
    times = arrival_times("constant", rate=4, duration_s=2.5, rng=np.random.default_rng(0))
    assert times.tolist() == [i / 4 for i in range(10)]


def test_poisson_arrivals_match_the_rate_and_stay_in_the_window():
    times = arrival_times("poisson", rate=20, duration_s=500, rng=np.random.default_rng(1))
    assert times.max() < 500 and np.all(np.diff(times) > 0)
    assert abs(times.size - 10_000) < 5 * np.sqrt(10_000)  # Poisson count: mean 10k, sd 100
    gaps = np.diff(times)
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05  # exponential gaps: coefficient of variation 1


def test_same_seed_same_plan_and_bodies_stream_with_usage():
    a = plan_for("single", ["m"], rate=3, duration_s=5)
    b = plan_for("single", ["m"], rate=3, duration_s=5)
    assert [(p.at_s, p.body) for p in a] == [(p.at_s, p.body) for p in b]
    body = a[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"][-1]["role"] == "user" and "user" not in body


def test_ab_scenario_varies_the_user_key_across_simulated_users():
    plan = plan_for("ab", ["support-bot"], rate=20, duration_s=10, user_keys=16)
    keys = {p.body["user"] for p in plan}
    assert 10 <= len(keys) <= 16
    assert {p.model for p in plan} == {"support-bot"}


def test_mixed_scenario_spreads_over_every_model():
    plan = plan_for("mixed", ["a@v1", "b@v1", "c@v2"], rate=20, duration_s=5)
    assert {p.body["model"] for p in plan} == {"a@v1", "b@v1", "c@v2"}


def test_long_prompts_are_few_shot_and_much_longer_than_short():
    short = plan_for("single", ["m"], rate=5, duration_s=2)
    long = plan_for("long", ["m"], rate=5, duration_s=2, long_shots=6)
    size = lambda p: len(json.dumps(p.body["messages"]))  # noqa: E731
    assert min(size(p) for p in long) > 4 * max(size(p) for p in short)
    assert [m["role"] for m in long[0].body["messages"]] == ["user", "assistant"] * 6 + ["user"]
    kinds = {p.prompt_kind for p in plan_for("short-long", ["m"], rate=20, duration_s=5)}
    assert kinds == {"short", "long"}


def test_completions_endpoint_sends_a_prompt_string():
    plan = plan_for("single", ["m"], rate=2, duration_s=1, endpoint="completions")
    assert isinstance(plan[0].body["prompt"], str) and "messages" not in plan[0].body


def test_prompt_records_of_both_shapes_and_bad_lines(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "hi", "completion": "yo"}\n\n{"messages": [{"role": "user", "content": "q"}]}\n')
    records = load_prompts(good)
    assert [r.answer for r in records] == ["yo", None]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"messages": [{"role": "assistant", "content": "a"}]}\n')
    with pytest.raises(UsageError, match=r"bad.jsonl:2"):
        load_prompts(bad)
    with pytest.raises(UsageError, match="no such file"):
        load_prompts(tmp_path / "missing.jsonl")


def test_config_validation_names_the_flag():
    with pytest.raises(UsageError, match="--rate"):
        LoadtestConfig(rate=0)
    with pytest.raises(UsageError, match="experiment name"):
        LoadtestConfig(scenario="ab")
    with pytest.raises(UsageError, match="--host"):
        LoadtestConfig(host="127.0.0.1:8000")
    assert parse_duration("2m") == 120 and parse_duration("120s") == 120 and parse_duration("1.5") == 1.5
    with pytest.raises(UsageError, match="--duration"):
        parse_duration("two minutes")
