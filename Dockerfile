# One image for every bitfed service: SuperLink, SuperNode, both SuperExecs (and the ServerApp /
# ClientApp processes they start), bitfed-server and bitfed-client. CPU-only torch; builds on
# linux/amd64 and linux/arm64 (Raspberry Pi 4/5-class boards) alike:
#   docker build -t bitfed:0.1.0 .            (compose.yaml does this for you)
#   docker buildx build --platform linux/arm64 -t bitfed:0.1.0-arm64 .
# TARGETARCH (BuildKit sets it; the classic builder needs --build-arg TARGETARCH=arm64) picks the
# pinned set: constraints.txt on amd64, constraints-device-aarch64.txt on arm64 (the same pins
# apart from torch: PyPI's CPU-only 2.9.1, which runs on every Armv8.0+ core).
#
# It installs the device/server set only: bitfed's core dependencies plus the extras in
# BITFED_EXTRAS (default `data`: scikit-learn for the embedded digits, SciPy for SVHN). No Ray
# (`sim`), no Matplotlib (`plots`), no test tools.
#
# Offline (no registry, no index: scripts/offline-image.sh, `make image-offline`) the same file
# is built with a local base image and a host wheelhouse served on 127.0.0.1 for the build only:
#   docker build --network host --build-arg BASE_IMAGE=bitfed-base:bookworm \
#       --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=http://127.0.0.1:PORT/ .
# pip reads PIP_NO_INDEX / PIP_FIND_LINKS from the environment, so every pip line below is the
# same online and offline, and no wheel is ever copied into a layer.
ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm
FROM ${BASE_IMAGE}

# Unset unless given (pip would reject an empty PIP_NO_INDEX).
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG BITFED_EXTRAS=data

# Flower hygiene (no telemetry, no update check, no `uv sync` of app dependencies at run time:
# everything the app needs is baked in below), unbuffered logs, the venv on PATH. Like Flower's
# own images: non-root user `app` (uid 49999) with HOME=/app. glibc malloc: two arenas and a
# fixed 128 KiB trim threshold, so freed memory goes back to the device (measured on one
# ClientApp round, MLP on digits: peak 398 vs 400 MiB, 392 vs 400 MiB held afterwards; small,
# and free: benchmarks/compose.py measures the containers).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    MALLOC_ARENA_MAX=2 \
    MALLOC_TRIM_THRESHOLD_=131072 \
    VIRTUAL_ENV=/python/venv \
    PATH=/python/venv/bin:$PATH \
    HOME=/app

# Empty (the classic builder without --build-arg) means amd64, today's build.
ARG TARGETARCH
RUN python -m venv /python/venv
COPY constraints.txt constraints-device-aarch64.txt /opt/bitfed/
# The arch's constraints file, linked as /opt/bitfed/constraints.active.txt for every pip line.
# torch first. amd64: from PyTorch's CPU index (PyPI's x86-64 wheel is the multi-GB CUDA build).
# arm64: from PyPI, torch 2.9.1 (PyPI's aarch64 2.11+ require CUDA packages; 2.10.0 dies with
# SIGILL on Armv8.0 cores). In the same layer (or it would still ship), drop what only building
# C++ extensions or running a package's own test suite needs: torch/include, torch/test, the test
# binaries and protoc in torch/bin, and every site-packages `tests` folder (numpy, scipy, sympy,
# ...): about 290 MB no bitfed process opens.
RUN case "${TARGETARCH}" in \
        ""|amd64) c=/opt/bitfed/constraints.txt; index="--index-url ${TORCH_INDEX}" ;; \
        arm64) c=/opt/bitfed/constraints-device-aarch64.txt; index= ;; \
        *) echo "TARGETARCH=${TARGETARCH}: only amd64 and arm64 are supported" >&2; exit 1 ;; \
    esac \
    && ln -s "$c" /opt/bitfed/constraints.active.txt \
    && pip install $index "torch==$(sed -n 's/^torch==//p' "$c")" \
    && torch_dir="$(python -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("torch").origin))')" \
    && rm -rf "$torch_dir/include" "$torch_dir/test" \
    && find "$torch_dir/bin" -type f ! -name torch_shm_manager -delete \
    && find /python/venv/lib -depth -type d -name tests -exec rm -rf {} +

# Then bitfed's dependencies with exactly the tested, pinned set of the arch (torch 2.13.0+cpu
# satisfies torch==2.13.0), read from pyproject.toml so that a source change does not reinstall them.
COPY pyproject.toml /opt/bitfed/pyproject.toml
RUN python -c "import sys, tomllib; p = tomllib.load(open(sys.argv[1], 'rb'))['project']; \
extras = [e for e in sys.argv[2].split(',') if e]; \
print('\n'.join(p['dependencies'] + [r for e in extras for r in p['optional-dependencies'][e]]))" \
        /opt/bitfed/pyproject.toml "${BITFED_EXTRAS}" > /tmp/requirements.txt \
    && pip install -c /opt/bitfed/constraints.active.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && find /python/venv/lib -depth -type d -name tests -exec rm -rf {} +

# Every package pyproject.toml lists (.dockerignore keeps tests, benchmarks and caches out).
COPY . /opt/bitfed
RUN pip install --no-deps -c /opt/bitfed/constraints.active.txt -e /opt/bitfed

# A device's three Flower processes (SuperNode, its ClientApp executor, each round's ClientApp)
# start through scripts of the same names that leave out Flower's SQL stores, which a device never
# opens (glue/lean_flower.py): about 29 MiB less anonymous memory per process. First on PATH, so
# the processes a SuperNode and an executor start by name get them too.
RUN python -m glue.lean_flower install /python/lean-bin
ENV PATH=/python/lean-bin:$PATH

RUN groupadd --gid 49999 app \
    && useradd --uid 49999 --gid 49999 --home-dir /app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app/state /app/data /app/device-state \
    && chown -R app:app /app
WORKDIR /app
USER app
