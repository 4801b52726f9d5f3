"""The demo's simulated users behave like production traffic: sticky ids, heavy-tailed request
counts, own prompts, partial rating."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from loraplane.demo_users import MAX_REQUESTS_PER_USER, population, traffic


def test_requests_per_user_are_heavy_tailed_and_capped() -> None:
    users = population(2000, 48, seed=1)
    counts = sorted(u.requests for u in users)
    assert counts[0] >= 1 and counts[-1] == MAX_REQUESTS_PER_USER
    assert sum(c == 1 for c in counts) / len(counts) > 0.45  # most ask once
    top = sum(counts[-len(counts) // 10 :]) / sum(counts)
    assert top > 0.4, top  # the heaviest tenth of users send over 40% of the requests


def test_traffic_is_sticky_per_user_and_partly_rated() -> None:
    users = population(300, 48, seed=2)
    requests = traffic(users, seed=3)
    per_user = Counter(r.user.id for r in requests)
    assert per_user == {u.id: u.requests for u in users}  # every request of a user carries its one id
    assert all(r.example in r.user.prompts for r in requests)  # users ask about their own prompts
    rated = sum(r.rates for r in requests) / len(requests)
    assert 0.3 < rated < 0.7, rated
    rates = [u.rating_rate for u in users]
    assert min(rates) < 0.1 and max(rates) > 0.9  # some users almost never rate, some nearly always
    assert [r.user.id for r in requests[:50]] != sorted(r.user.id for r in requests[:50])  # interleaved


def test_same_seed_same_traffic_and_bad_sizes_are_refused() -> None:
    assert traffic(population(50, 10, seed=4), seed=5) == traffic(population(50, 10, seed=4), seed=5)
    with pytest.raises(ValueError, match="0 users"):
        population(0, 10, seed=1)


def test_few_users_correct_and_corrections_leave_the_rest_of_the_traffic_unchanged() -> None:
    users = population(2000, 48, seed=6)
    requests = traffic(users, seed=7)
    rates = sorted(u.correction_rate for u in users)
    assert 0.2 < sum(rates) / len(rates) < 0.3  # Beta(0.5, 1.5): mean 0.25
    assert rates[len(rates) // 2] < 0.2 and rates[-len(rates) // 20] > 0.7  # most seldom, a few nearly always
    share = sum(r.corrects for r in requests) / len(requests)
    assert 0.15 < share < 0.35, share
    # Drawn from streams of their own: the users, prompts and ratings are those the generator drew
    # before corrections existed (digest taken from that version of demo_users.py).
    requests = traffic(population(300, 48, seed=6), seed=7)
    plain = [(r.user.id, r.user.requests, r.user.prompts, r.example, r.rates) for r in requests]
    assert hashlib.sha256(repr(plain).encode()).hexdigest()[:16] == "4d776ddf171414df"
