"""One request's timing and parsing, against the mock engine (no Locust in this process)."""

import httpx
import pytest

from loadtest.scenarios import PlannedRequest
from loadtest.stream import stream_request
from tests.loadtest.conftest import BASE, free_port


def planned(model: str = BASE, max_tokens: int = 6, **extra) -> PlannedRequest:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "a b c d"}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    return PlannedRequest(0, 0.0, model, None, "short", body)


@pytest.fixture
def client(mock_engine):
    with httpx.Client(base_url=mock_engine.url, timeout=10) as http:
        yield http


def test_ttft_gaps_e2e_and_usage(client, mock_settings):
    sample = stream_request(client, "/v1/chat/completions", planned(max_tokens=6), t0=0.0)
    assert sample.ok, sample.error
    assert sample.status == 200 and sample.content_chunks == 6
    assert len(sample.gaps_s) == 5  # a gap between each pair of content chunks
    assert sample.output_tokens == 6 and sample.prompt_tokens == 4
    assert 0 < sample.ttft_s < sample.e2e_s  # the role-only first chunk is not the first token
    assert sample.group == BASE  # no gateway headers: grouped by the model sent


def test_completions_endpoint(client):
    body = {"model": BASE, "prompt": "x y", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    sample = stream_request(client, "/v1/completions", PlannedRequest(1, 0.0, BASE, None, "short", body), t0=0.0)
    assert sample.ok and sample.content_chunks == 3 and sample.output_tokens == 3


def test_http_errors_carry_the_openai_message(client, mock_settings):
    unknown = stream_request(client, "/v1/chat/completions", planned(model="nope"), t0=0.0)
    assert unknown.status == 404 and "The model `nope` does not exist" in unknown.error
    mock_settings.error_rate = 1.0
    broken = stream_request(client, "/v1/chat/completions", planned(), t0=0.0)
    assert broken.status == 500 and broken.error.startswith("HTTP 500") and broken.ttft_s is None


def test_unreachable_target_is_an_error_sample_not_an_exception():
    with httpx.Client(base_url=f"http://127.0.0.1:{free_port()}", timeout=2) as http:
        sample = stream_request(http, "/v1/chat/completions", planned(), t0=0.0)
    assert not sample.ok and "ConnectError" in sample.error and sample.status == 0
