"""Power of the demo's v2 rollout at its own sizes, through the real decision code.

The demo's users (loraplane/demo_users.py: sticky, heavy-tailed, own prompts, partial rating) meet
the demo's rollout settings (loraplane/demo_rollout.py: steps 20,50,100, min-samples 20, the
default guards and rule `better`); a version answers a fixed set of the 48 held-out prompts right
(greedy decoding: the same prompt gets the same answer), as many as the training measured. Users
are assigned sticky by a hash of their id; after every wave of requests, as the evaluator does every
interval, `serving.rollouts.policy` judges the per-user, per-step aggregates (`stats.Cells`: the
unit-level, step-stratified statistics of issue 20, branch h/stats) and decides. Errors and TTFT are
equal for both versions here (one engine serves both), so only the feedback guard can decide.

    python benchmarks/demo_power.py --v1-correct 8 --v2-correct 28 --runs 300
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections import defaultdict

import numpy as np

from loraplane.demo_rollout import WAVE
from loraplane.demo_users import population, traffic
from serving.rollouts.policy import GuardSpec, RolloutSpec, decide, evaluate_guard
from serving.rollouts.stats import Cells

N_PROMPTS = 48
TTFT_OVER = 0.05


def bucket(user: str, salt: str) -> int:
    return int(hashlib.sha256(f"{salt}|{user}".encode()).hexdigest(), 16) % 100


Cell = dict[tuple[str, int, bool], list[float]]  # (user, step, candidate) -> [total, count]


def cells(per_unit: Cell) -> Cells:
    """The guard's per-unit aggregates, dense, as the evaluator reads them from the store."""
    users = sorted({u for u, _, _ in per_unit})
    columns = sorted({(s, c) for _, s, c in per_unit})
    total, count = np.zeros((len(users), len(columns))), np.zeros((len(users), len(columns)))
    row, col = {u: i for i, u in enumerate(users)}, {k: j for j, k in enumerate(columns)}
    for (user, step, cand), (t, n) in per_unit.items():
        total[row[user], col[(step, cand)]], count[row[user], col[(step, cand)]] = t, n
    return Cells(total, count, np.array([s for s, _ in columns]), np.array([c for _, c in columns], dtype=bool))


def one_rollout(seed: int, right: dict[str, set[int]], max_users: int, spec: RolloutSpec) -> tuple[str, int]:
    """(outcome, requests sent) of one simulated demo rollout."""
    rng = random.Random(seed)
    requests = traffic(population(max_users, N_PROMPTS, seed=seed), seed=seed + 1)
    scores: Cell = defaultdict(lambda: [0.0, 0.0])
    errors: Cell = defaultdict(lambda: [0.0, 0.0])  # no errors: one engine serves both
    # TTFT above the control's p95: 5% of either version's requests (one engine, one base serve both).
    slow: Cell = defaultdict(lambda: [0.0, 0.0])
    step, at_step, control_users = 0, {True: 0, False: 0}, set()
    for sent, request in enumerate(requests, start=1):
        cand = bucket(request.user.id, str(seed)) < spec.steps[step]
        at_step[cand] += 1
        if not cand:
            control_users.add(request.user.id)
        errors[(request.user.id, step, cand)][1] += 1
        slow_cell = slow[(request.user.id, step, cand)]
        slow_cell[0] += float(rng.random() < TTFT_OVER)
        slow_cell[1] += 1
        if request.rates:
            cell = scores[(request.user.id, step, cand)]
            cell[0] += float(request.example in right["candidate" if cand else "control"])
            cell[1] += 1
        if sent % WAVE:
            continue
        verdicts = [
            evaluate_guard(spec, spec.guards[0], cells(errors)),
            evaluate_guard(spec, spec.guards[1], cells(slow)),
            evaluate_guard(spec, spec.guards[2], cells(scores)),
        ]
        d = decide(spec, step, (at_step[True], at_step[False]), verdicts, len(control_users))
        if d.outcome in ("promote", "rollback"):
            return d.outcome, sent
        if d.outcome == "advance":
            step, at_step, control_users = d.step_index, {True: 0, False: 0}, set()
    return "undecided", len(requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--v1-correct", type=int, default=8, help="held-out prompts v1 answers right (of 48)")
    parser.add_argument("--v2-correct", type=int, default=28)
    parser.add_argument("--users", type=int, default=250, help="the demo's --rollout-users")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--steps", default="20,50,100", help="the rollout's steps (the demo's V2_FLAGS)")
    parser.add_argument("--promote-when", default="better", choices=["better", "not_worse", "no_regression"])
    parser.add_argument(
        "--guards", default="error_rate:0,ttft_p95:0,feedback:0", help="METRIC:MARGIN,... in this order (the defaults)"
    )
    args = parser.parse_args()
    order = random.Random(0).sample(range(N_PROMPTS), N_PROMPTS)  # v1's right answers are a subset of v2's
    right = {"candidate": set(order[: args.v2_correct]), "control": set(order[: args.v1_correct])}
    guards = tuple(GuardSpec(m, float(margin)) for m, margin in (g.split(":") for g in args.guards.split(",")))
    if [g.metric for g in guards] != ["error_rate", "ttft_p95", "feedback"]:
        parser.error(f"--guards {args.guards!r}: give error_rate, ttft_p95 and feedback, in this order")
    steps = tuple(int(x) for x in args.steps.split(","))
    spec = RolloutSpec(steps, 20, 5.0, 0.05, guards, args.promote_when)
    results = [one_rollout(seed, right, args.users, spec) for seed in range(args.runs)]
    promoted = sorted(n for outcome, n in results if outcome == "promote")
    summary = {
        "v1_correct": args.v1_correct,
        "v2_correct": args.v2_correct,
        "users": args.users,
        "steps": args.steps,
        "promote_when": args.promote_when,
        "guards": args.guards,
        "runs": args.runs,
        "promoted": len(promoted) / args.runs,
        "rolled_back": sum(o == "rollback" for o, _ in results) / args.runs,
        "requests_to_promote_p50": promoted[len(promoted) // 2] if promoted else None,
        "requests_to_promote_p90": promoted[int(len(promoted) * 0.9)] if promoted else None,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
