#!/usr/bin/env python
"""Add ``validation_curve`` (the validation ``L_T`` / ``L_M`` of every epoch) and ``validation_after_best`` (the
divergence check's numbers) to committed records written before records carried them, from their run
directories' ``log.jsonl``.

For every record under RESULTS lacking either key whose run directory is found under one of the RUNS roots
(``mtpp.records.find_run``: ``<root>/<cell name>`` whose ``metrics.json`` has the record's ``train`` and ``val``
sections exactly), the missing keys are built from that run's epoch log lines by the functions new records use
(``mtpp.records.record_from_log``), and ``validation_curve_added`` says when and by which git revision. No other
key of the record changes. Records without a run directory here are counted and left alone (the figure
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
    """Run the script; bad input (no such folder, a record cut short) is one line ``add_validation_curves: error:
    ...`` and exit code 2 (``mtpp.cli.run_script``)."""
    from mtpp.cli import run_script

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="a folder of result records (results/<experiment>)")
    p.add_argument("runs", type=Path, nargs="+", help="roots holding the cells' run directories")
    p.add_argument("--dry-run", action="store_true", help="only say which records would gain a curve")
    args = p.parse_args(argv)
    return run_script("add_validation_curves", lambda: add_curves(args))


def add_curves(args: argparse.Namespace) -> int:
    """The script's work once its arguments are parsed."""
    from mtpp.errors import ConfigError
    from mtpp.records import find_run, read_records, record_from_log, write_record
    from mtpp.training.trainer import git_revision

    if not args.results.is_dir():
        raise ConfigError(f"{args.results}: no such folder of result records")

    added, absent = 0, 0
    revision = git_revision()
    for record in read_records(args.results):
        missing = [k for k in ("validation_curve", "validation_after_best") if record.get(k) is None]
        if not missing:
            continue
        run = find_run(record, args.runs)
        built = record_from_log(run, record) if run else {}
        gained = {k: built[k] for k in missing if built.get(k) is not None}
        if not gained:
            absent += 1
            continue
        name = record["cell"]["name"]
        if args.dry_run:
            print(f"would add {', '.join(gained)} to {name} from {run}")
            continue
        path = record.pop("_path")
        record.update(gained)
        record["validation_curve_added"] = {
            "when": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z"), "git_revision": revision,
            "keys": sorted(gained)}  # fmt: skip
        write_record(args.results, name, record)
        print(f"{path}: {', '.join(sorted(gained))} from {run}")
        added += 1
    print(f"{added} record(s) gained a validation curve or divergence check; {absent} lacking one without a run "
          "directory here (left alone)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
