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
# EXTRAS=dali,ffcv: also install the optional data backends (requirements-<name>.txt; FFCV needs system-deps).
EXTRAS ?=
comma := ,
EXTRA_LIST := $(subst $(comma), ,$(EXTRAS))
EXTRA_STAMPS := $(foreach e,$(EXTRA_LIST),$(VENV)/.fastadv-extra-$(e))
# FORCE=1: train again even when the run folder holds a finished run (else it is reused, make-style).
FORCE ?=

ifeq ($(strip $(DATA)),)
  PREFIX := demo
  DATA_ARG :=
else
  PREFIX := imagenet
  DATA_ARG := --data $(DATA)
endif
MODELS := std adv adv-plus
CKPTS ?= $(foreach m,$(MODELS),$(wildcard $(RUNS)/$(PREFIX)-$(m)))

# System packages FFCV builds against (Debian names); `make system-deps` installs the missing ones.
SYSTEM_DEPS := pkg-config g++ libturbojpeg0-dev libopencv-dev

.PHONY: help system-deps install demo-methods precision-table test docs bench gpu-check train-std train-adv train-adv-plus eval clean-runs

help:  ## list the targets
	@echo "make system-deps      apt-get the packages FFCV builds against ($(SYSTEM_DEPS))"
	@echo "make install          create .venv and install fastadv with its test extras (quick when done); EXTRAS=dali,ffcv adds the data backends"
	@echo "make test             run the test suite (CPU; Triton kernels under TRITON_INTERPRET=1)"
	@echo "make docs             build the documentation site into site/ (MkDocs, --strict; reference pages from the code)"
	@echo "make train-std        train, evaluate and report Std   (demo data, or DATA=/path/to/imagenet)"
	@echo "make train-adv        train, evaluate and report Adv   (PGD-10 adversarial training)"
	@echo "make train-adv-plus   train, evaluate and report Adv+  (PGD-10 + label augmentation); a finished run is reused (FORCE=1 redoes it)"
	@echo "make bench            images/sec, memory, TFLOP/s: fast path vs baselines -> bench/results/"
	@echo "make gpu-check        one-shot GPU check (kernels, compiled step, speed, profile; <= 8 min) -> bench/results/"
	@echo "make eval             evaluate every trained run (CKPTS) into one report: RUNS/report (IMAGENET= IMAGENET_C= REAL=)"
	@echo "make demo-methods     every method (std ... dafa-at) x SEEDS on the demo, one report ranking them"
	@echo "make precision-table every train.precision policy x SEEDS on demo-adv-plus (fp32 eval + APGD-CE) -> RUNS/precision/table.json"
	@echo "make clean-runs       delete RUNS"
	@echo "variables: DATA=$(DATA) RUNS=$(RUNS) ARGS='optim.epochs=2 ...' CKPTS='runs/a runs/b' NPROC=$(NPROC) (GPUs: torchrun)"

system-deps:  ## apt-get the system packages FFCV builds against (quick when present; needs root or sudo)
	@missing=""; for p in $(SYSTEM_DEPS); do dpkg -s $$p 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "make system-deps: install$$missing yourself (no apt-get here); FFCV needs them to build"; exit 1; fi; \
	sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	echo "make system-deps: installing$$missing"; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing

install: $(STAMP) $(EXTRA_STAMPS)  ## create .venv and install fastadv with its test extras (quick when done; EXTRAS=dali,ffcv)

# pip runs without -q: every package it collects and installs is printed as it goes.
$(STAMP): pyproject.toml requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "make install: installing fastadv and its dependencies into $(VENV) (torch is ~4 GB with its CUDA libraries)"
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e '.[test]'
	@touch $@

$(VENV)/.fastadv-extra-ffcv: requirements-ffcv.txt $(STAMP) | system-deps
	$(BIN)/python -m pip install -r requirements-ffcv.txt
	@touch $@

$(VENV)/.fastadv-extra-%: requirements-%.txt $(STAMP)
	$(BIN)/python -m pip install -r $<
	@touch $@

