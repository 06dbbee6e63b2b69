#!/usr/bin/env python
"""Reproduce (a subset of) Table 1 of Bosser & Ben Taieb (TMLR 2024) and print it beside the published bests.

Steps, all through mtpp's public interface (``mtpp data prepare``, ``mtpp compare``, ``mtpp.experiments``,
``mtpp.build_model``):

1. prepare every requested dataset from its public partial copy in the data directory (``--data-dir``, else
   ``MTPP_DATA_DIR``): ``mtpp data prepare DATA_DIR/conftpp_mooc_filtered --out PREPARED/mooc`` (seeded 60/20/20
   splits of the de-duplicated union of the available sequences; skipped when already prepared);
2. run ``configs/experiments/paper_table1.yaml`` restricted to the requested datasets / models /
   parametrisations / splits (``mtpp compare``: resumable, ``--jobs`` parallel cells);
3. print a Markdown table of our test ``L_T`` / ``L_M`` (per sequence, mean +- standard error over splits) beside
   the published numbers, and write it to ``--markdown-out``.

Examples::

    python scripts/reproduce_table1.py --datasets mooc --models lnm thp --splits 0 --jobs 2
    python scripts/reproduce_table1.py --datasets mooc --models lnm --splits 0 --max-epochs 1 --out /tmp/t1
    python scripts/reproduce_table1.py --param-counts
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT = ROOT / "configs" / "experiments" / "paper_table1.yaml"

#: dataset name -> folder of its public partial copy inside the data directory
SOURCES = {
    "mooc": "conftpp_mooc_filtered",
    "lastfm": "conftpp_lastfm_filtered",
    "reddit": "conftpp_reddit_filtered_short",
    "stack_overflow": "conftpp_stack_overflow_filtered",
    "github": "conftpp_github_filtered",
}
TIME, MARK = "nll_time_per_seq", "nll_mark_per_seq"
METRIC_LABEL = {TIME: "L_T", MARK: "L_M"}
PARAM_LABEL = {"base": "", "plus": "+", "plusplus": "++"}


@dataclass(frozen=True)
class Reference:
    """One published number of Table 1 (test NLL per sequence, mean over 5 splits)."""

    dataset: str
    metric: str
    model: str
    parametrisation: str
    value: float
    note: str = "best"


def _published() -> tuple[Reference, ...]:
    """The L_T / L_M rows of results/published/bosser2024_table1.csv (its README says what is and is not there)."""
    with open(ROOT / "results" / "published" / "bosser2024_table1.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return tuple(Reference(r["dataset"], r["metric"], r["model"], r["parametrisation"], float(r["value"]),
                           "best" if "best" in r["source"] else "reference")
                 for r in rows if r["metric"] in (TIME, MARK))  # fmt: skip


PUBLISHED = _published()


# --------------------------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", type=Path, default=DEFAULT_EXPERIMENT, help="experiment YAML (paper_table1)")
    p.add_argument("--data-dir", type=Path, default=None, help="raw data directory (default: $MTPP_DATA_DIR)")
    p.add_argument("--prepared-dir", type=Path, default=ROOT / "data", help="where prepared splits go (data/)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "table1", help="output folder of the grid")
    p.add_argument("--datasets", nargs="+", default=None, help="subset of datasets (default: all in the file)")
    p.add_argument("--models", nargs="+", default=None, help="subset of model names (lnm rmtpp fnn thp sahp)")
    p.add_argument("--parametrisations", nargs="+", default=None, help="subset of base plus plusplus")
    p.add_argument("--splits", nargs="+", type=int, default=None, help="subset of splits (0-4)")
    p.add_argument("--max-epochs", type=int, default=None, help="cap train.max_epochs (quick checks)")
    p.add_argument("--jobs", type=int, default=1, help="cells trained in parallel")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="further overrides for every cell, as in mtpp compare")
    p.add_argument("--markdown-out", type=Path, default=None, help="also write the comparison table here")
    p.add_argument("--rerun-stale", action="store_true",
                   help="retrain finished runs in --out that used other settings (e.g. another --max-epochs)")
    p.add_argument("--dry-run", action="store_true", help="prepare data and list the cells, train nothing")
    p.add_argument("--param-counts", action="store_true", help="print each model's parameter count and exit")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------- data


def prepare_datasets(names: list[str], data_dir: Path, prepared_dir: Path) -> dict[str, Path]:
    """``{name: prepared folder}`` for each dataset whose public copy exists (others are reported and left out)."""
    from mtpp.cli import main as mtpp_main

    prepared: dict[str, Path] = {}
    for name in names:
        out = prepared_dir / name
        if (out / "args.json").is_file():
            prepared[name] = out
            continue
        source = data_dir / SOURCES.get(name, name)
        if not source.exists():
            print(f"[reproduce] {name}: no public copy at {source}; left out", file=sys.stderr)
            continue
        print(f"[reproduce] mtpp data prepare {source} --out {out}", file=sys.stderr)
        code = mtpp_main(["data", "prepare", str(source), "--out", str(out)])
        if code != 0:
            raise SystemExit(f"[reproduce] preparing {name} failed (exit code {code})")
        prepared[name] = out
    return prepared


def resolve_data_dir(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    env = os.environ.get("MTPP_DATA_DIR")
    if not env:
        raise SystemExit("[reproduce] set MTPP_DATA_DIR or pass --data-dir (the folder with conftpp_* copies)")
    return Path(env)


# --------------------------------------------------------------------------------------------- experiment


def _entry_name(entry: str | dict) -> str:
    return str(entry["name"]) if isinstance(entry, dict) else str(entry)


def subset_experiment(raw: dict, args: argparse.Namespace, prepared: dict[str, Path]) -> dict:
    """The experiment restricted to the requested subset, datasets pointing at their prepared folders."""
    grid = dict(raw.get("grid") or {})
    datasets = []
    for entry in grid.get("datasets", []):
        name = _entry_name(entry)
        if (args.datasets is None or name in args.datasets) and name in prepared:
            overrides = entry.get("overrides", {}) if isinstance(entry, dict) else {}
            datasets.append({"name": name, "path": str(prepared[name].resolve()), "overrides": overrides})
    if not datasets:
        raise SystemExit("[reproduce] no requested dataset is available")
    grid["datasets"] = datasets
    if args.models:
        grid["models"] = [m for m in grid.get("models", []) if _entry_name(m) in args.models]
        if not grid["models"]:
            raise SystemExit(f"[reproduce] no model of {args.experiment} is named {' '.join(args.models)}")
    if args.parametrisations:
        grid["parametrisations"] = list(args.parametrisations)
    if args.splits is not None:
        grid["splits"] = list(args.splits)
    return {**raw, "grid": grid}


def compare_argv(experiment: Path, args: argparse.Namespace) -> list[str]:
    argv = ["compare", str(experiment), "--out", str(args.out), "--jobs", str(args.jobs)]
    if args.max_epochs is not None:
        argv += ["--set", f"train.max_epochs={args.max_epochs}"]
    for item in args.overrides:
        argv += ["--set", item]
    if args.rerun_stale:
        argv.append("--rerun-stale")
    if args.dry_run:
        argv.append("--dry-run")
    return argv


# --------------------------------------------------------------------------------------------- results


def collect(out: Path) -> dict[tuple[str, str, str], dict[str, list[float]]]:
    """``{(dataset, model, parametrisation): {metric: [value per split/seed]}}`` of the finished cells."""
    from mtpp.experiments import CELL_FILE, METRICS_FILE, is_complete

    table: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for cell_file in sorted(out.rglob(CELL_FILE)):
        run_dir = cell_file.parent
        if not is_complete(run_dir):
            continue
        cell = json.loads(cell_file.read_text())
        test = json.loads((run_dir / METRICS_FILE).read_text())["test"]
        key = (cell["dataset"], cell["model"], cell["parametrisation"])
        row = table.setdefault(key, {TIME: [], MARK: []})
        for metric in (TIME, MARK):
            value = test.get(metric)
            if value is not None:
                row[metric].append(float(value))
    return table


def mean_se(values: list[float]) -> tuple[float, float, int]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, 1
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n), n


def fmt(values: list[float]) -> str:
    mean, se, n = mean_se(values)
    if n == 0:
        return "-"
    return f"{mean:.1f} (n={n})" if n == 1 else f"{mean:.1f} ± {se:.1f} (n={n})"


def variant(model: str, parametrisation: str) -> str:
    return f"{model.upper()}{PARAM_LABEL.get(parametrisation, '-' + parametrisation)}"


def best(table: dict, dataset: str, metric: str) -> tuple[str, list[float]] | None:
    rows = [(k, v[metric]) for k, v in table.items() if k[0] == dataset and v[metric]]
    if not rows:
        return None
    (_, model, param), values = min(rows, key=lambda r: mean_se(r[1])[0])
    return variant(model, param), values


def comparison_markdown(table: dict) -> str:
    lines = [
        "| dataset | metric | published | published model | ours, same model | our best (model) |",
        "|---|---|---|---|---|---|",
    ]
    datasets = {k[0] for k in table}
    for ref in PUBLISHED:
        if ref.dataset not in datasets:
            continue
        same = table.get((ref.dataset, ref.model, ref.parametrisation), {}).get(ref.metric, [])
        ours = best(table, ref.dataset, ref.metric)
        ours_text = f"{ours[0]}: {fmt(ours[1])}" if ours else "-"
        kind = "best" if ref.note == "best" else "reference"
        lines.append(
            f"| {ref.dataset} | {METRIC_LABEL[ref.metric]} | {ref.value:.1f} ({kind}) "
            f"| {variant(ref.model, ref.parametrisation)} | {fmt(same)} "
            f"| {ours_text} |"
        )
    return "\n".join(lines)


def full_markdown(table: dict) -> str:
    lines = ["| dataset | model | L_T per seq | L_M per seq |", "|---|---|---|---|"]
    for (dataset, model, param), row in sorted(table.items()):
        lines.append(f"| {dataset} | {variant(model, param)} | {fmt(row[TIME])} | {fmt(row[MARK])} |")
    return "\n".join(lines)


def report(table: dict, args: argparse.Namespace, experiment: Path) -> str:
    command = "python scripts/reproduce_table1.py " + " ".join(sys.argv[1:])
    return "\n\n".join(
        [
            "## Table 1: ours vs published (test NLL per sequence, lower is better)",
            f"Command: `{command.strip()}`  \nExperiment: `{experiment}`; runs: `{args.out}`. Published values: "
            "Bosser & Ben Taieb (TMLR 2024), mean over 5 splits of the original data; ours are rebuilt 60/20/20 "
            "splits of the public partial copies (about 88 % of the sequences), so they are comparable in "
            "order of magnitude, not digit for digit.",
            comparison_markdown(table),
            "### All our runs",
            full_markdown(table),
        ]
    ) + "\n"


# --------------------------------------------------------------------------------------------- parameter counts


def parameter_counts(experiment: Path, num_marks: int = 50) -> str:
    """Markdown table of the parameter count of each model x parametrisation of the experiment."""
    from mtpp import build_model
    from mtpp import experiments as ex
    from mtpp.models import count_parameters

    cells = ex.expand(ex.load_experiment(experiment, ["grid.splits=[0]", "grid.seeds=[0]"]))
    seen: dict[tuple[str, str], int] = {}
    for cell in cells:
        key = (cell.model, cell.parametrisation)
        if key not in seen:
            seen[key] = count_parameters(build_model(ex.resolve(cell).model, num_marks))
    params = sorted({p for _, p in seen}, key=list(PARAM_LABEL).index)
    lines = ["| model | " + " | ".join(params) + " |", "|---" * (len(params) + 1) + "|"]
    for model in dict.fromkeys(m for m, _ in seen):
        lines.append(f"| {model} | " + " | ".join(f"{seen.get((model, p), 0):,}" for p in params) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.param_counts:
        print(parameter_counts(args.experiment))
        return 0
    from mtpp.cli import main as mtpp_main

    raw = yaml.safe_load(args.experiment.read_text())
    names = [_entry_name(e) for e in raw["grid"]["datasets"]]
    names = [n for n in names if args.datasets is None or n in args.datasets]
    prepared = prepare_datasets(names, resolve_data_dir(args.data_dir), args.prepared_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(subset_experiment(raw, args, prepared), sort_keys=False)
    # one file per subset, so two invocations sharing --out never read each other's grid
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    experiment = args.out / f"table1_experiment-{digest}.yaml"
    experiment.write_text(text)
    code = mtpp_main(compare_argv(experiment, args))
    if args.dry_run or code == 2:  # 2: a configuration error, nothing ran
        return code
    text = report(collect(args.out), args, experiment)
    print(text)
    if args.markdown_out is not None:
        args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
        args.markdown_out.write_text(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
