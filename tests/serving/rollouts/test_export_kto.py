"""kto.jsonl: every rated answer once (duplicates merged by mean score), read by the trainer's own
KTO reader, with the manifest's counts and sha256; opted-out rows only counted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from serving.rollouts.export import build_kto, write
from trainer.preferences import load_rated_file

Q1 = [{"role": "user", "content": "capital of France?"}]
Q2 = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]


def cap(messages, answer: str, score, status: int = 200, at: float = 100.0) -> dict:
    return {"request": {"messages": messages}, "response": answer, "score": score, "status": status, "created_at": at}


CAPTURES = [
    cap(Q1, "Paris", 1.0, at=101.0),
    cap(Q1, "Paris", 1.0, at=102.0),
    cap(Q1, "Paris", 0.0, at=103.0),  # three ratings of one answer: mean 0.67 -> desirable
    cap(Q1, "Lyon", 0.0, at=104.0),
    cap(Q2, "4", 0.4, at=105.0),  # mean 0.4 < 0.5 -> undesirable
    cap(Q2, "5", None, at=106.0),  # unrated: not in kto.jsonl
    cap(Q2, "4", 1.0, status=500, at=107.0),  # failed request: not exported
    {"request": {"prompt": "complete me"}, "response": " done", "score": 1.0, "status": 200, "created_at": 108.0},
]


def test_build_kto_merges_repeats_by_mean_score() -> None:
    rows, merged = build_kto(CAPTURES, threshold=0.5)
    assert merged == 2  # the two extra ratings of ("capital of France?", "Paris")
    by_answer = {row["completion"][0]["content"]: row for row in rows}
    assert set(by_answer) == {"Paris", "Lyon", "4", " done"}
    assert by_answer["Paris"]["label"] is True and by_answer["Lyon"]["label"] is False
    assert by_answer["4"]["label"] is False and by_answer["4"]["prompt"] == Q2
    assert by_answer[" done"]["prompt"] == [{"role": "user", "content": "complete me"}]
    assert all(row["completion"][0]["role"] == "assistant" for row in rows)
    strict, _ = build_kto(CAPTURES, threshold=0.7)  # the threshold decides the label
    assert {r["completion"][0]["content"]: r["label"] for r in strict}["Paris"] is False


def test_write_adds_kto_to_the_manifest_and_the_trainer_reads_it(tmp_path: Path) -> None:
    out = tmp_path / "data"
    manifest = write(out, {"rollout": "r"}, CAPTURES, 1.0, 0.5, kto_threshold=0.5, opted_out=3)
    kto = manifest["files"]["kto.jsonl"]
    assert kto["rows"] == 4 and kto["desirable"] == 2 and kto["undesirable"] == 2
    assert manifest["duplicates_merged"] == 2 and manifest["opted_out"] == 3 and manifest["label_source"] == "user"
    assert manifest["rollout"] == "r" and manifest["window"] == {"from": 101.0, "to": 108.0}
    for name in ("sft.jsonl", "preferences.jsonl", "kto.jsonl"):
        assert manifest["files"][name]["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert json.loads((out / "manifest.json").read_text()) == manifest
    data = load_rated_file(str(out / "kto.jsonl"))  # the trainer's reader for train.method kto
    assert data.skipped == 0 and len(data.labels) == 4 and sorted(data.labels) == [False, False, True, True]
    assert data.conversations[0][-1] == {"role": "assistant", "content": "Paris"}


def test_prompts_the_trainer_cannot_read_are_not_exported() -> None:
    odd = [
        {**cap(Q1, "x", 1.0), "request": {"messages": [{"role": "tool", "content": "t"}, *Q1]}},
        {**cap(Q1, "x", 1.0), "request": {"messages": [{"role": "user", "content": [{"type": "text"}]}]}},
        cap(Q1, "   ", 1.0),  # an empty answer
    ]
    assert build_kto(odd, 0.5) == ([], 0)


def corrected(messages, answer: str, score, correction) -> dict:
    return {**cap(messages, answer, score), "correction": correction}


def test_a_correction_is_a_pair_a_desirable_row_and_an_sft_row() -> None:
    from serving.rollouts.export import build

    captures = [
        corrected(Q1, "Lyon", 0.0, "Paris"),
        corrected(Q1, "Lyon", 0.0, "Paris"),  # the same correction of the same answer twice: one pair
        corrected(Q2, "4", 1.0, " 4 "),  # a "correction" equal to the answer corrects nothing: only the rating
        corrected(Q2, "5", None, "4"),  # corrected without a user score (a grader label source): still data
        corrected(Q1, "Rome", 0.0, "   "),  # blank: not a correction
        {**corrected(Q1, "Oslo", 0.0, "Paris"), "status": 500},  # a failed request: nothing
    ]
    sft, preferences = build(captures, min_score=1.0, margin=0.5)
    pairs = {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in preferences}
    assert pairs == {("Paris", "Lyon"), ("4", "5")} and len(preferences) == 2
    assert all(p["prompt"] in (Q1, Q2) for p in preferences)
    answers = sorted(row["messages"][-1]["content"] for row in sft)
    assert answers == ["4", "4", "Paris"]  # the "4" rated 1, the "5" corrected to "4", "Paris"
    rows, merged = build_kto(captures, threshold=0.5)
    labels = {(json.dumps(r["prompt"]), r["completion"][0]["content"]): r["label"] for r in rows}
    assert labels[json.dumps(Q1), "Paris"] is True and labels[json.dumps(Q1), "Lyon"] is False
    assert labels[json.dumps(Q2), "4"] is True and (json.dumps(Q1), "Rome") in labels
    assert merged == 3  # Lyon rated twice, Paris given twice, "4" rated once and given once


def test_corrections_reach_the_manifest_and_the_trainers_readers(tmp_path: Path) -> None:
    from trainer.preferences import load_preference_file

    captures = [corrected(Q1, "Lyon", 0.0, "Paris"), corrected(Q2, "5", 0.0, "4"), cap(Q2, "4", 1.0)]
    manifest = write(tmp_path, {"adapter": "bot"}, captures, 1.0, 0.5)
    assert manifest["corrections"] == 2 and manifest["files"]["preferences.jsonl"]["rows"] == 2
    assert manifest["files"]["kto.jsonl"]["desirable"] == 2 and manifest["files"]["kto.jsonl"]["undesirable"] == 2
    pairs = load_preference_file(str(tmp_path / "preferences.jsonl"))
    assert pairs.skipped == 0 and len(pairs.rejected) == 2
    chosen = {c[-1]["content"]: r[-1]["content"] for c, r in zip(pairs.conversations, pairs.rejected, strict=True)}
    assert chosen == {"Paris": "Lyon", "4": "5"}  # the correction over the answer it corrects
    assert len(load_rated_file(str(tmp_path / "kto.jsonl")).labels) == 4
