"""Per-key token budgets (serving/gateway/budgets.py) and usage (GET /admin/usage, `loraplane usage`),
with the real `openai` client against real gateways in front of the mock engine (fakes/engine.py);
budgets shared through a real Valkey, or through the store; a budget store that is down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis

from serving.config import load_config
from serving.errors import StoreUnavailable
from serving.gateway.auth import hash_key
from serving.gateway.budgets import Budgets, next_midnight
from serving.metrics import GatewayMetrics
from serving.usage_cli import main as usage_main
from tests.conftest import GatewayThread, free_port
from tests.serving.test_gateway_faults import BASE, dirs, engine, gateway_app  # noqa: F401

ADMIN = {"Authorization": "Bearer adm"}
TOKENS = 8  # completion tokens per answer (mock engine)
PROMPT = "count to three please"  # 4 prompt tokens (the mock counts words)
PER_ANSWER = TOKENS + 4


def keys(**budgets) -> list[dict]:
    return [
        {"name": "app", "sha256": hash_key("k-app"), "budgets": budgets},
        {"name": "free", "sha256": hash_key("k-free")},
    ]


def settings(**extra) -> dict:
    return {
        "auth.enabled": True,
        "auth.admin_key_sha256": hash_key("adm"),
        "store.log_flush_interval_s": 0.05,
        **extra,
    }


def client(url: str, key: str = "k-app") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def ask(url: str, model: str = BASE, key: str = "k-app", stream: bool = False) -> int:
    """One chat completion; its total tokens (0 for a stream, whose usage the gateway counts itself)."""
    messages = [{"role": "user", "content": PROMPT}]
    if stream:
        for _ in client(url, key).chat.completions.create(model=model, messages=messages, stream=True):  # type: ignore[call-overload]
            pass
        return PER_ANSWER
    answer = client(url, key).chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    assert answer.usage is not None
    return answer.usage.total_tokens


def until_refused(
    urls: list[str], model: str = BASE, limit: int = 100, pause_s: float = 0.02, **kw
) -> tuple[int, openai.RateLimitError]:
    """Ask through the gateways in turn until one refuses; the tokens answered before that."""
    used = 0
    for i in range(limit):
        try:
            used += ask(urls[i % len(urls)], model, **kw)
        except openai.RateLimitError as exc:
            return used, exc
        time.sleep(pause_s)  # the answer's count reaches the shared counter (a background INCRBY)
    raise AssertionError(f"no refusal after {limit} requests ({used} tokens)")


@contextlib.contextmanager
def gateways(dirs, n: int, **overrides) -> Iterator[list[str]]:  # noqa: F811
    with contextlib.ExitStack() as stack:
        e0 = stack.enter_context(engine(tokens=TOKENS, ttft_ms=0, itl_ms=0))
        urls = []
        for _ in range(n):
            gw = stack.enter_context(GatewayThread(gateway_app(dirs, [e0.url], **settings(**overrides)), free_port()))
            urls.append(gw.url)
        yield urls


def assert_names_the_budget(exc: openai.RateLimitError, budget: str, limit: int) -> None:
    body = exc.response.json()["error"]
    assert exc.status_code == 429 and body["code"] == "budget_exceeded" and body["type"] == "rate_limit_error"
    assert f"key 'app' has spent its budget of {limit} tokens per day" in body["message"]
    assert f"budget {budget!r}" in body["message"]
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(next_midnight(time.time())))
    assert f"resets at {reset}" in body["message"]
    retry_after = int(exc.response.headers["retry-after"])
    assert abs(retry_after - (next_midnight(time.time()) - time.time())) < 5
    assert exc.response.headers["x-should-retry"] == "false"


@pytest.fixture
def valkey(valkey_url: str) -> str:
    """The session's Valkey without budget counters left by an earlier test (same key, same day)."""
    client = redis.Redis.from_url(valkey_url)
    for name in client.scan_iter("loraplane:budget:*"):
        client.delete(name)
    client.close()
    return valkey_url


