"""A/A false-decision rates and power of the rollout policy on simulated gateway traffic.

    PYTHONPATH=. .venv/bin/python benchmarks/rollout_stats.py [--rollouts 1000]

The same as `python -m serving.rollouts.simulate --out benchmarks/reports/rollouts/simulation-units.json`:
1,000 simulated rollouts per scenario (sticky users, heavy-tailed request counts, heterogeneous rates,
steps 10 -> 50%, shared drift, partial feedback) through the real decision path, at the default
settings (serving/config.py RolloutsConfig), plus the per-request analysis it replaced for contrast.
Prints a Markdown table; docs/rollouts.md explains the scenarios.
"""

from __future__ import annotations

import sys

from serving.rollouts.simulate import main

if __name__ == "__main__":
    main(sys.argv[1:] if any(a.startswith("--out") for a in sys.argv[1:])
         else [*sys.argv[1:], "--out", "benchmarks/reports/rollouts/simulation-units.json"])  # fmt: skip
