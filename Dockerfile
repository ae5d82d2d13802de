# pqz image: the `pqz` command, the API (`pqz api`) and the GPU worker (`pqz worker`).
# torch from PyPI is the CUDA build: the same image runs on CPU hosts and GPU workers.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/pqz
COPY pyproject.toml README.md ./
COPY compression ./compression
COPY cli ./cli
COPY app ./app
COPY worker ./worker
COPY db ./db
COPY migrations ./migrations
RUN pip install -e . && useradd --create-home --uid 1000 pqz && mkdir /data && chown pqz /data
USER pqz
WORKDIR /data

ENTRYPOINT ["pqz"]
CMD ["--help"]
