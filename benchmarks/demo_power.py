"""Power of the demo's v2 rollout at its own sizes, through the real decision code.

The demo's users (loraplane/demo_users.py: sticky, heavy-tailed, own prompts, partial rating) meet
the demo's rollout settings (loraplane/demo_rollout.py: steps 20,50,100, min-samples 20, the
default guards and rule `better`); a version answers a fixed set of the 48 held-out prompts right
(greedy decoding: the same prompt gets the same answer), as many as the training measured. Users
are assigned sticky by a hash of their id; after every wave of requests, as the evaluator does every
interval, `serving.rollouts.policy` judges the pooled ratings and decides. Errors and TTFT are
equal for both versions here (one engine serves both), so only the feedback guard can decide.

    python benchmarks/demo_power.py --v1-correct 8 --v2-correct 28 --runs 300
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random

from loraplane.demo_rollout import WAVE
from loraplane.demo_users import population, traffic
from serving.rollouts.policy import GuardSpec, RolloutSpec, decide, evaluate_guard

N_PROMPTS = 48


def bucket(user: str, salt: str) -> int:
    return int(hashlib.sha256(f"{salt}|{user}".encode()).hexdigest(), 16) % 100


def one_rollout(seed: int, right: dict[str, set[int]], max_users: int) -> tuple[str, int]:
    """(outcome, requests sent) of one simulated demo rollout."""
    guards = tuple(GuardSpec(metric, 0.0) for metric in ("error_rate", "ttft_p95", "feedback"))  # the defaults
    spec = RolloutSpec((20, 50, 100), 20, 5.0, 0.05, guards, "better")
    requests = traffic(population(max_users, N_PROMPTS, seed=seed), seed=seed + 1)
    scores: dict[str, list[float]] = {"candidate": [], "control": []}
    errors: dict[str, list[float]] = {"candidate": [], "control": []}
    step, at_step = 0, {"candidate": 0, "control": 0}
    for sent, request in enumerate(requests, start=1):
        variant = "candidate" if bucket(request.user.id, str(seed)) < spec.steps[step] else "control"
        at_step[variant] += 1
        errors[variant].append(0.0)
        if request.rates:
            scores[variant].append(float(request.example in right[variant]))
        if sent % WAVE:
            continue
        verdicts = [  # errors and TTFT exceedances alike for both (all 0 here); ratings differ
            evaluate_guard(spec, spec.guards[0], errors["candidate"], errors["control"]),
            evaluate_guard(spec, spec.guards[1], errors["candidate"], errors["control"]),
            evaluate_guard(spec, spec.guards[2], scores["candidate"], scores["control"]),
        ]
        d = decide(spec, step, (at_step["candidate"], at_step["control"]), verdicts)
        if d.outcome in ("promote", "rollback"):
            return d.outcome, sent
        if d.outcome == "advance":
            step, at_step = d.step_index, {"candidate": 0, "control": 0}
    return "undecided", len(requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--v1-correct", type=int, default=8, help="held-out prompts v1 answers right (of 48)")
    parser.add_argument("--v2-correct", type=int, default=28)
    parser.add_argument("--users", type=int, default=250, help="the demo's --rollout-users")
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    order = random.Random(0).sample(range(N_PROMPTS), N_PROMPTS)  # v1's right answers are a subset of v2's
    right = {"candidate": set(order[: args.v2_correct]), "control": set(order[: args.v1_correct])}
    results = [one_rollout(seed, right, args.users) for seed in range(args.runs)]
    promoted = sorted(n for outcome, n in results if outcome == "promote")
    summary = {
        "v1_correct": args.v1_correct,
        "v2_correct": args.v2_correct,
        "users": args.users,
        "runs": args.runs,
        "promoted": len(promoted) / args.runs,
        "rolled_back": sum(o == "rollback" for o, _ in results) / args.runs,
        "requests_to_promote_p50": promoted[len(promoted) // 2] if promoted else None,
        "requests_to_promote_p90": promoted[int(len(promoted) * 0.9)] if promoted else None,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
