"""loraplane/demo_report.py: per-variant numbers read back from the gateway's real /metrics text."""

from __future__ import annotations

import time

import numpy as np
import pytest
from prometheus_client import generate_latest

from loraplane.demo_report import ab_from_metrics
from loraplane.quantiles import percentile
from serving.metrics import GatewayMetrics


def test_ab_from_metrics_reads_shares_ttft_and_tokens() -> None:
    metrics = GatewayMetrics()  # the gateway's own metric objects, so names and labels are the real ones
    rng = np.random.default_rng(0)
    ttft = {"bot@v1": rng.uniform(0.2, 0.3, 90), "bot@v2": rng.uniform(0.6, 0.7, 10)}
    for variant, values in ttft.items():
        for value in values:
            metrics.requests.labels("chat", "bot-ab", variant, "2xx").inc()
            metrics.ttft.labels("bot-ab", variant).observe(value)
            metrics.request_latency.labels("chat", "bot-ab", variant).observe(value + 1)
            metrics.completion_tokens.labels("bot-ab", variant).inc(5)
    metrics.requests.labels("chat", "other", "x@v1", "2xx").inc(7)  # another model: ignored
    metrics.key_tokens.labels("anonymous", "bot-ab", "prompt").inc(3)  # the model's, but per key: ignored
    chosen = [{"variant": "bot@v1", "correct": i < 45} for i in range(90)] + [{"variant": "bot@v2", "correct": True}]
    out = ab_from_metrics(generate_latest(metrics.registry).decode(), "bot-ab", chosen)
    assert set(out) == {"bot@v1", "bot@v2"}
    v1, v2 = out["bot@v1"], out["bot@v2"]
    assert (v1["requests"], v2["requests"]) == (90, 10) and v1["share"] == pytest.approx(0.9)
    assert v1["completion_tokens"] == 450 and v1["exact_match"] == pytest.approx(0.5)
    assert 0.2 <= v1["ttft_p50_s"] <= 0.3 and 0.5 <= v2["ttft_p50_s"] <= 0.75  # within their TTFT buckets
    assert abs(v1["ttft_p50_s"] - percentile(ttft["bot@v1"], 50)) <= 0.1  # the (0.2, 0.3] bucket's width
    assert v1["latency_mean_s"] == pytest.approx(float(np.mean(ttft["bot@v1"])) + 1)


def test_a_stopped_user_pool_drops_the_requests_not_yet_sent() -> None:
    import threading

    from loraplane.demo_report import user_pool

    sent, release = [], threading.Event()

    def request(i: int) -> None:
        sent.append(i)
        release.wait(5)

    with pytest.raises(KeyboardInterrupt), user_pool(2) as pool:
        for i in range(50):
            pool.submit(request, i)
        raise KeyboardInterrupt  # Ctrl-C while 2 requests are in flight and 48 queued
    release.set()
    time.sleep(0.2)
    assert len(sent) <= 3, sent  # the in-flight ones (a third may start before the queue is cancelled)
