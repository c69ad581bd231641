# dcn — two commands: `make train` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install train test test-fast lint bench gpu-check gpu-wheels clean-venv

install: $(STAMP)

# Re-install only when the package metadata changes (idempotent).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	@# Where a CUDA build of torch sees a GPU: the CuPy extra for torch's CUDA major (the GPU kernels).
	@extra=$$($(PY) -c 'import torch; v = torch.version.cuda; print("cuda" + v.split(".")[0] if v and torch.cuda.is_available() else "")'); \
	if [ -n "$$extra" ]; then echo "CUDA $$extra torch with a GPU: installing .[$$extra] (CuPy)"; $(PY) -m pip install -q -e ".[$$extra]"; fi
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

# On a machine with an NVIDIA GPU, in under 8 minutes: GPU tests, self-check, deterministic mode,
# compute-sanitizer, GPU benchmarks, training steps, profiler; report in gpu_report/report.md (ARGS="--out DIR").
# DRY=1: the same steps on the CPU at tiny sizes (CI). Uses .venv when it exists, else $(PYTHON) as it is
# (installs nothing there: GPU hosts are often offline; see gpu-wheels).
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) benchmarks/gpu_check.py $(if $(filter 1 yes true,$(DRY)),--dry-run) $(ARGS)

# Needs internet: the pure-Python wheels gpu-check's training step installs on an offline GPU machine
# (hydra-core, omegaconf, antlr4), at .venv's versions, into gpu_wheels/ (git-ignored: carry it along).
gpu-wheels: $(STAMP)
	$(PY) benchmarks/gpu_check.py --download-wheels $(ARGS)

clean-venv:
	rm -rf $(VENV)
