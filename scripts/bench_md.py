#!/usr/bin/env python
"""Markdown tables of BENCHMARKS.md from the committed benchmark rows (``benchmarks/*.json``), never typed by hand.

    python scripts/bench_md.py benchmarks/cuda_h200_mooc_b8.json                              # print the table
    python scripts/bench_md.py --update BENCHMARKS.md --block cuda \\
        benchmarks/cuda_h200_mooc_b8.json benchmarks/cuda_h200_mooc_b64.json benchmarks/cuda_h200_grid_15_cells.json

Three kinds of row files are understood:

- ``mtpp bench --out`` rows (one per model): training events/s without and with the gradient diagnostics (``cos_tm``
  at every step), evaluation events/s (``model.score``: NLL, PIT, both mark distributions), peak memory (CUDA: the
  allocator's peak; CPU: the process's peak RSS), padding share; one table per file, headed by its protocol.
- grid-cell rows (key ``cell``): epochs run, median seconds per epoch, median validation seconds and median training
  events/s of cells that ran side by side on one machine (``concurrent_cells``).
- ensemble rows (key ``members``, ``scripts/bench_ensemble.py --out``): one model's training step against the
  vectorised ensemble step of ``members`` models, events/s summed over members, medians over rounds.
- prediction rows (key ``predict_model``, ``scripts/bench_predict.py --out``): rows per second of ``mtpp predict``'s
  table per model and code version, medians over rounds.

``--update FILE --block NAME`` replaces the text between ``<!-- BEGIN NAME -->`` and ``<!-- END NAME -->`` in FILE.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _int(v: Any) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def bench_table(rows: list[dict[str, Any]], source: str) -> list[str]:
    """The table of one ``mtpp bench --out`` file, with a protocol line."""
    r0 = rows[0]
    out = [
        f"`{source}`: {r0.get('device_name') or r0.get('device')}, torch {r0.get('torch_version')}, "
        f"{r0.get('num_threads')} thread(s), dataset {r0.get('dataset')} (training part), batch {r0.get('batch_size')}, "
        f"{r0.get('steps')} timed steps x {r0.get('rounds')} round(s) after a warm-up pass; "
        f"memory: {r0.get('peak_memory_kind')}"
        + (f"; compiled integrand: {'yes' if r0['compile_integrand'] else 'no'}" if "compile_integrand" in r0 else "")
        + (f"; overrides: {', '.join(r0['overrides'])}" if r0.get("overrides") else "")
        + (f"; machine load {r0['load_average']:.1f} (1-minute average at the start)"
           if isinstance(r0.get("load_average"), (int, float)) else "")
        + ".",
        "",
        "| model | params | train ev/s | train ev/s (cos_tm every step) | diagnostics overhead | eval ev/s | peak MB "
        "| padding |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        overhead = r.get("diagnostics_overhead")
        out.append(
            f"| {r['model']} | {_int(r.get('num_parameters'))} | {_int(r.get('train_events_per_second'))} | "
            f"{_int(r.get('train_events_per_second_diagnostics'))} | "
            f"{'n/a' if overhead is None else f'{100 * overhead:+.0f} %'} | {_int(r.get('eval_events_per_second'))} | "
            f"{_int(r.get('peak_memory_mb'))} | {100 * r.get('padding_fraction', 0.0):.1f} % |"
        )
    return out


def cell_table(rows: list[dict[str, Any]], source: str) -> list[str]:
    """The table of one grid-cell timing file (cells that ran side by side), with a total line."""
    r0 = rows[0]
    total = sum(r["train_events_per_second_median"] for r in rows)
    out = [
        f"`{source}`: {len(rows)} cells side by side on {r0.get('device_name')} ({r0.get('device')}), "
        f"{r0.get('threads_per_cell')} thread(s) per cell, torch {r0.get('torch_version')}, precision: "
        f"{r0.get('tf32')}.",
        "",
        "| cell | epochs run | s/epoch (median) | validation s (median) | train ev/s (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['cell']} | {r['epochs_run']} | {r['epoch_seconds_median']:.1f} | "
            f"{r['validation_seconds_median']:.2f} | {_int(r['train_events_per_second_median'])} |"
        )
    out += ["", f"Together: {_int(total)} training events/s over the {len(rows)} cells."]
    return out


def ensemble_table(rows: list[dict[str, Any]], source: str) -> list[str]:
    """The table of one ``scripts/bench_ensemble.py`` file."""
    r0 = rows[0]
    out = [
        f"`{source}`: batch {r0.get('batch_size')}, {r0.get('threads')} thread(s), medians over "
        f"{len(r0.get('single_rounds') or [])} alternating rounds; events summed over the ensemble's members.",
        "",
        "| model | overrides | members | single ev/s | ensemble ev/s | ratio | padding single / ensemble |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pad = f"{100 * r['single_padding']:.0f} % / {100 * r['ensemble_padding']:.0f} %"
        out.append(
            f"| {r['model']} | {' '.join(r.get('overrides') or []) or '-'} | {r['members']} | "
            f"{_int(r['single_events_per_second'])} | {_int(r['ensemble_events_per_second'])} | {r['ratio']:.2f}x | "
            f"{pad} |"
        )
    return out


def predict_table(rows: list[dict[str, Any]], source: str) -> list[str]:
    """The table of one ``scripts/bench_predict.py`` file: one line per model, one column per code version."""
    r0 = rows[0]
    codes = list(dict.fromkeys(r["code"] for r in rows))
    models = list(dict.fromkeys(r["predict_model"] for r in rows))
    by = {(r["predict_model"], r["code"]): r for r in rows}
    out = [
        f"`{source}`: dataset {r0.get('dataset')}, first {r0.get('sequences')} sequences, batch {r0.get('batch_size')}, "
        f"{r0.get('threads')} thread(s), torch {r0.get('torch_version')}, "
        f"{' '.join(r0.get('overrides') or []) or 'model defaults'}; median over {len(r0.get('rounds') or [])} rounds.",
        "",
        "| model | rows | " + " | ".join(f"rows/s ({c})" for c in codes) + " |",
        "|---|---:|" + "---:|" * len(codes),
    ]
    for m in models:
        cells = [_int(by[(m, c)]["rows_per_second"]) if (m, c) in by else "n/a" for c in codes]
        n = next(by[(m, c)]["rows"] for c in codes if (m, c) in by)
        out.append(f"| {m} | {n:,} | " + " | ".join(cells) + " |")
    return out


def render(paths: list[Path]) -> str:
    out: list[str] = []
    for p in paths:
        try:
            rows = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # one line, not a traceback
            raise SystemExit(f"bench_md: {p}: {' '.join(str(e).split()) or type(e).__name__}") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise SystemExit(f"bench_md: {p}: not a benchmark file (a JSON list of rows, as mtpp bench --out "
                             "writes)")
        if not rows:
            out += [f"`{p}`: no rows.", ""]
            continue
        table = (cell_table if "cell" in rows[0] else ensemble_table if "members" in rows[0]
                 else predict_table if "predict_model" in rows[0] else bench_table)
        out += table(rows, str(p)) + [""]
    return "\n".join(out).rstrip() + "\n"


def update_block(path: Path, block: str, text: str) -> None:
    """Replace the text between this block's BEGIN / END markers in ``path`` (a missing block is an error)."""
    begin, end = f"<!-- BEGIN {block} -->", f"<!-- END {block} -->"
    doc = path.read_text(encoding="utf-8")
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path}: no {begin!r} ... {end!r} block to replace")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text}{end}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path, help="benchmark row files (JSON lists)")
    ap.add_argument("--update", type=Path, help="replace a marked block of this file")
    ap.add_argument("--block", help="the block's name (with --update)")
    args = ap.parse_args(argv)
    paths = list(args.files)
    header = "<!-- generated by: python scripts/bench_md.py " + " ".join(map(str, paths)) + "; do not edit -->\n\n"
    text = header + render(paths)
    if args.update is None:
        print(text, end="")
        return 0
    if not args.block:
        raise SystemExit("--update needs --block NAME")
    update_block(args.update, args.block, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
