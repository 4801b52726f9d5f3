"""`loraplane usage`: tokens in and out per key, model and UTC day, from a running gateway's
GET /admin/usage (`--url`, admin key from env LORAPLANE_ADMIN_KEY, as `loraplane rollout`).

    loraplane usage                                   # every key and model, every day kept
    loraplane usage --key app --since 2026-12-01 --format csv > usage.csv
    loraplane usage --model bot --since 1764547200 --until 2026-12-07 --format json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from serving.errors import ServingError
from serving.rollouts.cli import GATEWAY_URL, Admin

COLUMNS = ("day", "key", "model", "requests", "prompt_tokens", "completion_tokens", "total_tokens")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loraplane usage", description="tokens per key, model and UTC day")
    p.add_argument("--key", help="only this API key's name")
    p.add_argument("--model", help="only this model (adapter, experiment or base name)")
    p.add_argument("--since", help="first UTC day, inclusive: YYYY-MM-DD or POSIX seconds")
    p.add_argument("--until", help="last UTC day, inclusive: YYYY-MM-DD or POSIX seconds")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output (default table)")
    p.add_argument("--url", default=GATEWAY_URL, help=f"the gateway (default {GATEWAY_URL}; env LORAPLANE_ADMIN_KEY)")
    return p


def table(rows: list[dict]) -> str:
    """Aligned columns, numbers right-aligned, and a total line when there is more than one row."""
    if not rows:
        return "no usage recorded for this selection"
    totals = {c: sum(int(r[c]) for r in rows) for c in COLUMNS[3:]}
    body = [[str(r[c]) for c in COLUMNS] for r in rows]
    if len(rows) > 1:
        body.append(["total", "", "", *(str(totals[c]) for c in COLUMNS[3:])])
    widths = [max(len(c), *(len(line[i]) for line in body)) for i, c in enumerate(COLUMNS)]

    def line(cells: list[str] | tuple[str, ...]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in pairs).rstrip()

    return "\n".join([line(COLUMNS), *(line(cells) for cells in body)])


def as_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().rstrip("\n")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    params = {k: v for k in ("key", "model", "since", "until") if (v := getattr(args, k)) is not None}
    try:
        rows = Admin(args.url).call("GET", "/admin/usage", params=params)["data"]
    except ServingError as exc:
        print(f"loraplane usage: error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(as_csv(rows) if args.format == "csv" else table(rows))
    return 0
