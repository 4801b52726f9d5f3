"""Load test errors. Each carries the process exit code `loraplane loadtest` returns for it."""

from __future__ import annotations


class LoadtestError(Exception):
    """A load test could not run or finish; the message says what was wrong and what to do."""

    exit_code = 1


class UsageError(LoadtestError):
    """Bad command-line input (unknown scenario, malformed SLO, ...): exit 2, one line."""

    exit_code = 2


class TargetUnreachable(LoadtestError):
    """The gateway did not answer the start-up probe: exit 3, before any load is sent."""

    exit_code = 3
