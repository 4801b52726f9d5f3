"""`loraplane loadtest`: run a Locust load test against the gateway and gate on SLOs.

    loraplane loadtest --host http://127.0.0.1:8000 --scenario ab --model support-bot \\
        --rate 5 --duration 120s --slo ttft_p95=0.5,itl_p95=0.1,error_rate=0

Exit codes: 0 every SLO met; 1 an SLO broken (sweep: no rate met them all);
2 bad input (one line on stderr); 3 target unreachable (nothing sent).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from loadtest.config import DEFAULT_SLOS, LoadtestConfig, parse_duration
from loadtest.errors import LoadtestError, UsageError
from loadtest.scenarios import SCENARIOS
from loadtest.slo import VALID_SLOS, parse_slos

API_KEY_ENV = "LORAPLANE_API_KEY"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        raise UsageError(message)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    d = LoadtestConfig()  # shown in --help; the defaults themselves live only there
    scenarios = "; ".join(f"{name}: {s.description}" for name, s in SCENARIOS.items())
    p = _Parser(prog="loraplane loadtest", description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)
    p.add_argument("--host", help=f"gateway base URL (default {d.host})")
    p.add_argument("--scenario", help=f"(default {d.scenario}) one of: {scenarios}")
    p.add_argument("--model", help="model/adapter/experiment name sent as `model`; comma-separated for mixed")
    p.add_argument("--endpoint", choices=["chat", "completions"], help="/v1/chat/completions or /v1/completions")
    p.add_argument(
        "--arrival", choices=["constant", "poisson"], help=f"arrival profile, open loop (default {d.arrival})"
    )
    p.add_argument("--rate", type=float, help=f"requests started per second (default {d.rate:g})")
    p.add_argument("--duration", help=f"how long arrivals go on: 30s, 2m, ... (default {d.duration_s:g}s)")
    p.add_argument("--sweep", help="rates to try in order, e.g. 0.5,1,2,4: reports the highest meeting the SLOs")
    p.add_argument("--slo", help=f"comma-separated limits (default {DEFAULT_SLOS}): {VALID_SLOS}")
    p.add_argument("--slo-scope", choices=["overall", "each-group"], help="each-group: every variant must meet them")
    p.add_argument("--max-tokens", type=int, help=f"max_tokens per request (default {d.max_tokens})")
    p.add_argument("--temperature", type=float, help=f"(default {d.temperature:g})")
    p.add_argument("--prompts", type=Path, help="JSONL of chat `messages` or `prompt` records")
    p.add_argument(
        "--long-shots", type=int, help=f"solved examples before the question in long prompts (default {d.long_shots})"
    )
    p.add_argument("--user-keys", type=int, help=f"distinct `user` keys in the ab scenario (default {d.user_keys})")
    p.add_argument(
        "--max-concurrency", type=int, help=f"most requests in flight (Locust users; default {d.max_concurrency})"
    )
    p.add_argument(
        "--drain", help=f"after the last arrival, wait this long for in-flight requests (default {d.drain_s:g}s)"
    )
    p.add_argument("--request-timeout", help=f"per-request timeout (default {d.request_timeout_s:g}s)")
    p.add_argument("--alpha", type=float, help=f"significance level of the variant comparison (default {d.alpha:g})")
    p.add_argument("--out", type=Path, help="report directory (default runs/loadtest/<time>-<scenario>)")
    p.add_argument("--seed", type=int, help=f"seed of the arrival plan (default {d.seed})")
    p.add_argument("--list-scenarios", action="store_true", help="print the scenarios and exit")
    return p


def config_from_args(argv: list[str]) -> LoadtestConfig:
    """Parse argv into a LoadtestConfig; absent flags keep the config's defaults. Raises UsageError."""
    args = vars(build_parser().parse_args(argv))
    renames = {"model": "models", "slo": "slos", "drain": "drain_s", "duration": "duration_s",
               "request_timeout": "request_timeout_s"}  # fmt: skip
    converters: dict[str, Any] = {
        "model": _csv,
        "slo": parse_slos,
        "duration": parse_duration,
        "drain": lambda v: parse_duration(v, "--drain"),
        "request_timeout": lambda v: parse_duration(v, "--request-timeout"),
        "sweep": lambda v: [_rate(r) for r in _csv(v)],
    }
    fields = {renames.get(k, k): converters.get(k, lambda v: v)(v) for k, v in args.items() if k != "list_scenarios"}
    if os.environ.get(API_KEY_ENV):
        fields["api_key"] = os.environ[API_KEY_ENV]
    return LoadtestConfig(**fields)


def _rate(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--sweep {text!r}: not a rate; give requests/s like 0.5,1,2,4") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--list-scenarios" in argv:
        for name, scenario in SCENARIOS.items():
            print(f"{name:12} {scenario.description}")
        return 0
    try:
        cfg = config_from_args(argv)
        from loadtest.run import run  # imports locust (gevent patching) only once the input is valid

        return run(cfg)
    except LoadtestError as exc:
        print(f"loraplane loadtest: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
