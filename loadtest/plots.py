"""PNG plots of a run, split by group (variant): latency distributions and TTFT over time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from loadtest.samples import RequestSample, group_samples  # noqa: E402


def _ecdf(ax: plt.Axes, values: list[float], label: str) -> None:
    if not values:
        return
    x = np.sort(np.asarray(values))
    ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label=f"{label} (n={x.size})")


def plot_distributions(path: Path, samples: list[RequestSample]) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for label, group in group_samples(samples).items():
        good = [s for s in group if s.ok]
        _ecdf(axes[0], [s.ttft_s for s in good if s.ttft_s is not None], label)
        _ecdf(axes[1], [g for s in good for g in s.gaps_s], label)
        _ecdf(axes[2], [s.e2e_s for s in good if s.e2e_s is not None], label)
    for ax, title in zip(axes, ("TTFT", "inter-token gap", "end-to-end"), strict=True):
        ax.set(title=f"{title} (CDF)", xlabel="seconds", ylabel="fraction of samples", ylim=(0, 1.02))
        ax.axhline(0.95, color="grey", lw=0.5, ls=":")
        _finish_axes(ax)
    _save(fig, path)


def plot_ttft_over_time(path: Path, samples: list[RequestSample]) -> None:
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for label, group in group_samples(samples).items():
        points = [(s.start_s, s.ttft_s) for s in group if s.ok and s.ttft_s is not None]
        ax.scatter([x for x, _ in points], [y for _, y in points], s=10, label=label)
    failed = [s for s in samples if not s.ok]
    if failed:
        ax.scatter([s.start_s for s in failed], [0.0] * len(failed), marker="x", color="red", label="failed")
    ax.set(title="TTFT over time", xlabel="request start (s after run start)", ylabel="TTFT (s)")
    _finish_axes(ax)
    _save(fig, path)


def _finish_axes(ax) -> None:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_plots(out_dir: Path, samples: list[RequestSample]) -> list[str]:
    """Write the PNGs; return their file names."""
    plot_distributions(out_dir / "latency_distributions.png", samples)
    plot_ttft_over_time(out_dir / "ttft_over_time.png", samples)
    return ["latency_distributions.png", "ttft_over_time.png"]


def plot_sweep(path: Path, rates: list[dict[str, object]]) -> None:
    x = [r["rate"] for r in rates]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, label in (("ttft_p95_s", "TTFT p95"), ("itl_p95_s", "ITL p95")):
        left.plot(x, [r[key] if r[key] is not None else np.nan for r in rates], marker="o", label=label)
    left.set(title="latency vs offered rate", xlabel="requests/s", ylabel="seconds")
    right.plot(x, [r["output_tokens_per_s"] or 0 for r in rates], marker="o")
    right.set(title="output throughput vs offered rate", xlabel="requests/s", ylabel="output tokens/s")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
