"""The heavy half of `loraplane quantize`: runs inside .venv-quant (llm-compressor), never in .venv.

    .venv-quant/bin/python -m trainer.quantize_worker JOB.json

JOB.json (written by trainer/quantize.py, which has already validated everything):
    {"source_dir", "output_dir", "method": "gptq"|"awq"|"int8", "bits", "group_size",
     "max_seq_len", "samples": [{"messages": [...]} | {"text": "..."}]}

Writes a compressed-tensors checkpoint (what vLLM loads) plus the tokenizer into output_dir.
Imports nothing from loraplane but this file: .venv-quant has llm-compressor's pins, not ours.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _log(message: str) -> None:
    print(f"quantize: {message}", flush=True)


def _weight_args(bits: int, group_size: int, symmetric: bool) -> dict:
    return {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": "group", "group_size": group_size}


def build_recipe(method: str, bits: int, group_size: int, awq_grid: int = 20) -> list:
    """llm-compressor modifiers for one method. lm_head stays full precision (tied to embeddings)."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if method == "gptq":  # symmetric 4-bit groups: vLLM's uint4b8 kernels
        groups = {"group_0": {"targets": ["Linear"], "weights": _weight_args(bits, group_size, True)}}
        return [GPTQModifier(config_groups=groups, ignore=["lm_head"])]
    if method == "awq":  # activation-aware scales, then asymmetric 4-bit groups with zero points
        from llmcompressor.modifiers.transform import AWQModifier

        groups = {"group_0": {"targets": ["Linear"], "weights": _weight_args(bits, group_size, False)}}
        return [AWQModifier(n_grid=awq_grid), QuantizationModifier(config_groups=groups, ignore=["lm_head"])]
    if method == "int8":  # int8 per-channel weights, dynamic per-token int8 activations: data-free
        return [QuantizationModifier(targets=["Linear"], scheme="W8A8", ignore=["lm_head"])]
    raise SystemExit(f"quantize worker: unknown method {method!r}")


def tokenize_samples(tokenizer, samples: list[dict], max_seq_len: int):
    """Calibration rows as token ids: chat rows through the model's chat template, text rows as is."""
    from datasets import Dataset

    texts = [
        tokenizer.apply_chat_template(s["messages"], tokenize=False) if "messages" in s else s["text"] for s in samples
    ]
    enc = tokenizer(texts, truncation=True, max_length=max_seq_len, add_special_tokens=False)
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})


def skip_pinning_without_accelerator() -> None:
    """llm-compressor 0.14's AWQ pins its activation cache for faster host-to-GPU copies, and
    torch's pin_memory() raises "Cannot access accelerator device" on a CPU-only machine. With no
    accelerator there is no copy to speed up: make pinning a no-op."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.cuda.is_available():
        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


def run(job: dict) -> None:
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    skip_pinning_without_accelerator()
    started = time.monotonic()
    source, output = Path(job["source_dir"]), Path(job["output_dir"])
    _log(f"loading {source.name}")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    recipe = build_recipe(job["method"], job["bits"], job["group_size"], job.get("awq_grid", 20))
    samples = job["samples"]
    kwargs: dict = {}
    if samples:
        kwargs = {
            "dataset": tokenize_samples(tokenizer, samples, job["max_seq_len"]),
            "num_calibration_samples": len(samples),
            "max_seq_length": job["max_seq_len"],
            "shuffle_calibration_samples": False,
        }
        _log(f"calibrating on {len(samples)} samples x <= {job['max_seq_len']} tokens (progress per layer below)")
    oneshot(model=model, recipe=recipe, **kwargs)
    _log(f"saving compressed-tensors checkpoint ({time.monotonic() - started:.0f} s so far)")
    model.save_pretrained(output, save_compressed=True)
    tokenizer.save_pretrained(output)
    _log(f"done in {time.monotonic() - started:.0f} s")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m trainer.quantize_worker JOB.json", file=sys.stderr)
        return 2
    run(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
