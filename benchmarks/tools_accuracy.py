"""Tool-call accuracy through the gateway: held-out prompts of data/tools/, the `openai` client,
and a hit only when `message.tool_calls` holds exactly one call with the right function AND the
right arguments (compared as parsed JSON, so 250 == 250.0 and key order does not matter).

    python benchmarks/tools_accuracy.py --gateway http://127.0.0.1:8000 --adapter tools --base smollm2-135m-instruct

Serve with engine.tool_call_parser: pythonic and engine.chat_template:
configs/templates/tool-pythonic.jinja (docs/tools.md). tests/serving/test_tools_vllm.py runs the
same scoring end to end (train, publish, real vLLM, gateway) and, with LORAPLANE_TOOLS_REPORT set,
writes its numbers with `write_report`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "data" / "tools" / "heldout.jsonl"


def heldout_rows(path: Path = HELDOUT) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected_call(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    fn = row["messages"][-1]["tool_calls"][0]["function"]
    args = fn["arguments"]
    return fn["name"], json.loads(args) if isinstance(args, str) else args


def ask(client, model: str, row: dict[str, Any]) -> dict[str, Any]:  # noqa: ANN001
    """One temperature-0 request; the reply's calls as [(name, arguments dict or the raw string)]."""
    resp = client.chat.completions.create(
        model=model,
        messages=row["messages"][:-1],
        tools=row["tools"],
        tool_choice="auto",
        temperature=0,
        max_tokens=64,
    )
    message = resp.choices[0].message
    calls = []
    for call in message.tool_calls or []:
        try:
            calls.append([call.function.name, json.loads(call.function.arguments)])
        except json.JSONDecodeError:
            calls.append([call.function.name, call.function.arguments])
    return {"calls": calls, "content": message.content}


def score(client, model: str, rows: list[dict[str, Any]], concurrency: int = 8) -> dict[str, Any]:  # noqa: ANN001
    """Accuracy (right function and arguments) and function-only accuracy over `rows`."""
    with ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(lambda row: ask(client, model, row), rows))
    hits = names = 0
    misses = []
    for row, reply in zip(rows, replies, strict=True):
        name, args = expected_call(row)
        got = reply["calls"]
        names += len(got) == 1 and got[0][0] == name
        if len(got) == 1 and got[0] == [name, args]:
            hits += 1
        elif len(misses) < 5:
            misses.append({"prompt": row["messages"][-2]["content"], "expected": [name, args], "reply": reply})
    n = len(rows)
    return {"model": model, "n": n, "accuracy": hits / n, "function_accuracy": names / n, "misses": misses}


def write_report(path: Path, results: list[dict[str, Any]], **extra: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cpus",
        "heldout": str(HELDOUT.relative_to(REPO)),
        "results": results,
        **extra,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    from openai import OpenAI

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--api-key", default="none")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "reports" / f"tools-{time.strftime('%Y-%m-%d')}.json"
    )
    args = parser.parse_args()
    client = OpenAI(base_url=f"{args.gateway}/v1", api_key=args.api_key, timeout=600)
    rows = heldout_rows()
    results = [score(client, args.adapter, rows), score(client, args.base, rows)]
    write_report(args.out, results)
    for r in results:
        print(f"{r['model']}: accuracy {r['accuracy']:.3f} (function only {r['function_accuracy']:.3f}) on {r['n']}")


if __name__ == "__main__":
    main()