test: install  ## run the test suite (CPU; Triton kernels run under TRITON_INTERPRET=1)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q

# The documentation site: the reference pages are regenerated from the code, then MkDocs builds with --strict
# (any warning fails). requirements-docs.txt pins MkDocs; installed once (stamp), like the extras.
DOCS_STAMP := $(VENV)/.fastadv-docs
$(DOCS_STAMP): requirements-docs.txt $(STAMP)
	$(BIN)/python -m pip install -r requirements-docs.txt
	@touch $@

docs: $(DOCS_STAMP)  ## build the documentation site into site/ (MkDocs --strict)
	$(BIN)/python docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

bench: install  ## benchmark the fast path against the research and eager AMP loops (BENCH_ARGS=..., PROFILE=1: traces)
	$(BIN)/python -m bench.run $(if $(filter 1,$(PROFILE)),--profile) $(BENCH_ARGS)

# Runs from the source tree with the system's python (torch, torchvision, triton): no install, no index.
PYTHON ?= python3
gpu-check:  ## one-shot GPU check: kernels vs reference, compiled Adv+ step under sync-debug, speed, profile
	PYTHONPATH=. $(PYTHON) -m bench.gpu_check $(GPU_CHECK_ARGS)

# NPROC > 1: one torchrun process per GPU (DDP; data.batch_size is per process), evaluation sharded too.
NPROC ?= 1
ifeq ($(shell test "$(NPROC)" -gt 1 2>/dev/null && echo multi),multi)
  LAUNCH := $(BIN)/torchrun --standalone --nproc_per_node $(NPROC) -m fastadv
else
  LAUNCH := $(BIN)/fastadv
endif

# A run folder whose log ends with a "done" event is reused (eval --skip-existing too); an unfinished one of
# the same configuration continues (--continue: after Ctrl-C, SIGTERM); FORCE=1 moves it aside (--overwrite)
# and trains again.
$(addprefix train-,$(MODELS)): train-%: install  ## train-std | train-adv | train-adv-plus: train, evaluate and report one model (NPROC=N: torchrun)
	@run=$(RUNS)/$(PREFIX)-$*; \
	if [ -z "$(FORCE)" ] && [ -f $$run/checkpoint.pt ] && tail -n 1 $$run/train.jsonl 2>/dev/null | grep -q '"event": "done"'; then \
	  echo "make train-$*: $$run is a finished run, reused (FORCE=1 trains it again)"; \
	else \
	  $(LAUNCH) train --recipe $(PREFIX)-$* $(DATA_ARG) --out $$run $(if $(FORCE),--overwrite,--continue) $(ARGS); \
	fi
	$(LAUNCH) eval $(RUNS)/$(PREFIX)-$* $(if $(FORCE),,--skip-existing)
	$(BIN)/fastadv report $(RUNS)/$(PREFIX)-$* --out $(RUNS)/$(PREFIX)-$*/report

# make eval: IMAGENET = dataset root with val/ (default: the one each run trained on),
# IMAGENET_C = released ImageNet-C folder or "generate", REAL = real.json (default: imagenet-x's),
# EVAL_ARGS = more `fastadv eval` options, e.g. EVAL_ARGS="--set eval.eps=4/255".
IMAGENET ?=
IMAGENET_C ?=
REAL ?=
EVAL_ARGS ?=
# AUTOATTACK=1: also AutoAttack (pyautoattack), the gradient-masking checks (transfer from the Std run when
# present) and the paper-code attack convention; on the demo a 10-per-class subset keeps it to CPU minutes.
AUTOATTACK ?=
AA_SUBSET ?= $(if $(strip $(DATA)),robustbench-5k,per-class:10)
STD_RUN := $(wildcard $(RUNS)/$(PREFIX)-std)
AA_OPTS = $(if $(strip $(AUTOATTACK)),--suite autoattack --suite masking --suite paper_code --set eval.subset=$(AA_SUBSET) $(if $(STD_RUN),--set eval.transfer_from=$(STD_RUN)))
EVAL_OPTS = $(AA_OPTS) $(if $(strip $(IMAGENET)),--data $(IMAGENET)) $(if $(strip $(IMAGENET_C)),--imagenet-c $(IMAGENET_C)) $(if $(strip $(REAL)),--real $(REAL))

