"""Re-evaluate committed grid records from their run directories' ``best.pt`` with the current evaluation code.

Used when evaluation gains a metric (e.g. the binned time NLL of ``mtpp.data.lattice``): for every record under
RESULTS whose run directory is found under one of the RUNS roots (``<root>/<cell name>`` whose ``metrics.json`` has
the record's ``train`` and ``val`` sections exactly, so a rerun or withdrawn run of the same cell is never taken for
it, while a run whose test section an interrupted rescoring already rewrote still is), the test split is
scored again (``mtpp.evaluation.evaluate``, which rewrites that run's ``metrics.json`` test section) and the
record rebuilt (``mtpp.records.build_record``, wall time kept). Every test metric the record already had must come
back within ``--rtol`` (same weights, same data: only new metrics may appear), else the record is left as it was
and the difference printed. Records without a run directory here are listed and left alone.

    python scripts/rescore_records.py results/paper_table1 /work/runs/t1m_a /work/runs/t1m_b [--missing pce_binned]
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm


def _changed(old: dict, new: dict, rtol: float) -> list[str]:
    out = []
    for key, before in old.items():
        after = new.get(key)
        if isinstance(before, (int, float)) and isinstance(after, (int, float)):
            if math.isfinite(before) and not math.isclose(before, after, rel_tol=rtol, abs_tol=rtol):
                out.append(f"{key} {before!r} -> {after!r}")
        elif before != after:
            out.append(f"{key} {before!r} -> {after!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the script; bad input (no such folder, a record cut short) is one line ``rescore_records: error: ...``
    and exit code 2 (``mtpp.cli.run_script``)."""
    from mtpp.cli import run_script

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="a folder of result records (results/<experiment>)")
    p.add_argument("runs", type=Path, nargs="+", help="roots holding the cells' run directories")
    p.add_argument("--rtol", type=float, default=1e-6, help="tolerance on the metrics a record already has")
    p.add_argument("--missing", metavar="METRIC", help="only records whose test metrics lack METRIC")
    p.add_argument("--dry-run", action="store_true", help="only say which records have a run directory here")
    args = p.parse_args(argv)
    return run_script("rescore_records", lambda: rescore(args))


def rescore(args: argparse.Namespace) -> int:
    """The script's work once its arguments are parsed."""
    from mtpp.errors import ConfigError
    from mtpp.evaluation.evaluate import evaluate
    from mtpp.records import build_record, find_run, read_records, write_record
    from mtpp.training.trainer import git_revision

    if not args.results.is_dir():
        raise ConfigError(f"{args.results}: no such folder of result records")
    todo, missing = [], []
    for record in read_records(args.results):
        name = record["cell"]["name"]
        if args.missing and args.missing in ((record.get("metrics") or {}).get("test") or {}):
            continue
        run = find_run(record, args.runs)
        if run is None:
            missing.append(name)
        else:
            todo.append((record, run))
    for name in missing:
        print(f"no run directory with this record's metrics.json: {name} (left alone)")
    if args.dry_run:
        for record, run in todo:
            print(f"would rescore {record['cell']['name']} from {run}")
        return 0
    failed = 0
    for record, run in tqdm(todo, desc="rescoring records", unit="cell"):
        name = record["cell"]["name"]
        before = record["metrics"].get("test") or {}
        evaluate(run, "test")
        rebuilt = build_record(run, record["cell"], record.get("wall_seconds"))
        changed = _changed(before, rebuilt["metrics"].get("test") or {}, args.rtol)
        if changed:
            failed += 1
            tqdm.write(f"{name}: test metrics moved, record left as it was: {'; '.join(changed[:5])}")
            continue
        added = sorted(set(rebuilt["metrics"]["test"]) - set(before))
        # provenance: the record says that (and when, by which code, with what) it was rescored
        rebuilt["rescored"] = [*record.get("rescored", []), {
            "when": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z"), "git_revision": git_revision(),
            "added": added}]  # fmt: skip
        write_record(args.results, name, rebuilt)
        tqdm.write(f"{name}: rescored from {run}" + (f"; new: {', '.join(added)}" if added else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
