"""Shared pieces of the serving benchmarks: bench adapters, a local engine, streamed timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fakes.servers import free_port, wait_healthy  # noqa: F401  (free_port: re-exported)
from loadtest.scenarios import PlannedRequest
from loadtest.stream import stream_request
from loraplane.quantiles import percentile  # noqa: F401  (re-exported)

REPO = Path(__file__).resolve().parents[1]
BASE_DIR = REPO / "models" / "smollm2-135m-instruct"
PROMPTS = [json.loads(line)["messages"][0]["content"] for line in (REPO / "data/demo/heldout.jsonl").open()]


def spawn_healthy(
    cmd: list[str], url: str, log: Path, cpu: int | None = None, timeout_s: float = 60
) -> subprocess.Popen:
    """Start `cmd` (pinned to core `cpu` with taskset when given) and wait until `url`/health is 200."""
    if cpu is not None and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if wait_healthy(url, timeout_s, alive=lambda: proc.poll() is None):
        return proc
    if proc.poll() is not None:
        raise RuntimeError(f"{cmd[:4]} exited with {proc.returncode}; see {log}")
    proc.terminate()
    raise RuntimeError(f"{url} did not become healthy in {timeout_s:.0f} s; see {log}")


def start_mock_engine(base: str, log: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """The mock engine (fakes.engine) serving `base` on a free port, healthy: (process, url)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return spawn_healthy(
        [sys.executable, "-m", "fakes.engine", "--port", str(port), "--base", base, *flags], url, log
    ), url


def start_gateway_only(
    config: Path, engine_url: str, log: Path, port: int | None = None, timeout_s: float = 60
) -> tuple[subprocess.Popen, str]:
    """`loraplane serve --config config --gateway-only --engine-url engine_url`, healthy: (process, url)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "loraplane", "serve", "--config", str(config), "--gateway-only",
           "--engine-url", engine_url, "--port", str(port)]  # fmt: skip
    return spawn_healthy(cmd, url, log, timeout_s=timeout_s), url


ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
ATTENTION_MLP = [*ATTENTION, "gate_proj", "up_proj", "down_proj"]  # the demo's v2 shape
TARGET_SETS = {"attention": ATTENTION, "attention+mlp": ATTENTION_MLP}


def make_bench_adapters(root: Path, count: int, rank: int = 16, targets: str = "attention") -> list[Path]:
    """`count` rank-`rank` LoRA adapters on TARGET_SETS[targets] with random A and B (same compute
    as trained ones). Random weights keep the benchmark quick; a trained adapter of the same shape
    costs the same.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = json.loads((BASE_DIR / "loraplane-base.json").read_text())
    paths = []
    for i in range(count):
        name = f"bench-{i}" if targets == "attention" else f"bench-mlp-{i}"
        path = root / name / "v1"
        if not (path / "adapter_model.safetensors").is_file():
            torch.manual_seed(i)
            model = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)
            cfg = LoraConfig(
                r=rank,
                lora_alpha=rank,
                target_modules=TARGET_SETS[targets],
                init_lora_weights=False,
            )
            peft_model = get_peft_model(model, cfg)
            for name, param in peft_model.named_parameters():  # small, so outputs stay sane
                if "lora_" in name:
                    param.data.mul_(0.01)
            peft_model.save_pretrained(path)
            manifest = {
                "format": 1,
                "name": name,
                "version": "v1",
                "base": {"name": base["name"], "weights_sha256": base["weights_sha256"]},
            }
            (path / "loraplane-adapter.json").write_text(json.dumps(manifest))
        paths.append(path)
    return paths


def stream_chat(client: httpx.Client, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    """One streamed chat completion, timed by the load test's SSE client: TTFT, end-to-end, tokens."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    planned = PlannedRequest(index=0, at_s=0.0, model=model, user_key=None, prompt_kind="bench", body=body)
    sample = stream_request(client, f"{url}/v1/chat/completions", planned, t0=time.perf_counter())
    if sample.error:
        raise RuntimeError(f"{model} via {url}: {sample.error}")
    return {"ttft_s": sample.ttft_s or 0.0, "e2e_s": sample.e2e_s or 0.0, "tokens": sample.output_tokens or 0}


def machine() -> str:
    import os
    import platform

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{model}, {os.cpu_count()} cores"


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `finally` blocks stop the engines a benchmark started."""
    import signal

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def shown_args(args: object) -> dict:
    """A benchmark's arguments for its result file; paths relative to the repository."""

    def show(value: object) -> object:
        if isinstance(value, Path):
            return str(value.relative_to(REPO)) if value.is_relative_to(REPO) else value.name
        return value

    return {key: show(value) for key, value in vars(args).items()}


def write_result(path: Path, result: dict) -> int:
    """Write a benchmark's result JSON (with machine, date, the time it was written and the load
    average then: 1/5/15 min, so a run on a busy machine says so) and print it; the exit code."""
    stamp = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    result = {**stamp, **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0
