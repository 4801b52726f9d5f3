"""`loraplane eval`: score a served model through the gateway with the metrics training reports.

    loraplane eval --url http://127.0.0.1:8000 --model demo-json@v1 --model smollm2-135m-instruct \\
        --data data/demo/heldout.jsonl --metrics exact_match json_valid rouge_l bleu --out eval-out

Each row's conversation minus its last (assistant) message is sent with the `openai` client as a
chat completion at temperature 0 (greedy, as the trainer's own evaluation generates), several
at a time; the reply is scored against that last message by trainer/evaluation/metrics.py. Writes
OUT/eval.json (metrics per model), OUT/eval.md (a markdown table), OUT/eval.png and
OUT/replies-MODEL.jsonl. Imports no torch: it is an HTTP client. Exit codes: 0 ok, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trainer.config import GENERATION_METRICS
from trainer.data import Messages, load_dataset_file
from trainer.errors import TrainerError
from trainer.evaluation.metrics import markdown_table, score


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraplane eval", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the gateway, e.g. http://127.0.0.1:8000 (/v1 is added)")
    parser.add_argument("--model", action="append", required=True, help="model name as clients send it; repeatable")
    parser.add_argument("--data", required=True, help="eval file in any trainer data format (JSONL chat, ...)")
    parser.add_argument("--metrics", nargs="+", default=["exact_match"], choices=GENERATION_METRICS, metavar="METRIC")
    parser.add_argument("--out", type=Path, default=Path("eval-out"), help="output directory (default: eval-out)")
    parser.add_argument("--max-tokens", type=int, default=64, help="per reply, like eval.max_new_tokens (64)")
    parser.add_argument("--max-examples", type=int, default=None, help="first N rows only (default: all)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: 8)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default: 300)")
    parser.add_argument("--api-key-env", default="LORAPLANE_API_KEY", help="env var holding the API key, if auth is on")
    return parser


def greedy_replies(client, model: str, prompts: list[Messages], max_tokens: int, concurrency: int) -> list[str]:
    """One temperature-0 chat completion per prompt, `concurrency` in flight, in prompt order."""
    from tqdm.auto import tqdm

    def ask(messages: Messages) -> str:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(max(concurrency, 1)) as pool:
        return list(tqdm(pool.map(ask, prompts), total=len(prompts), desc=model, unit="req"))


def write_png(path: Path, results: dict[str, dict[str, float]], metrics: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        ax.bar(list(results), [results[m][metric] for m in results], color="tab:blue")
        ax.set_title(metric + (" (0-100)" if metric == "bleu" else ""))
        ax.set_ylim(0, 100 if metric == "bleu" else 1)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    import openai

    data = load_dataset_file(args.data)
    conversations = data.conversations[: args.max_examples]
    if not conversations:
        raise TrainerError(f"{args.data}: no rows to evaluate")
    prompts = [c[:-1] for c in conversations]
    references = [c[-1]["content"] for c in conversations]
    base_url = args.url.rstrip("/") + ("" if args.url.rstrip("/").endswith("/v1") else "/v1")
    api_key = os.environ.get(args.api_key_env) or "unused"
    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=args.timeout, max_retries=0)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, float]] = {}
    for model in args.model:
        try:
            replies = greedy_replies(client, model, prompts, args.max_tokens, args.concurrency)
        except openai.APIStatusError as exc:
            raise TrainerError(f"{base_url} refused model {model!r}: {exc.status_code} {exc.message}") from None
        except openai.APIConnectionError:
            raise TrainerError(f"cannot reach the gateway at {base_url}; is `loraplane serve` running?") from None
        results[model] = {"n": len(replies), **score(replies, references, args.metrics)}
        rows = [{"reference": ref, "reply": reply} for ref, reply in zip(references, replies, strict=True)]
        (args.out / f"replies-{model.replace('/', '_')}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return results


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = evaluate(args)
    except TrainerError as exc:
        print(f"loraplane eval: error: {exc}", file=sys.stderr)
        return 2
    report = {"url": args.url, "data": args.data, "max_tokens": args.max_tokens, "models": results}
    (args.out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(results, args.metrics)
    (args.out / "eval.md").write_text(table)
    write_png(args.out / "eval.png", results, args.metrics)
    print(table, end="")
    print(f"wrote {args.out / 'eval.json'}, eval.md, eval.png")
    return 0
