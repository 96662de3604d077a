# One image for every bitfed service: SuperLink, SuperNode, both SuperExecs (and the ServerApp /
# ClientApp processes they start), bitfed-server and bitfed-client. CPU-only torch; builds on
# linux/amd64 and linux/arm64 (Raspberry Pi 4/5-class boards) alike:
#   docker build -t bitfed:0.1.0 .            (compose.yaml does this for you)
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

# Flower hygiene (no telemetry, no update check, no `uv sync` of app dependencies at run time:
# everything the app needs is baked in below), unbuffered logs, the venv on PATH. Like Flower's
# own images: non-root user `app` (uid 49999) with HOME=/app.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    VIRTUAL_ENV=/python/venv \
    PATH=/python/venv/bin:$PATH \
    HOME=/app

RUN python -m venv /python/venv
COPY constraints.txt /opt/bitfed/constraints.txt
# torch first, from PyTorch's CPU index: on x86-64 the PyPI wheel is the multi-GB CUDA build.
# (On arm64 that index serves the same CPU wheel PyPI does.)
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch==$(sed -n 's/^torch==//p' /opt/bitfed/constraints.txt)"

# Then bitfed with exactly the tested, pinned set (torch 2.13.0+cpu satisfies torch==2.13.0).
COPY pyproject.toml README.md /opt/bitfed/
COPY core /opt/bitfed/core
COPY client /opt/bitfed/client
COPY server /opt/bitfed/server
COPY conf /opt/bitfed/conf
RUN pip install -c /opt/bitfed/constraints.txt -e /opt/bitfed

RUN groupadd --gid 49999 app \
    && useradd --uid 49999 --gid 49999 --home-dir /app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app/state /app/data \
    && chown -R app:app /app
WORKDIR /app
USER app
