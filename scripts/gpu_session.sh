#!/bin/bash
# One prepared device run for a session that is lent a GPU machine (the device tool's `run`), in this order:
# CUDA tests, the CUDA/CPU precision check, `mtpp bench --device cuda` (batch 8 = the Table 1 protocol, and a large
# batch for the GPU throughput target), then grid cells side by side until GRID_S seconds have passed. Everything
# it measures lands in $OUT (at most 8 files come back): logs, bench rows, and a tarball of the grid's run folders
# and records to unpack here (the cells resume on any machine; finished ones have records).
#
# Data travels with the call: in the repo root, `mkdir -p .dev && ln -sfn $MTPP_DATA_DIR .dev/data` (.dev/ is
# git-ignored), and `carry: [".dev/data/conftpp_mooc_filtered"]` (6 MB; splits are prepared there, with
# the same content fingerprints as here). Then:  run(command="bash scripts/gpu_session.sh", timeout_s=...)
#
#   GRID_S   seconds of grid cells (default 240)      JOBS     cells side by side (default: cores - 1)
#   GRID     grid file (default configs/experiments/paper_table1.yaml); GRID_SET: its --set / --only arguments
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MTPP_DATA_DIR=${MTPP_DATA_DIR:-$PWD/.dev/data} MTPP_CACHE_DIR=/tmp/mtppcache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
GRID_S=${GRID_S:-240}; JOBS=${JOBS:-$(( $(nproc) - 1 ))}
GRID=${GRID:-configs/experiments/paper_table1.yaml}
GRID_SET=${GRID_SET:---set grid.datasets=[mooc] --set grid.splits=[1,2,3]}
{ date -u; nvidia-smi -L 2>&1; nproc; python3 -c "import torch,sys;print(sys.version.split()[0],torch.__version__,torch.cuda.is_available())"; } 2>&1 | tee "$OUT/env.txt"
python3 -c "from mtpp.data.catalog import load_dataset; load_dataset('mooc')" 2>&1 | tail -1 | tee -a "$OUT/env.txt"

# 1. correctness on the device first
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_stacked.py -rs 2>&1 | tail -5 | tee "$OUT/cuda_tests.log"
timeout 60 python3 scripts/cuda_precision.py 2>&1 | grep -v Warn | tee "$OUT/cuda_precision.txt"

# 2. grid cells side by side in the background (CPU processes sharing the one GPU, train.device auto = cuda)
timeout -s TERM "$GRID_S" python3 -m mtpp compare "$GRID" --out /tmp/runs/grid --results /tmp/results --jobs "$JOBS" \
  --no-report $GRID_SET > "$OUT/grid.log" 2>&1 &
GRID_PID=$!

# 3. throughput while the cells run is not a measurement: wait, then bench alone
wait $GRID_PID; echo "grid exit $?" >> "$OUT/grid.log"
tar czf "$OUT/grid_runs.tgz" -C /tmp runs/grid results 2>/dev/null
timeout 150 python3 -m mtpp bench --dataset mooc --device cuda --batch-size 8 --steps 20 --rounds 2 --threads 1 \
  --models gru-lnm-base gru-thp-base gru-lnm-plusplus --set model.hidden_size=36 --out "$OUT/bench_cuda_b8.json" \
  2>&1 | grep -v "round\|semaphore\|warnings.warn" | tail -6 | tee "$OUT/bench.log"
timeout 90 python3 -m mtpp bench --dataset mooc --device cuda --batch-size 512 --steps 10 --rounds 1 --threads 1 \
  --diagnostics off --models gru-lnm-plusplus --out "$OUT/bench_cuda_b512.json" \
  2>&1 | grep -v "round\|semaphore\|warnings.warn" | tail -3 | tee -a "$OUT/bench.log"
