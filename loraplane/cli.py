"""The `loraplane` command: a thin dispatcher.

Each subcommand's code lives in its component; this module only maps a name to a
`module:function` and imports that module lazily, so `loraplane serve` never pulls in
torch and `loraplane train` never pulls in the gateway.
"""

from __future__ import annotations

import importlib
import sys

# name -> (entry point "module:function", one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "base": ("trainer.base_models:main", "provision a base model into models/ (base pull|add|list)"),
    "train": ("trainer.cli:main", "train a LoRA/QLoRA adapter and publish it to the registry"),
    "quantize": ("trainer.quantize:main", "quantize a base to GPTQ/AWQ 4-bit (compressed-tensors) for vLLM"),
    "merge": ("trainer.merge:main", "merge an adapter into its full-precision base"),
    "eval": ("trainer.evaluation.cli:main", "score a served model through the gateway (exact match, BLEU, ...)"),
    "serve": ("serving.cli:serve_main", "start vLLM engine(s) and the OpenAI-compatible gateway"),
    "adapters": ("serving.cli:adapters_main", "list/publish/load/unload registry adapters"),
    "store": ("serving.store.cli:main", "migrate the control-plane database (store migrate|status)"),
    "rollout": ("serving.rollouts.cli:main", "progressive rollouts: start|status|pause|resume|promote|rollback|export"),
    "usage": ("serving.usage_cli:main", "tokens per key, model and UTC day from a gateway (table, csv, json)"),
    "feedback": ("serving.rollouts.feedback_cli:main", "training data from rated traffic (feedback export)"),
    "loop": (
        "loraplane.loop.cli:main",
        "feedback -> train -> gate -> rollout, one iteration a run (run|status)",
    ),
    "loadtest": ("loadtest.cli:main", "run a Locust load test with SLO gates"),
    "demo": ("loraplane.demo:main", "train v1+v2 on the bundled model, serve, compare through the gateway"),
}


def usage() -> str:
    lines = ["usage: loraplane <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `loraplane <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"loraplane: unknown command {name!r}; choose one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module_name, func_name = SUBCOMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
