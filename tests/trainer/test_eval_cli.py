"""`loraplane eval`: scores a served model through the real gateway with the trainer's metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.trainer.sample_data import REPO
from tests.trainer.test_train_cli import heldout_subset
from trainer.evaluation.cli import main

METRICS = ["exact_match", "json_valid", "rouge_l", "bleu"]


def test_imports_no_torch():
    code = "import sys, trainer.evaluation.cli; "
    code += "sys.exit(any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules))"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_unreachable_gateway_is_a_one_line_error(tmp_path, capsys):
    args = ["--url", "http://127.0.0.1:9", "--model", "m", "--data", str(heldout_subset(tmp_path, 1))]
    assert main([*args, "--out", str(tmp_path / "out"), "--timeout", "5"]) == 2
    assert "cannot reach the gateway at http://127.0.0.1:9/v1" in capsys.readouterr().err


@pytest.mark.slow
def test_served_adapter_scores_as_the_trainer_scored_it(gateway, adapters_dir, tmp_path):
    """The session's adapter v1 was evaluated by the trainer on the first 4 held-out rows (greedy,
    48 new tokens, PEFT in float32); the same rows through the gateway (vLLM, the engine's dtype)
    are scored by the same code: equal replies give equal numbers, and a per-row metric can differ
    by at most the share of rows whose greedy replies differ (a near-tie rounded the other way)."""
    from trainer.evaluation.metrics import score

    run = adapters_dir.parent / "run-v1"
    trained = json.loads((run / "summary.json").read_text())["eval"]
    trainer_rows = [json.loads(line) for line in (run / "eval_replies.jsonl").read_text().splitlines()]
    model, n = f"{gateway.adapter}@v1", len(trainer_rows)
    cmd = [sys.executable, "-m", "loraplane", "eval", "--url", gateway.url, "--model", model, "--model", gateway.base,
           "--data", str(heldout_subset(tmp_path, n)), "--metrics", *METRICS,
           "--max-tokens", "48", "--out", str(tmp_path / "out")]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True)
    report = json.loads((tmp_path / "out" / "eval.json").read_text())["models"]
    served_rows = [json.loads(line) for line in (tmp_path / "out" / f"replies-{model}.jsonl").read_text().splitlines()]
    references = [r["reference"] for r in trainer_rows]
    served, ours = [r["reply"].strip() for r in served_rows], [r["reply"].strip() for r in trainer_rows]
    assert [r["reference"] for r in served_rows] == references
    for a, b in zip(served, ours, strict=True):  # same prompt rendering and greedy decoding: same start
        # (whitespace aside: measured, one reply laid the JSON out on lines where the other did not)
        assert "".join(a.split())[:20] == "".join(b.split())[:20], (a, b)
    assert report[model] == pytest.approx({"n": n, **score(served, references, METRICS)}, abs=1e-12)
    differing = sum(a != b for a, b in zip(served, ours, strict=True))
    for metric in ("exact_match", "json_valid", "rouge_l"):
        assert abs(report[model][metric] - trained["metrics"][metric]) <= differing / n + 1e-12, metric
    if not differing:
        assert report[model] == pytest.approx({"n": n, **trained["metrics"]}, abs=1e-12)
    assert report[gateway.base]["n"] == n and set(report[gateway.base]) == {"n", *METRICS}
    table = (tmp_path / "out" / "eval.md").read_text().splitlines()
    assert table[0] == "| model | n | " + " | ".join(METRICS) + " |" and len(table) == 4
    assert (tmp_path / "out" / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
