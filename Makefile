# bitfed: two commands. `make run` (the default federated simulation) and `make test`.
# Both create .venv on first use and reinstall only when pyproject.toml or constraints.txt change.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bitfed-installed

# Flower hygiene (each one bit on these machines): no telemetry, no update check, no runtime
# `uv sync` (it downloads ~5 GB of CUDA torch), and a project-local FLWR_HOME.
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_HOME := $(CURDIR)/.flwr

.PHONY: run test lint bench bench-quick clean docker-engine image-offline image-offline-arm64 test-arm64

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[data,plots,sim,test]'
	@touch $@

run: $(STAMP)
	$(BIN)/bitfed-sim $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all $(ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --quick $(ARGS)

# The training core's tests on aarch64 under qemu-user (root; first run builds an arm64 Debian
# with debootstrap and fetches the device wheels into build/arm64, ~20 min; then a few minutes).
test-arm64: $(STAMP)
	PYTHON=$(CURDIR)/$(BIN)/python scripts/test-arm64.sh $(ARGS)

# The compose federation's image without a registry or an index reachable from containers:
# a Debian base image from debootstrap, a host wheelhouse (build/wheelhouse), the real Dockerfile.
docker-engine:
	scripts/docker-engine.sh

image-offline: $(STAMP)
	scripts/offline-image.sh

# The same image for linux/arm64 (bitfed:<version>-arm64, compose.arm64.yaml's device) under
# qemu-user: aarch64 wheels in build/wheelhouse-arm64, torch 2.9.1 (~30 min, once).
image-offline-arm64: $(STAMP)
	BITFED_PLATFORM=arm64 scripts/offline-image.sh

clean:
	rm -rf $(VENV) .flwr .pytest_cache .ruff_cache
