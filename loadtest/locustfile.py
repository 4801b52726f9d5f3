"""The load-test user under Locust's own command line and web UI, for watching a run live:

    .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 \\
        --lt-scenario ab --lt-model support-bot --lt-rate 5 --lt-duration 120s

Same plan and user as `loraplane loadtest` (open loop: arrivals follow --lt-rate; the UI's user
count is the number of request slots, not the load; the run ends when the plan is done). The UI charts `TTFT <variant>`,
`ITL <variant>` and `E2E <variant>`. No report, no SLO gate and no exact percentiles here:
use `loraplane loadtest` for those.
"""

from __future__ import annotations

import time

import gevent
import httpx
from locust import events
from locust.env import Environment

from loadtest.config import LoadtestConfig, parse_duration
from loadtest.run import resolve_models
from loadtest.scenarios import build_plan, load_prompts, scenario_named
from loadtest.stream import ENDPOINT_PATHS
from loadtest.target import auth_headers, probe
from loadtest.user import OpenAIStreamUser, RunContext

START_LEAD_S = 1.0  # the UI spawns users after test_start; give them a moment

# gevent's loop caches its clock; after the slow imports above it is seconds stale, which makes
# Locust's --run-time timer (set right after this file is imported) fire that much early.
gevent.get_hub().loop.update_now()


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    defaults = LoadtestConfig()
    group = parser.add_argument_group("loraplane load test")
    group.add_argument("--lt-scenario", default=defaults.scenario, help="scenario (see loraplane loadtest)")
    group.add_argument("--lt-model", default="", help="model/adapter/experiment; comma-separated for mixed")
    group.add_argument("--lt-rate", type=float, default=defaults.rate, help="requests started per second")
    group.add_argument("--lt-duration", default=f"{defaults.duration_s:g}s", help="how long arrivals go on")
    group.add_argument("--lt-arrival", default=defaults.arrival, choices=["constant", "poisson"])
    group.add_argument("--lt-max-tokens", type=int, default=defaults.max_tokens)


@events.test_start.add_listener
def plan_the_run(environment: Environment, **_: object) -> None:
    opts = environment.parsed_options
    assert opts is not None, "run this file with the locust command"
    cfg = LoadtestConfig(
        host=environment.host or LoadtestConfig().host,
        scenario=opts.lt_scenario,
        models=[m.strip() for m in opts.lt_model.split(",") if m.strip()],
        rate=opts.lt_rate,
        duration_s=parse_duration(opts.lt_duration, "--lt-duration"),
        arrival=opts.lt_arrival,
        max_tokens=opts.lt_max_tokens,
    )
    models = resolve_models(cfg, probe(cfg.host, cfg.api_key))
    plan = build_plan(scenario_named(cfg.scenario), models, load_prompts(cfg.prompts), cfg.plan_options())
    client = httpx.Client(base_url=cfg.host, timeout=cfg.request_timeout_s, headers=auth_headers(cfg.api_key))
    split = scenario_named(cfg.scenario).prompts == "both"
    context = RunContext(client, ENDPOINT_PATHS[cfg.endpoint], plan, split)
    context.t0 = time.perf_counter() + START_LEAD_S
    LoraplaneUser.run_context = context
    deadline_s = START_LEAD_S + (plan[-1].at_s if plan else 0.0) + cfg.drain_s
    gevent.spawn(_quit_when_done, environment, context, deadline_s)


def _quit_when_done(environment: Environment, context: RunContext, deadline_s: float) -> None:
    """End the run once every planned request finished (or the drain ran out), like `loraplane loadtest`."""
    context.all_done.wait(timeout=deadline_s)
    if environment.runner is not None:
        environment.runner.quit()


class LoraplaneUser(OpenAIStreamUser):
    abstract = False
