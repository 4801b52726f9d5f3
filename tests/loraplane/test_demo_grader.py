"""The demo's `grounded` grader (loraplane/demo_grader.py): every reference answer of the demo's data
passes; an answer with a misspelled or invented value, a wrong age, a missing or extra key, or no
JSON fails; a request without user text is not scored. And the gateway loads it as configured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraplane.demo_grader import grounded

ROOT = Path(__file__).resolve().parents[2]
DATA = ("train.jsonl", "heldout.jsonl", "live.jsonl")


def examples() -> list[tuple[dict, str]]:
    out = []
    for name in DATA:
        for line in (ROOT / "data/demo" / name).read_text().splitlines():
            messages = json.loads(line)["messages"]
            out.append(({"messages": messages[:-1]}, messages[-1]["content"]))
    return out


def test_every_reference_answer_of_the_demo_data_is_grounded() -> None:
    rows = examples()
    assert len(rows) > 300 and all(grounded(request, answer) == 1.0 for request, answer in rows)


@pytest.mark.parametrize(
    "change",
    [
        lambda a: {**a, "city": a["city"][:-1] + "k"},  # v2's commonest miss: a misspelled city
        lambda a: {**a, "job": "astronaut"},
        lambda a: {**a, "age": a["age"] + 1},
        lambda a: {**a, "age": str(a["age"])},
        lambda a: {**a, "age": True},
        lambda a: {k: v for k, v in a.items() if k != "job"},
        lambda a: {**a, "extra": "x"},
        lambda a: {**a, "name": ""},
        lambda a: {**a, "name": "name"},  # a word of the instruction, not of the passage
        lambda a: {**a, "name": a["name"][0]},  # a letter of the name is not the name
    ],
)
def test_a_wrong_extraction_is_not_grounded(change) -> None:
    request, answer = examples()[0]
    assert grounded(request, json.dumps(change(json.loads(answer)))) == 0.0


def test_no_json_scores_zero_and_no_user_text_is_not_scored() -> None:
    request, answer = examples()[0]
    assert grounded(request, "The name is " + answer) == 0.0
    assert grounded(request, "[1, 2]") == 0.0
    assert grounded({"messages": []}, answer) is None
    assert grounded({"prompt": "x"}, answer) is None


def test_the_demo_gateway_config_loads_it() -> None:
    from serving.config import load_config
    from serving.graders.kinds import build_grader

    cfg = load_config(ROOT / "configs/serving/demo.yaml")
    (grader,) = [g for g in cfg.graders if g.name == "grounded"]
    assert grader.applies_to == ["demo-json"]
    build_grader(grader)  # imports the callable: a ConfigError would stop the gateway at start
