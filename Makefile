# dcn — two commands: `make train` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install train test test-fast lint bench gpu-check clean-venv

install: $(STAMP)

# Re-install only when the package metadata changes (idempotent).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	@# The C++ CPU kernel is compiled once per machine: here, so that no run pays for it.
	@$(PY) -c "from dcn.ops import _cpu_kernel as k; print('dcn CPU kernel:', 'ready' if k.load() else 'not built, the slower PyTorch path runs')"
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

# ruff: lint rules and formatting as configured in pyproject.toml (CI runs this before the tests).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Tables headed by the machine and its load; marked NOT QUIET when other jobs shared the CPUs
# (ARGS="--strict" refuses them instead).
bench: $(STAMP)
	$(PY) benchmarks/ops.py $(ARGS)
	$(PY) benchmarks/roi_pool.py --threads 2 $(ARGS)
	$(PY) benchmarks/throughput.py $(ARGS)

# On a machine with an NVIDIA GPU: CUDA tests, compute-sanitizer, GPU benchmarks, a GPU training run.
# Uses .venv when it exists, else $(PYTHON) as it is (installs nothing: GPU hosts are often offline).
gpu-check:
	PYTHON=$(if $(wildcard $(PY)),$(PY),$(PYTHON)) scripts/gpu_check.sh

clean-venv:
	rm -rf $(VENV)
