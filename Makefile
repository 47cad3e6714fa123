# speechbook: `make book` runs every chapter in order; `make test` runs the fast tier of the tests.
# The virtual environment is made on first use (and again whenever pyproject.toml changes).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch that lies on this machine's disk (see the env docs); a GPU machine can pass
# TORCH_SPEC="torch" (or any CUDA build >= 2.4) instead.
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= cpu
RUN_ID ?= book
CHAPTERS ?=
SET ?=
PYTEST_ARGS ?=

.PHONY: help setup book sweep train-ddp test test-slow test-ci test-browser test-all lab clean-notebooks bench rerun status

help:
	@echo "make book [PROFILE=cpu|full] [RUN_ID=name] [CHAPTERS='01 03'] [SET='seed=1 epochs=2']"
	@echo "make test (fast tier) | make test-slow | make test-ci (fast + slow) | make test-browser | make test-all"
	@echo "make lab | make bench"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name speechbook --display-name "speechbook (.venv)" >/dev/null
	touch $@

book: setup
	$(PY) -m lib book --profile $(PROFILE) --run-id $(RUN_ID) $(if $(CHAPTERS),--chapters "$(CHAPTERS)") $(foreach s,$(SET),--set $(s))

# A seed x variant sweep on the run's bank: GPUS=0 runs members one after another, GPUS=N one per GPU.
GPUS ?= 0
SEEDS ?=
VARIANTS ?=
sweep: setup
	$(PY) -m lib sweep --profile $(PROFILE) --run-id $(RUN_ID) --gpus $(GPUS) $(if $(SEEDS),--seeds "$(SEEDS)") $(if $(VARIANTS),--variants "$(VARIANTS)")

# One training run across GPUS processes with Accelerate (DDP), on the run's bank; saved as system NAME.
NAME ?= qwen2audio-attn-ddp
train-ddp: setup
	$(VENV)/bin/accelerate launch --num_processes $(GPUS) -m lib.distributed --run-dir results/$(PROFILE)/$(RUN_ID) --name $(NAME) $(foreach s,$(SET),--set $(s))

rerun: setup
	$(PY) -m lib rerun $(RUN_DIR)

status: setup
	$(PY) -m lib status results/$(PROFILE)/$(RUN_ID)

# The tests come in tiers, by pytest marker (pyproject.toml): `slow` for notebooks through papermill and training end
# to end, `browser` for JupyterLab in headless Chromium; everything else is the fast tier.
# The fast tier: unit and integration tests (synthetic audio, the corpus when present); under 10 minutes on 2 cores.
test: setup
	$(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

# The slow tier: every chapter on a synthetic corpus, the whole book on the real one, kill/resume, DDP, sweeps.
test-slow: setup
	$(PY) -m pytest -m "slow and not browser" $(PYTEST_ARGS)

# What CI runs before the browser test: the fast and slow tiers. The suite keeps about one core busy (the small
# models train and score on one thread), so on 2 cores it runs as two pytest sessions side by side: the tests that
# train on the real corpus (`slow` and `data`: the whole book, the cpu-bank training, Whisper's transcriptions)
# beside all the others. The model folders lib builds on first use are built first, so that the two sessions never
# build one at the same time. The corpus session's log is printed when both are done; either failing fails the target
# (the corpus session may select nothing, exit status 5, when PYTEST_ARGS names other tests).
CI_LOG := test-artifacts/test-ci-corpus.log
test-ci: setup
	$(PY) -c "from lib import model; [model.resolve_model_path(m) for m in ('tiny', 'mini')]"
	@mkdir -p $(dir $(CI_LOG))
	@$(PY) -m pytest -m "slow and data and not browser" -p no:cacheprovider $(PYTEST_ARGS) >$(CI_LOG) 2>&1 & corpus=$$!; \
	$(PY) -m pytest -m "not browser and not (slow and data)" $(PYTEST_ARGS); rest=$$?; \
	wait $$corpus; corpus_rc=$$?; \
	echo "=== the real-corpus tests (pytest -m 'slow and data'), run beside the others: $(CI_LOG)"; cat $(CI_LOG); \
	test $$rest -eq 0 -a \( $$corpus_rc -eq 0 -o $$corpus_rc -eq 5 \)

# JupyterLab in headless Chromium: needs Debian's chromium (.ci/browser-setup.sh installs it).
test-browser: setup
	bash .ci/browser-setup.sh
	$(PY) -m pytest -m browser tests/browser $(PYTEST_ARGS)

test-all: test-ci test-browser

lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks

clean-notebooks: setup
	$(PY) -m lib clean-notebooks

bench: setup
	$(PY) -m bench.cpu
