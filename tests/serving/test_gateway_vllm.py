"""The gateway in front of a real vLLM CPU engine, driven by the real `openai` client.

Adapters are trained by our own trainer (a few steps) in the session fixture.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120)


def metric_samples(url: str) -> list:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_base_chat_sync(client, gateway) -> None:
    reply = client.chat.completions.create(model=gateway.base, messages=QUESTION, max_tokens=16, temperature=0)
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0


def test_adapter_hot_loads_on_first_use(client, gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=f"{gateway.adapter}@v1", messages=QUESTION, max_tokens=8, temperature=0
    )
    assert raw.headers["x-loraplane-adapter"] == f"{gateway.adapter}@v1"
    assert raw.parse().choices[0].message.content
    assert f"{gateway.adapter}@v1" in gateway.server.state.pool.engines[0].loaded
    loads = [
        s
        for s in metric_samples(gateway.url)
        if s.name == "loraplane_adapter_loads_total" and s.labels["adapter"] == f"{gateway.adapter}@v1"
    ]
    assert loads and loads[0].labels["result"] == "ok" and loads[0].value >= 1


def test_bare_name_means_the_stable_version_not_the_newest(client, gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(model=gateway.adapter, messages=QUESTION, max_tokens=4)
    assert raw.headers["x-loraplane-adapter"] == f"{gateway.adapter}@v1"  # v2 is newer; v1 was published first


def test_feedback_on_a_real_response_id(client, gateway) -> None:
    completion = client.chat.completions.create(model=gateway.adapter, messages=QUESTION, max_tokens=4)
    resp = httpx.post(f"{gateway.url}/v1/feedback", json={"id": completion.id, "score": 1}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["variant"] == f"{gateway.adapter}@v1"


def test_streaming_with_usage(client, gateway) -> None:
    stream = client.chat.completions.create(
        model=gateway.base,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_streaming_without_usage_gets_none(client, gateway) -> None:
    chunks = list(client.chat.completions.create(model=gateway.base, messages=QUESTION, max_tokens=4, stream=True))
    assert chunks and all(c.usage is None for c in chunks)


def test_completions_route(client, gateway) -> None:
    out = client.completions.create(model=f"{gateway.adapter}@v1", prompt="The capital of France is", max_tokens=4)
    assert out.choices[0].text


def test_async_client_concurrent(gateway) -> None:
    async def run() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
        models = [gateway.base, f"{gateway.adapter}@v1", f"{gateway.adapter}@v2"] * 2
        replies = await asyncio.gather(
            *[aclient.chat.completions.create(model=m, messages=QUESTION, max_tokens=6, temperature=0) for m in models]
        )
        return [r.choices[0].message.content for r in replies]

    assert all(asyncio.run(run()))


def test_models_lists_base_versions_and_experiments(client, gateway) -> None:
    ids = {m.id for m in client.models.list()}
    assert {gateway.base, gateway.adapter, f"{gateway.adapter}@v1", f"{gateway.adapter}@v2", gateway.experiment} <= ids


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "no-such-model", "messages": QUESTION}, 404, "no-such-model"),
        ({"model": "test-adapter@v99", "messages": QUESTION}, 404, "v99"),
        ({"model": "../../etc/passwd", "messages": QUESTION}, 404, "paths"),
        ({"model": "smollm2-135m-instruct"}, 400, "messages"),
        ({"messages": QUESTION}, 400, "model"),
        ({"model": "smollm2-135m-instruct", "messages": QUESTION, "max_tokens": 10**9}, 400, "max_tokens"),
    ],
)
def test_bad_requests_get_openai_errors(gateway, body: dict, status: int, needle: str) -> None:
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"


def test_malformed_json_is_400(gateway) -> None:
    resp = httpx.post(
        f"{gateway.url}/v1/chat/completions", content=b"{nope", timeout=10, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]["message"]


def test_prompt_longer_than_context_is_400_naming_limit(client, gateway) -> None:
    long_prompt = [{"role": "user", "content": "word " * 2500}]
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=gateway.base, messages=long_prompt, max_tokens=4)
    assert "2048" in str(exc.value)


def test_experiment_headers_sticky_and_pinnable(client, gateway) -> None:
    seen = {}
    for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
        raw = client.chat.completions.with_raw_response.create(
            model=gateway.experiment, messages=QUESTION, max_tokens=2, user=user
        )
        seen[user] = raw.headers["x-loraplane-variant"]
        assert raw.headers["x-loraplane-experiment"] == gateway.experiment
        assert raw.headers["x-loraplane-adapter"] == seen[user]
    again = client.chat.completions.with_raw_response.create(
        model=gateway.experiment, messages=QUESTION, max_tokens=2, user="alice"
    )
    assert again.headers["x-loraplane-variant"] == seen["alice"]
    pinned = client.chat.completions.with_raw_response.create(
        model=gateway.experiment,
        messages=QUESTION,
        max_tokens=2,
        user="alice",
        extra_headers={"X-Loraplane-Variant": f"{gateway.adapter}@v2", **ADMIN},
    )
    assert pinned.headers["x-loraplane-variant"] == f"{gateway.adapter}@v2"


def test_metrics_parse_and_follow_conventions(client, gateway) -> None:
    stream = client.chat.completions.create(
        model=gateway.experiment, messages=QUESTION, max_tokens=4, stream=True, user="metrics-user"
    )
    list(stream)
    samples = metric_samples(gateway.url)
    names = {s.name for s in samples}
    assert "loraplane_time_to_first_token_seconds_bucket" in names
    assert "loraplane_requests_total" in names and "loraplane_completion_tokens_total" in names
    assert all(":" not in n for n in names)
    variants = {
        s.labels.get("variant")
        for s in samples
        if s.name == "loraplane_requests_total" and s.labels.get("model") == gateway.experiment
    }
    assert variants & {f"{gateway.adapter}@v1", f"{gateway.adapter}@v2"}
    ttft = [
        s
        for s in samples
        if s.name == "loraplane_time_to_first_token_seconds_count" and s.labels.get("model") == gateway.experiment
    ]
    assert ttft and sum(s.value for s in ttft) >= 1


def test_client_disconnect_cancels_upstream(gateway) -> None:
    body = {
        "model": gateway.base,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 1500,
        "stream": True,
        "temperature": 1.0,
    }
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=60) as resp:
        for _ in resp.iter_lines():
            break  # first chunk, then hang up
    deadline = time.monotonic() + 30
    running = None
    while time.monotonic() < deadline:
        text = httpx.get(f"{gateway.engine.url}/metrics", timeout=10).text
        running = sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "vllm:num_requests_running"
        )
        if running == 0 and gateway.server.state.metrics.in_flight_streams._value.get() == 0:
            break
        time.sleep(0.5)
    assert running == 0, "vLLM still generating for a client that hung up"


def test_admin_load_unload_and_weights(gateway) -> None:
    key = f"{gateway.adapter}@v1"
    unloaded = httpx.post(
        f"{gateway.url}/admin/adapters/{gateway.adapter}/v1/unload", headers=ADMIN, json={}, timeout=30
    )
    assert unloaded.status_code == 200
    assert key not in gateway.server.state.pool.engines[0].loaded
    loaded = httpx.post(f"{gateway.url}/admin/adapters/{gateway.adapter}/v1/load", headers=ADMIN, json={}, timeout=60)
    assert loaded.status_code == 200 and loaded.json()["loaded_on"] == [0]
    resp = httpx.put(
        f"{gateway.url}/admin/experiments/{gateway.experiment}",
        json={"variants": {f"{gateway.adapter}@v1": 0, f"{gateway.adapter}@v2": 100}},
        timeout=10,
        headers=ADMIN,
    )
    assert resp.status_code == 200
    try:
        raw = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            timeout=60,
            json={"model": gateway.experiment, "messages": QUESTION, "max_tokens": 2, "user": "weights-user"},
        )
        assert raw.headers["x-loraplane-variant"] == f"{gateway.adapter}@v2"
    finally:
        httpx.put(
            f"{gateway.url}/admin/experiments/{gateway.experiment}",
            timeout=10,
            headers=ADMIN,
            json={"variants": {f"{gateway.adapter}@v1": 50, f"{gateway.adapter}@v2": 50}},
        )
    bad = httpx.put(
        f"{gateway.url}/admin/experiments/{gateway.experiment}",
        timeout=10,
        headers=ADMIN,
        json={"variants": {f"{gateway.adapter}@v7": 1}},
    )
    assert bad.status_code == 404


def test_broken_adapter_rejected_and_serving_unaffected(client, gateway, adapters_dir) -> None:
    broken = adapters_dir / gateway.adapter / "v3"
    shutil.copytree(adapters_dir / gateway.adapter / "v1", broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 16)
    try:
        deadline = time.monotonic() + 15  # a version published now is served within one poll
        while True:
            resp = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                timeout=30,
                json={"model": f"{gateway.adapter}@v3", "messages": QUESTION, "max_tokens": 2},
            )
            if resp.status_code != 404 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert resp.status_code == 422 and "broken" in resp.json()["error"]["message"]
        assert f"{gateway.adapter}@v3" not in gateway.server.state.pool.engines[0].loaded
        ok = client.chat.completions.create(model=f"{gateway.adapter}@v1", messages=QUESTION, max_tokens=4)
        assert ok.choices[0].message.content
    finally:
        shutil.rmtree(broken)
