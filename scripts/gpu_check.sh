#!/usr/bin/env bash
# The GPU check: CUDA-path tests, the CUDA kernels under compute-sanitizer, the GPU benchmarks and a
# short training run on the GPU. Each step has its own time limit and log; a failing step does not
# stop the others, and the exit status is non-zero if any step failed.
#
#   make gpu-check                      # logs into gpu-check/ (or $GPU_CHECK_LOGS, or $OUT)
#   PYTHON=python3 scripts/gpu_check.sh
#
# Needs: an NVIDIA GPU, torch, torchvision, cupy (pip install -e .[cuda13]), pytest; compute-sanitizer
# (CUDA toolkit) for the memory check; hydra-core and omegaconf for the training run. Steps whose
# tool is missing are reported as skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${GPU_CHECK_LOGS:-${OUT:-gpu-check}}
mkdir -p "$LOGS"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME SECONDS LOGFILE COMMAND...
  local name=$1 limit=$2 log=$3
  shift 3
  local start=$SECONDS
  echo "== $name (limit ${limit}s)" | tee -a "$LOGS/$log"
  timeout --kill-after=10 "$limit" "$@" >>"$LOGS/$log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOGS/$log"
  [ $rc -eq 0 ] || failed+=("$name (exit $rc)")
}

{
  date -u +"%Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'torchvision', torchvision.__version__, 'gpu', torch.cuda.get_device_name())"
  "$PY" -c "import cupy; print('cupy', cupy.__version__)" 2>&1
  uptime
} >"$LOGS/info.txt" 2>&1
cat "$LOGS/info.txt"

step "CUDA-path tests" "${TEST_LIMIT:-200}" pytest.log \
  "$PY" -m pytest tests/ops/cuda -m "not slow" --confcutdir=tests/ops/cuda -p no:cacheprovider -q -rfEs
step "deform_conv2d benchmark" 90 bench_ops.md "$PY" benchmarks/ops.py --device cuda --reps 10
step "deform_roi_pool benchmark" 60 bench_roi_pool.md "$PY" benchmarks/roi_pool.py --device cuda --reps 10
step "training throughput" 60 throughput.md \
  "$PY" benchmarks/throughput.py --device cuda --steps 10 --batch-size 64 --image-size 64
if command -v compute-sanitizer >/dev/null; then
  step "compute-sanitizer memcheck" 120 sanitizer.log env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    PYTHONPATH="tests/ops/cuda:$PYTHONPATH" compute-sanitizer --tool memcheck --error-exitcode 9 \
    --print-limit 20 "$PY" tests/ops/cuda/sanitized_run.py --cuda
else
  echo "== compute-sanitizer memcheck: skipped (compute-sanitizer not on PATH)" | tee -a "$LOGS/sanitizer.log"
fi
if "$PY" -c "import hydra" 2>/dev/null; then
  runs="${TMPDIR:-/tmp}/dcn-gpu-check-runs"
  step "training run on the GPU" 120 train.log "$PY" train.py trainer=gpu trainer.max_epochs=2 \
    experiment_name=gpu_check "paths.log_dir=$runs" "hydra.run.dir=$runs/run-$(date +%s)" logger=csv
  find "$runs" -name results.json -newer "$LOGS/info.txt" -exec cat {} + >>"$LOGS/train.log" 2>/dev/null
else
  echo "== training run on the GPU: skipped (hydra-core is not installed)" | tee -a "$LOGS/train.log"
fi

if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "gpu-check: all steps passed (logs in $LOGS/)"
