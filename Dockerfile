# One file, two targets:
#   app    - slim Python image: the Streamlit dashboard (no CUDA needed)
#   worker - CUDA runtime image: Celery worker that launches DDP training (NCCL)
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
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv/sslengine
COPY pyproject.toml README.md ./
COPY sslengine ./sslengine
COPY tasks ./tasks
COPY app ./app
RUN pip install -e '.[s3]'
CMD ["sh", "-c", "sslengine migrate && celery -A tasks.celery_app worker -Q ${SSL_QUEUE:-ssl} -c 1 --prefetch-multiplier 1 -n worker@%h -l INFO"]
