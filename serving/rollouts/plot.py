"""A rollout over time as a PNG: each variant's feedback score with its always-valid interval, and the
candidate's traffic share (the shadow stage shaded), read from the rollout's audit log (each
decision carries its report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def series(audit: list[dict]) -> dict[str, list[Any]]:
    """Per evaluation: time, candidate %, and each variant's feedback mean / interval."""
    out: dict[str, list[Any]] = {"t": [], "percent": [], "outcome": [], "stage": []}
    for variant in ("candidate", "control"):
        for key in ("mean", "lo", "hi"):
            out[f"{variant}_{key}"] = []
    start = None
    for record in audit:
        report = (record.get("numbers") or {}).get("report")
        if not report:
            continue
        start = record["at"] if start is None else start
        out["t"].append(record["at"] - start)
        out["percent"].append(report["step_percent"])
        out["outcome"].append(record["numbers"].get("outcome"))
        out["stage"].append(report.get("stage", "canary"))  # reports before shadow existed: canary
        for variant in ("candidate", "control"):
            fb = report["variants"][variant]["feedback"]
            out[f"{variant}_mean"].append(fb["mean"])
            out[f"{variant}_lo"].append(fb["ci"][0])
            out[f"{variant}_hi"].append(fb["ci"][1])
    return out


def plot(audit: list[dict], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = series(audit)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[2, 1])
    for variant, color in (("candidate", "tab:orange"), ("control", "tab:blue")):
        pts = [
            (t, m, lo, hi)
            for t, m, lo, hi in zip(s["t"], *(s[f"{variant}_{k}"] for k in ("mean", "lo", "hi")), strict=True)
            if m is not None
        ]
        if pts:
            t, m, lo, hi = zip(*pts, strict=True)
            top.plot(t, m, color=color, label=f"{variant} feedback mean")
            top.fill_between(t, lo, hi, color=color, alpha=0.2, label=f"{variant} always-valid interval")
    top.set_ylim(0, 1)
    top.set_ylabel("feedback score")
    top.legend(loc="lower left", fontsize=8)
    top.set_title(title)
    bottom.step(s["t"], s["percent"], where="post", color="tab:orange")
    shadow = [t for t, stage in zip(s["t"], s["stage"], strict=True) if stage == "shadow"]
    if shadow:  # the shadow stage: mirrored only, 0% of live traffic
        for ax in (top, bottom):
            ax.axvspan(min(shadow), max(shadow), color="tab:gray", alpha=0.15, label="shadow stage")
    for t, pct, outcome in zip(s["t"], s["percent"], s["outcome"], strict=True):
        if outcome in ("advance", "promote", "rollback"):
            bottom.annotate(outcome, (t, pct), fontsize=8, xytext=(3, 3), textcoords="offset points")
    bottom.set_ylim(-5, 105)
    bottom.set_ylabel("candidate traffic %")
    bottom.set_xlabel("seconds since the first evaluation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
