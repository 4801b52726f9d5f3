"""The Locust user: takes the next planned request, waits for its start time, streams it.

Open loop: Locust users here are slots for requests in flight, not simulated people. Start
times come from the plan, so a slow server does not slow the arrivals down (closed-loop
`wait_time` would). If every slot is busy when a request is due, it starts late and its lag
is recorded; the report says so.

Each request fires Locust `request` events named `TTFT <group>`, `ITL <group>` (one per
gap) and `E2E <group>` (type `SSE`), so Locust's UI and CSVs show them per variant. Locust
rounds its own statistics; the report's numbers come from the raw samples kept here.
"""

from __future__ import annotations

import time

import gevent
import httpx
from gevent.event import Event
from gevent.queue import Empty, Queue
from locust import User, constant, task
from locust.env import Environment
from locust.exception import StopUser

from loadtest.samples import RequestSample
from loadtest.scenarios import PlannedRequest
from loadtest.stream import stream_request

EVENT_TYPE = "SSE"


class StreamFailed(Exception):
    """A failed request, as Locust's failure table shows it."""


class RunContext:
    """What the users of one run share: the plan queue, the HTTP client and the samples."""

    def __init__(self, client: httpx.Client, path: str, plan: list[PlannedRequest], split_prompt_kinds: bool):
        self.client = client
        self.path = path
        self.plan = plan
        self.split_prompt_kinds = split_prompt_kinds
        self.queue: Queue = Queue()
        for planned in plan:
            self.queue.put(planned)
        self.samples: list[RequestSample] = []
        self.in_flight: dict[int, float] = {}  # plan index -> send time (perf_counter)
        self.t0 = 0.0  # perf_counter() at run start; planned times are relative to it
        self.all_done = Event()

    def record(self, sample: RequestSample) -> None:
        self.in_flight.pop(sample.index, None)
        self.samples.append(sample)
        if len(self.samples) == len(self.plan):
            self.all_done.set()


def fire_events(environment: Environment, sample: RequestSample) -> None:
    fire = environment.events.request.fire
    if sample.ok:
        if sample.ttft_s is not None:
            fire(
                request_type=EVENT_TYPE,
                name=f"TTFT {sample.group}",
                response_time=sample.ttft_s * 1000,
                response_length=0,
                exception=None,
                context={},
            )
        for gap in sample.gaps_s:
            fire(
                request_type=EVENT_TYPE,
                name=f"ITL {sample.group}",
                response_time=gap * 1000,
                response_length=0,
                exception=None,
                context={},
            )
    fire(
        request_type=EVENT_TYPE,
        name=f"E2E {sample.group}",
        response_time=(sample.e2e_s or 0.0) * 1000,
        response_length=sample.output_tokens or 0,
        exception=None if sample.ok else StreamFailed(sample.error),
        context={},
    )


class OpenAIStreamUser(User):
    """Subclassed per run with `run_context` set (see loadtest.run). Not `context`: Locust's
    User.context() is a method it calls for event context."""

    abstract = True
    wait_time = constant(0)
    run_context: RunContext

    @task
    def next_planned_request(self) -> None:
        ctx = self.run_context
        try:
            planned: PlannedRequest = ctx.queue.get_nowait()
        except Empty:
            raise StopUser() from None
        delay = ctx.t0 + planned.at_s - time.perf_counter()
        if delay > 0:
            gevent.sleep(delay)
        ctx.in_flight[planned.index] = time.perf_counter()
        sample = stream_request(ctx.client, ctx.path, planned, ctx.t0, ctx.split_prompt_kinds)
        ctx.record(sample)
        fire_events(self.environment, sample)
