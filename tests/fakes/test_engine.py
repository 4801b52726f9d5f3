"""The mock engine answers like vLLM: the real openai client streams from it, adapters hot-load."""

import httpx
import openai

from tests.loadtest.conftest import BASE


def test_openai_client_streams_tokens_and_usage(mock_engine):
    client = openai.OpenAI(base_url=f"{mock_engine.url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "one two three"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].usage.prompt_tokens == 3
    assert chunks[-2].choices[0].finish_reason == "length"


def test_usage_only_when_asked_and_plain_completions(mock_engine):
    client = openai.OpenAI(base_url=f"{mock_engine.url}/v1", api_key="unused")
    chunks = list(client.completions.create(model=BASE, prompt="hi", max_tokens=3, stream=True))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks).split() == ["alpha", "bravo", "charlie"]
    answer = client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert answer.usage.completion_tokens == 2


def test_lora_endpoints_answer_like_vllm(mock_engine):
    with httpx.Client(base_url=mock_engine.url) as http:
        body = {"lora_name": "mock-lora", "lora_path": "/adapters/mock-lora/v1"}
        loaded = http.post("/v1/load_lora_adapter", json=body)
        assert loaded.status_code == 200 and loaded.text.startswith("Success")
        again = http.post("/v1/load_lora_adapter", json=body)
        assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
        assert "mock-lora" in [m["id"] for m in http.get("/v1/models").json()["data"]]
        chat = {"model": "mock-lora", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
        assert http.post("/v1/chat/completions", json=chat).status_code == 200
        assert http.post("/v1/unload_lora_adapter", json={"lora_name": "mock-lora"}).text.startswith("Success")
        gone = http.post("/v1/unload_lora_adapter", json={"lora_name": "mock-lora"})
        assert gone.status_code == 404 and "cannot be found" in gone.json()["error"]["message"]
        missing = http.post("/v1/chat/completions", json=chat)
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFoundError"
        assert http.get("/health").status_code == 200
