"""``mtpp compare EXPERIMENT.yaml --out DIR``: run an experiment grid, then write the summary tables and plots.

The experiment file format is documented in :mod:`mtpp.experiments` (and at the top of
``configs/experiments/smoke.yaml``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  mtpp compare configs/experiments/smoke.yaml --out runs/smoke
  mtpp compare configs/experiments/paper_table1.yaml --out runs/table1 --jobs 4 --only 'mooc/*' --dry-run
  mtpp compare configs/experiments/smoke.yaml --out /tmp/s --set train.max_epochs=1 --set grid.seeds=[0]

--set section.key=value applies to every cell (after the experiment's per-model overrides), except the settings
an axis sets per cell (model.decoder, model.parametrisation, data.name, data.split, train.seed,
gradients.aggregator and .options); instead,
--set grid.AXIS=[...] replaces an axis of the grid (datasets, models, parametrisations, aggregators, splits, seeds);
a dataset or model named there that the file defines with settings keeps them (grid.datasets=[lastfm] keeps its batch 4).
Rerunning the same command skips finished cells and resumes interrupted ones (failed cells are retried).
A finished cell whose stored config.yaml (or --results record) differs from the grid's (say, after changing
train.max_epochs), or whose recorded data fingerprints differ from the data the grid resolves now, is "stale":
compare refuses to mix such runs into one summary unless --rerun-stale retrains them. Ctrl-C (or kill PID, printed
in the header) stops every worker within seconds: finished cells stay, running ones resume from their checkpoints
on the next run.
--time-limit 2h30m (inside a job with a wall-time limit) starts a cell only when its expected duration (the median
wall time of the recorded cells of the same dataset, model, parametrisation and aggregator under --results, and
--estimates-from DIR's) fits in the time left; the rest are deferred to the next run of the same command.
--order breadth runs every (dataset, model, parametrisation, aggregator) at its first split/seed before any at its
second: a grid cut short by a time limit still has a first result for every model.
--dry-run prints each cell's state (data fingerprints and result records checked as the run checks them): new,
resume (with its last epoch and best epoch), running (a live process holds its folder), done or stale."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="run an experiment grid (datasets x models x parametrisations x ...) and summarise it",
        description="Run every cell of an experiment grid (one run directory each), skipping finished cells, "
        "then write summary.csv, summary.md and the plots.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", type=Path, help="experiment YAML (base + grid + exclude)")
    p.add_argument("--out", type=Path, required=True, help="output folder: one run directory per cell + summaries")
    p.add_argument("--jobs", "-j", type=int, default=1, help="cells trained in parallel processes (default 1)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override for every cell (section.key=value) or a grid axis (grid.splits=[0]); repeatable",
    )
    p.add_argument("--dry-run", action="store_true", help="list the cells (and whether they are done) and exit")
    p.add_argument(
        "--only", action="append", default=[], metavar="PATTERN",
        help="run only cells whose name matches this glob (e.g. 'mooc/lnm-*'); repeatable",
    )
    p.add_argument(
        "--rerun-stale", action="store_true",
        help="retrain finished cells whose stored config differs from the grid's (default: refuse)",
    )
    p.add_argument(
        "--order", choices=("grid", "breadth"), default="grid",  # mtpp.experiments.ORDERS (not imported: torch)
        help="grid: the file's order (each model's splits in turn); breadth: every model at its first split/seed "
        "before any at its second (a first result for every model early)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar over cells")
    p.add_argument("--verbose-runs", action="store_true", help="keep each run's own progress output (jobs=1)")
    p.add_argument("--no-report", action="store_true", help="do not write summary tables and plots")
    p.add_argument(
        "--results",
        type=Path,
        help="also write each finished cell's small result record (mtpp.records) under this folder, and skip "
        "cells that already have one there (e.g. committed records: results/paper_table1)",
    )
    p.add_argument(
        "--time-limit", metavar="DURATION",
        help="wall time this command may use (2h30m, 150m, or a SLURM --time value: 150 = minutes, 2:30 = "
        "minutes:seconds, 2:30:00, UNLIMITED): start only cells expected to finish within it (the median wall "
        "time of the --results records of the same dataset, model, parametrisation and aggregator, else of fewer of "
        "those labels: mtpp.experiments_schedule); the others are deferred to the next run",
    )
    p.add_argument(
        "--estimates-from", type=Path, action="append", default=[], metavar="DIR",
        help="with --time-limit (and --dry-run): also estimate durations from the result records in DIR, e.g. "
        "results/paper_table1 for a remedies grid whose remedy cells cost about what their sum cells there did; "
        "those records never mark a cell done; repeatable",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtpp import experiments as ex
    from mtpp.errors import ConfigError

    if args.jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {args.jobs}")
    if args.time_limit is not None:
        from mtpp.experiments_schedule import duration_note, parse_duration

        note = duration_note(args.time_limit)
        if note:
            print(note, file=sys.stderr)
        args.time_limit = parse_duration(args.time_limit)
    ex.check_results_folder(args.results)
    for note in ex.check_estimate_folders(args.estimates_from):  # up front: without --time-limit nothing else
        print(note, file=sys.stderr)  # reads them
    if args.estimates_from and args.time_limit is None and not args.dry_run:
        print("note: --estimates-from informs --time-limit's estimates (and --dry-run's); without either it has no "
              "effect", file=sys.stderr)
    exp = ex.load_experiment(args.experiment, args.overrides)
    _, run_overrides = ex.split_overrides(args.overrides)
    cells = ex.ordered(ex.select(ex.expand(exp), args.only), args.order)
    for rule in ex.unmatched_exclude_rules(exp):
        print(f"warning: {args.experiment}: exclude rule {rule} matches no cell of the grid (a misspelt label, or a "
              "value no axis has?)", file=sys.stderr)
    if not cells:
        raise ConfigError(f"no cell of {args.experiment} matches --only {' '.join(args.only)}")
    configs = ex.resolve_all(cells, run_overrides)  # every cell must be a valid run config before anything trains
    missing = _print_data(configs)
    if missing and not args.dry_run:  # before any folder is made: every cell of that dataset would fail alike
        from mtpp.errors import DataError

        raise DataError(f"nothing trained: {'; '.join(missing)}")
    for line in missing:
        print(f"data {line}", file=sys.stderr)
    if args.dry_run:
        stale = _print_cells(cells, args.out, run_overrides, args.results, args.time_limit, args.jobs,
                             args.rerun_stale, args.estimates_from)
        if missing:
            print(f"the real run would stop: {len(missing)} dataset(s) or split(s) not found", file=sys.stderr)
        if stale:
            print(f"the real run would stop: {stale} stale cell(s) (finished on another configuration or other "
                  "data); --rerun-stale retrains them", file=sys.stderr)
        return 1 if missing or stale else 0
    from mtpp.owned import check_ours
    from mtpp.runs import RunLock

    # before anything trains: the files compare rewrites must be absent or its own (a user's notes survive)
    written = ["experiment.yaml", ex.FAILURES_FILE] + ([] if args.no_report else ["summary.csv", "summary.md"])
    check_ours([args.out / name for name in written])
    if not args.no_report:  # and the plots the report would rewrite (of every run under --out, not only this grid's)
        from mtpp.evaluation.plots import existing_plots

        check_ours(existing_plots(args.out / "plots"))
    with RunLock(args.out):  # one compare per output folder (each cell's run folder has its own lock too)
        try:
            return _run_locked(args, exp, cells, run_overrides)
        except KeyboardInterrupt:
            print("interrupted; run the same command again to continue (finished cells are kept, interrupted "
                  "ones resume from their checkpoints)", file=sys.stderr)
            raise


def stop_hint() -> str:
    """How to stop this process: Ctrl-C, or ``kill PID`` when SIGINT is ignored (a job started in the background by
    a non-interactive shell, e.g. ``nohup mtpp compare ... &`` in a script, ignores SIGINT)."""
    import os
    import signal

    pid = os.getpid()
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        return f"pid {pid}, SIGINT ignored here: stop with kill {pid}"
    return f"pid {pid}: stop with Ctrl-C or kill {pid}"


def _run_locked(args: argparse.Namespace, exp, cells: list, run_overrides: list[str]) -> int:
    from mtpp import experiments as ex

    ex.write_cells(args.out, exp, cells, args.overrides)
    print(f"{exp.name}: {len(cells)} cells -> {args.out} (jobs={args.jobs}); {stop_hint()}", file=sys.stderr)
    results = ex.run_grid(
        cells, args.out, jobs=args.jobs, overrides=run_overrides,
        progress=not args.no_progress, quiet_runs=not args.verbose_runs, rerun_stale=args.rerun_stale,
        log=lambda m: print(m, file=sys.stderr), results_dir=args.results, time_limit=args.time_limit,
        estimates_from=args.estimates_from,
    )
    counts = ex.results_summary(results)
    deferred = f", {counts['deferred']} deferred (expected to end after --time-limit; rerun to continue)"
    elsewhere = f", {counts['elsewhere']} running in another process (sharing --results)"
    print(
        f"cells: {counts['done']} trained, {counts['skipped']} skipped (already complete), {counts['failed']} failed"
        f"{deferred if counts['deferred'] else ''}{elsewhere if counts['elsewhere'] else ''}",
        file=sys.stderr,
    )
    if not args.no_report:
        write_reports(args.out, title=exp.name, notes=_absent_cells(results, args.out, args.results),
                      cells=[r.name for r in results], grid=[c.name for c in ex.expand(exp)])
    if counts["failed"]:
        print(f"failed cells are listed in {args.out / ex.FAILURES_FILE}:", file=sys.stderr)
        for r in results:
            if r.status == "failed":
                print(f"  {r.name}: {r.error}", file=sys.stderr)
        return 1
    return 0


def _print_data(configs: list) -> list[str]:
    """One line per dataset of the grid: where its name resolves (finished cells are checked against it).
    Returns ``'NAME: why'`` for each dataset that does not resolve (an unknown name, a missing data folder) and for
    each grid split a dataset does not have (``mtpp.data.catalog.known_splits``: split folders and re-split
    sources; plain files are not read here)."""
    from mtpp.data.catalog import known_splits, resolve_source
    from mtpp.errors import MtppError

    seen: dict[tuple, list[int] | None] = {}
    missing = []
    for cfg in configs:
        key = (cfg.data.name, cfg.data.data_dir)
        if key not in seen:
            seen[key] = None
            try:
                _, path, entry = resolve_source(cfg.data.name, cfg.data.data_dir)
                print(f"data {cfg.data.name} <- {Path(path).resolve()}", file=sys.stderr)
                seen[key] = known_splits(entry, Path(path))
            except MtppError as e:
                missing.append(f"{cfg.data.name}: {e}")
        splits = seen[key]
        if splits is not None and cfg.data.split not in splits:
            line = (f"{cfg.data.name}: split {cfg.data.split} does not exist (available: "
                    f"{', '.join(map(str, splits)) or 'none'})")
            missing += [line] if line not in missing else []
    return missing


def _print_cells(
    cells: list, out: Path, overrides: list[str], results: Path | None = None, time_limit: float | None = None,
    jobs: int = 1, rerun_stale: bool = False, estimates_from: list[Path] = (),
) -> int:
    """One line per cell with the state a real run would act on (``mtpp.experiments.grid_states``: the run folder,
    then the result record under ``--results``); a resumable cell shows its last epoch, or ``running`` when a
    live process holds its folder; with ``--time-limit``, which cells would start and which would be deferred
    (``mtpp.experiments_schedule.simulate`` with ``--jobs`` workers), stale cells among them with
    ``--rerun-stale``. A cell's expected duration names the datasets whose records it comes from when none is the
    cell's own. Returns the number of stale cells the real run would refuse (0 with ``--rerun-stale``); with any,
    it starts nothing."""
    from mtpp.errors import MtppError
    from mtpp.experiments import (
        data_changes,
        expected_durations,
        grid_states,
        is_complete,
        last_epoch_record,
        resolved_dict,
        run_order,
    )
    from mtpp.experiments_claims import claim_holder
    from mtpp.experiments_schedule import format_minutes, simulate
    from mtpp.runs import RunLock
    from mtpp.training.logging import format_eta

    states = grid_states(cells, out, overrides, results)
    # finished cells on other data than the grid resolves now are stale, as the real run finds them
    try:
        states.update({name: "stale" for name in data_changes(cells, states, out, overrides, None, results)})
    except MtppError as e:  # data that cannot be read here: said above (data lines), states without the check
        print(f"data check of the finished cells skipped: {e}", file=sys.stderr)
    cells = run_order(cells, states)  # listed (and simulated) in the order the real run takes them
    counts: dict[str, int] = {}
    stale = 0 if rerun_stale else sum(s == "stale" for s in states.values())  # the real run refuses them
    trains = ("new", "resume", "stale") if rerun_stale else ("new", "resume")
    # cells another process sharing --results trains now: the real run would not start them (mtpp.experiments_claims)
    elsewhere = {c.name: h for c in cells if states[c.name] in trains
                 and (h := claim_holder(results, c.name)) is not None}  # fmt: skip
    todo = [c for c in cells if states[c.name] in trains and c.name not in elsewhere]
    borrowed: dict[str, list[str]] = {}  # cells estimated from other datasets' records only
    expected, _ = expected_durations(todo, states, out, overrides, results, estimates_from, borrowed)
    simulated = time_limit is not None and not stale
    starts, deferred, undecided = simulate(todo, expected, jobs, time_limit) if simulated else ({}, [], [])
    waits_for = next((c.name for c in todo if c.name in starts and c.name not in expected), None)
    for c in cells:
        state, where = states[c.name], ""
        if state == "resume":  # how far it got: the last finished epoch of its log; "running" when a live
            if RunLock.holder_of(out / c.name) is not None:  # process holds its folder
                state = "running"
            last = last_epoch_record(out / c.name) or {}
            cap = (resolved_dict(c, overrides).get("train") or {}).get("max_epochs")
            if "epoch" in last:
                where = f"  (epoch {last['epoch']}/{cap}, best {last.get('best_epoch')})"
        elif state in ("done", "stale") and results is not None and not is_complete(out / c.name):
            where = "  (result record)"
        if c.name in elsewhere:
            state, where = "running", f"  (elsewhere: {RunLock.describe(elsewhere[c.name])}; not started here)"
        if c.name in borrowed:
            where += (f"  (expected {format_minutes(expected[c.name])}, from records of other datasets: "
                      f"{', '.join(borrowed[c.name])})")
        elif c.name in expected:
            where += f"  (expected {format_minutes(expected[c.name])})"
        if c.name in starts:
            where += f"  starts at +{format_eta(starts[c.name])}"
        elif c.name in deferred:
            where += "  deferred (does not fit in --time-limit)"
        elif c.name in undecided:
            where += f"  may start or be deferred: depends on how long {waits_for} takes (no estimate)"
        counts[state] = counts.get(state, 0) + 1
        print(f"{state:<7} {c.name}{where}")
    print(f"{len(cells)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), file=sys.stderr)
    if expected:
        print(f"expected wall time of the {len(expected)} cell(s) with an estimate: {sum(expected.values()) / 3600:.1f} "
              "cell-hours (medians of the recorded cells of the same model; see --time-limit)", file=sys.stderr)
    if borrowed:
        print(f"{len(borrowed)} of them estimated from other datasets' records only (none of their own dataset, "
              "model and parametrisation): an epoch there may cost much more or less than here", file=sys.stderr)
    if simulated:
        print(f"--time-limit {format_eta(time_limit)} with --jobs {jobs}: {len(starts)} cell(s) would start, "
              f"{len(deferred)} deferred" + (f", {len(undecided)} depend on how long {waits_for} takes" if undecided
                                             else "") + " (simulated from the expected durations)", file=sys.stderr)
    return stale


def _absent_cells(results: list, out: Path, records: Path | None) -> list[str]:
    """What ``summary.md`` must say it leaves out: cells of this grid without a finished run folder under ``out``
    (complete by their result record under ``--results``, deferred by ``--time-limit``, failed)."""
    from mtpp.experiments import is_complete

    groups: dict[str, list[str]] = {}
    for r in results:
        if r.status == "skipped" and not is_complete(out / r.name):
            groups.setdefault(f"complete by its result record under {records} (run elsewhere; the record "
                              "holds its metrics)", []).append(r.name)
        elif r.status == "elsewhere":
            groups.setdefault(f"running in another process that shares {records} (its record appears there when "
                              "it finishes)", []).append(r.name)
        elif r.status == "deferred":
            groups.setdefault("deferred by --time-limit (not started; the same command continues them)",
                              []).append(r.name)
        elif r.status == "failed":
            groups.setdefault(f"failed (see {out / 'failures.json'})", []).append(r.name)
    notes = []
    for why, names in groups.items():
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        notes.append(f"{len(names)} cell(s) {why}: {shown}")
    return notes


def write_reports(out: Path, title: str = "Results", notes: list[str] | None = None,
                  cells: list[str] | None = None, grid: list[str] | None = None) -> None:
    """summary.csv / summary.md and the plots of the finished runs under ``out``; ``notes``: lines that
    ``summary.md`` states under its title (the grid's cells it does not show, and why). ``cells``: the grid's
    run folders (``dataset/cell/splitI-seedJ`` under ``out``); finished runs of other grids in the same folder (an
    earlier, larger grid) are left out of the summary and named in a note, so the tables describe the grid of
    ``experiment.yaml``; ``None``: every run. ``grid``: every cell of the grid when ``--only`` selected ``cells``
    from it: the finished runs of its other cells stay in the summary, said in a note (this command neither trained
    nor checked them). With no finished run to tabulate but ``notes`` (every cell complete by
    its result record, say), ``summary.md`` holds the notes alone (``report.write_notes_summary``)."""
    from mtpp.evaluation import plots, report

    df = report.collect_runs(out)
    for problem in df.attrs.get("unreadable", []):  # left out of the summary: said, never dropped silently
        print(f"skipped (unreadable): {problem}", file=sys.stderr)
    if cells is not None and len(df):
        ours = {str(out / c) for c in cells}
        whole = {str(out / c) for c in grid or ()}
        siblings = sorted(str(Path(r).relative_to(out)) for r in df["run"] if str(r) not in ours and str(r) in whole)
        if siblings:  # cells of this grid that --only left out this time: still the grid's results
            ours |= {str(out / c) for c in siblings}
            shown = ", ".join(siblings[:6]) + (f" and {len(siblings) - 6} more" if len(siblings) > 6 else "")
            line = (f"{len(siblings)} finished run(s) of this grid's cells outside --only are in this summary as "
                    f"found, not trained or checked by this command: {shown}")
            notes = [*(notes or []), line]
            print(line, file=sys.stderr)
        outside = sorted(str(Path(r).relative_to(out)) for r in df["run"] if str(r) not in ours)
        if outside:
            df = df[df["run"].astype(str).isin(ours)].copy()
            df.attrs["incomplete"] = [r for r in df.attrs.get("incomplete", []) if r in ours]
            shown = ", ".join(outside[:6]) + (f" and {len(outside) - 6} more" if len(outside) > 6 else "")
            line = (f"{len(outside)} finished run(s) in {out} are not cells of this grid (an earlier grid's?) and "
                    f"are not in this summary: {shown}; `mtpp report {out}` summarises every run there")
            notes = [*(notes or []), line]
            print(line, file=sys.stderr)
    if len(df) == 0:
        if notes:  # the grid's cells are elsewhere (their result records), deferred or failed: summary.md says so
            path = report.write_notes_summary(out, notes, title=title)
            print(f"summary: {path} (no finished run here: it lists the grid's cells and why they are not here)",
                  file=sys.stderr)
        else:
            print("no finished run to summarise", file=sys.stderr)
        return
    from mtpp.owned import check_ours

    check_ours(plots.existing_plots(out / "plots", df["dataset"].unique()))  # before either summary is written
    report.write_summary(df, out, title=title, notes=notes)
    written = plots.make_all_plots(out, out / "plots", runs=df, say=lambda line: print(line, file=sys.stderr))
    left = plots.left_over(out / "plots", written, out)
    if left:
        print(left, file=sys.stderr)
    print(f"summary: {out / 'summary.md'}, {out / 'summary.csv'}; plots: {out / 'plots'}", file=sys.stderr)
