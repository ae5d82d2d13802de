# pqz image: the `pqz` command line (and, later, the API and the GPU worker).
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
RUN pip install . && useradd --create-home --uid 1000 pqz
USER pqz
WORKDIR /data

ENTRYPOINT ["pqz"]
CMD ["--help"]
