"""The demo's grader (configs/serving/demo.yaml `graders:`, kind python): is an extraction grounded?

The demo's task asks for one line of JSON with keys name, age, city and job from a short passage.
Without the expected answer, a grader can still check what an extraction must satisfy: the answer
is a JSON object with exactly those keys, age is an integer that occurs in the passage, and every
other value occurs in the passage verbatim, as whole words. A misspelled city ("Zurick" for "Zurich": v2's commonest
miss, benchmarks/RESULTS.md) or an invented job fails; a right extraction passes. It scores 1 or 0
and needs no model, so it grades every mirrored and live answer of the loop's rollout in
microseconds (docs/graders.md; the gateway imports it, so it imports nothing heavy). It does not
check which key a value belongs to: an answer that swaps the name and the city scores 1.
"""

from __future__ import annotations

import json
import re
from typing import Any

KEYS = ("name", "age", "city", "job")


def passage(request: dict) -> str | None:
    """The text to extract from: the last user message's content after its instruction (the part
    after the last blank line), or the whole content when it has none. None: no user text."""
    messages = request.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"]).rpartition("\n\n")[2]
    return None


def grounded(request: dict, answer: str) -> float | None:
    """1.0 when `answer` is a grounded extraction of the request's passage, 0.0 when not, None
    (not scored) when the request has no user text to check against."""
    text = passage(request)
    if text is None:
        return None
    try:
        value: Any = json.loads(answer.strip())
    except ValueError:
        return 0.0
    if not isinstance(value, dict) or set(value) != set(KEYS):
        return 0.0
    age = value["age"]
    if isinstance(age, bool) or not isinstance(age, int) or not re.search(rf"(?<!\d){age}(?!\d)", text):
        return 0.0
    strings = [value[k] for k in KEYS if k != "age"]
    return float(all(isinstance(s, str) and s.strip() and _word_in(s, text) for s in strings))


def _word_in(value: str, text: str) -> bool:
    """`value` occurs in `text` as whole words (so "J" is not grounded by "Jonas")."""
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None
