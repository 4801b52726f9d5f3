"""Graders: one async interface, `await grader.score(request, answer) -> float in [0, 1]`.

A grader that cannot give a score raises NoScore with a bounded reason ("unparsable", "error",
"budget"); the queue counts it and stores nothing, so a failed grading is never a verdict.

Programmatic kinds run their (synchronous) check in a worker thread, so a slow regex or a slow
user callable never blocks the event loop; the queue's timeout bounds how long it is waited for.

    json_valid   1 when the answer (surrounding whitespace aside) parses as JSON, else 0
    json_schema  1 when it parses and validates against params.schema_file, else 0
    regex        1 when params.pattern matches (re.search; params.fullmatch: the whole answer), else 0
    python       params.callable(request: dict, answer: str) -> bool | number in [0, 1] | None
                 (None or anything else: "unparsable"; an exception: "error")
    model        an LLM judge (judge.py)
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import re
from collections.abc import Callable
from typing import Any, Protocol

from serving.errors import ConfigError
from serving.graders.config import GraderConfig

FAILURES = ("timeout", "unparsable", "error", "budget")  # the `reason` label of graded-failed metrics


class NoScore(Exception):
    """The grader gave no score; `reason` is one of FAILURES."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in FAILURES, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Grader(Protocol):
    name: str
    cfg: GraderConfig

    async def score(self, request: dict, answer: str) -> float: ...

    async def close(self) -> None: ...


def as_score(value: Any) -> float:
    """A check's result as a score: a bool is 1 or 0, a number must be within [0, 1]."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1:
        return float(value)
    raise NoScore("unparsable", f"expected a bool or a number in [0, 1], got {value!r:.80}")


def json_valid(answer: str) -> bool:
    try:
        json.loads(answer.strip())
    except ValueError:
        return False
    return True


def _json_schema_check(cfg: GraderConfig) -> Callable[[dict, str], bool]:
    import jsonschema  # a base dependency; imported when a json_schema grader is configured

    assert cfg.params.schema_file is not None
    schema = json.loads(cfg.params.schema_file.read_text())
    try:
        validator = jsonschema.validators.validator_for(schema)(schema)
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = f"grader {cfg.name!r}: {cfg.params.schema_file}"
        raise ConfigError(f"{where} is not a valid JSON Schema: {exc.message}") from None

    def check(request: dict, answer: str) -> bool:
        try:
            return validator.is_valid(json.loads(answer.strip()))
        except ValueError:
            return False

    return check


def _regex_check(cfg: GraderConfig) -> Callable[[dict, str], bool]:
    assert cfg.params.pattern is not None
    pattern = re.compile(cfg.params.pattern)
    match = pattern.fullmatch if cfg.params.fullmatch else pattern.search
    return lambda request, answer: match(answer) is not None


def load_callable(cfg: GraderConfig) -> Callable[[dict, str], Any]:
    """params.callable imported now (ConfigError naming it when it cannot be)."""
    assert cfg.params.callable is not None
    module_name, _, attr = cfg.params.callable.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"grader {cfg.name!r}: cannot import params.callable {cfg.params.callable!r} ({exc}); "
            "is its package installed in the gateway's environment?"
        ) from None
    if not callable(fn):
        raise ConfigError(f"grader {cfg.name!r}: params.callable {cfg.params.callable!r} is not callable")
    return fn


class CheckGrader:
    """A programmatic grader: a synchronous check run in a worker thread."""

    def __init__(self, cfg: GraderConfig, check: Callable[[dict, str], Any]):
        self.name = cfg.name
        self.cfg = cfg
        self.check = check

    async def score(self, request: dict, answer: str) -> float:
        try:
            value = await asyncio.to_thread(self.check, request, answer)
        except Exception as exc:
            raise NoScore("error", f"{type(exc).__name__}: {exc}") from None
        return as_score(value)

    async def close(self) -> None:
        return None


def build_grader(cfg: GraderConfig) -> Grader:
    """The grader a config entry describes; ConfigError when it cannot be built (naming it)."""
    if cfg.kind == "model":
        from serving.graders.judge import JudgeGrader

        return JudgeGrader(cfg)
    checks: dict[str, Callable[[GraderConfig], Callable[[dict, str], Any]]] = {
        "json_valid": lambda c: lambda request, answer: json_valid(answer),
        "json_schema": _json_schema_check,
        "regex": _regex_check,
        "python": load_callable,
    }
    return CheckGrader(cfg, checks[cfg.kind](cfg))
