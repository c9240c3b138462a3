# One file, two targets:
#   app    - slim Python 3.11 image with CPU PyTorch: the Streamlit dashboard, and also the CPU
#            Celery worker of docker-compose.yml's default profile (same image, other command)
#   worker - CUDA runtime image: GPU Celery worker that launches DDP training (NCCL)
# Build: docker build --target app -t sslengine-app .   /   --target worker -t sslengine-worker .

FROM python:3.11-slim AS app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 SSL_HOME=/srv/sslengine
WORKDIR /srv/sslengine
COPY pyproject.toml README.md ./
COPY sslengine ./sslengine
COPY tasks ./tasks
COPY app ./app
COPY .streamlit/config.toml ./.streamlit/config.toml
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -e '.[s3]'
EXPOSE 8501
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health')"
CMD ["sh", "-c", "sslengine migrate && streamlit run app/main.py --server.port 8501 --server.address 0.0.0.0 --server.headless true --browser.gatherUsageStats false"]

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS worker
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 SSL_HOME=/srv/sslengine DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04 (noble) ships Python 3.12 only, and the project needs 3.11 (requires-python
# <3.12; the pinned torch/torchvision wheels are installed for it), so python3.11 comes from the
# deadsnakes PPA (https://launchpad.net/~deadsnakes/+archive/ubuntu/ppa, which builds 3.11 for
# noble); add-apt-repository is in software-properties-common. The CUDA runtime base stays: it
# sets NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES for the NVIDIA container toolkit and
# carries the CUDA/cuDNN runtime (the PyTorch wheels also bundle theirs). Not built here (no
# Docker engine): tests/test_deploy_files.py checks stages, targets and commands statically.
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common ca-certificates \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv/sslengine
COPY pyproject.toml README.md ./
COPY sslengine ./sslengine
COPY tasks ./tasks
COPY app ./app
RUN pip install -e '.[s3]'
CMD ["sh", "-c", "sslengine migrate && celery -A tasks.celery_app worker -Q ${SSL_QUEUE:-ssl} -c 1 --prefetch-multiplier 1 -n worker@%h -l INFO"]
