# The two commands: `make repro` regenerates everything, `make test` runs the tests.
# Both create .venv and install what they need on first use (only Python 3.11 is assumed).
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
SMOKE_DIR := $(CURDIR)/.smoke
export PATH := $(BIN):$(PATH)

.PHONY: repro test install data lab check-params seeds readme

# MPLBACKEND is unset so that papermill's kernels keep their inline backend: the executed
# notebooks then carry their figures (GitHub shows them); tests run headless with Agg.
# params.yaml is validated first: DVC removes a stage's outputs before running it, so a bad value must
# fail here, before any committed figure is touched.
repro: install data check-params
	env -u MPLBACKEND dvc repro $(if $(FORCE),--force)
	python -m lopt.readme
	@echo "done: figures/ and notebooks/executed/ are up to date; see the numbers with .venv/bin/dvc metrics show"

# The notebooks come first: notebooks 05-07 and 10-14 each run as one group on one worker (06 and 07 read the
# weights 05 writes, 11-14 those of 10), and xdist hands out work in collection order, so the long groups start
# while the many short unit tests still fill the other worker.
# JAX_DISABLE_MOST_OPTIMIZATIONS: XLA compiles with LLVM's optimisation level 0 (its HLO passes, fusion included,
# still run). At the smoke profile compiling is most of the suite's time and running the programs little: with an
# empty compilation cache notebooks 05-08 took 246 s instead of about 620 s, with a warm one 106 s instead of 101 s.
# The claims are checked at the cpu profile by make repro, compiled as usual; at smoke only their finiteness is.
test: install data
	rm -rf $(SMOKE_DIR)
	MPLBACKEND=Agg LOPT_PROFILE=smoke LOPT_OUTPUT_DIR=$(SMOKE_DIR) LOPT_INPUT_DIR=$(SMOKE_DIR) \
		JAX_DISABLE_MOST_OPTIMIZATIONS=1 python -m pytest -q -n 2 --dist loadgroup --durations=15 --nbval-lax notebooks/[0-9]*.ipynb tests

install: $(STAMP)

# The whole params.yaml against lopt.schema, as config.load reads it (YAML 1.2 numbers); every problem listed.
check-params: install
	python -m lopt.config params.yaml

# The claims at seeds 1 and 2 (benchmarks/results/seeds/NN.json; about 2x the repro time), then
# the pipeline again so that each notebook names the claims that differ between seeds (fragile).
seeds: install data check-params
	python benchmarks/claims_across_seeds.py $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS))

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# Fashion-MNIST: data/fashion-mnist/, else Debian's dataset-fashion-mnist (installed here when apt
# is available and we are root), else downloaded by lopt.data; then the seeded split.
data: install
	@if [ ! -f data/fashion-mnist/train-images-idx3-ubyte.gz ] && [ ! -d /usr/share/datasets/fashion-mnist ] \
		&& command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi
	@test -f data/fashion_mnist.npz || python -m lopt.data prepare

# README.md's notebook and seeds tables, from figures/*_metrics.json and the seeds table.
readme: install
	python -m lopt.readme

# As root (containers) Jupyter refuses to start without --allow-root.
lab: install data
	jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/
