"""The loop's errors: LoopError (stage failed for a reason that may pass: retried by the next run)."""

from __future__ import annotations


class LoopError(Exception):
    """A stage could not finish now (gateway unreachable, a command crashed): the iteration stays at
    that stage and the next `loraplane loop run` retries it. The message names what and what to do."""
