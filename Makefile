# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each installs what it needs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SYNTH := data/ptbxl-synth

.PHONY: install demo test test-all bench gpu-check lint clean-runs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(SYNTH)/ptbxl_database.csv: | $(STAMP)
	$(PY) -m bioexp.data.synth ptbxl --out $(SYNTH) --records 2000

# A short supervised run on the synthetic PTB-XL, on CPU: ~7 minutes on 2 cores, synthesis included.
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

# Every study's short GPU run (amp16/bf16, eager/compiled, DDP on 2 GPUs) in one table; docs/gpu.md.
# Without CUDA it says so and exits 0. GPU_CHECK_ARGS=--ep-prior-epoch adds EP-Prior's PTB-XL-size epoch time.
gpu-check: $(STAMP)
	@$(PY) -m bioexp.gpu_check $(GPU_CHECK_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check bioexp tests hydra_plugins

clean-runs:
	rm -rf outputs multirun
