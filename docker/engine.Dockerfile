# syntax=docker/dockerfile:1
# image: loraplane/engine
# The vLLM OpenAI server for CUDA GPUs, from vLLM's official image. The chart starts it with
# --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True so the gateway can load adapters at runtime.
#   docker build -f docker/engine.Dockerfile -t loraplane/engine:0.1.0 .
# VLLM_VERSION: a release within pyproject's gpu extra (vllm>=0.32,<0.33; tests/helm/test_chart_images.py).
ARG VLLM_VERSION=v0.32.0
FROM vllm/vllm-openai:${VLLM_VERSION}

# The official image runs as root with caches under /root. The chart runs uid 1000 with a read-only
# root filesystem; HOME and every cache live on an emptyDir mounted at /cache. (Ubuntu 24.04 based
# images already have a uid 1000 user, "ubuntu": reuse it.)
RUN (getent group 1000 || groupadd --gid 1000 loraplane) \
    && (getent passwd 1000 || useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin loraplane) \
    && mkdir -p /cache /models /adapters \
    && chown 1000:1000 /cache
ENV VLLM_ALLOW_RUNTIME_LORA_UPDATING=True \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    HOME=/cache \
    XDG_CACHE_HOME=/cache
USER 1000:1000
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
