"""POST /v1/feedback `correction`: what the answer should have been, in the user's words. Through the
real `openai` client and gateway (mock engine): a bad correction is refused by name, a correction is
stored with its score and exported as a preference pair, a desirable KTO row and an SFT row by
`loraplane feedback export` and `loraplane rollout export`, whatever the label source; a
train_opt_out key's corrections never are."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai

from serving.gateway.feedback import MAX_CORRECTION_CHARS
from tests.serving import test_feedback_export as fx
from tests.serving.test_feedback_export import ADMIN, ADMIN_KEY, _auth, export, wait_graded
from trainer.preferences import load_preference_file, load_rated_file

dirs, gateway = fx.dirs, fx.gateway  # the export tests' gateway: keys app and private (train_opt_out), a grader
RIGHT = '{"answer": 41}'  # what the users say the mock engine's '{"answer": 42}' should have been


def ask(url: str, key: str, text: str, model: str = "bot") -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], max_tokens=3)
    return reply.id


def rate(url: str, key: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/feedback", json=body, headers=_auth(key))


def test_bad_corrections_are_refused_by_name_and_nothing_is_stored(gateway) -> None:
    rid = ask(gateway.url, "ka", "q")
    for bad in (42, ["x"], "", "   ", "x" * (MAX_CORRECTION_CHARS + 1)):
        resp = rate(gateway.url, "ka", {"id": rid, "score": 0, "correction": bad})
        assert resp.status_code == 400, (bad, resp.text)
        assert resp.json()["error"]["param"] == "correction" and "correction" in resp.json()["error"]["message"]
    assert gateway.state.store.get_feedback(rid) is None
    ok = rate(gateway.url, "ka", {"id": rid, "score": 0, "correction": RIGHT})
    assert ok.status_code == 200 and ok.json()["corrected"] is True
    assert gateway.state.store.get_feedback(rid).correction == RIGHT
    again = rate(gateway.url, "ka", {"id": rid, "score": 1})  # a repeat replaces the rating, correction included
    assert again.json()["corrected"] is False and gateway.state.store.get_feedback(rid).correction is None


def test_text_the_database_cannot_store_is_refused_by_name(gateway) -> None:
    """A NUL (PostgreSQL text refuses it) or an unpaired surrogate (no UTF-8 form) in any feedback
    text: 400 naming the field. Before: the surrogate hung the whole writer batch until
    feedback_timeout_s, then 503 "retry"; the NUL failed the whole batch on PostgreSQL with 503."""
    rid = ask(gateway.url, "ka", "q odd")
    for field in ("correction", "comment", "label"):
        for bad in ("a\\u0000b", "a\\ud800b"):
            raw = f'{{"id": "{rid}", "score": 0, "{field}": "{bad}"}}'.encode()
            resp = httpx.post(f"{gateway.url}/v1/feedback", content=raw, headers=_auth("ka"), timeout=30)
            assert resp.status_code == 400, (field, bad, resp.text)
            assert resp.json()["error"]["param"] == field
    assert gateway.state.store.get_feedback(rid) is None
    assert rate(gateway.url, "ka", {"id": rid, "score": 0, "correction": "ok \u00e9 \U0001f600"}).status_code == 200


def test_corrections_become_pairs_and_desirable_rows_in_both_exports(gateway, capsys, monkeypatch, tmp_path) -> None:
    url = gateway.url
    corrected = [ask(url, "ka", f"app question {i}") for i in range(3)]
    for rid in corrected:
        assert rate(url, "ka", {"id": rid, "score": 0, "correction": RIGHT}).status_code == 200
    liked = ask(url, "ka", "app question liked")
    assert rate(url, "ka", {"id": liked, "score": 1}).status_code == 200
    private = ask(url, "kp", "private question")  # a train_opt_out key: never exported, corrected or not
    assert rate(url, "kp", {"id": private, "score": 0, "correction": RIGHT}).status_code == 200

    monkeypatch.setenv("LORAPLANE_ADMIN_KEY", ADMIN_KEY)
    out = tmp_path / "user"
    code, _, err = export(capsys, url, out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["captures"] == 4 and manifest["opted_out"] == 1 and manifest["corrections"] == 3
    files = manifest["files"]
    assert files["preferences.jsonl"]["rows"] == 3 and files["sft.jsonl"]["rows"] == 4  # 3 corrections + 1 liked
    assert files["kto.jsonl"]["desirable"] == 4 and files["kto.jsonl"]["undesirable"] == 3
    pairs = load_preference_file(str(out / "preferences.jsonl"))
    assert {c[-1]["content"] for c in pairs.conversations} == {RIGHT}
    assert {r[-1]["content"] for r in pairs.rejected} == {'{"answer": 42}'}
    assert len(load_rated_file(str(out / "kto.jsonl")).labels) == 7
    assert "private question" not in "".join(p.read_text() for p in out.glob("*.jsonl"))

    # Labelled by a grader, the users' corrections are still the users' words: still exported.
    wait_graded(url, 4)
    graded = tmp_path / "graded"
    code, _, err = export(capsys, url, graded, "--label-source", "grader:json_valid")
    assert code == 0, err
    manifest = json.loads((graded / "manifest.json").read_text())
    assert manifest["corrections"] == 3 and manifest["files"]["preferences.jsonl"]["rows"] == 3


def test_rollout_export_carries_corrections(gateway, capsys, monkeypatch, tmp_path: Path) -> None:
    from serving.rollouts import cli as rollout_cli
    from tests.serving.test_registry import make_adapter

    monkeypatch.setenv("LORAPLANE_ADMIN_KEY", ADMIN_KEY)
    make_adapter(fx.faults_dirs(gateway), "bot", "v2")
    body = {"candidate": "bot@v2", "guards": ["grader:json_valid:0"], "promote_when": "no_regression"}
    created = httpx.post(f"{gateway.url}/admin/rollouts/r", json={**body, "capture": "bodies"}, headers=ADMIN)
    assert created.status_code == 201, created.text
    rids = [ask(gateway.url, "ka", f"rollout question {i}") for i in range(4)]
    for rid in rids[:2]:
        assert rate(gateway.url, "ka", {"id": rid, "score": 0, "correction": RIGHT}).status_code == 200
    for source in ("user", "grader:json_valid"):
        out = tmp_path / source.replace(":", "-")
        code = rollout_cli.main(["--url", gateway.url, "export", "r", "--out", str(out), "--label-source", source])
        assert code == 0, capsys.readouterr().err
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["corrections"] == 2 and manifest["files"]["preferences.jsonl"]["rows"] == 2, source


def test_a_correction_no_export_could_use_is_not_kept(gateway) -> None:
    rid = ask(gateway.url, "ka", "q", model="other")  # `other` does not capture bodies
    resp = rate(gateway.url, "ka", {"id": rid, "score": 0, "correction": RIGHT})
    assert resp.status_code == 200 and resp.json()["corrected"] is False  # the rating is kept, the words are not
    kept = gateway.state.store.get_feedback(rid)
    assert kept is not None and kept.score == 0.0 and kept.correction is None
