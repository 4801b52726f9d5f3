"""`loraplane feedback export`: an adapter's rated traffic outside rollouts as training data, through
the gateway's admin API (`--url`, admin key from env LORAPLANE_ADMIN_KEY).

    loraplane feedback export --adapter bot [--version v2] [--since 7d] [--until 2026-12-07T00:00]
        --out data/bot-feedback/ [--min-score 1] [--margin 0.5] [--kto-threshold 0.5]
        [--label-source user|grader:NAME]

Writes sft.jsonl, preferences.jsonl, kto.jsonl and manifest.json (serving/rollouts/export.py). The
adapter needs `capture: bodies` in the serving config (`adapters: [{name: bot, capture: bodies}]`)
for its bodies to be kept; keys with `train_opt_out: true` are never exported.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime, timezone

from serving.errors import ServingError
from serving.rollouts.cli import GATEWAY_URL, Admin, add_export_options, print_export

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def when(text: str) -> float:
    """POSIX seconds from '1765000000', '2026-12-07T00:00[:00][+00:00]' (UTC unless it says) or
    a duration back from now ('30m', '24h', '7d')."""
    m = DURATION.match(text)
    if m:
        return time.time() - float(m.group(1)) * SECONDS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give POSIX seconds, an ISO date (2026-12-07T00:00) or a duration back (7d, 24h)"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loraplane feedback", description="training data from rated traffic")
    sub = p.add_subparsers(dest="action", required=True)
    export = sub.add_parser("export", help="write sft/preferences/kto .jsonl from an adapter's captured traffic")
    export.add_argument("--url", default=GATEWAY_URL, help=f"the gateway (default {GATEWAY_URL})")
    export.add_argument("--adapter", required=True, help="the adapter name")
    export.add_argument("--version", help="only this version's traffic (vN; default every version)")
    export.add_argument("--since", type=when, help="from this time (POSIX s, ISO date, or 7d / 24h back)")
    export.add_argument("--until", type=when, help="before this time (same forms)")
    export.add_argument("--page-size", type=int, default=1000, help="rows per admin call (at most 1000)")
    add_export_options(export)
    return p


def fetch(admin: Admin, args: argparse.Namespace) -> tuple[list[dict], int]:
    """Every page of GET /admin/feedback/export: (captures, rows left out for opted-out keys)."""
    params: dict = {"adapter": args.adapter, "label_source": args.label_source, "limit": args.page_size}
    params.update({k: v for k, v in (("version", args.version), ("since", args.since), ("until", args.until)) if v})
    data: list[dict] = []
    opted_out = 0
    while True:
        page = admin.call("GET", "/admin/feedback/export", params=params)
        data += page["data"]
        opted_out += int(page["opted_out"])
        if page["next"] is None:
            return data, opted_out
        params["after"] = page["next"]


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from serving.rollouts.export import write

    try:
        captures, opted_out = fetch(Admin(args.url), args)
    except ServingError as exc:
        print(f"loraplane feedback: error: {exc}", file=sys.stderr)
        return 2
    source = {"adapter": args.adapter, "version": args.version, "since": args.since, "until": args.until}
    manifest = write(
        args.out,
        source,
        captures,
        args.min_score,
        args.margin,
        kto_threshold=args.kto_threshold,
        label_source=args.label_source,
        opted_out=opted_out,
    )
    print_export(args.out, manifest)
    return 0
