# syntax=docker/dockerfile:1
# image: loraplane/gateway
# The OpenAI-compatible gateway. Small on purpose: python slim plus loraplane's base dependencies
# (pyproject [project].dependencies), none of the train/cpu/gpu extras, so no torch and no vLLM.
# Build from the repository root (docker/gateway.Dockerfile.dockerignore keeps the context small):
#   docker build -f docker/gateway.Dockerfile -t loraplane/gateway:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY loraplane ./loraplane
COPY serving ./serving
# Wheels of loraplane (only the packages copied above) and of its base dependencies.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 1000 loraplane \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin loraplane
COPY --from=build /wheels /wheels
# Install offline from the wheels; then fail the build if anything pulled in torch.
RUN pip install --no-cache-dir --no-index --find-links /wheels loraplane && rm -rf /wheels \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
USER 1000:1000
EXPOSE 8000
ENTRYPOINT ["loraplane"]
CMD ["serve", "--gateway-only", "--config", "/etc/loraplane/serving.yaml"]
