# RefSAM3D Label: the MONAI Label 0.8.5 server with the refsam3d app, on a GPU.
#   docker build -t refsam3d-label .
#   docker run --gpus all -p 8000:8000 -v "$PWD/model:/app/model" -v /path/to/studies:/data/studies refsam3d-label
# or the whole stack (Orthanc + this app + OHIF at /ohif/): docker compose up --build  (docker-compose.yml)
# --conf options come from environment variables REFSAM3D_CONF_<KEY>=value (docker/entrypoint.sh), e.g.
#   -e REFSAM3D_CONF_PRESET=small -e REFSAM3D_CONF_LABEL_SET=msd_hippocampus
# Base: CUDA 13.0 runtime, the CUDA of the torch==2.14.1 wheel pinned in requirements.txt (cu130; its CUDA
# libraries come with the wheel, the base gives the matching runtime and driver compatibility).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

ARG APP_UID=1000
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    STUDIES=/data/studies \
    HOST=0.0.0.0 \
    PORT=8000

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 (the version the project is tested with) from Ubuntu 22.04's updates; versions follow the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && useradd --create-home --uid "${APP_UID}" --shell /bin/bash refsam3d

WORKDIR /app
# the project's requirements, pinned in requirements.txt (torch 2.14.1 with CUDA 13.0, monailabel 0.8.5, ...)
COPY requirements.txt /app/requirements.txt
RUN pip install --no-cache-dir -r /app/requirements.txt

COPY apps /app/apps
COPY checkpoints /app/checkpoints
COPY scripts /app/scripts
COPY sample-data/get_sample_data.py /app/sample-data/get_sample_data.py
COPY docker/entrypoint.sh /app/docker/entrypoint.sh
COPY README.md /app/README.md
COPY docs /app/docs

# MONAI Label writes logs into the app folder; weights go to /app/model, studies (or a DICOMweb cache) to /data
RUN mkdir -p /app/model /data/studies \
    && chown -R refsam3d:refsam3d /app/apps /app/model /data \
    && chmod 0755 /app/docker/entrypoint.sh

USER ${APP_UID}
VOLUME ["/app/model", "/data/studies"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/info/' % os.environ.get('PORT', '8000'), timeout=8)"]
ENTRYPOINT ["/app/docker/entrypoint.sh"]
