"""The load-test config: one typed object, every default here. The CLI only fills it in."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from loadtest.errors import UsageError
from loadtest.scenarios import PlanOptions, scenario_named
from loadtest.slo import Slo, parse_slos

_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
REPO = Path(__file__).resolve().parents[1]  # the default prompts ship with the repo
DEFAULT_SLOS = "error_rate=0"  # without --slo, any failed request fails the run


def parse_duration(text: str, flag: str = "--duration") -> float:
    """'120s', '2m', '1.5h', '500ms' or a bare number of seconds -> seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise UsageError(f"{flag} {text!r}: not a duration; use e.g. 30s, 2m, 1h or a number of seconds")
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]


@dataclass
class LoadtestConfig:
    host: str = "http://127.0.0.1:8000"
    scenario: str = "single"
    # Model names sent as `model`. Empty: ask /v1/models (single/long: the first, mixed: all).
    models: list[str] = field(default_factory=list)
    endpoint: Literal["chat", "completions"] = "chat"
    arrival: Literal["constant", "poisson"] = "poisson"
    rate: float = 1.0  # requests started per second (open loop)
    duration_s: float = 30.0  # arrivals are planned in [0, duration)
    max_tokens: int = 64
    temperature: float = 0.0
    prompts: Path = REPO / "data/demo/heldout.jsonl"
    long_shots: int = 8  # solved examples before the question in a long prompt (~70 tokens each)
    user_keys: int = 64  # distinct `user` values (simulated end users) in the ab scenario
    max_concurrency: int = 64  # Locust users = most requests in flight; beyond it, starts run late
    drain_s: float = 30.0  # after the last arrival, how long in-flight requests may take to finish
    request_timeout_s: float = 120.0
    slos: list[Slo] = field(default_factory=lambda: parse_slos(DEFAULT_SLOS))
    slo_scope: Literal["overall", "each-group"] = "overall"  # each-group: every variant must meet them too
    sweep: list[float] = field(default_factory=list)  # rates to try in order; empty = one run at `rate`
    alpha: float = 0.05  # significance level of the per-variant comparison
    out: Path | None = None  # report directory; None = runs/loadtest/<UTC time>-<scenario>
    seed: int = 0
    api_key: str | None = field(default=None, repr=False)  # sent as a Bearer token; never written out

    def __post_init__(self) -> None:
        scenario = scenario_named(self.scenario)
        if not re.match(r"^https?://[^/\s]+$", self.host.rstrip("/")):
            raise UsageError(f"--host {self.host!r}: give a base URL like http://127.0.0.1:8000")
        self.host = self.host.rstrip("/")
        if scenario.vary_user and len(self.models) != 1:
            raise UsageError("--scenario ab needs exactly one --model: the experiment name")
        if scenario.models == "one" and len(self.models) > 1:
            raise UsageError(f"--scenario {self.scenario} takes one --model; use --scenario mixed for several")
        positive = {
            "--rate": self.rate,
            "--duration": self.duration_s,
            "--max-tokens": self.max_tokens,
            "--user-keys": self.user_keys,
            "--max-concurrency": self.max_concurrency,
            "--request-timeout": self.request_timeout_s,
        }
        for flag, value in positive.items():
            if not value > 0:
                raise UsageError(f"{flag} must be greater than 0, got {value}")
        if self.drain_s < 0 or self.long_shots < 0:
            raise UsageError("--drain and --long-shots must not be negative")
        if any(r <= 0 for r in self.sweep):
            raise UsageError(f"--sweep rates must be greater than 0, got {self.sweep}")
        if not 0 < self.alpha < 1:
            raise UsageError(f"--alpha must be in (0, 1), got {self.alpha}")

    def plan_options(self, rate: float | None = None) -> PlanOptions:
        return PlanOptions(
            arrival=self.arrival,
            rate=self.rate if rate is None else rate,
            duration_s=self.duration_s,
            endpoint=self.endpoint,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            long_shots=self.long_shots,
            user_keys=self.user_keys,
            seed=self.seed,
        )

    def public(self) -> dict[str, Any]:
        """The config as written into summary.json (no API key)."""
        return {
            "host": self.host,
            "scenario": self.scenario,
            "models": self.models,
            "endpoint": self.endpoint,
            "arrival": self.arrival,
            "rate": self.rate,
            "duration_s": self.duration_s,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "prompts": str(self.prompts.relative_to(REPO) if self.prompts.is_relative_to(REPO) else self.prompts),
            "long_shots": self.long_shots,
            "user_keys": self.user_keys,
            "max_concurrency": self.max_concurrency,
            "drain_s": self.drain_s,
            "slos": {s.key: s.limit for s in self.slos},
            "slo_scope": self.slo_scope,
            "sweep": self.sweep,
            "alpha": self.alpha,
            "seed": self.seed,
        }
