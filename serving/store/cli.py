"""`loraplane store migrate|status --config FILE`: prepare the control-plane database."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.config import load_config
from serving.errors import ServingError
from serving.store.connect import (
    check_reachable,
    create_db_engine,
    current_revision,
    head_revision,
    migrate,
    safe_url,
    store_url,
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="loraplane store", description="the control-plane database")
    parser.add_argument("action", choices=["migrate", "status"], help="migrate: upgrade to the newest schema")
    parser.add_argument("--config", action="append", default=[], help="serving YAML (repeatable, merged)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config([Path(p) for p in args.config])
        url = store_url(cfg)
        engine = create_db_engine(url, cfg.store.connect_timeout_s)
        try:
            if args.action == "migrate":
                revision = migrate(engine)
                print(f"store {safe_url(url)}: schema at revision {revision} (head)")
            else:
                check_reachable(engine)
                current, head = current_revision(engine), head_revision()
                state = "up to date" if current == head else "needs `loraplane store migrate`"
                print(f"store {safe_url(url)}: revision {current} of {head}: {state}")
        finally:
            engine.dispose()
    except ServingError as exc:
        print(f"loraplane store: error: {exc}", file=sys.stderr)
        return 2
    return 0
