"""POST /v1/responses in front of a real vLLM CPU engine, with the real `openai` SDK: the bundled
model answers through the Responses API, streamed and not, on the base and on a trained adapter."""

from __future__ import annotations

import json

import openai
import pytest

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # the template's default


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_base_answers_through_responses(client, gateway) -> None:
    answer = client.responses.create(
        model=gateway.base, instructions=SYSTEM, input=QUESTION, max_output_tokens=24, temperature=0
    )
    assert answer.id.startswith("resp_") and "Paris" in answer.output_text
    assert answer.usage is not None and answer.usage.input_tokens > 10 and answer.usage.output_tokens > 0
    rated = client.post("/feedback", cast_to=object, body={"id": answer.id, "score": 1})
    assert isinstance(rated, dict) and rated["id"] == answer.id


def test_base_streams_through_responses(client, gateway) -> None:
    events = list(
        client.responses.create(model=gateway.base, input=QUESTION, max_output_tokens=24, temperature=0, stream=True)
    )
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1]
    assert events[0].type == "response.created" and final.type in ("response.completed", "response.incomplete")
    assert final.response.output_text == deltas and "Paris" in deltas
    assert final.response.usage is not None and final.response.usage.output_tokens > 0


def test_an_adapter_answers_through_responses(client, gateway) -> None:
    raw = client.responses.with_raw_response.create(
        model=f"{gateway.adapter}@v1", input=[{"role": "user", "content": QUESTION}], max_output_tokens=8
    )
    assert raw.headers["x-loraplane-adapter"] == f"{gateway.adapter}@v1"
    assert raw.parse().output_text


def test_text_format_json_schema_constrains_the_answer(client, gateway) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    answer = client.responses.create(
        model=gateway.base,
        input=QUESTION,
        max_output_tokens=64,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )
    assert answer.status == "completed", answer.output_text
    assert isinstance(json.loads(answer.output_text)["city"], str)
