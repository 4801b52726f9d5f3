"""The demo's simulated users behave like production traffic: sticky ids, heavy-tailed request
counts, own prompts, partial rating."""

from __future__ import annotations

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
