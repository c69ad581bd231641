#!/usr/bin/env bash
# The sweeps behind docs/results.md, their reports and the offset-spread measure, with each sweep's wall
# time appended to $S/timings.txt. Data: ../shared/data (or DCN_SHARED_DATA=/path/to/data).
#   bash scripts/results.sh                 # everything (~1 h 30 min on 2 cores; docs/results.md)
#   bash scripts/results.sh mnist           # one part: mnist | frcnn | tracking | reports
# N_JOBS (default 2) runs at a time, each on one thread.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
S=${RESULTS_DIR:-logs/results}
L="hydra/launcher=parallel hydra.launcher.n_jobs=${N_JOBS:-2} trainer=cpu callbacks.progress_bar=null"
mkdir -p "$S"

sweep() {  # sweep NAME overrides...
  local name=$1; shift
  local start=$SECONDS
  $PY train.py -m "$@" $L "hydra.sweep.dir=$S/$name"
  echo "$name $((SECONDS - start)) s ($(date -u +%Y-%m-%d))" | tee -a "$S/timings.txt"
}

part=${1:-all}
if [[ $part == all || $part == mnist ]]; then
  sweep mnist_five_conv experiment=mnist_scaled backbone.deform.enabled=false,true seed=0,1,2,3,4
  sweep mnist_five_conv_v2 experiment=mnist_scaled backbone.deform.modulated=true seed=0,1,2,3,4
  sweep mnist_seed_net experiment=mnist_scaled backbone=seed_net trainer.max_epochs=5 \
    backbone.deform.enabled=false,true seed=0,1,2,3,4
fi
if [[ $part == all || $part == frcnn ]]; then
  sweep frcnn_raccoon experiment=frcnn_raccoon backbone.deform.enabled=false,true seed=0,1,2
fi
if [[ $part == all || $part == tracking ]]; then
  sweep siamrpn_raccoon_bag experiment=siamrpn_raccoon_bag backbone.deform.enabled=false,true seed=0,1,2
fi
if [[ $part == all || $part == reports ]]; then
  $PY -m dcn.report "$S/mnist_five_conv" "$S/mnist_five_conv_v2" --out docs/results/mnist_scaled_five_conv
  $PY -m dcn.report "$S/mnist_seed_net" --out docs/results/mnist_scaled_seed_net
  $PY -m dcn.report "$S/frcnn_raccoon" --out docs/results/frcnn_raccoon
  $PY -m dcn.report "$S/siamrpn_raccoon_bag" --out docs/results/siamrpn_raccoon_bag
  # Offset spread against digit scale, from seed 0 of DCN v1 (job 5) and of DCN v2 (job 0)
  $PY -m dcn.offset_spread "$S/mnist_five_conv/5" --out docs/results/offset_spread_v1
  $PY -m dcn.offset_spread "$S/mnist_five_conv_v2/0" --out docs/results/offset_spread_v2
fi
