# One image for every service of docker-compose.yml: worker, beat, Flower and the reference
# training host (Redis uses the official image). The chain alone needs no torch: build a
# slimmer image for workers with `--build-arg EXTRAS=stack`.
FROM python:3.11-slim

ARG EXTRAS=host,stack
# CPU wheels of torch (the default index serves CUDA builds, gigabytes larger).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml constraints.txt README.md celeryconfig.py ./
COPY ktrdr_tasks ./ktrdr_tasks
COPY training_host ./training_host
# constraints.txt: the exact versions CI tested (pyproject.toml only declares ranges).
RUN pip install --extra-index-url "${TORCH_INDEX}" -c constraints.txt ".[${EXTRAS}]"

# /data is the volume the services share (strategies written by the designer, read by the
# trainer; models written by the trainer); /state keeps beat's schedule and Flower's database.
# A fresh named volume starts with what the image has here: the example strategies.
COPY strategies /data/strategies
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin ktrdr \
    && mkdir -p /data/models /state/beat /state/flower \
    && chown -R ktrdr:ktrdr /data /state
USER ktrdr

ENV KTRDR_STRATEGIES_DIR=/data/strategies \
    KTRDR_MODELS_DIR=/data/models

CMD ["celery", "-A", "ktrdr_tasks", "worker", "--loglevel", "INFO"]
