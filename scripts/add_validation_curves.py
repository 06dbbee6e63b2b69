#!/usr/bin/env python
"""Add ``validation_curve`` (the validation ``L_T`` / ``L_M`` of every epoch) to committed records written before
records carried it, from their run directories' ``log.jsonl``.

For every record under RESULTS without the key whose run directory is found under one of the RUNS roots
(``mtpp.records.find_run``: ``<root>/<cell name>`` whose ``metrics.json`` has the record's ``train`` and ``val``
sections exactly), the curve is built from that run's epoch log lines by ``mtpp.records.validation_curve``, the
function new records use, and added with ``validation_curve_added`` (when, and the git revision that added it).
No other key of the record changes. Records without a run directory here are counted and left alone (the figure
of their cells is then drawn from the splits that have curves).

    python scripts/add_validation_curves.py results/paper_table1 /work/runs/t1m_x [--dry-run]
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from mtpp.records import find_run, read_log, read_records, validation_curve, write_record
    from mtpp.training.trainer import git_revision

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="a folder of result records (results/<experiment>)")
    p.add_argument("runs", type=Path, nargs="+", help="roots holding the cells' run directories")
    p.add_argument("--dry-run", action="store_true", help="only say which records would gain a curve")
    args = p.parse_args(argv)
    if not args.results.is_dir():
        raise SystemExit(f"add_validation_curves: {args.results}: no such folder")

    added, absent = 0, 0
    revision = git_revision()
    for record in read_records(args.results):
        if record.get("validation_curve"):
            continue
        run = find_run(record, args.runs)
        curve = validation_curve([r for r in read_log(run) if r.get("kind") == "epoch"]) if run else None
        if curve is None:
            absent += 1
            continue
        name = record["cell"]["name"]
        if args.dry_run:
            print(f"would add a {len(curve['epoch'])}-epoch curve to {name} from {run}")
            continue
        path = record.pop("_path")
        record["validation_curve"] = curve
        record["validation_curve_added"] = {
            "when": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z"), "git_revision": revision}
        write_record(args.results, name, record)
        print(f"{path}: {len(curve['epoch'])}-epoch validation curve from {run}")
        added += 1
    print(f"{added} record(s) gained a validation curve; {absent} without one and without a run directory here "
          "(left alone)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
