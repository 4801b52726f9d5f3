"""`loraplane rollout start|status|pause|resume|promote|rollback|export NAME`, through the gateway's
admin API (`--url`, admin key from env LORAPLANE_ADMIN_KEY).

    loraplane rollout start bot-v2 --candidate bot@v2 [--control bot@v1] [--steps 10,50,100]
        [--min-samples 200] [--interval 30] [--guard error_rate:0 --guard feedback:0.02] [--capture bodies]
        [--shadow 20]
    loraplane rollout status bot-v2 [--json] [--plot bot-v2.png]
    loraplane rollout export bot-v2 --out data/bot-v2/ [--label-source grader:json_valid] [--kto-threshold 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from serving.errors import ServingError

ACTIONS = ("pause", "resume", "promote", "rollback")


class Admin:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        key = os.environ.get("LORAPLANE_ADMIN_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None) -> Any:
        try:
            resp = httpx.request(
                method, f"{self.url}{path}", json=body, params=params, headers=self.headers, timeout=60
            )
        except httpx.HTTPError as exc:
            raise ServingError(f"gateway {self.url} unreachable ({exc!r}); is `loraplane serve` running?") from None
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:300]
            raise ServingError(f"gateway answered {resp.status_code}: {message}")
        return resp.json()


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps {text!r} must be comma-separated integers, e.g. 10,50,100") from None


GATEWAY_URL = "http://127.0.0.1:8000"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loraplane rollout", description="progressive rollouts of adapter versions")
    url_help = f"the gateway (default {GATEWAY_URL}; admin key: env LORAPLANE_ADMIN_KEY)"
    p.add_argument("--url", default=GATEWAY_URL, help=url_help)
    # --url also after the action: the action's copy leaves the attribute alone when it is absent
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=url_help)
    sub = p.add_subparsers(dest="action", required=True)

    def add(action: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(action, help=help_, parents=[common])

    start = add("start", "start moving an adapter name's traffic to a candidate version")
    start.add_argument("name", help="the rollout's name")
    start.add_argument("--candidate", required=True, help="ADAPTER@vN")
    start.add_argument("--control", help="ADAPTER@vM (default: the adapter's stable version)")
    start.add_argument("--steps", type=_ints, help="candidate %% per step, ending at 100 (default 10,50,100)")
    start.add_argument("--min-samples", type=int, help="requests per variant at a step before it may advance")
    start.add_argument("--interval", type=float, help="seconds between evaluations")
    start.add_argument("--alpha", type=float, help="chance of any false rollback or promotion (default 0.05)")
    start.add_argument(
        "--guard", action="append", help="METRIC:MARGIN (error_rate, ttft_p95, feedback, grader:NAME); repeat"
    )
    start.add_argument("--promote-when", choices=["better", "not_worse", "no_regression"])
    start.add_argument(
        "--better-on", metavar="METRIC", help="the score guard `better` reads: feedback (default) or grader:NAME"
    )
    start.add_argument(
        "--min-gain",
        type=float,
        metavar="G",
        help="with `better`: roll back once the better-on guard shows the candidate's gain below G score "
        "points (in a shadow stage with a grader, before any user sees it); 0 switches a configured "
        "rollouts.min_gain off for this rollout",
    )
    start.add_argument("--capture", choices=["none", "bodies"], default="none", help="keep bodies (for export)")
    start.add_argument(
        "--shadow",
        type=float,
        metavar="P",
        help="first mirror P%% of the stable version's requests to the candidate (answers logged, never "
        "returned); the steps begin when this shadow stage passes its guards",
    )
    start.add_argument("--reason")
    status = add("status", "state, weights, per-variant numbers and guard verdicts")
    status.add_argument("name", nargs="?", help="a rollout (default: list every rollout)")
    status.add_argument("--json", action="store_true", help="print the gateway's JSON")
    status.add_argument("--plot", type=Path, help="also write a PNG: scores with intervals and weights over time")
    for action in ACTIONS:
        a = add(action, f"{action} a rollout now (audited)")
        a.add_argument("name")
        a.add_argument("--reason")
    export = add("export", "write sft.jsonl + preferences.jsonl + kto.jsonl from captured bodies")
    export.add_argument("name")
    add_export_options(export)
    return p


def add_export_options(p: argparse.ArgumentParser) -> None:
    """The options `rollout export` and `feedback export` share."""
    p.add_argument("--out", type=Path, required=True, help="the folder to write the files into (created)")
    p.add_argument("--min-score", type=float, default=1.0, help="answers scored at least this go to sft.jsonl")
    p.add_argument("--margin", type=float, default=0.5, help="chosen and rejected scores differ by this much")
    p.add_argument(
        "--kto-threshold", type=float, default=0.5, help="kto.jsonl label: true when the mean score is at least this"
    )
    p.add_argument(
        "--label-source",
        default="user",
        help="whose scores label the rows: user (POST /v1/feedback, default) or grader:NAME (docs/graders.md)",
    )


def print_export(out: Path, manifest: dict) -> None:
    files = manifest["files"]
    print(
        f"wrote {out}: sft.jsonl {files['sft.jsonl']['rows']} rows, "
        f"preferences.jsonl {files['preferences.jsonl']['rows']} rows, kto.jsonl {files['kto.jsonl']['rows']} rows "
        f"(from {manifest['captures']} captures, {manifest.get('corrections', 0)} corrected; "
        f"{manifest['opted_out']} left out for train_opt_out keys)"
    )


def summary(report: dict) -> str:
    if "variants" not in report:  # the database is down: the gateway answers what it last saw
        return _last_seen(report)
    where = f"at {report['step_percent']}%"
    if report.get("stage") == "shadow":
        where = f"in shadow ({report.get('shadow_percent'):g}% of control's requests mirrored, none returned)"
    lines = [
        f"rollout {report['name']}: {report['state']} {where} ({report['candidate']} vs {report['control']})",
        f"  reason: {report.get('reason')}",
        f"  promote when: {_rule(report)}",
        f"  alpha {report.get('alpha')} over {len(report['guards'])} guards x {report.get('stages', 1)} stages: "
        f"{report.get('guard_alpha', 0):.4f} per guard (the whole rollout's chance of any false claim <= alpha)",
    ]
    for role in ("candidate", "control"):
        v = report["variants"][role]
        fb = v["feedback"]
        mean = "-" if fb["mean"] is None else f"{fb['mean']:.3f} [{fb['ci'][0]:.3f}, {fb['ci'][1]:.3f}]"
        over = v.get("ttft_over_threshold")
        p95 = "-" if over is None else f"{over:.1%}"
        rate = "-" if v["error_rate"] is None else f"{v['error_rate']:.3%}"
        lines.append(
            f"  {role:<9} {v['version']:<24} requests {v['requests']:<6} errors {rate:<8} TTFT over threshold {p95:<6} "
            f"feedback n={fb['n']} mean {mean}"
        )
        for source, g in (v.get("graders") or {}).items():  # one per grader guard
            shown = "-" if g["mean"] is None else f"{g['mean']:.3f} [{g['ci'][0]:.3f}, {g['ci'][1]:.3f}]"
            lines.append(f"  {'':<9} {source} n={g['n']} users {g['users']} mean {shown}")
    for g in report["guards"]:
        lo, hi = g["worsening_lo"], g["worsening_hi"]
        span = "" if lo is None else f" worsening [{lo:+.4f}, {hi:+.4f}] margin {g['margin']}"
        lines.append(f"  guard {g['metric']:<10} {g['verdict']}{span}")
    return "\n".join(lines)


def _rule(report: dict) -> str:
    rule = str(report.get("promote_when"))
    if rule != "better":
        return rule
    gain = report.get("min_gain")
    return f"better on {report.get('better_on')}" + ("" if gain is None else f", rolled back below a gain of {gain}")


def _last_seen(report: dict) -> str:
    """The short answer a gateway gives while its database is down (state `paused`, no numbers)."""
    weights = ", ".join(f"{k} {v}%" for k, v in (report.get("weights") or {}).items()) or "-"
    return "\n".join(
        [
            f"rollout {report.get('name')}: {report.get('state')} at step {report.get('step')} (weights: {weights})",
            f"  reason: {report.get('reason')}",
            "  per-variant numbers and guard verdicts are unavailable until the control-plane database is back",
        ]
    )


def _start_body(args: argparse.Namespace) -> dict:
    body = {
        "candidate": args.candidate,
        "control": args.control,
        "steps": args.steps,
        "min_samples": args.min_samples,
        "interval_s": args.interval,
        "alpha": args.alpha,
        "guards": args.guard,
        "promote_when": args.promote_when,
        "better_on": args.better_on,
        "min_gain": args.min_gain,
        "capture": args.capture,
        "shadow": args.shadow,
        "reason": args.reason,
    }
    return {k: v for k, v in body.items() if v is not None}


def _status(admin: Admin, args: argparse.Namespace) -> None:
    if args.name is None:
        for r in admin.call("GET", "/admin/rollouts")["data"]:
            print(f"{r['name']:<24} {r['adapter']:<20} {r['state']:<12} {json.dumps(r['weights'])}")
        return
    report = admin.call("GET", f"/admin/rollouts/{args.name}")
    print(json.dumps(report, indent=2) if args.json else summary(report))
    if args.plot:
        from serving.rollouts.plot import plot

        audit = admin.call("GET", "/admin/audit", params={"subject": args.name, "limit": 10_000})["data"]
        print(f"wrote {plot(audit, f'rollout {args.name}', args.plot)}")


def _export(admin: Admin, args: argparse.Namespace) -> None:
    from serving.rollouts.export import write

    params = {"label_source": args.label_source}
    answer = admin.call("GET", f"/admin/rollouts/{args.name}/captures", params=params)
    manifest = write(
        args.out,
        {"rollout": args.name},
        answer["data"],
        args.min_score,
        args.margin,
        kto_threshold=args.kto_threshold,
        label_source=args.label_source,
        opted_out=int(answer.get("opted_out", 0)),
    )
    print_export(args.out, manifest)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    admin = Admin(args.url)
    try:
        if args.action == "start":
            print(summary(admin.call("POST", f"/admin/rollouts/{args.name}", _start_body(args))))
        elif args.action == "status":
            _status(admin, args)
        elif args.action in ACTIONS:
            body = {"reason": args.reason} if args.reason else {}  # admin POSTs take JSON
            print(summary(admin.call("POST", f"/admin/rollouts/{args.name}/{args.action}", body)))
        else:
            _export(admin, args)
    except ServingError as exc:
        print(f"loraplane rollout: error: {exc}", file=sys.stderr)
        return 2
    return 0
