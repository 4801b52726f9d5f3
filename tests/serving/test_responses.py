"""POST /v1/responses with the real `openai` SDK against the gateway on the mock engine: the
Responses object and its event stream, the chat request path behind it (limits, A/B, the request
log, feedback by the `resp_...` id, metrics), and the 400s of a stateless gateway."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import openai
import pytest

from serving.gateway.responses import chat_body
from serving.gateway.responses_stream import ResponsesStream
from tests.conftest import GatewayThread, free_port
from tests.serving.test_gateway_faults import BASE, dirs, engine, gateway_app  # noqa: F401

RESPONSE_ID = re.compile(r"^resp_[0-9a-f]{32}$")
WORDS = " alpha bravo charlie delta"  # the mock engine's first four tokens
EXPERIMENT = {"experiments": [{"name": "ab", "variants": {"bot@v1": 50, "other@v1": 50}}]}
STREAM_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 4,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture
def gw(dirs):  # noqa: F811
    with engine(tokens=4, ttft_ms=1, itl_ms=0) as eng:
        app = gateway_app(dirs, [eng.url], **EXPERIMENT, **{"store.log_flush_interval_s": 0.05})
        with GatewayThread(app, free_port()) as server:
            yield server


def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)


def logged(gw, *ids: str) -> dict:
    gw.state.control.writer.flush().result(10)
    return gw.state.store.get_requests(list(ids))


def test_create_answers_a_response_object_that_is_logged_and_rateable(gw) -> None:
    client = sdk(gw)
    answer = client.responses.create(model=BASE, input="hi there", instructions="be brief")
    assert RESPONSE_ID.match(answer.id) and answer.object == "response"
    assert answer.status == "completed" and answer.output_text == WORDS
    assert answer.output[0].type == "message" and answer.output[0].id == f"msg_{answer.id[5:]}"
    assert answer.usage is not None
    # the mock counts words of every message: the instructions became a system message
    assert (answer.usage.input_tokens, answer.usage.output_tokens, answer.usage.total_tokens) == (4, 4, 8)
    row = logged(gw, answer.id)[answer.id]
    assert (row.route, row.status, row.outcome, row.completion_tokens) == ("responses", 200, "ok", 4)
    rated = client.post("/feedback", cast_to=object, body={"id": answer.id, "score": 1})  # as docs/responses.md
    assert isinstance(rated, dict) and rated["id"] == answer.id and rated["score"] == 1.0
    metrics = httpx.get(f"{gw.url}/metrics").text
    counted = f'loraplane_requests_total{{model="{BASE}",route="responses",status_class="2xx",variant="{row.variant}"}}'
    assert f"{counted} 1.0" in metrics


def test_max_output_tokens_cuts_the_answer_and_says_so(gw) -> None:
    answer = sdk(gw).responses.create(model=BASE, input="hi", max_output_tokens=2)
    assert answer.output_text == " alpha bravo" and answer.status == "incomplete"
    assert answer.incomplete_details is not None and answer.incomplete_details.reason == "max_output_tokens"


def test_stream_emits_the_responses_events_in_order(gw) -> None:
    events = list(sdk(gw).responses.create(model=BASE, input="hi", stream=True))
    assert [e.type for e in events] == STREAM_ORDER
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert RESPONSE_ID.match(done.id) and done.output_text == WORDS
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == WORDS
    assert done.usage is not None and done.usage.output_tokens == 4
    row = logged(gw, done.id)[done.id]
    assert (row.route, row.status, row.completion_tokens) == ("responses", 200, 4)
    assert row.ttft_s is not None  # the relay timed the first token as for chat


def test_the_sdk_stream_helper_accumulates_the_same_answer(gw) -> None:
    with sdk(gw).responses.stream(model=BASE, input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == WORDS and final.status == "completed"


def test_experiments_split_responses_like_chat(gw) -> None:
    raw = sdk(gw).responses.with_raw_response.create(model="ab", input="hi", user="user-7")
    answer = raw.parse()
    variant = raw.headers["x-loraplane-variant"]
    assert variant in ("bot@v1", "other@v1") and raw.headers["x-loraplane-experiment"] == "ab"
    again = sdk(gw).responses.with_raw_response.create(model="ab", input="hi again", user="user-7")
    assert again.headers["x-loraplane-variant"] == variant  # sticky per user, as on chat
    row = logged(gw, answer.id)[answer.id]
    assert (row.experiment, row.variant, row.route) == ("ab", variant, "responses")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"max_output_tokens": 5000}, "max_output_tokens"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input_image"),
        ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "'reasoning'"),
        ({"tools": [{"type": "web_search"}]}, "'web_search'"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_what_a_stateless_text_gateway_cannot_serve_is_a_400_naming_it(gw, extra: dict, named: str) -> None:
    body = {"model": BASE, "input": "hi", **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(gw).responses.create(**body)
    error = refused.value.body
    assert isinstance(error, dict) and named in error["message"], error
    if "previous_response_id" in extra:
        assert "stateless" in error["message"] and "input" in error["message"]
    if "max_output_tokens" in extra:
        assert "1..1024" in error["message"] and error["param"] == "max_output_tokens"


def test_a_conversation_with_function_calls_becomes_chat_messages() -> None:
    body = {
        "model": "m",
        "instructions": "use tools",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city": "Oslo"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        "max_output_tokens": 7,
        "store": False,
    }
    chat = chat_body(body, cap=100)
    assert chat["messages"] == [
        {"role": "system", "content": "use tools"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert chat["tools"] == [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}},
    }
    assert chat["max_tokens"] == 7 and "store" not in chat


def test_streamed_tool_calls_become_function_call_items() -> None:
    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {"id": "resp_ab", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n"

    call = {"index": 0, "id": "call_1", "function": {"name": "weather", "arguments": '{"city": '}}
    chat = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"tool_calls": [call]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}, "tool_calls"),
        "data: [DONE]\n\n",
    ]

    async def run() -> list[dict]:
        async def source():
            for piece in chat:
                yield piece

        out = [e async for e in ResponsesStream({"model": "m"}, 0.0).translate(source())]
        return [json.loads(line[6:]) for e in out for line in e.splitlines() if line.startswith("data: ")]

    events = asyncio.run(run())
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    item = events[-1]["response"]["output"][0]
    assert (item["type"], item["call_id"], item["name"], item["arguments"]) == (
        "function_call",
        "call_1",
        "weather",
        '{"city": "Oslo"}',
    )


def test_an_engine_failure_mid_stream_raises_in_the_sdk_and_is_logged(dirs) -> None:  # noqa: F811
    faulty = engine(tokens=4, ttft_ms=1, itl_ms=0, stream_faults={BASE: "error@2"})
    with faulty as eng, GatewayThread(gateway_app(dirs, [eng.url]), free_port()) as server:
        seen = []
        with pytest.raises(openai.APIError, match="injected generation failure"):
            for event in sdk(server).responses.create(model=BASE, input="hi", stream=True):
                seen.append(event)
        assert [e.type for e in seen][-2:] == ["response.output_text.delta"] * 2  # no completed event
        row = logged(server, seen[0].response.id)[seen[0].response.id]
        assert (row.route, row.status, row.outcome, row.error_kind) == ("responses", 500, "error", "stream_error")
