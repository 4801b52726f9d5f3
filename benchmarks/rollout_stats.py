"""A/A false-decision rates and power of the rollout policy under continuous monitoring.

    PYTHONPATH=. .venv/bin/python benchmarks/rollout_stats.py [--rollouts 1000]

1,000 simulated rollouts per scenario through serving/rollouts/policy.decide, evaluated after every
batch (serving/rollouts/simulate.py), at the default settings (serving/config.py RolloutsConfig);
also the false-alarm rate of a fixed-n 95% z-test read after every batch, for contrast. Writes
benchmarks/reports/rollouts/stats.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from serving.config import RolloutsConfig
from serving.rollouts.simulate import AA, Scenario, simulate

SCENARIOS = [
    AA,
    Scenario("A/A, rare errors (0.5%), feedback 0.9", error_rate=(0.005, 0.005), feedback_mean=(0.9, 0.9)),
    Scenario("candidate feedback +0.10 (0.55 -> 0.65)", feedback_mean=(0.55, 0.65)),
    Scenario("candidate feedback -0.10 (0.55 -> 0.45)", feedback_mean=(0.55, 0.45)),
    Scenario("candidate errors 2% -> 5%", error_rate=(0.02, 0.05)),
    Scenario("candidate TTFT median x1.2", ttft_median_s=(0.2, 0.24)),
]


def naive_peeking(rollouts: int, looks: int = 40, batch: int = 100, seed: int = 0) -> float:
    """A/A: share of runs where a fixed-n 95% z-test on the feedback difference ever rejects."""
    rng = np.random.default_rng(seed)
    n = np.arange(1, looks + 1) * batch
    a = np.cumsum(rng.random((rollouts, looks * batch)) < 0.55, axis=1)[:, n - 1] / n
    b = np.cumsum(rng.random((rollouts, looks * batch)) < 0.55, axis=1)[:, n - 1] / n
    z = np.abs(a - b) / np.sqrt(2 * 0.55 * 0.45 / n)
    return float((z > 1.96).any(axis=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/reports/rollouts/stats.json"))
    args = parser.parse_args()
    spec = RolloutsConfig().spec()
    rows = []
    started = time.perf_counter()
    for i, scenario in enumerate(SCENARIOS):
        result = simulate(spec, scenario, rollouts=args.rollouts, seed=100 + i)
        rows.append({"scenario": scenario.name, **result.rates, "median_batches": result.median_batches_to_decision})
    naive = naive_peeking(args.rollouts)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "rollouts_per_scenario": args.rollouts,
        "spec": spec.to_json(),
        "batch": 100,
        "batches": 40,
        "feedback_rate": 0.5,
        "results": rows,
        "naive_z_test_aa_false_alarm": naive,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| scenario | rollback | promote | undecided | median evaluations to decide |")
    print("|---|---|---|---|---|")
    for r in rows:
        rates = " | ".join(f"{r[k]:.1%}" for k in ("rollback", "promote", "undecided"))
        print(f"| {r['scenario']} | {rates} | {r['median_batches']} |")
    print(f"\nfixed-n z-test read after every batch, A/A: false alarm in {naive:.1%} of runs")
    print(f"wrote {args.out} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
