"""Service-level objectives: parse `ttft_p95=0.5,itl_p95=0.1,error_rate=0` and check a run.

A latency SLO `<metric>_p<q>=<limit>` holds when the q-th percentile of the raw samples is at
most the limit (seconds; `500ms` also accepted). `error_rate=<limit>` holds when failed/total
is at most the limit (a fraction, 0 = no failure allowed). A latency SLO with no samples to
judge (e.g. every request failed) is broken, never silently met.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loadtest.errors import UsageError
from loadtest.samples import LATENCY_METRICS, RunStats

VALID_SLOS = (
    "ttft_pQ, itl_pQ, e2e_pQ (seconds or ms, Q in (0,100), e.g. ttft_p95=0.5 or itl_p99=80ms), error_rate (0..1)"
)
_LATENCY_KEY = re.compile(r"^(ttft|itl|e2e)_p(\d{1,2}(?:\.\d+)?)$")
_VALUE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|s)?$")


@dataclass(frozen=True)
class Slo:
    key: str  # as written, e.g. "ttft_p95"
    metric: str  # "ttft" | "itl" | "e2e" | "error_rate"
    percentile: float | None  # None for error_rate
    limit: float  # seconds, or a fraction for error_rate


@dataclass(frozen=True)
class SloResult:
    slo: Slo
    observed: float | None  # None: nothing to judge
    passed: bool
    scope: str  # "overall" or a variant label

    def line(self) -> str:
        seen = "no samples" if self.observed is None else f"{self.observed:.4g}"
        verdict = "ok" if self.passed else "BROKEN"
        return f"{verdict:6} {self.scope}: {self.slo.key} = {seen} (limit {self.slo.limit:.4g})"


def _bad(spec: str, why: str) -> UsageError:
    return UsageError(f"--slo {spec!r}: {why}; valid: {VALID_SLOS}")


def parse_slos(spec: str) -> list[Slo]:
    """Parse the --slo string. Raises UsageError (one line, listing valid keys) when malformed."""
    slos: dict[str, Slo] = {}
    for part in (p.strip() for p in spec.split(",")):
        key, eq, raw = (s.strip() for s in part.partition("="))
        if not eq or not key or not raw:
            raise _bad(spec, f"{part!r} is not key=value")
        value = _VALUE.match(raw.lower())
        if not value:
            raise _bad(spec, f"{key}={raw!r} is not a non-negative number")
        number, unit = float(value.group(1)), value.group(2)
        if key == "error_rate":
            if unit or number > 1:
                raise _bad(spec, f"error_rate={raw!r} must be a fraction between 0 and 1")
            slo = Slo(key, "error_rate", None, number)
        elif match := _LATENCY_KEY.match(key):
            q = float(match.group(2))
            if not 0 < q < 100:
                raise _bad(spec, f"{key!r}: percentile must be in (0, 100)")
            slo = Slo(key, match.group(1), q, number / 1000 if unit == "ms" else number)
        else:
            raise _bad(spec, f"unknown SLO {key!r}")
        if key in slos:
            raise _bad(spec, f"{key!r} given twice")
        slos[key] = slo
    return list(slos.values())


def check(slos: list[Slo], stats: RunStats, scope: str = "overall") -> list[SloResult]:
    """Judge every SLO against one group's statistics."""
    results = []
    for slo in slos:
        if slo.metric == "error_rate":
            observed: float | None = stats.error_rate if stats.requests else None
        else:
            assert slo.metric in LATENCY_METRICS and slo.percentile is not None
            observed = stats.percentile(slo.metric, slo.percentile)
        passed = observed is not None and observed <= slo.limit
        results.append(SloResult(slo, observed, passed, scope))
    return results
