"""Raw per-request samples and exact statistics over them (numpy, never Locust's rounded stats).

Definitions (all from a monotonic clock on the client):
- TTFT: from sending the request to the first streamed chunk that carries content.
- ITL: the gaps between consecutive content chunks (one sample per gap, all requests pooled,
  as vLLM's own benchmark does). A chunk usually carries one token.
- E2E: from sending the request to the end of the stream (`data: [DONE]`).
Latency statistics use successful requests only; failures count in `error_rate`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loraplane.quantiles import percentile

LATENCY_METRICS = ("ttft", "itl", "e2e")
REPORT_PERCENTILES = (50.0, 90.0, 95.0, 99.0)


@dataclass
class RequestSample:
    index: int  # position in the arrival plan
    group: str  # what the report splits by: variant, else adapter, else requested model
    model: str  # the model name sent
    user_key: str | None  # the `user` field sent (A/B key)
    prompt_kind: str  # "short" | "long"
    scheduled_s: float  # planned start, seconds after run start
    start_s: float  # actual send time, seconds after run start
    status: int = 0  # HTTP status; 0 = no response
    variant: str | None = None  # X-Loraplane-Variant
    adapter: str | None = None  # X-Loraplane-Adapter
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    e2e_s: float | None = None
    output_tokens: int | None = None  # from the stream's `usage`
    prompt_tokens: int | None = None
    content_chunks: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def lag_s(self) -> float:
        """How late the request started against the arrival plan (client saturation)."""
        return self.start_s - self.scheduled_s


class RunStats:
    """Exact statistics of one group of samples (a variant, or the whole run)."""

    def __init__(self, samples: list[RequestSample], wall_s: float):
        self.samples = samples
        self.wall_s = wall_s
        good = [s for s in samples if s.ok]
        self.requests = len(samples)
        self.failures = self.requests - len(good)
        self.values = {
            "ttft": np.array([s.ttft_s for s in good if s.ttft_s is not None]),
            "itl": np.array([g for s in good for g in s.gaps_s]),
            "e2e": np.array([s.e2e_s for s in good if s.e2e_s is not None]),
        }
        # One ITL value per request (its mean gap): independent samples for significance tests.
        self.itl_per_request = np.array([float(np.mean(s.gaps_s)) for s in good if s.gaps_s])
        self.output_tokens = sum(s.output_tokens or 0 for s in good)
        self.usage_missing = sum(1 for s in good if s.output_tokens is None)

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else math.nan

    def percentile(self, metric: str, q: float) -> float | None:
        return percentile(self.values[metric], q)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "failures": self.failures,
            "error_rate": None if math.isnan(self.error_rate) else round(self.error_rate, 6),
            "output_tokens": self.output_tokens,
            "output_tokens_per_s": round(self.output_tokens / self.wall_s, 3) if self.wall_s > 0 else None,
            "requests_per_s": round(self.requests / self.wall_s, 3) if self.wall_s > 0 else None,
            "usage_missing": self.usage_missing,
        }
        for metric in LATENCY_METRICS:
            values = self.values[metric]
            stats: dict[str, float | int | None] = {"n": int(values.size)}
            stats["mean"] = float(values.mean()) if values.size else None
            stats.update({f"p{q:g}": percentile(values, q) for q in REPORT_PERCENTILES})
            stats["max"] = float(values.max()) if values.size else None
            out[f"{metric}_s"] = stats
        return out


def group_samples(samples: list[RequestSample]) -> dict[str, list[RequestSample]]:
    """Samples by group label, labels in natural order (v2 after v1, v10 after v9)."""
    groups: dict[str, list[RequestSample]] = {}
    for sample in samples:
        groups.setdefault(sample.group, []).append(sample)
    return {label: groups[label] for label in sorted(groups, key=natural_key)}


def natural_key(label: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label)]
