# brn-repro: every target creates the project-local .venv when it is missing.
# `make reproduce` and `make test` are the two commands a new user runs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to the releases this project is tested with (a
# CUDA build that also runs on the CPU); override for another CUDA, e.g.
#   make setup TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
# A first install asks for this much free space before pip starts (torch is ~5.5 GB
# in the venv; a full disk otherwise stops pip half-way with a traceback).
INSTALL_GB ?= 7
HAS_TORCH := $(BIN)/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" 2>/dev/null
# make reproduce PROFILE=cifar JOBS=1 THREADS=8: another profile, or another split of the cores
PROFILE ?= quick
JOBS ?= 2
THREADS ?= 1
DATASET ?= fashion_mnist
# make test spreads the tests over this many processes (pytest-xdist; 1: in this process).
# Both cores: 3.6 min instead of 6.6 here (540 tests, two runs each way).
TEST_WORKERS ?= 2
XDIST := $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS))
# make reproduce WANDB=1: log every run and the aggregate to W&B (offline without credentials)
WANDB ?=
WANDB_FLAG := $(if $(filter-out 0,$(WANDB)),--wandb)

.PHONY: help setup data reproduce reproduce-full aggregate verify-results kernel-spread check-kernels test test-slow \
	test-all bench gpu-check lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

$(STAMP): pyproject.toml
	@$(HAS_TORCH) || $(PYTHON) scripts/check_free_space.py $(VENV) --need-gb $(INSTALL_GB)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[harness,dev]'
	@touch $@

setup: $(STAMP)  ## create .venv and install the package (editable) with the harness and dev extras

data: $(STAMP)  ## get the default dataset (Fashion-MNIST) and say where it is
	$(BIN)/python scripts/get_data.py --dataset $(DATASET)

reproduce:  ## install, get the data, run the default reproduction, write results/
	@start=$$(date +%s); $(MAKE) --no-print-directory data && \
	$(BIN)/python scripts/reproduce.py --profile $(PROFILE) --jobs $(JOBS) --threads $(THREADS) \
		--started-at $$start $(WANDB_FLAG)

reproduce-full:  ## the default reproduction plus the secondary rows and the sweeps that decide no claim (batch sizes, r/d schedules)
	@start=$$(date +%s); $(MAKE) --no-print-directory data && \
	$(BIN)/python scripts/reproduce.py --profile $(PROFILE) --jobs $(JOBS) --threads $(THREADS) \
		--started-at $$start --full $(WANDB_FLAG)

aggregate: $(STAMP)  ## re-aggregate existing run records into results/
	$(BIN)/python -m brn_repro.analysis.aggregate --runs runs/$(PROFILE) --out results $(WANDB_FLAG)

verify-results: $(STAMP)  ## retrain 2 committed runs at random, compare with results/runs.csv (exactly, or within the kernel spread)
	$(BIN)/python scripts/verify_results.py --sample 2

kernel-spread: $(STAMP)  ## how far numbers move on other CPU kernels -> results/kernels/spread.csv (after make reproduce)
	$(BIN)/python scripts/kernel_spread.py --reference-runs runs/$(PROFILE)

check-kernels: $(STAMP)  ## a pinned run here and on an emulated Intel Haswell (qemu-user) -> results/kernels/emulated.csv
	$(BIN)/python scripts/check_kernels.py

test: $(STAMP)  ## the fast test suite (CPU, minutes)
	$(BIN)/python -m pytest -q $(XDIST)

test-slow: $(STAMP)  ## only the long tests
	$(BIN)/python -m pytest -q $(XDIST) -m slow || test $$? -eq 5  # 5: no slow test collected

test-all: $(STAMP)  ## every test
	$(BIN)/python -m pytest -q $(XDIST) -m 'slow or not slow'

bench: $(STAMP)  ## time a ResNet-20 step per norm, the runner's own step, pinned kernels -> results/bench/{norm,step,isa}.csv
	$(BIN)/python scripts/bench_norm.py --out results/bench/norm.csv
	$(BIN)/python scripts/bench_step.py --out results/bench/step.csv
	$(BIN)/python scripts/bench_isa.py --out results/bench/isa.csv

gpu-check: $(STAMP)  ## on a CUDA machine: gpu tests, numerics, the runner -> results/gpu/check.csv; images/s -> results/bench/gpu.csv
	$(BIN)/python -m pytest -q -m gpu tests/test_gpu.py
	$(BIN)/python scripts/gpu_check.py --out results/gpu
	$(BIN)/python scripts/bench_step.py --device cuda --settings "global 128" --layouts nchw \
		--norms bn,brn,moving_average,none --splits 32,4 --rounds 5 --out results/bench/gpu.csv

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check brn_repro tests scripts

clean:  ## remove caches (keeps .venv, data and results)
	rm -rf .pytest_cache .ruff_cache $$(find . -name __pycache__ -not -path './$(VENV)/*')
