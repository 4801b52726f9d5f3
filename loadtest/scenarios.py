"""Every load-test scenario, in one registry, and the arrival plan each one produces.

A plan is the full list of requests of a run, fixed before the first is sent: when each starts
(open loop: from the arrival profile, never from when earlier answers came back), which model,
which prompt and which `user` key. The same config and seed give the same plan.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from loadtest.errors import UsageError

MAX_PLANNED_REQUESTS = 200_000  # rate x duration above this is a typo, not a load test


@dataclass(frozen=True)
class Scenario:
    description: str
    prompts: Literal["short", "long", "both"]  # short: the dataset prompt; long: few-shot prefix
    models: Literal["one", "many"]  # one: first --model; many: uniform over all --model names
    vary_user: bool  # send `user` keys from a pool of simulated users (sticky A/B split)


SCENARIOS: dict[str, Scenario] = {
    "single": Scenario("one model or adapter (--model NAME), dataset prompts", "short", "one", False),
    "mixed": Scenario("N adapters mixed uniformly (--model a,b,c), dataset prompts", "short", "many", False),
    "ab": Scenario(
        "an A/B experiment (--model EXPERIMENT); the `user` field varies over --user-keys simulated "
        "users so the gateway's sticky assignment splits them across variants",
        "short",
        "one",
        True,
    ),
    "long": Scenario(
        "one model, long prompts (--long-shots solved examples before the question)", "long", "one", False
    ),
    "short-long": Scenario(
        "one model, half short and half long prompts, reported apart (long prefills delay short ones)",
        "both",
        "one",
        False,
    ),
}


def scenario_named(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise UsageError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}")
    return SCENARIOS[name]


@dataclass(frozen=True)
class PromptRecord:
    messages: list[dict[str, str]]  # the conversation up to and including the last user turn
    answer: str | None  # the reference assistant reply, if the dataset has one


@dataclass(frozen=True)
class PlannedRequest:
    index: int
    at_s: float  # start time, seconds after run start
    model: str
    user_key: str | None
    prompt_kind: str  # "short" | "long"
    body: dict[str, Any]  # the JSON sent (stream + include_usage always on)


def load_prompts(path: Path) -> list[PromptRecord]:
    """Read a JSONL file of OpenAI chat records ({"messages": [...]}) or {"prompt": ..., "completion": ...}."""
    if not path.is_file():
        raise UsageError(f"--prompts {path}: no such file; give a JSONL file of chat `messages` or `prompt` records")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            records.append(_record(row))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise UsageError(f"--prompts {path}:{number}: not a chat or prompt record ({exc})") from None
    if not records:
        raise UsageError(f"--prompts {path}: no records")
    return records


def _record(row: dict[str, Any]) -> PromptRecord:
    if "messages" in row:
        messages = [{"role": m["role"], "content": str(m["content"])} for m in row["messages"]]
        answer = messages.pop()["content"] if messages and messages[-1]["role"] == "assistant" else None
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("the conversation must end with a user turn (optionally followed by the answer)")
        return PromptRecord(messages, answer)
    return PromptRecord([{"role": "user", "content": str(row["prompt"])}], row.get("completion"))


def _long_messages(query: PromptRecord, shots: list[PromptRecord]) -> list[dict[str, str]]:
    """A few-shot conversation: solved examples as earlier turns, then the question."""
    turns = []
    for shot in shots:
        turns += [*shot.messages[-1:], {"role": "assistant", "content": shot.answer or ""}]
    return turns + query.messages


def _as_text(messages: list[dict[str, str]]) -> str:
    """A plain prompt for /v1/completions from a conversation."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def arrival_times(profile: str, rate: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Start times in [0, duration): evenly spaced (constant) or a Poisson process (exponential gaps)."""
    expected = rate * duration_s
    if expected > MAX_PLANNED_REQUESTS:
        raise UsageError(
            f"--rate {rate} x --duration {duration_s:g}s = {expected:.0f} requests; the cap is {MAX_PLANNED_REQUESTS}"
        )
    if profile == "constant":
        return np.arange(math.ceil(expected - 1e-9)) / rate
    if profile == "poisson":
        # Draw comfortably more gaps than needed (mean + 10 sd + 10), keep those inside the window.
        n = int(expected + 10 * math.sqrt(expected) + 10)
        times = np.cumsum(rng.exponential(1 / rate, size=n))
        return times[times < duration_s]
    raise UsageError(f"unknown arrival profile {profile!r}; valid: constant, poisson")


@dataclass(frozen=True)
class PlanOptions:
    """The part of the load-test config that shapes the plan (defaults live in LoadtestConfig)."""

    arrival: str
    rate: float
    duration_s: float
    endpoint: str
    max_tokens: int
    temperature: float
    long_shots: int
    user_keys: int
    seed: int


def build_plan(
    scenario: Scenario,
    models: list[str],
    records: list[PromptRecord],
    options: PlanOptions,
) -> list[PlannedRequest]:
    rng = np.random.default_rng(options.seed)
    times = arrival_times(options.arrival, options.rate, options.duration_s, rng)
    if scenario.prompts != "short" and not any(r.answer for r in records):
        raise UsageError("long prompts need solved examples: the --prompts records have no assistant answers")
    solved = [r for r in records if r.answer]
    plan = []
    for index, at_s in enumerate(times):
        model = models[int(rng.integers(len(models)))] if scenario.models == "many" else models[0]
        query = records[int(rng.integers(len(records)))]
        kind = scenario.prompts if scenario.prompts != "both" else ("long" if rng.random() < 0.5 else "short")
        if kind == "long":
            picks = rng.choice(len(solved), size=min(options.long_shots, len(solved)), replace=False)
            messages = _long_messages(query, [solved[int(i)] for i in picks])
        else:
            messages = query.messages
        user_key = f"loadtest-user-{int(rng.integers(options.user_keys)):04d}" if scenario.vary_user else None
        body = _body(options, model, messages, user_key)
        plan.append(PlannedRequest(index, float(at_s), model, user_key, kind, body))
    return plan


def _body(options: PlanOptions, model: str, messages: list[dict[str, str]], user_key: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    if options.endpoint == "chat":
        body["messages"] = messages
    else:
        body["prompt"] = _as_text(messages)
    body.update(
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        stream=True,
        stream_options={"include_usage": True},
    )
    if user_key is not None:
        body["user"] = user_key
    return body
