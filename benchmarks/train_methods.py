"""Proof runs of the trainer's methods on the demo task: DPO after SFT, and distillation.

    .venv/bin/python benchmarks/train_methods.py                  # sft (if missing), dpo, distill
    .venv/bin/python benchmarks/train_methods.py --only dpo        # one of them; merges into the report
    .venv/bin/python benchmarks/train_methods.py --only kto        # the KTO proof: its own report (below)

1. SFT: configs/train/demo.yaml -> demo-json v1 (rank 16), skipped when it is already published.
2. DPO: configs/train/demo-dpo.yaml, from v1 (init_from) on data/demo/preferences-train.jsonl.
   Target: held-out preference accuracy >= 0.9 and held-out exact match not below v1's.
3. Distill: configs/train/demo-distill.yaml, a rank-4 student with v1 as the teacher.
   Target: the student keeps >= 90% of the teacher's exact-match gain over the base.
The base's exact match and v1's preference accuracy are measured here with the trainer's own
eval code. Every run is the real `loraplane train`; the report is benchmarks/reports/train_methods.json.
4. KTO (benchmarks/kto_proof.py): a weak v1, thumbs on its own answers to train prompts, KTO from v1;
   target: held-out exact match above the weak v1's. Report: benchmarks/reports/kto-DATE.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REPORT = REPO / "benchmarks" / "reports" / "train_methods.json"
HELDOUT, HELDOUT_PAIRS = "data/demo/heldout.jsonl", "data/demo/preferences-heldout.jsonl"
THREADS = os.environ.get("BENCH_THREADS")  # OMP_NUM_THREADS for the training subprocesses


def train(config: str, out: Path, adapters: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "loraplane", "train", "--config", config, "--out_dir", str(out)]
    cmd += ["--publish.adapters_dir", str(adapters), "--resume", "false", *extra]
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if THREADS:  # on a shared, oversubscribed CPU one thread per process wastes less in OpenMP barriers
        env["OMP_NUM_THREADS"] = THREADS
    subprocess.run(cmd, cwd=REPO, check=True, env=env)
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": round(time.perf_counter() - started, 1), "eval": summary["eval"], "steps": summary["steps"]}


def reference_numbers(adapter: Path) -> dict:
    """Base exact match, and the SFT adapter's preference accuracy, with the trainer's eval code."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.data import load_dataset_file
    from trainer.evaluation.scoring import exact_match
    from trainer.model import load_tokenizer
    from trainer.objectives.dpo import encode_pairs, score_pairs
    from trainer.preferences import load_preference_file

    base_dir = REPO / "models" / "smollm2-135m-instruct"
    tokenizer = load_tokenizer(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    conversations = load_dataset_file(str(REPO / HELDOUT)).conversations
    base_em = exact_match(model, tokenizer, conversations, 16, 48, "cpu")
    pairs = encode_pairs(tokenizer, load_preference_file(str(REPO / HELDOUT_PAIRS)), 128)
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    chosen, rejected = score_pairs(peft_model, pairs, tokenizer.pad_token_id, 16, "cpu")
    return {
        "base_exact_match": base_em.value,
        "n": base_em.n,
        "sft_preference_accuracy": float((chosen > rejected).float().mean()),
        "pairs": len(pairs),
    }


def machine() -> dict:
    cpu = next(
        (
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if x.startswith("model name")
        ),
        "?",
    )
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["sft", "dpo", "distill", "kto"], action="append")
    parser.add_argument("--runs", default="runs/bench", help="out dirs and the adapter registry go here")
    args = parser.parse_args()
    if args.only == ["kto"]:  # its own weak v1 and report (benchmarks/kto_proof.py)
        from benchmarks.kto_proof import main as kto_main

        return kto_main(REPO / args.runs / "kto")
    only = set(args.only or ["sft", "dpo", "distill"])
    runs = REPO / args.runs
    adapters = runs / "adapters"
    report = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    report |= {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "omp_threads": THREADS}
    loads = report.setdefault("loadavg_1min", {})
    v1 = adapters / "demo-json" / "v1"
    if "sft" in only and not v1.is_dir():
        report["sft"] = train("configs/train/demo.yaml", runs / "sft", adapters)
    if only & {"sft", "dpo"} and ("sft" in only or "reference" not in report):
        report["reference"] = reference_numbers(v1)  # a lone --only distill reads it from the report
    if v1.is_dir() and "sft" not in report:
        report["sft"] = {"eval": json.loads((v1 / "loraplane-adapter.json").read_text())["eval"]}
    for method, config in (("dpo", "configs/train/demo-dpo.yaml"), ("distill", "configs/train/demo-distill.yaml")):
        if method in only:
            loads[f"{method}_start"] = os.getloadavg()[0]
            report[method] = train(config, runs / method, adapters, "--publish.enabled", "false")
            loads[f"{method}_end"] = os.getloadavg()[0]
    if REPORT.is_file():  # another invocation (--only) may have written its results meanwhile
        latest = json.loads(REPORT.read_text())
        ours = {k for k in ("sft", "reference", "dpo", "distill") if k in only or k not in latest}
        report = latest | {k: report[k] for k in ours if k in report} | {"date": report["date"]}
        report["omp_threads"] = THREADS
        report["loadavg_1min"] = latest.get("loadavg_1min", {}) | loads
    report["targets"] = targets(report)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["targets"], indent=2))


def targets(report: dict) -> dict:
    out: dict = {}
    if "reference" not in report or "sft" not in report:
        return out
    sft_em, base_em = report["sft"]["eval"]["value"], report["reference"]["base_exact_match"]
    if "dpo" in report:
        ev = report["dpo"]["eval"]
        out["dpo_preference_accuracy"] = f"{ev['preference_accuracy']:.3f} (target >= 0.9, v1 before DPO: "
        out["dpo_preference_accuracy"] += f"{report['reference']['sft_preference_accuracy']:.3f})"
        out["dpo_exact_match"] = f"{ev['value']:.3f} (target >= v1's {sft_em:.3f})"
        out["dpo_met"] = ev["preference_accuracy"] >= 0.9 and ev["value"] >= sft_em
    if "distill" in report:
        kept = (report["distill"]["eval"]["value"] - base_em) / max(sft_em - base_em, 1e-9)
        out["distill_gain_kept"] = f"{kept:.3f} (target >= 0.9; base {base_em:.3f}, teacher {sft_em:.3f})"
        out["distill_met"] = kept >= 0.9
    return out


if __name__ == "__main__":
    main()
