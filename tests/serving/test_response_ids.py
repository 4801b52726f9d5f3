"""Response ids are the gateway's, and one bad record never drops its batch.

The gateway issues `chatcmpl-<uuid hex>` / `cmpl-<uuid hex>` for every response, puts it into the
JSON body and every stream chunk whatever id the engine chose, and never forwards a client's
`request_id` (vLLM builds its response id from it: a 130-character one made PostgreSQL refuse a
whole batch of the request log). The writer, given such a record anyway, writes the rest of the
batch and counts the one it had to drop. Real PostgreSQL and the real `openai` client.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serving.store import RequestRecord, Store, StoreWriter
from serving.store.connect import create_db_engine, migrate
from tests.conftest import GatewayThread, free_port
from tests.serving import test_gateway_faults as faults
from tests.serving.conftest import new_postgres_database
from tests.serving.test_gateway_faults import BASE, MSG, engine

dirs = faults.dirs  # the fixture: a base manifest and adapters bot, other, third @v1
CHAT_ID = re.compile(r"^chatcmpl-[0-9a-f]{32}$")
COMPLETION_ID = re.compile(r"^cmpl-[0-9a-f]{32}$")
CLAIMED = "claimed-" + "x" * 122  # 130 characters, chosen by a client


@pytest.fixture
def pg_url(postgres_server_url: str) -> str:
    return new_postgres_database(postgres_server_url)


def own_id_engine() -> GatewayThread:
    """An engine that names its responses itself (ignores X-Request-Id), streamed and not."""
    app = FastAPI()
    seen: list[dict] = []
    app.state.seen = seen

    @app.get("/health")
    async def health() -> dict:
        return {}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        seen.append(body)
        if not body.get("stream"):
            message = {"role": "assistant", "content": "hi"}
            return JSONResponse({"id": "engine-own", "object": "chat.completion", "choices": [{"message": message}]})

        async def events():
            for word in ("one", "two"):
                delta = {"content": word}
                chunk = {"id": "engine-own", "object": "chat.completion.chunk", "choices": [{"delta": delta}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                await asyncio.sleep(0.01)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return GatewayThread(app, free_port())


def test_the_gateway_names_every_response_and_chunk(dirs) -> None:
    with own_id_engine() as eng, GatewayThread(faults.gateway_app(dirs, [eng.url]), free_port()) as gw:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model=BASE, messages=MSG, extra_body={"request_id": CLAIMED})
        chunks = list(client.chat.completions.create(model=BASE, messages=MSG, stream=True))
        gw.state.control.writer.flush().result(10)
        logged = gw.state.store.get_requests([answer.id, chunks[0].id])
        forwarded = eng.app.state.seen
    assert CHAT_ID.match(answer.id) and answer.choices[0].message.content == "hi"
    assert len({c.id for c in chunks}) == 1 and CHAT_ID.match(chunks[0].id) and chunks[0].id != answer.id
    assert set(logged) == {answer.id, chunks[0].id}  # the log holds what the client got
    assert all("request_id" not in body for body in forwarded)  # the client's id never reached the engine


def test_a_clients_long_request_id_loses_no_log_rows(dirs, pg_url: str) -> None:
    overrides = {"store.url": pg_url, "store.log_flush_interval_s": 1.0}  # one batch for all 21
    with (
        engine(tokens=2, ttft_ms=1.0, itl_ms=1.0) as eng,
        GatewayThread(faults.gateway_app(dirs, [eng.url], **overrides), free_port()) as gw,
    ):
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)

        def ask(i: int) -> str:
            extra = {"request_id": CLAIMED} if i == 0 else {}
            if i % 2:
                return client.completions.create(model="bot", prompt="hi", user=f"u{i}", extra_body=extra).id
            return client.chat.completions.create(model="bot", messages=MSG, user=f"u{i}", extra_body=extra).id

        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(ask, range(21)))
        gw.state.control.writer.flush().result(10)
        logged = gw.state.store.get_requests(ids)
        feedback = httpx.post(f"{gw.url}/v1/feedback", json={"id": ids[5], "score": 1.0}, timeout=10)
    assert all((CHAT_ID if i % 2 == 0 else COMPLETION_ID).match(rid) for i, rid in enumerate(ids))
    assert len(logged) == 21 and feedback.status_code == 200


def record(rid: str) -> RequestRecord:
    return RequestRecord(rid, time.time(), "chat", "bot", "bot@v1", "alice", 200, 0.01)


def test_one_bad_record_never_drops_its_batch(pg_url: str) -> None:
    db = create_db_engine(pg_url)
    migrate(db)
    store, drops, rejects = Store(db), [], []
    w = StoreWriter(
        store,
        queue_size=100,
        batch_size=100,
        flush_interval_s=60.0,  # only flush() wakes it: the 23 records are one batch
        body_retention_s=3600.0,
        on_drop=drops.append,
        on_reject=rejects.append,
    )
    good = [record(f"r{i}") for i in range(20)]
    too_long, nul = record("x" * 130), record("nul")
    nul.response_text = "a\x00b"  # PostgreSQL text cannot hold NUL
    for r in [*good[:7], too_long, *good[7:15], nul, *good[15:]]:
        w.offer(r)
    w.start()
    w.flush().result(30)
    w.stop()
    written = store.get_requests([r.id for r in good] + [too_long.id[:128], "nul"])
    store.close()
    assert sorted(written) == sorted(r.id for r in good)
    assert sum(rejects) == 2 == w.rejected and drops == []