def test_two_gateways_sharing_valkey_stop_together_at_the_budget(dirs, valkey: str) -> None:  # noqa: F811
    budget = 5 * PER_ANSWER + 3  # the 6th answer overshoots by PER_ANSWER - 3; the 7th is refused
    with gateways(dirs, 2, **{"auth.keys": keys(tokens_per_day=budget), "ratelimit.redis_url": valkey}) as urls:
        used, refusal = until_refused(urls)
        for url in urls:  # both gateways refuse now
            with pytest.raises(openai.RateLimitError):
                ask(url)
        assert ask(urls[0], key="k-free") == PER_ANSWER  # a key without a budget is served
    assert used == 6 * PER_ANSWER  # one answer past the budget (counted after the answer), never more
    assert_names_the_budget(refusal, "all", budget)


def test_per_model_budget_leaves_other_models_alone(dirs, valkey: str) -> None:  # noqa: F811
    per_model = {"per_model": {"bot": 2 * PER_ANSWER}}
    with gateways(dirs, 2, **{"auth.keys": keys(**per_model), "budgets.redis_url": valkey}) as urls:
        used, refusal = until_refused(urls, model="bot", stream=True)
        assert ask(urls[0], model="other") == PER_ANSWER  # no budget on `other`
        with pytest.raises(openai.RateLimitError):
            ask(urls[1], model="bot@v1")  # a version counts against its model's budget
    assert used == 2 * PER_ANSWER
    assert_names_the_budget(refusal, "bot", 2 * PER_ANSWER)


def test_store_backed_budget_without_redis(dirs) -> None:  # noqa: F811
    """Two gateways on one store (the SQLite file in adapters_dir): each sees the other's answers
    once its writer's batch is in usage_daily and its own cache (store_cache_s) has lapsed."""
    shared = {"auth.keys": keys(tokens_per_day=3 * PER_ANSWER), "budgets.store_cache_s": 0.05}
    with gateways(dirs, 2, **shared) as urls:
        used, refusal = until_refused(urls, pause_s=0.3)
        time.sleep(0.3)  # the writer's batch lands in usage_daily; a fresh read still refuses
        with pytest.raises(openai.RateLimitError):
            ask(urls[0])
    assert used == 3 * PER_ANSWER
    assert_names_the_budget(refusal, "all", 3 * PER_ANSWER)


def test_budget_store_down_answers_and_counts_the_gap(dirs) -> None:  # noqa: F811
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with gateways(dirs, 1, **{"auth.keys": keys(tokens_per_day=1), "budgets.redis_url": down}) as urls:
        answered = [ask(urls[0]) for _ in range(3)]  # a budget of 1 token would refuse the 2nd
        time.sleep(0.5)  # the failed counts finish in the background
        metrics = httpx.get(f"{urls[0]}/metrics").text
    assert answered == [PER_ANSWER] * 3
    assert 'loraplane_budget_errors_total{op="check"} 3.0' in metrics
    assert 'loraplane_budget_errors_total{op="count"} 3.0' in metrics
    assert f"loraplane_budget_uncounted_tokens_total {3.0 * PER_ANSWER}" in metrics
    assert f'loraplane_key_tokens_total{{key="app",kind="completion",model="{BASE}"}} {3.0 * TOKENS}' in metrics


class DownStore:
    """The Store's usage read, failing as a database that is down does (the fault injected)."""

    def __init__(self) -> None:
        self.reads = 0

    def key_tokens_on(self, key: str, day: str) -> dict[str, int]:
        self.reads += 1
        raise StoreUnavailable("the control-plane database sqlite:///x failed (OperationalError); retry")


def test_store_backend_down_lets_requests_go_on_and_reads_once_per_cache_period() -> None:
    cfg = load_config(None, {"engines": ["http://e"], "auth.keys": keys(tokens_per_day=1)})
    metrics, store = GatewayMetrics(), DownStore()
    budgets = Budgets(cfg, store, metrics, lambda record: None)  # type: ignore[arg-type]

    async def checks() -> None:
        for _ in range(5):
            await budgets.check("app", BASE)  # no exception: the request goes on

    asyncio.run(checks())
    assert store.reads == 1  # the failure is cached for budgets.store_cache_s, not retried per request
    assert metrics.budget_errors.labels("check")._value.get() == 5


