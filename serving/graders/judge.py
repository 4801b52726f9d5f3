"""The model grader: an LLM judge through any OpenAI-compatible chat URL (this gateway included).

The rubric is sent as one user message with {prompt} (the request's last user message) and
{answer} filled in; the first number in the reply is the score: 0..1 as is (params.scale "unit"),
or 1..10 mapped to 0..1 as (x - 1) / 9 (scale "ten"). A reply without such a number is
"unparsable"; a judge slower than timeout_s is "timeout"; calls beyond params.per_minute in the
last 60 s are not made ("budget"). None of them stores a score.

Grading through this gateway: point base_url at it and pick a judge model that no grader
applies to (e.g. the base model: answers of the base, variant "none", are never graded), or the
judge's own answers would be graded in turn.
"""

from __future__ import annotations

import collections
import os
import re
import time
from collections.abc import Callable

import openai

from serving.graders.config import GraderConfig
from serving.graders.kinds import NoScore

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
WINDOW_S = 60.0


def parse_score(reply: str, scale: str) -> float:
    """The first number of the reply as a score in [0, 1]; NoScore("unparsable") when there is none
    or it is outside the scale."""
    found = NUMBER.search(reply or "")
    if found is None:
        raise NoScore("unparsable", f"no number in the judge's reply {reply[:80]!r}")
    x = float(found.group())
    if scale == "ten" and 1 <= x <= 10:
        return (x - 1) / 9
    if scale == "unit" and 0 <= x <= 1:
        return x
    raise NoScore("unparsable", f"judge's number {x} is outside its scale {scale!r}")


def last_user_message(request: dict) -> str:
    messages = request.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                return m["content"]
    prompt = request.get("prompt")
    return prompt if isinstance(prompt, str) else ""


class Budget:
    """At most `per_minute` calls in any 60 s (a sliding window of call times)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self.calls: collections.deque[float] = collections.deque()

    def take(self) -> bool:
        now = self.clock()
        while self.calls and now - self.calls[0] >= WINDOW_S:
            self.calls.popleft()
        if len(self.calls) >= self.per_minute:
            return False
        self.calls.append(now)
        return True


class JudgeGrader:
    def __init__(self, cfg: GraderConfig):
        p = cfg.params
        assert p.base_url and p.model and p.rubric
        self.name = cfg.name
        self.cfg = cfg
        self.budget = Budget(p.per_minute)
        key = os.environ.get(p.api_key_env, "") if p.api_key_env else ""
        self.client = openai.AsyncOpenAI(
            base_url=p.base_url, api_key=key or "none", timeout=cfg.timeout_s, max_retries=0
        )

    def prompt(self, request: dict, answer: str) -> str:
        rubric = self.cfg.params.rubric or ""
        return rubric.replace("{prompt}", last_user_message(request)).replace("{answer}", answer)

    async def score(self, request: dict, answer: str) -> float:
        if not self.budget.take():
            raise NoScore("budget", f"{self.cfg.params.per_minute} judge calls in the last minute")
        try:
            reply = await self.client.chat.completions.create(
                model=self.cfg.params.model or "",
                messages=[{"role": "user", "content": self.prompt(request, answer)}],
                max_tokens=self.cfg.params.max_tokens,
                temperature=0,
            )
        except openai.APITimeoutError:
            raise NoScore("timeout", f"judge {self.cfg.params.base_url} took over {self.cfg.timeout_s} s") from None
        except openai.OpenAIError as exc:
            raise NoScore("error", f"judge {self.cfg.params.base_url}: {type(exc).__name__}: {exc}") from None
        text = reply.choices[0].message.content if reply.choices else None
        return parse_score(text or "", self.cfg.params.scale)

    async def close(self) -> None:
        await self.client.close()
