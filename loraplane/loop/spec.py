"""The loop spec: one typed object per adapter name, every default here; the YAML file only
overrides it. Loaded by `loraplane loop run SPEC`; every problem found is reported at once.

    adapter: bot
    gateway: {url: http://127.0.0.1:8000}              # admin key: env LORAPLANE_ADMIN_KEY
    store_url: sqlite:///adapters/loraplane.db         # the control-plane store (env LORAPLANE_STORE_URL wins)
    adapters_dir: adapters                             # where `loraplane train` publishes
    trigger: {min_new_ratings: 200}                    # and/or interval_s: 86400
    data: {export: feedback, method: auto, dpo_min_pairs: 50, min_rows: 50}
    train: {config: configs/train/demo-kto.yaml, overrides: {train.max_steps: 40}}
    gate: {golden: data/demo/golden.jsonl, metric: exact_match, margin: 0.02}
    rollout: {shadow: 20, steps: [10, 50, 100], guards: [error_rate:0, feedback:0]}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serving.config import ADAPTER_NAME_RE
from serving.rollouts.policy import GuardSpec

STORE_URL_ENV = "LORAPLANE_STORE_URL"
GATE_METRICS = ("exact_match", "json_valid", "rouge_l", "bleu")  # `loraplane eval --metrics` (higher is better)


class LoopSpecError(ValueError):
    """A spec that cannot run: every problem, each naming the key and what to do."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatewaySpec(Strict):
    url: str = "http://127.0.0.1:8000"
    admin_key_env: str = "LORAPLANE_ADMIN_KEY"  # env var holding the admin key (auth on)
    api_key_env: str = "LORAPLANE_API_KEY"  # env var holding an API key for `loraplane eval` (auth on)
    timeout_s: float = Field(60.0, gt=0)
    publish_wait_s: float = Field(60.0, gt=0)  # how long a just-published version may take to be listed


class TriggerSpec(Strict):
    """When an iteration is due. Neither set: every run is due."""

    min_new_ratings: int | None = Field(None, ge=1)  # rated answers since the last finished iteration
    interval_s: float | None = Field(None, gt=0)  # seconds since the last finished iteration began


class DataSpec(Strict):
    export: Literal["feedback", "rollout"] = "feedback"  # the adapter's rated traffic, or a rollout's captures
    rollout: str | None = None  # export: rollout -- which one (default: the last iteration's rollout)
    # auto: dpo when preferences.jsonl has >= dpo_min_pairs pairs, else kto on kto.jsonl (unpaired
    # ratings), else sft on sft.jsonl (answers scored good)
    method: Literal["auto", "kto", "dpo", "sft"] = "auto"
    dpo_min_pairs: int = Field(50, ge=1)
    min_rows: int = Field(20, ge=1)  # fewer rows in the chosen file: the iteration stops, nothing trained
    since: float | None = None  # POSIX seconds the first iteration exports from (default: everything)
    command: list[str] | None = None  # default: this python -m loraplane feedback export / rollout export


class TrainSpec(Strict):
    config: Path  # a `loraplane train` YAML (its data.train, lora.init_from, publish.* are set by the loop)
    overrides: dict[str, Any] = Field(default_factory=dict)  # dotted keys, e.g. {train.max_steps: 40}
    command: list[str] | None = None  # default: this python -m loraplane train


class GateSpec(Strict):
    golden: Path  # a frozen JSONL set with expected answers (any `loraplane eval --data` format)
    metric: str = "exact_match"
    margin: float = Field(0.0, ge=0)  # the new version may score at most this much below stable
    max_tokens: int = Field(64, ge=1)
    command: list[str] | None = None  # default: this python -m loraplane eval


class RolloutSettings(Strict):
    shadow: float | None = Field(20.0, gt=0, le=100)  # % mirrored before the first step; None: no shadow
    steps: list[int] | None = None  # None: the gateway's rollouts.steps
    guards: list[str] | None = None
    min_samples: int | None = None
    interval_s: float | None = None
    promote_when: Literal["better", "not_worse", "no_regression"] | None = None
    better_on: str | None = None  # the score guard `better` reads (feedback or grader:NAME)
    # `better`: roll back once the gain is shown below; 0 switches the gateway's rollouts.min_gain off
    min_gain: float | None = Field(None, ge=0, lt=1)
    capture: Literal["none", "bodies"] = "bodies"  # the next iteration's training data
    wait_timeout_s: float = Field(3600.0, gt=0)  # then `loop run` exits; the next run waits on
    poll_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _gain_rule(self) -> RolloutSettings:
        """What the gateway would refuse at rollout start, refused before any training instead."""
        if self.min_gain and self.promote_when not in (None, "better"):  # 0 is "off", whatever the rule
            raise ValueError(f"rollout.min_gain applies to promote_when 'better' only, not {self.promote_when!r}")
        if self.better_on is not None:
            metric = GuardSpec(self.better_on, 0.0)  # ValueError naming a malformed metric
            if not metric.higher_is_better:
                raise ValueError(f"rollout.better_on {self.better_on!r} must be feedback or grader:NAME")
            guards = [GuardSpec.parse(g).metric for g in self.guards or []]
            if self.guards is not None and self.better_on not in guards:
                raise ValueError(f"rollout.better_on {self.better_on!r} is not among rollout.guards {guards}")
        return self


class LoopSpec(Strict):
    adapter: str
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    store_url: str | None = None
    adapters_dir: Path = Path("adapters")
    work_dir: Path = Path("loop-runs")  # exports, train runs and gate results, per iteration
    # One run per adapter at a time (a lease in the store, renewed while the run lasts): a killed
    # run's lease lapses after this many seconds, then the next run may resume its iteration.
    lock_ttl_s: float = Field(60.0, gt=0)
    trigger: TriggerSpec = Field(default_factory=TriggerSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    train: TrainSpec
    gate: GateSpec
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)

    @model_validator(mode="after")
    def _checks(self) -> LoopSpec:
        problems = []
        if not ADAPTER_NAME_RE.match(self.adapter):
            problems.append(f"adapter {self.adapter!r} must match {ADAPTER_NAME_RE.pattern}")
        if not self.gate.golden.is_file():
            problems.append(
                f"gate.golden {str(self.gate.golden)!r} does not exist; give a JSONL file of expected answers"
            )
        if not self.train.config.is_file():
            problems.append(f"train.config {str(self.train.config)!r} does not exist; give a `loraplane train` YAML")
        if self.gate.metric not in GATE_METRICS:
            problems.append(f"gate.metric {self.gate.metric!r} is not one of {', '.join(GATE_METRICS)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def resolved_store_url(self) -> str:
        url = os.environ.get(STORE_URL_ENV) or self.store_url
        return url or f"sqlite:///{(self.adapters_dir / 'loraplane.db').resolve()}"  # the gateway's default


def load_spec(path: Path) -> LoopSpec:
    """The spec in `path`; LoopSpecError naming the file and every problem."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise LoopSpecError(f"loop spec {str(path)!r} cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise LoopSpecError(f"loop spec {str(path)!r} is not YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise LoopSpecError(f"loop spec {str(path)!r} must be a mapping (adapter:, train:, gate:, ...)")
    try:
        return LoopSpec.model_validate(raw)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise LoopSpecError(f"loop spec {str(path)!r}: {details}") from None
