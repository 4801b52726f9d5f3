"""Request bounds (serving/gateway/limits.py): body size, max_tokens, roles, sampling parameters."""

from __future__ import annotations

import httpx
import pytest

from serving.config import load_config
from serving.errors import BadRequest
from serving.gateway.limits import apply_limits
from tests.conftest import GatewayThread, free_port
from tests.serving.test_gateway_faults import BASE, MSG, chat, dirs, engine, gateway_app  # noqa: F401


def body(**extra) -> dict:
    return {"model": BASE, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": 1025}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"n": 5}, "n"),
        ({"n": 0}, "n"),
        ({"best_of": 2}, "best_of"),
        ({"prompt_logprobs": 1}, "prompt_logprobs"),
        ({"logprobs": 3}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 6}, "top_logprobs"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"max_tokens": 10, "min_tokens": 11}, "min_tokens"),
    ],
)
def test_refused_parameters_name_themselves(extra: dict, param: str) -> None:
    with pytest.raises(BadRequest) as info:
        apply_limits(body(**extra), "chat", load_config(None))
    assert info.value.param == param and param.split("[")[0] in info.value.message


def test_defaults_and_allowed_values() -> None:
    cfg = load_config(None, {"gateway.default_max_tokens": 64})
    filled = body()
    apply_limits(filled, "chat", cfg)
    assert filled["max_tokens"] == 64
    ok = body(max_tokens=1024, n=4, logprobs=True, top_logprobs=5, ignore_eos=True, min_tokens=1024)
    apply_limits(ok, "chat", cfg)
    completion = {"model": BASE, "prompt": "hi", "logprobs": 5, "max_completion_tokens": 8}
    apply_limits(completion, "completions", cfg)
    assert "max_tokens" not in completion  # the client's own bound stays


def test_token_cap_follows_the_model_context() -> None:
    cfg = load_config(None, {"engine.max_model_len": 512, "gateway.default_max_tokens": 100})
    with pytest.raises(BadRequest, match=r"1\.\.511"):
        apply_limits(body(max_tokens=512), "chat", cfg)


def test_over_the_wire(dirs) -> None:  # noqa: F811
    overrides = {"gateway.default_max_tokens": 7, "gateway.max_body_bytes": 4096}
    with (
        engine(tokens=5000, itl_ms=0, ttft_ms=0) as e0,
        GatewayThread(gateway_app(dirs, [e0.url], **overrides), free_port()) as gw,
    ):
        answered = chat(gw.url)
        assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] == 7
        wizard = chat(gw.url, messages=[{"role": "wizard", "content": "hi"}])
        assert wizard.status_code == 400 and "'wizard'" in wizard.json()["error"]["message"]
        big = {"model": BASE, "messages": [{"role": "user", "content": "x" * 5000}]}
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=big).status_code == 413

        def chunked():  # no Content-Length: the limit holds while reading
            yield b'{"model": "' + BASE.encode() + b'", "messages": [{"role": "user", "content": "'
            for _ in range(100):
                yield b"x" * 100
            yield b'"}]}'

        resp = httpx.post(f"{gw.url}/v1/chat/completions", content=chunked())
        assert resp.status_code == 413 and "gateway.max_body_bytes" in resp.json()["error"]["message"]