eval: install  ## evaluate every trained run (CKPTS): clean, PGD-40, ImageNet-C, ReaL, ImageNet-X; report in RUNS/report
	@test -n "$(strip $(CKPTS))" || { echo "make eval: no runs found under $(RUNS)/ (train first, e.g. make train-std train-adv train-adv-plus, or set CKPTS)"; exit 2; }
	$(BIN)/fastadv eval $(CKPTS) --skip-existing $(EVAL_OPTS) $(EVAL_ARGS)
	$(BIN)/fastadv metrics --predictions $(CKPTS) --out $(RUNS)/report

# The precision table (issue 27): demo-adv-plus trained in each train.precision policy for each of SEEDS,
# evaluated in fp32 (PGD-40 on every test image) and by pyautoattack's APGD-CE on a per-class subset.
# PRECISION_BENCH=<a bench.run --policies result>: the table's speed column.
PRECISION_POLICIES ?= fp32 bf16 bf16-attack bf16-update bf16-lowp-input  # + fp16-scaled on a GPU (20x slower than fp32 on a CPU without fp16 units)
PRECISION_AA_ARGS ?= --suite autoattack --set eval.subset=per-class:5 --set eval.autoattack_eps=0.03 --set eval.autoattack_at_eval_eps=false --set eval.autoattack_version=custom --set 'eval.autoattack_attacks="apgd-ce"'
precision-table: install  ## train + evaluate demo-adv-plus in every precision policy x SEEDS; table in RUNS/precision/table.json
	@set -e; for s in $(SEEDS); do for p in $(PRECISION_POLICIES); do \
	  run=$(RUNS)/precision/$$p-s$$s; resume=; test -f $$run/checkpoint.pt && resume=--continue; \
	  $(BIN)/fastadv train --recipe demo-adv-plus --out $$run name=demo-adv-plus-$$p-s$$s train.seed=$$s train.precision=$$p train.progress=false $$resume $(ARGS); \
	  $(BIN)/fastadv eval $$run --skip-existing --no-progress --set eval.seed=$$s; \
	  $(BIN)/fastadv eval $$run --out $$run/eval-aa --skip-existing --no-progress --set eval.seed=$$s $(PRECISION_AA_ARGS); \
	done; done
	$(BIN)/python -m bench.precision_table $(RUNS)/precision --out $(RUNS)/precision/table.json $(if $(PRECISION_BENCH),--bench $(PRECISION_BENCH))

clean-runs:  ## delete the runs folder
	rm -rf $(RUNS)

# Every class-wise method on the embedded demo, several seeds, one report (issue: class-wise methods).
METHOD_RECIPES := std adv adv-plus trades cfa-at cfa-trades adv-plus-cfa fgsm-rs fgsm-rs-plus free free-plus dafa-trades dafa-at
SEEDS ?= 0 1 2
# What each run is evaluated on besides clean and PGD-40 (empty: only those two, a third of the time).
METHOD_EVAL_ARGS ?= --set eval.temperatures=0.5,2
demo-methods: install  ## train + evaluate every method on the demo for each of SEEDS; report in RUNS/methods/report
	@set -e; for s in $(SEEDS); do for m in $(METHOD_RECIPES); do \
	  run=$(RUNS)/methods/demo-$$m-s$$s; resume=; test -f $$run/checkpoint.pt && resume=--resume; \
	  $(BIN)/fastadv train --recipe demo-$$m --out $$run name=demo-$$m-s$$s train.seed=$$s train.progress=false $$resume $(ARGS); \
	  $(BIN)/fastadv eval $$run --skip-existing --no-progress --set eval.seed=$$s $(METHOD_EVAL_ARGS); \
	done; done
	$(BIN)/fastadv report $(foreach s,$(SEEDS),$(foreach m,$(METHOD_RECIPES),$(RUNS)/methods/demo-$(m)-s$(s))) --out $(RUNS)/methods/report
