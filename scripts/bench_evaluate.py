"""Time the final evaluation of trained runs (``mtpp.evaluation.evaluate``: NLL, PIT, quantiles, mark forecast).

The grid's cells spend minutes in it after training (``wall_seconds - train_seconds`` of a record); this measures
it per run directory, so that a change to ``icdf`` or the mark forecast can be compared under two checkouts::

    PYTHONPATH=OLD_CHECKOUT python scripts/bench_evaluate.py RUN... --out benchmarks/eval_old.json
    PYTHONPATH=.            python scripts/bench_evaluate.py RUN... --out benchmarks/eval_new.json
    python scripts/bench_evaluate.py --table benchmarks/eval_old.json benchmarks/eval_new.json   # markdown, stdout

Each run: one untimed evaluation (warm-up), then ``--rounds`` timed ones of ``--split`` with ``write=False`` (the
run directory is not touched); the row holds the median seconds, scored events per second, the git revision of the
``mtpp`` that ran and the run's decoder / parametrisation. One torch thread (the grid's).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def revision(package_dir: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(package_dir), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, check=True)  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (with best.pt), or with --table the JSON "
                        "files to compare (first = before)")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="JSON file to write (a new file)")
    parser.add_argument("--table", action="store_true", help="print a markdown table of the given JSON files")
    args = parser.parse_args(argv)
    if args.table:
        print(table([json.loads(p.read_text(encoding="utf-8")) for p in args.runs], [str(p) for p in args.runs]))
        return 0
    if args.out is None:
        parser.error("--out is required (or --table)")
    if args.out.exists():
        parser.error(f"{args.out} exists: name a new file")
    torch.set_num_threads(1)
    import mtpp
    from mtpp.evaluation.evaluate import evaluate
    from mtpp.runs import open_run

    rows = []
    for run in args.runs:
        cfg = open_run(run).config
        metrics = evaluate(run, args.split, write=False)  # warm-up
        seconds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            evaluate(run, args.split, write=False)
            seconds.append(time.perf_counter() - start)
        median = statistics.median(seconds)
        rows.append({"run": str(run), "decoder": cfg.model.decoder, "parametrisation": cfg.model.parametrisation,
                     "eval_integration": cfg.model.eval_integration, "split": args.split,
                     "num_events": metrics.get("num_events"), "seconds": seconds, "median_seconds": median,
                     "events_per_second": (metrics.get("num_events") or 0) / median})  # fmt: skip
        print(f"{run}: {median:.2f} s, {rows[-1]['events_per_second']:.0f} events/s", file=sys.stderr)
    package = Path(mtpp.__file__).resolve().parent
    out = {"revision": revision(package), "mtpp": str(package), "torch": torch.__version__, "threads": 1,
           "machine": platform.machine(), "rows": rows}  # fmt: skip
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


def table(results: list[dict], names: list[str]) -> str:
    """Markdown: one row per run, median seconds and events/s of each file, and the first file's time over each
    later one's (the speed-up)."""
    head = ["run", "decoder", "param.", "events", *(f"{r['revision']}: s (events/s)" for r in results)]
    head += [f"speed-up {results[0]['revision']} -> {r['revision']}" for r in results[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    counts = [len(r["rows"]) for r in results]
    if len(set(counts)) > 1:
        raise SystemExit(f"the files list other runs: {counts} rows")
    for i, row in enumerate(results[0]["rows"]):
        same = [r["rows"][i] for r in results]
        if any(x["run"] != row["run"] for x in same):
            raise SystemExit(f"the files list other runs in row {i}: {[x['run'] for x in same]}")
        cells = [Path(row["run"]).name, row["decoder"], row["parametrisation"], str(row["num_events"])]
        cells += [f"{x['median_seconds']:.2f} ({x['events_per_second']:.0f})" for x in same]
        cells += [f"{row['median_seconds'] / x['median_seconds']:.2f}x" for x in same[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "Files: " + ", ".join(f"`{n}`" for n in names)])


if __name__ == "__main__":
    raise SystemExit(main())
