"""Request bounds (serving/gateway/limits.py): body size, max_tokens, roles, sampling parameters."""

from __future__ import annotations

import httpx
import pytest

from serving.config import load_config
from serving.errors import BadRequest
from serving.gateway.limits import apply_limits
from serving.gateway.protocol import CHAT, COMPLETIONS
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
        ({"messages": [{"role": {}, "content": "hi"}]}, "messages[0].role"),  # found by the fuzz test: was a 500
        ({"n": 5}, "n"),
        ({"n": 0}, "n"),
        ({"best_of": 2}, "best_of"),
        ({"prompt_logprobs": 1}, "prompt_logprobs"),
        ({"logprobs": 3}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 6}, "top_logprobs"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"max_tokens": 10, "min_tokens": 11}, "min_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"stream": True, "stream_options": "usage"}, "stream_options"),  # found by the fuzz test: was a 500
        ({"stream": True, "stream_options": {"include_usage": "x"}}, "stream_options"),
    ],
)
def test_refused_parameters_name_themselves(extra: dict, param: str) -> None:
    with pytest.raises(BadRequest) as info:
        apply_limits(body(**extra), CHAT, load_config(None))
    assert info.value.param == param and param.split("[")[0] in info.value.message


def completion(**extra) -> dict:
    return {"model": BASE, "prompt": "hi", **extra}


@pytest.mark.parametrize(
    ("extra", "param", "named"),
    [
        ({"prompt": ["x"] * 40_000, "n": 4, "max_tokens": 1024}, "prompt", "40000 prompts x n 4 = 160000"),
        ({"prompt": ["x"] * 65}, "prompt", "65 prompts x n 1 = 65 choices"),
        ({"prompt": [[1, 2]] * 17, "n": 4}, "prompt", "17 prompts x n 4 = 68 choices"),
        ({"prompt": []}, "prompt", "`prompt` is empty"),
        ({"echo": True, "logprobs": 0}, "echo", "`echo` with `logprobs` (0)"),
        ({"echo": "yes"}, "echo", "'yes'"),
    ],
)
def test_completions_bounds_name_the_value_and_the_limit(extra: dict, param: str, named: str) -> None:
    with pytest.raises(BadRequest) as info:
        apply_limits(completion(**extra), COMPLETIONS, load_config(None))
    assert info.value.param == param and named in info.value.message
    if "choices" in named:
        assert "gateway.max_choices_per_request (64)" in info.value.message


def test_choice_cap_is_configured() -> None:
    cfg = load_config(None, {"gateway.max_choices_per_request": 200})
    apply_limits(completion(prompt=["x"] * 50, n=4), COMPLETIONS, cfg)  # 200 choices: allowed
    apply_limits(completion(prompt=[1, 2, 3], n=4, echo=True), COMPLETIONS, cfg)  # token ids: one prompt
    with pytest.raises(BadRequest, match="201 choices"):
        apply_limits(
            completion(prompt=["x"] * 67, n=3),
            COMPLETIONS,
            load_config(None, {"gateway.max_choices_per_request": 200}),
        )


def test_defaults_and_allowed_values() -> None:
    cfg = load_config(None, {"gateway.default_max_tokens": 64})
    filled = body()
    apply_limits(filled, CHAT, cfg)
    assert filled["max_tokens"] == 64
    ok = body(max_tokens=1024, n=4, logprobs=True, top_logprobs=5, ignore_eos=True, min_tokens=1024)
    apply_limits(ok, CHAT, cfg)
    completion = {"model": BASE, "prompt": "hi", "logprobs": 5, "max_completion_tokens": 8}
    apply_limits(completion, COMPLETIONS, cfg)
    assert "max_tokens" not in completion  # the client's own bound stays


def test_token_cap_follows_the_model_context() -> None:
    cfg = load_config(None, {"engine.max_model_len": 512, "gateway.default_max_tokens": 100})
    with pytest.raises(BadRequest, match=r"1\.\.511"):
        apply_limits(body(max_tokens=512), CHAT, cfg)


def test_over_the_wire(dirs) -> None:  # noqa: F811
    overrides = {"gateway.default_max_tokens": 7, "gateway.max_body_bytes": 4096}
    with (
        engine(tokens=5000, itl_ms=0, ttft_ms=0) as e0,
        GatewayThread(gateway_app(dirs, [e0.url], **overrides), free_port()) as gw,
    ):
        answered = chat(gw.url)
        answered_before = e0.app.state.engine.completed
        assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] == 7
        wizard = chat(gw.url, messages=[{"role": "wizard", "content": "hi"}])
        assert wizard.status_code == 400 and "'wizard'" in wizard.json()["error"]["message"]
        many = httpx.post(f"{gw.url}/v1/completions", json={"model": BASE, "prompt": ["x"] * 65})
        assert many.status_code == 400 and "65 choices" in many.json()["error"]["message"]
        assert e0.app.state.engine.completed == answered_before  # nothing reached the engine
        big = {"model": BASE, "messages": [{"role": "user", "content": "x" * 5000}]}
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=big).status_code == 413

        def chunked():  # no Content-Length: the limit holds while reading
            yield b'{"model": "' + BASE.encode() + b'", "messages": [{"role": "user", "content": "'
            for _ in range(100):
                yield b"x" * 100
            yield b'"}]}'

        resp = httpx.post(f"{gw.url}/v1/chat/completions", content=chunked())
        assert resp.status_code == 413 and "gateway.max_body_bytes" in resp.json()["error"]["message"]
