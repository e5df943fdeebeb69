# syntax=docker/dockerfile:1.7
# gpu-predictor image: the KServe custom predictor with in-process dynamic batching.
#
#   docker build -t ghcr.io/gpu-predictor/gpu-predictor:0.1.0 .
#   docker run --gpus all -p 8080:8080 -p 8081:8081 ghcr.io/gpu-predictor/gpu-predictor:0.1.0
#
# Torch comes from uv.lock: PyPI's Linux x86_64 torch wheel is the CUDA build (its CUDA
# runtime, cuDNN and NCCL arrive as nvidia-* wheels), so the image needs only the NVIDIA
# driver on the node (exposed by the NVIDIA container toolkit / GPU operator), no CUDA base
# image. It runs CPU-only where no GPU is visible.
#
# The demo model is baked in at /mnt/models/digits so that the image serves something on its
# own; KServe mounts a storageUri's model at /mnt/models, hiding it. Tests:
# tests/test_dockerfile.py (no Docker engine is needed to run them).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# ---- build: a virtual environment at /opt/venv from uv.lock ---------------------------------
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first, from the lock file alone: this layer is rebuilt only when uv.lock or
# pyproject.toml change, not on every source edit.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-project
# Then the project itself, installed (not editable) into the same environment.
COPY pyproject.toml uv.lock README.md ./
COPY predictor ./predictor
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# ---- runtime --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="gpu-predictor" \
      org.opencontainers.image.description="GPU image-inference server for Kubernetes: a KServe custom predictor with in-process dynamic batching" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/gpu-predictor/gpu-predictor" \
      org.opencontainers.image.documentation="https://github.com/gpu-predictor/gpu-predictor/blob/main/docs/deploying.md"

# A numeric non-root user; HOME and TMPDIR point at /tmp, the one writable path when the root
# filesystem is read-only (the chart mounts an emptyDir there). No bytecode is written at
# run time: it was compiled at build time.
RUN groupadd --gid 1000 predictor \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin predictor
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache

COPY --from=build /opt/venv /opt/venv
# The demo model (manifest, weights, labels; not its training script or sample images).
COPY models/digits/model.json models/digits/weights.pt models/digits/labels.txt /mnt/models/digits/

USER 1000:1000
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["gpu-predictor", "serve", "--model-dir", "/mnt/models"]
