#!/usr/bin/env bash
# Run the Table 1 grid (issue 10 order: MOOC, then LastFM / Reddit / Stack Overflow split 0, then the remedies)
# from a pinned checkout, inside a wall-time limit, so that no cell is cut off when the machine goes.
#
#   scripts/table1_grid.sh GRID_CHECKOUT RUNS_DIR DEADLINE        e.g. scripts/table1_grid.sh ../grid ../runs 10:30
#
# GRID_CHECKOUT: a checkout of the commit to run (made with `git worktree add --detach GRID_CHECKOUT HEAD` when
# missing); RUNS_DIR: the run folders (checkpoints; not committed); DEADLINE: a time `date -d` reads, after which no
# cell is expected to end (mtpp compare --time-limit). Finished cells write their records under
# GRID_CHECKOUT/results/; copy them into the main checkout with `cp -rn GRID/results/paper_table1/. results/paper_table1/`
# and regenerate the tables (docs/guide/grid.md). Needs MTPP_DATA_DIR; two jobs, one thread each.
set -euo pipefail
grid=$1 runs=$2 deadline=$(date -d "$3" +%s)
[ -d "$grid" ] || git worktree add --detach "$grid" HEAD
cd "$grid"
export PYTHONPATH="$PWD" MPLBACKEND=Agg
left() { echo "$(( (deadline - $(date +%s)) / 60 ))m"; }
compare() {  # EXPERIMENT OUT_NAME [--set ...]
  local exp=$1 out=$2; shift 2
  [ "$(( deadline - $(date +%s) ))" -gt 300 ] || { echo "deadline reached"; exit 0; }
  python -m mtpp compare "configs/experiments/$exp.yaml" --out "$runs/$out" --results "results/$exp" --jobs 2 \
    --no-report --time-limit "$(left)" "$@" || true   # failed cells are listed; the next pass goes on
}
echo "=== $(date -u +%FT%TZ) grid at $(git rev-parse --short HEAD), deadline $3"
compare paper_table1 table1 --set "grid.datasets=[mooc]"
compare paper_table1 table1 --set "grid.datasets=[lastfm,reddit,stack_overflow]" --set "grid.splits=[0]"
compare paper_remedies remedies --estimates-from results/paper_table1   # remedy cells cost about their sum cells
echo "=== $(date -u +%FT%TZ) done"
