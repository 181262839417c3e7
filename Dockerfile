# syntax=docker/dockerfile:1
#
# cxr-triage: one image for every service (gateway, worker, web, db upgrade, ...).
#
#   docker build -t cxr-triage:0.1.0 .                              # CUDA 13.0 torch (default)
#   docker build --build-arg TORCH_VARIANT=cpu -t cxr-triage:0.1.0-cpu .   # CPU-only, much smaller
#
# TORCH_VARIANT names a PyTorch wheel index (https://download.pytorch.org/whl/<variant>): cpu,
# cu130 (NVIDIA driver 580 or newer), or an older CUDA build such as cu128 or cu126 where that
# index carries torch 2.14.1. No dataset and no model weights are baked in: a model version is
# registered into the store and its file lives on the `models` volume (docs/deploy.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with torch of the chosen variant and cxr-triage ----------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VARIANT=cu130
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from its own index: `pip install .` then finds torch==2.14.1 satisfied (a
# local version such as 2.14.1+cpu matches) instead of fetching PyPI's default CUDA build.
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cxr_triage ./cxr_triage
COPY governance ./governance
COPY worker ./worker
COPY dicom_gateway ./dicom_gateway
COPY training ./training
COPY web ./web
COPY migrations ./migrations
RUN pip install . && python -c "import torch, cxr_triage, migrations; print(torch.__version__)"

# --- runtime: the environment, a non-root user, the data folders ---------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG TORCH_VARIANT=cu130
LABEL org.opencontainers.image.title="cxr-triage" \
      org.opencontainers.image.description="Chest X-ray pneumonia triage beside a PACS (research software, assistive triage only)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.cxr-triage.torch-variant="${TORCH_VARIANT}"

RUN groupadd --system --gid 10001 cxr \
    && useradd --system --uid 10001 --gid cxr --home-dir /var/lib/cxr-triage \
        --shell /usr/sbin/nologin cxr \
    && mkdir -p /var/lib/cxr-triage/spool /var/lib/cxr-triage/models \
    && chown -R cxr:cxr /var/lib/cxr-triage

COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 deploy/healthcheck.py /usr/local/bin/cxr-healthcheck

# The data folders belong to the cxr user, so named volumes mounted there start owned by it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    CXR_DATA_DIR=/var/lib/cxr-triage
WORKDIR /var/lib/cxr-triage
USER cxr:cxr
EXPOSE 11112 8000

ENTRYPOINT ["cxr-triage"]
CMD ["--help"]
