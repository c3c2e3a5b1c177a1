# fastadv: every target installs into .venv first when needed.
#   make train-adv-plus            Adv+ on the embedded demo data (CPU, minutes)
#   make train-adv-plus DATA=/imagenet   the paper's ImageNet recipe (ResNet-50, GPU)
#   make test                      the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fastadv-installed
RUNS ?= runs
DATA ?=
ARGS ?=

ifeq ($(strip $(DATA)),)
  PREFIX := demo
  DATA_ARG :=
else
  PREFIX := imagenet
  DATA_ARG := --data $(DATA)
endif
MODELS := std adv adv-plus
CKPTS ?= $(foreach m,$(MODELS),$(wildcard $(RUNS)/$(PREFIX)-$(m)))

.PHONY: help install test bench train-std train-adv train-adv-plus eval clean-runs

help:  ## list the targets
	@echo "make install          create .venv and install fastadv with its test extras (quick when done)"
	@echo "make test             run the test suite (CPU; Triton kernels under TRITON_INTERPRET=1)"
	@echo "make train-std        train, evaluate and report Std   (demo data, or DATA=/path/to/imagenet)"
	@echo "make train-adv        train, evaluate and report Adv   (PGD-10 adversarial training)"
	@echo "make train-adv-plus   train, evaluate and report Adv+  (PGD-10 + label augmentation)"
	@echo "make bench            images/sec, memory, TFLOP/s: fast path vs baselines -> bench/results/"
	@echo "make eval             evaluate every trained run (CKPTS) into one report: RUNS/report"
	@echo "make clean-runs       delete RUNS"
	@echo "variables: DATA=$(DATA) RUNS=$(RUNS) ARGS='optim.epochs=2 ...' CKPTS='runs/a runs/b'"

install: $(STAMP)  ## create .venv and install fastadv with its test extras (quick when done)

$(STAMP): pyproject.toml requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e '.[test]'
	@touch $@

test: install  ## run the test suite (CPU; Triton kernels run under TRITON_INTERPRET=1)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q

bench: install  ## benchmark the fast path against the research and eager AMP loops (BENCH_ARGS=...)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

$(addprefix train-,$(MODELS)): train-%: install  ## train-std | train-adv | train-adv-plus: train, evaluate and report one model
	$(BIN)/fastadv train --recipe $(PREFIX)-$* $(DATA_ARG) --out $(RUNS)/$(PREFIX)-$* $(ARGS)
	$(BIN)/fastadv eval $(RUNS)/$(PREFIX)-$*
	$(BIN)/fastadv report $(RUNS)/$(PREFIX)-$* --out $(RUNS)/$(PREFIX)-$*/report

eval: install  ## evaluate every trained run (CKPTS) and write one comparison report to RUNS/report
	@test -n "$(strip $(CKPTS))" || { echo "make eval: no runs found under $(RUNS)/ (train first, e.g. make train-std train-adv train-adv-plus, or set CKPTS)"; exit 2; }
	$(BIN)/fastadv eval $(CKPTS) --skip-existing
	$(BIN)/fastadv report $(CKPTS) --out $(RUNS)/report

clean-runs:  ## delete the runs folder
	rm -rf $(RUNS)
