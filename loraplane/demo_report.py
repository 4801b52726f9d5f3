"""The demo's measuring half: held-out evaluation and A/B traffic through the gateway with the
real `openai` client, per-variant numbers read back from the gateway's /metrics, table and PNG."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import openai
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from loraplane.quantiles import histogram_quantile, percentile

CONCURRENCY = 8


@contextmanager
def user_pool(workers: int = CONCURRENCY) -> Iterator[ThreadPoolExecutor]:
    """Simulated users' thread pool. Stopped (Ctrl-C, SIGTERM, an error), it drops the requests not
    yet sent, so the demo stops after the requests in flight rather than after every queued one."""
    pool = ThreadPoolExecutor(workers)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0, timeout=300)


def _stream_one(client: openai.OpenAI, model: str, example: dict, user: str | None = None) -> dict:
    """One streamed chat request: reply text, TTFT, latency and the gateway's routing headers."""
    messages = [m for m in example["messages"] if m["role"] != "assistant"]
    reference = example["messages"][-1]["content"]
    extra = {"user": user} if user else {}
    started = time.perf_counter()
    ttft, parts = None, []
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=messages, temperature=0, max_tokens=64, stream=True, **extra
    ) as response:
        headers = response.headers
        for chunk in response.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = ttft if ttft is not None else time.perf_counter() - started
                parts.append(chunk.choices[0].delta.content)
    reply = "".join(parts).strip()
    return {
        "reply": reply,
        "correct": reply == reference,
        "latency_s": time.perf_counter() - started,
        "ttft_s": ttft or 0.0,
        "variant": headers.get("x-loraplane-variant"),
        "adapter": headers.get("x-loraplane-adapter"),
    }


def evaluate_model(url: str, model: str, examples: list[dict]) -> dict:
    client = _client(url)
    with user_pool() as pool:
        futures = [pool.submit(_stream_one, client, model, ex) for ex in examples]
        rows = [f.result() for f in tqdm(futures, desc=f"{model:<24}", unit="req", leave=True)]
    latencies = [r["latency_s"] for r in rows]
    return {
        "model": model,
        "n": len(rows),
        "correct": sum(r["correct"] for r in rows),
        "exact_match": sum(r["correct"] for r in rows) / len(rows),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "ttft_p50_s": percentile([r["ttft_s"] for r in rows], 50),
        "sample_reply": rows[0]["reply"],
    }


def run_ab(url: str, experiment: str, examples: list[dict], n_users: int) -> list[dict]:
    client = _client(url)
    with user_pool() as pool:
        futures = [
            pool.submit(_stream_one, client, experiment, examples[i % len(examples)], f"user-{i}")
            for i in range(n_users)
        ]
        return [f.result() for f in tqdm(futures, desc=f"{experiment:<24}", unit="req")]


def ab_from_metrics(metrics_text: str, experiment: str, chosen: list[dict]) -> dict:
    """Per-variant numbers as the gateway's /metrics reports them, plus client-side exact match."""
    per: dict[str, dict] = defaultdict(
        lambda: {
            "requests": 0.0,
            "ttft_buckets": Counter(),  # le -> cumulative count, summed over series
            "latency_sum": 0.0,
            "latency_count": 0.0,
            "completion_tokens": 0.0,
        }
    )
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.labels.get("model") != experiment or "variant" not in s.labels:
                continue  # another model's, or a per-key/per-model series (usage, budgets)
            v = per[s.labels["variant"]]
            if s.name == "loraplane_requests_total" and s.labels.get("status_class") == "2xx":
                v["requests"] += s.value
            elif s.name == "loraplane_time_to_first_token_seconds_bucket":
                v["ttft_buckets"][float(s.labels["le"])] += s.value
            elif s.name == "loraplane_request_duration_seconds_sum":
                v["latency_sum"] += s.value
            elif s.name == "loraplane_request_duration_seconds_count":
                v["latency_count"] += s.value
            elif s.name == "loraplane_completion_tokens_total":
                v["completion_tokens"] += s.value
    correct = Counter(r["variant"] for r in chosen if r["correct"])
    out = {}
    for variant, v in sorted(per.items()):
        n = v["requests"]
        out[variant] = {
            "requests": int(n),
            "share": n / max(sum(p["requests"] for p in per.values()), 1),
            "ttft_p50_s": (histogram_quantile(v["ttft_buckets"], 50) or (0.0,))[0],
            "latency_mean_s": v["latency_sum"] / max(v["latency_count"], 1),
            "completion_tokens": int(v["completion_tokens"]),
            "exact_match": correct[variant] / n if n else 0.0,
        }
    return out


def print_tables(results: list[dict], ab: dict) -> None:
    print("\nHeld-out exact match through the gateway (48 prompts, greedy, streamed):")
    print(f"{'model':<24} {'exact match':>12} {'latency p50':>12} {'latency p95':>12} {'TTFT p50':>9}")
    for r in results:
        print(
            f"{r['model']:<24} {r['correct']:>3}/{r['n']:<3} {r['exact_match']:>5.0%} "
            f"{r['latency_p50_s']:>11.2f}s {r['latency_p95_s']:>11.2f}s {r['ttft_p50_s']:>8.2f}s"
        )
    print("\nA/B experiment, read back from the gateway's /metrics:")
    print(f"{'variant':<18} {'requests':>9} {'share':>7} {'TTFT p50':>9} {'latency mean':>13} {'exact match':>12}")
    for variant, v in ab.items():
        print(
            f"{variant:<18} {v['requests']:>9} {v['share']:>7.0%} {v['ttft_p50_s']:>8.2f}s "
            f"{v['latency_mean_s']:>12.2f}s {v['exact_match']:>12.0%}"
        )


def write_plot(results: list[dict], ab: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    names = [r["model"] for r in results]
    axes[0].bar(names, [100 * r["exact_match"] for r in results], color=["#999", "#4c72b0", "#dd8452"])
    axes[0].set(title="Held-out exact match (%)", ylim=(0, 100))
    x = range(len(names))
    axes[1].bar([i - 0.2 for i in x], [r["latency_p50_s"] for r in results], 0.4, label="p50")
    axes[1].bar([i + 0.2 for i in x], [r["latency_p95_s"] for r in results], 0.4, label="p95")
    axes[1].set(title="End-to-end latency (s)", xticks=list(x), xticklabels=names)
    axes[1].legend()
    variants = list(ab)
    axes[2].bar(variants, [v["requests"] for v in ab.values()], color="#55a868")
    for i, v in enumerate(ab.values()):
        axes[2].annotate(
            f"{v['share']:.0%}, TTFT p50 {v['ttft_p50_s']:.2f}s", (i, v["requests"]), ha="center", va="bottom"
        )
    axes[2].set(title="A/B 90/10: requests per variant (/metrics)")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["evaluate_model", "run_ab", "ab_from_metrics", "print_tables", "write_plot"]
