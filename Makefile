# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each installs what it needs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SYNTH := data/ptbxl-synth

.PHONY: install demo test test-all bench lint clean-runs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(SYNTH)/ptbxl_database.csv: | $(STAMP)
	$(PY) -m bioexp.data.synth ptbxl --out $(SYNTH) --records 2000

# A short supervised run on the synthetic PTB-XL, on CPU: ~3 minutes on 2 cores.
demo: $(STAMP) $(SYNTH)/ptbxl_database.csv
	$(PY) -m bioexp.train experiment=ptbxl_xresnet1d50 trainer=cpu trainer.max_epochs=6 \
		data.root=$(SYNTH) task_name=demo
	@echo "Results: $$(ls -d outputs/demo/*/ | tail -n 1) (metrics.json, checkpoints/, csv/metrics.csv, plots/)"

test: $(STAMP)
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-all: $(STAMP)
	@$(PY) -m pytest -q -m ""; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) -m bioexp.bench

lint: $(STAMP)
	$(VENV)/bin/ruff check bioexp tests hydra_plugins

clean-runs:
	rm -rf outputs multirun
