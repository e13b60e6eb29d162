# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each installs what it needs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SYNTH := data/ptbxl-synth

.PHONY: install demo test test-all bench gpu-check gpu-wheels gpu-check-offline lint clean-runs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(SYNTH)/ptbxl_database.csv: | $(STAMP)
	$(PY) -m bioexp.data.synth ptbxl --out $(SYNTH) --records 2000

# A short supervised run on the synthetic PTB-XL, on CPU, synthesis included: 2.5 min on 2 idle cores, ~7 when busy.
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

# A GPU machine with its own PyTorch/Lightning and no network (the lent H200: Python 3.12; docs/gpu.md):
# `make gpu-wheels` here puts what bioexp needs beyond that machine's packages into .whl/ (about 33 MB);
# carry .whl there and run `make gpu-check-offline`, which installs them under /tmp and needs no venv.
OFFLINE_PY ?= 3.12
OFFLINE_PLATFORMS := manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
	manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64
OFFLINE_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 hydra-optuna-sweeper==1.3.0 wfdb==4.3.1 soundfile==0.14.0 \
	cffi==2.1.1 vitaldb==1.7.2 pydicom==3.0.2 pylibjpeg==2.1.0 pylibjpeg-libjpeg==2.5.0 pylibjpeg-openjpeg==2.6.0 pylibjpeg-rle==2.2.0 \
	nibabel==5.4.2 platformdirs==4.14.9 pytz==2026.6 granite-tsfm==0.3.2 datasets==5.0.1 dill==0.4.1 \
	multiprocess==0.70.19 transformers==4.56.0 tokenizers==0.22.2 huggingface_hub==0.36.2

gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(OFFLINE_PY) --implementation cp \
		$(addprefix --platform ,$(OFFLINE_PLATFORMS)) -d .whl $(OFFLINE_WHEELS)
	$(PY) -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # an sdist only; pure Python
	@du -sh .whl

OFFLINE_PYTHON ?= python3
gpu-check-offline:
	$(OFFLINE_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target /tmp/bioexp-site .whl/*.whl
	PYTHONPATH=/tmp/bioexp-site:$(CURDIR) $(OFFLINE_PYTHON) -m bioexp.gpu_check $(GPU_CHECK_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check bioexp tests hydra_plugins

clean-runs:
	rm -rf outputs multirun