def test_admin_usage_needs_the_admin_key_and_validates_days(dirs, capsys, monkeypatch) -> None:  # noqa: F811
    with gateways(dirs, 1, **{"auth.keys": keys()}) as urls:
        url = urls[0]
        for _ in range(3):
            ask(url)
        ask(url, model="bot", key="k-free")
        time.sleep(0.3)  # the writer's batch
        assert httpx.get(f"{url}/admin/usage").status_code == 401
        assert httpx.get(f"{url}/admin/usage", headers={"Authorization": "Bearer k-app"}).status_code == 401
        bad = httpx.get(f"{url}/admin/usage", params={"since": "yesterday"}, headers=ADMIN)
        assert bad.status_code == 400 and "'yesterday'" in bad.json()["error"]["message"]
        assert bad.json()["error"]["param"] == "since"
        feb30 = httpx.get(f"{url}/admin/usage", params={"until": "2026-02-30"}, headers=ADMIN)
        assert feb30.status_code == 400 and "2026-02-30" in feb30.json()["error"]["message"]
        swapped = httpx.get(f"{url}/admin/usage", params={"since": "2026-12-02", "until": "2026-12-01"}, headers=ADMIN)
        assert swapped.status_code == 400 and "swap" in swapped.json()["error"]["message"]
        today = time.strftime("%Y-%m-%d", time.gmtime())
        body = httpx.get(f"{url}/admin/usage", params={"since": str(int(time.time()))}, headers=ADMIN).json()
        assert body["since"] == today
        rows = {(r["key"], r["model"]): r for r in body["data"]}
        assert rows[("app", BASE)]["requests"] == 3 and rows[("app", BASE)]["total_tokens"] == 3 * PER_ANSWER
        assert rows[("free", "bot")]["completion_tokens"] == TOKENS and rows[("free", "bot")]["prompt_tokens"] == 4
        only = httpx.get(f"{url}/admin/usage", params={"key": "free"}, headers=ADMIN).json()["data"]
        assert [(r["key"], r["model"]) for r in only] == [("free", "bot")]

        monkeypatch.setenv("LORAPLANE_ADMIN_KEY", "adm")
        assert usage_main(["--url", url]) == 0
        printed = capsys.readouterr().out.splitlines()
        assert printed[0].split() == [
            "day",
            "key",
            "model",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
        ]
        assert re.split(r"\s+", printed[-1]) == ["total", "4", str(4 * 4), str(4 * TOKENS), str(4 * PER_ANSWER)]
        assert usage_main(["--url", url, "--format", "csv", "--key", "app"]) == 0
        csv_lines = capsys.readouterr().out.splitlines()
        assert csv_lines == [
            "day,key,model,requests,prompt_tokens,completion_tokens,total_tokens",
            f"{today},app,{BASE},3,12,{3 * TOKENS},{3 * PER_ANSWER}",
        ]
        assert usage_main(["--url", url, "--format", "json", "--model", "bot", "--since", today]) == 0
        assert json.loads(capsys.readouterr().out) == [
            {"day": today, "key": "free", "model": "bot", "requests": 1, "prompt_tokens": 4}
            | {"completion_tokens": TOKENS, "total_tokens": PER_ANSWER}
        ]
        assert usage_main(["--url", url, "--since", "nope"]) == 2
        assert "'nope' is not a day" in capsys.readouterr().err
        monkeypatch.delenv("LORAPLANE_ADMIN_KEY")
        assert usage_main(["--url", url]) == 2
        assert "gateway answered 401: admin endpoints need the admin key" in capsys.readouterr().err


def test_retry_after_is_the_seconds_to_the_next_utc_midnight() -> None:
    assert next_midnight(86400 * 3 + 5) == 86400 * 4
    assert next_midnight(86400 * 3) == 86400 * 4
    assert math.isclose(next_midnight(1765000000.5), 1765065600.0)


@pytest.mark.parametrize(
    ("budgets", "words"),
    [
        ({"tokens_per_day": 0}, "auth.keys.0.budgets.tokens_per_day"),
        ({"per_model": {"bot": 0}}, "per_model['bot'] is 0: a budget must be at least 1 token per day"),
        ({"per_model": {"bot@v2": 10}}, "per_model['bot@v2']: name the model without @version"),
        ({"tokens_per_hour": 10}, "auth.keys.0.budgets.tokens_per_hour"),
    ],
)
def test_bad_budgets_are_refused_naming_the_value(budgets: dict, words: str) -> None:
    from serving.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(None, {"engines": ["http://e"], "auth.keys": keys(**budgets)})
    assert words in str(caught.value)
