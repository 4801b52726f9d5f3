"""The graders' part of the serving config: `graders:` (what scores answers), `grading:` (the
queue they read) and `adapters:` (per-adapter settings: body capture outside rollouts).

    graders:
      - {name: json_valid, kind: json_valid, sample: 1.0, applies_to: [extractor]}
      - {name: schema, kind: json_schema, params: {schema_file: schemas/invoice.json}}
      - {name: cites, kind: regex, params: {pattern: "\\[\\d+\\]"}}
      - {name: mine, kind: python, params: {callable: "mypkg.graders:score"}}
      - name: judge
        kind: model
        sample: 0.1
        params: {base_url: "http://127.0.0.1:8000/v1", model: smollm2-135m-instruct,
                 rubric: "Rate the answer 0 to 1 ... {prompt} ... {answer}", per_minute: 30}
    adapters:
      - {name: extractor, capture: bodies}

Imports nothing of serving.config (which imports this module).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.registry import ADAPTER_NAME_RE
from serving.rollouts.policy import GRADER_NAME_RE

GraderKind = Literal["json_valid", "json_schema", "regex", "python", "model"]
CALLABLE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # pkg.mod:func
# The params each kind needs, and may have (everything else is refused, naming the kind).
REQUIRED: dict[str, tuple[str, ...]] = {
    "json_valid": (),
    "json_schema": ("schema_file",),
    "regex": ("pattern",),
    "python": ("callable",),
    "model": ("base_url", "model", "rubric"),
}
ALLOWED: dict[str, tuple[str, ...]] = {
    **REQUIRED,
    "regex": ("pattern", "fullmatch"),
    "model": ("base_url", "model", "rubric", "api_key_env", "per_minute", "scale", "max_tokens"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GraderParams(_Strict):
    """What a kind needs (GraderConfig checks which apply)."""

    schema_file: Path | None = None  # json_schema: a JSON Schema file
    pattern: str | None = None  # regex: scored 1 when the answer matches (re.search)
    fullmatch: bool = False  # regex: the whole answer must match
    callable: str | None = None  # python: "pkg.mod:func", func(request: dict, answer: str) -> float|bool|None
    base_url: str | None = None  # model: an OpenAI-compatible URL ending in /v1 (this gateway works)
    model: str | None = None  # model: the judge model's name at base_url
    # model: the judge's prompt; {prompt} (the request's last user message) and {answer} are filled in
    rubric: str | None = None
    api_key_env: str | None = None  # model: env var holding the judge URL's API key
    per_minute: int = Field(60, ge=1)  # model: judge calls per minute at most; beyond, counted as "budget"
    scale: Literal["unit", "ten"] = "unit"  # model: the reply's number is 0..1 ("unit") or 1..10 ("ten")
    max_tokens: int = Field(16, ge=1)  # model: the judge's reply length


class GraderConfig(_Strict):
    """One grader: scores a sampled share of captured answers off the request path (docs/graders.md)."""

    name: str  # its score source is "grader:NAME"; a label on its metrics
    kind: GraderKind
    params: GraderParams = Field(default_factory=GraderParams)
    sample: float = Field(1.0, ge=0, le=1)  # share of captured answers it scores
    applies_to: list[str] = Field(default_factory=list)  # adapter names; empty: every adapter
    timeout_s: float = Field(10.0, gt=0)  # a score not back by then is counted as "timeout", never stored

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not GRADER_NAME_RE.match(value):
            raise ValueError(f"grader name {value!r} must match {GRADER_NAME_RE.pattern}")
        return value

    @field_validator("applies_to")
    @classmethod
    def _adapters(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not ADAPTER_NAME_RE.match(name)]
        if bad:
            raise ValueError(f"applies_to names {bad} are not adapter names ({ADAPTER_NAME_RE.pattern})")
        return value

    @model_validator(mode="after")
    def _params_fit_kind(self) -> GraderConfig:
        defaults = {k: f.default for k, f in GraderParams.model_fields.items()}
        given = {k for k in self.params.model_fields_set if getattr(self.params, k) != defaults[k]}
        problems = [f"params.{k} is required" for k in REQUIRED[self.kind] if getattr(self.params, k) is None]
        problems += [f"params.{k} does not apply" for k in sorted(given - set(ALLOWED[self.kind]))]
        problems += self._check_values()
        if problems:
            raise ValueError(f"grader {self.name!r} (kind {self.kind}): {'; '.join(problems)}")
        return self

    def _check_values(self) -> list[str]:
        p = self.params
        if self.kind == "regex" and p.pattern is not None:
            try:
                re.compile(p.pattern)
            except re.error as exc:
                return [f"params.pattern {p.pattern!r} is not a regular expression ({exc})"]
        if self.kind == "python" and p.callable is not None and not CALLABLE_RE.match(p.callable):
            return [f"params.callable {p.callable!r} must be 'package.module:function'"]
        if self.kind == "json_schema" and p.schema_file is not None:
            try:
                json.loads(p.schema_file.read_text())
            except (OSError, ValueError) as exc:
                return [f"params.schema_file {str(p.schema_file)!r} is not a readable JSON file ({exc})"]
        if self.kind == "model" and p.rubric is not None and "{answer}" not in p.rubric:
            return ["params.rubric must contain {answer} (and may contain {prompt})"]
        return []


class GradingConfig(_Strict):
    """The bounded queue between finished answers and the graders (serving/graders/queue.py)."""

    queue_size: int = Field(1000, ge=1)  # answers waiting to be graded; beyond: dropped, counted
    workers: int = Field(2, ge=1, le=64)  # answers graded at once


class AdapterConfig(_Strict):
    """Settings of one adapter name, whatever version serves it."""

    name: str
    # "bodies": keep request/response bodies of its traffic outside rollouts and experiments too
    # (for `loraplane feedback export` and graders; erased after store.body_retention_s)
    capture: Literal["none", "bodies"] = "none"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ADAPTER_NAME_RE.match(value):
            raise ValueError(f"adapter name {value!r} must match {ADAPTER_NAME_RE.pattern}")
        return value
