# syntax=docker/dockerfile:1
#
# cxr-triage: two images, one per kind of service (build targets).
#
#   slim    gateway, web, migrate (db upgrade and the admin commands) and beat: the base install,
#           no torch (a few hundred MB)
#   worker  the triage worker: the `worker` extra with PyTorch from its own index
#
#   docker build --target slim -t cxr-triage:0.1.0 .
#   docker build --target worker -t cxr-triage-worker:0.1.0 .                 # CUDA 13.0 torch
#   docker build --target worker --build-arg TORCH_VARIANT=cpu -t cxr-triage-worker:0.1.0-cpu .
#
# TORCH_VARIANT names a PyTorch wheel index (https://download.pytorch.org/whl/<variant>): cpu,
# cu130 (NVIDIA driver 580 or newer), or an older CUDA build such as cu128 or cu126 where that
# index carries the torch of constraints.txt. The worker image carries the training commands
# too (demo, train, evaluate, synth: WORKER_EXTRAS=train, the default; `worker` leaves them out). Every install goes through constraints.txt:
# the versions the project's CI runs. No dataset and no model weights are baked in: a model
# version is registered into the store and its file lives on the `models` volume (docs/deploy.md).

# The slim image's Python is the newest the CI tests the base install on (scripts/test); the
# worker's is the one the full suite runs on.
ARG PYTHON_IMAGE=python:3.13-slim-bookworm
ARG WORKER_PYTHON_IMAGE=python:3.11-slim-bookworm

# --- source: the one list of our packages, which both images install -----------------------------
FROM scratch AS source
WORKDIR /src
COPY cxr_triage ./cxr_triage
COPY governance ./governance
COPY worker ./worker
COPY dicom_gateway ./dicom_gateway
COPY training ./training
COPY web ./web
COPY migrations ./migrations

# --- slim-build: the base install (gateway, web, store, migrations, CLI), no torch ---------------
FROM ${PYTHON_IMAGE} AS slim-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY --chmod=0755 deploy/healthcheck.py /opt/venv/bin/cxr-healthcheck
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY --from=source /src ./
RUN pip install -c constraints.txt . \
    && python -c "import cxr_triage.cli, dicom_gateway.scp, web.app, migrations" \
    && ! python -c "import torch" 2>/dev/null

# --- worker-build: the worker extra, torch of the chosen variant first ---------------------------
FROM ${WORKER_PYTHON_IMAGE} AS worker-build
ARG TORCH_VARIANT=cu130
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG WORKER_EXTRAS=train
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY --chmod=0755 deploy/healthcheck.py /opt/venv/bin/cxr-healthcheck
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
# torch first, from its own index: `pip install .[worker]` then finds it satisfied (a local
# version such as 2.14.1+cpu matches the constraint 2.14.1) instead of fetching PyPI's build.
RUN pip install -c constraints.txt --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY --from=source /src ./
RUN pip install -c constraints.txt ".[${WORKER_EXTRAS}]" \
    && python -c "import torch, worker.model; print(torch.__version__)"

# --- slim: the runtime of gateway, web, migrate and beat -----------------------------------------
FROM ${PYTHON_IMAGE} AS slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="cxr-triage" \
      org.opencontainers.image.description="Chest X-ray pneumonia triage beside a PACS: gateway, web, migrations, beat (research software, assistive triage only)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.cxr-triage.role="slim"
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 CXR_DATA_DIR=/var/lib/cxr-triage
RUN --mount=type=bind,source=deploy/runtime-user.sh,target=/tmp/runtime-user.sh \
    sh /tmp/runtime-user.sh
COPY --from=slim-build /opt/venv /opt/venv
WORKDIR /var/lib/cxr-triage
USER cxr:cxr
EXPOSE 11112 8000
ENTRYPOINT ["cxr-triage"]
CMD ["--help"]

# --- worker: the runtime of the triage worker (the default target) -------------------------------
FROM ${WORKER_PYTHON_IMAGE} AS worker
ARG VERSION=0.1.0
ARG TORCH_VARIANT=cu130
LABEL org.opencontainers.image.title="cxr-triage-worker" \
      org.opencontainers.image.description="Chest X-ray pneumonia triage beside a PACS: the triage worker with PyTorch (research software, assistive triage only)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.cxr-triage.role="worker" \
      io.cxr-triage.torch-variant="${TORCH_VARIANT}"
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib CXR_DATA_DIR=/var/lib/cxr-triage
# libopenjp2: glymur decodes JPEG 2000 at a reduced resolution level (worker/decoders.py).
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libopenjp2-7 \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,source=deploy/runtime-user.sh,target=/tmp/runtime-user.sh \
    sh /tmp/runtime-user.sh
COPY --from=worker-build /opt/venv /opt/venv
WORKDIR /var/lib/cxr-triage
USER cxr:cxr
ENTRYPOINT ["cxr-triage"]
CMD ["--help"]
