"""`loraplane loop run SPEC` (one iteration: export -> train -> gate -> rollout, resumed where a
crash left it) and `loraplane loop status [--adapter NAME]` (the history). docs/loop.md.

    loraplane loop run configs/loop/bot.yaml
    loraplane loop status --spec configs/loop/bot.yaml          # or --store-url URL [--adapter bot]

Exit codes: 0 the iteration ended (done, or stopped with its reason: not due, too little data, gate
failed); 2 bad input (the spec, an unknown adapter), nothing trained; 3 a stage could not finish
now (gateway down, a command crashed, the rollout still running): the next run resumes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from loraplane.loop.errors import LoopError
from loraplane.loop.gateway import Gateway, LoopSpecAdapterError
from loraplane.loop.lock import adapter_lock
from loraplane.loop.spec import STORE_URL_ENV, LoopSpec, LoopSpecError, load_spec
from serving.errors import ServingError
from serving.store import Store
from serving.store.connect import create_db_engine, migrate
from serving.store.loop import LoopIteration

RETRY_EXIT = 3
HEADER = (
    f"{'id':<4} {'adapter':<16} {'stage':<8} {'version':<9} {'meth':<5} {'data':<32} {'gate':<36} "
    f"{'rollout':<16} {'outcome':<12} reason"
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loraplane loop", description="feedback -> train -> gate -> rollout")
    sub = p.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="perform one iteration (or resume the unfinished one)")
    run.add_argument("spec", type=Path, help="the adapter's loop spec (YAML)")
    status = sub.add_parser("status", help="the iterations so far: versions, data, gate numbers, rollout outcome")
    where = status.add_mutually_exclusive_group()
    where.add_argument("--spec", type=Path, help="read the store the spec names")
    where.add_argument("--store-url", help=f"the control-plane store (default: env {STORE_URL_ENV})")
    status.add_argument("--adapter", help="only this adapter (default: the spec's, else every adapter)")
    status.add_argument("--json", action="store_true")
    return p


def open_store(url: str) -> Store:
    engine = create_db_engine(url)
    migrate(engine)
    return Store(engine)


def row(it: LoopIteration) -> str:
    rows = (it.details.get("export") or {}).get("rows") or {}
    data = " ".join(f"{k.split('.')[0]}={v}" for k, v in rows.items()) or "-"
    gate = it.details.get("gate")
    numbers = "-"
    if gate:
        verdict = "pass" if gate["passed"] else "FAIL"
        numbers = f"{gate['metric']} {gate['stable']:.3f}->{gate['new']:.3f} ({verdict})"
    made = f"{it.stable}->{it.version or '?'}"
    return (
        f"{it.id:<4} {it.adapter:<16} {it.stage:<8} {made:<9} {it.method or '-':<5} {data:<32} {numbers:<36} "
        f"{it.rollout or '-':<16} {it.outcome or '-':<12} {it.reason or ''}"
    )


def status(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec) if args.spec else None
    url = spec.resolved_store_url() if spec else (args.store_url or os.environ.get(STORE_URL_ENV))
    if url is None:
        raise LoopSpecError(f"give --spec SPEC or --store-url URL (or set {STORE_URL_ENV})")
    store = open_store(url)
    try:
        iterations = store.loop_iterations(args.adapter or (spec.adapter if spec else None))
    finally:
        store.close()
    if args.json:
        print(json.dumps([it.__dict__ for it in iterations], indent=2, default=str))
        return 0
    print(HEADER)
    for it in iterations:
        print(row(it))
    return 0


def run(spec: LoopSpec) -> int:
    store = open_store(spec.resolved_store_url())
    try:
        from loraplane.loop.iteration import Loop

        with adapter_lock(store, spec.adapter, spec.lock_ttl_s):
            Loop(spec, store, Gateway(spec.gateway)).run_once()
    finally:
        store.close()
    return 0


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        if args.action == "status":
            return status(args)
        return run(load_spec(args.spec))
    except (LoopSpecError, LoopSpecAdapterError) as exc:
        print(f"loraplane loop: error: {exc}", file=sys.stderr)
        return 2
    except LoopError as exc:
        print(f"loraplane loop: not finished: {exc}", file=sys.stderr)
        return RETRY_EXIT
    except ServingError as exc:  # the store: unreachable, refused
        print(f"loraplane loop: error: {exc}", file=sys.stderr)
        return RETRY_EXIT
