"""Simulated users for the demo's rollouts, shaped like production traffic rather than like
independent requests (issue 20: the statistics must hold at the unit of assignment):

- sticky: every request of a user carries the same OpenAI `user` id, so the gateway gives all of
  them the same version (it assigns per user);
- heavy-tailed: requests per user follow a discrete Pareto law (shape 1.2, capped): most users ask
  once or twice, a few ask dozens of times;
- heterogeneous: each user asks about a few prompts of their own (some users' prompts are harder
  for every version), so users differ in how often any version answers them right;
- partial rating: each user rates an answer with a probability of their own (Beta(1.2, 1.2), mean
  0.5): some rate almost everything, many rarely;
- few corrections: a user who rates an answer down also writes what it should have been (POST
  /v1/feedback `correction`) with a probability of their own, Beta(0.5, 1.5) (mean 0.25: most users
  seldom bother, a few always do). An assumption, not a measured rate; drawn from random streams of
  their own, so the users, their requests and their ratings are the same with or without them.

A rating is the user's judgment of the answer: 1 when it is exactly the held-out reference, else 0;
a correction is the reference itself (the user knows the right answer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

PARETO_SHAPE = 1.2  # P(requests >= k) = k ** -1.2: 56% of users ask once, 6% ten times or more
MAX_REQUESTS_PER_USER = 30
PROMPTS_PER_USER = 3


@dataclass(frozen=True)
class User:
    id: str  # the OpenAI `user` field: the gateway's A/B key
    requests: int
    rating_rate: float  # chance this user rates a given answer
    prompts: tuple[int, ...]  # indexes into the example list: what this user asks about
    correction_rate: float = 0.0  # chance this user corrects an answer they rate down


@dataclass(frozen=True)
class Request:
    user: User
    example: int  # index into the example list
    rates: bool  # whether the user will rate this answer
    corrects: bool = False  # whether, rating it down, the user also writes the right answer


def population(n_users: int, n_examples: int, seed: int, prefix: str = "user") -> list[User]:
    """`n_users` users with heavy-tailed request counts, own prompts and own rating habits."""
    if n_users < 1 or n_examples < 1:
        raise ValueError(f"need at least one user and one example (got {n_users} users, {n_examples} examples)")
    rng, corrections = random.Random(seed), random.Random(f"{seed}-corrections")
    return [
        User(
            id=f"{prefix}-{i}",
            requests=min(MAX_REQUESTS_PER_USER, int(rng.paretovariate(PARETO_SHAPE))),
            rating_rate=rng.betavariate(1.2, 1.2),
            prompts=tuple(rng.sample(range(n_examples), min(PROMPTS_PER_USER, n_examples))),
            correction_rate=corrections.betavariate(0.5, 1.5),
        )
        for i in range(n_users)
    ]


def traffic(users: list[User], seed: int) -> list[Request]:
    """Every request of every user, interleaved in a random order (users are active at once)."""
    rng, corrections = random.Random(seed), random.Random(f"{seed}-corrections")
    requests = [
        Request(user, rng.choice(user.prompts), rng.random() < user.rating_rate)
        for user in users
        for _ in range(user.requests)
    ]
    rng.shuffle(requests)
    return [replace(r, corrects=corrections.random() < r.user.correction_rate) for r in requests]
