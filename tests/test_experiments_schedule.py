"""``mtpp compare --time-limit``: only cells expected to finish in time start (mtpp.experiments_schedule)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtpp import experiments as ex
from mtpp.errors import ConfigError
from mtpp.experiments_schedule import (
    Deadline,
    duration_note,
    expected_seconds,
    format_minutes,
    parse_duration,
    simulate,
)
from mtpp.records import RECORD_VERSION, write_record

from test_compare import FakeFit, fake_fit, small_grid  # noqa: F401  (fixture)


@pytest.mark.parametrize("text, seconds", [
    ("2h30m", 9000), ("150m", 9000), ("9000s", 9000), ("1d2h", 93600), ("0.5h", 1800), (" 90S ", 90),
    # SLURM's --time formats, read as sbatch reads them: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
    ("150", 9000), ("30:00", 1800), ("2:30", 150), ("2:30:00", 9000), ("1:00:30", 3630),
    ("1-12", 129600), ("1-12:30", 131400), ("1-0:0:30", 86430),
])
def test_durations_read_like_slurm_times(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_time_limit_that_looks_like_hours_minutes_is_flagged() -> None:
    assert parse_duration("UNLIMITED") is None and parse_duration("infinite") is None  # SLURM's no-limit values
    note = duration_note("2:30")
    assert "2:30 is minutes:seconds" in note and "(2 min 30 s)" in note and "2:30:00 or 2h30m" in note
    assert all(duration_note(t) is None for t in ("30:00", "150", "2:30:00", "2h30m", "1-12", "2:75"))


@pytest.mark.parametrize("bad", ["", "2x", "h", "0m", "0:00", "0", "-1h", "2 hours", "1:2:3:4", "1-2:3:4:5", "-5"])
def test_bad_durations_are_one_clear_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="--time-limit: .* is not a positive duration"):
        parse_duration(bad)


def _record(dataset: str, model: str, param: str, wall: float, epochs: int = 100, agg: str = "sum") -> dict:
    cell = {"dataset": dataset, "model": model, "parametrisation": param, "aggregator": agg}
    return {"record_version": RECORD_VERSION, "cell": cell, "wall_seconds": wall, "epochs": epochs}


class _Cell:
    def __init__(self, name: str, dataset: str, model: str, param: str, agg: str = "sum") -> None:
        self.name = name
        self._labels = {"dataset": dataset, "model": model, "parametrisation": param, "aggregator": agg}

    def labels(self) -> dict:
        return self._labels


def test_expected_durations_from_records_of_the_same_model() -> None:
    records = [_record("mooc", "thp", "base", 100.0), _record("mooc", "thp", "base", 300.0),
               _record("mooc", "thp", "base", 200.0), _record("reddit", "thp", "base", 50.0),
               _record("reddit", "lnm", "plus", 40.0, epochs=80), {"cell": {}, "wall_seconds": None}]  # fmt: skip
    cells = [_Cell("a", "mooc", "thp", "base"), _Cell("b", "lastfm", "thp", "base"),
             _Cell("c", "mooc", "lnm", "plus"), _Cell("d", "mooc", "sahp", "base"), _Cell("e", "mooc", "thp", "base"),
             _Cell("f", "mooc", "lnm", "plus")]  # fmt: skip
    got = expected_seconds(cells, records, epochs_done={"e": 50, "f": 200})
    assert got["a"] == 200.0  # median of the same dataset's records
    assert got["b"] == 150.0  # no lastfm record: median over every dataset (50, 100, 200, 300)
    assert got["c"] == 40.0
    assert "d" not in got  # no record of that model: unknown, not zero
    assert got["e"] == pytest.approx(200.0 * 0.5)  # resumes at epoch 50 of ~100
    assert got["f"] == pytest.approx(40.0 * 0.1)  # past the recorded epochs: at least 10 % left
    # a remedy cell: its dataset's sum cells first, then the remedy on other datasets, then anything of the model
    records += [_record("reddit", "thp", "base", 999.0, agg="pcgrad"), _record("reddit", "lnm", "base", 7.0)]
    got = expected_seconds([_Cell("g", "mooc", "thp", "base", "pcgrad"), _Cell("h", "lastfm", "thp", "base", "pcgrad"),
                            _Cell("i", "lastfm", "lnm", "base", "mgda")], records)  # fmt: skip
    assert got == {"g": 200.0, "h": 999.0, "i": 7.0}


def test_an_estimate_from_other_datasets_records_is_said_so(tmp_path: Path, fake_fit: FakeFit, capsys) -> None:
    """Smoke cells on synthetic data estimated from MOOC records only ("expected 2 min" for a 3 s cell): the
    fallback stands, but --dry-run names the datasets the estimate comes from; a cell of a recorded dataset does
    not get the mark."""
    import yaml

    from mtpp.cli import main

    records = [_record("mooc", "thp", "base", 120.0), _record("reddit", "thp", "base", 60.0),
               _record("mooc", "lnm", "base", 30.0), _record("synthetic_hawkes", "lnm", "base", 3.0)]
    borrowed: dict[str, list[str]] = {}
    got = expected_seconds([_Cell("t", "synthetic_hawkes", "thp", "base"), _Cell("l", "synthetic_hawkes", "lnm",
                            "base")], records, borrowed=borrowed)  # fmt: skip
    assert got == {"t": 90.0, "l": 3.0} and borrowed == {"t": ["mooc", "reddit"]}
    exp = tmp_path / "grid.yaml"
    exp.write_text(yaml.safe_dump(small_grid(splits=[0], parametrisations=["base"])))
    elsewhere = tmp_path / "paper"
    for i, r in enumerate(records[:3]):
        write_record(elsewhere, f"{r['cell']['dataset']}/{r['cell']['model']}-base-sum/split{i}-seed0", r)
    assert main(["compare", str(exp), "--out", str(tmp_path / "runs"), "--dry-run", "--estimates-from",
                 str(elsewhere)]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("new")]
    assert len(lines) == 2 and all("from records of other datasets: mooc" in line for line in lines), lines
    assert "2 of them estimated from other datasets' records only" in err


def test_an_estimates_folder_without_records_gets_a_note_and_a_file_is_refused(tmp_path: Path, fake_fit: FakeFit, capsys) -> None:
    import yaml

    from mtpp.cli import main

    exp = tmp_path / "grid.yaml"
    exp.write_text(yaml.safe_dump(small_grid(splits=[0], parametrisations=["base"])))
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "a.json").write_text('{"a": 1}')
    assert main(["compare", str(exp), "--out", str(tmp_path / "runs"), "--dry-run", "--estimates-from",
                 str(configs)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert (f"note: --estimates-from {configs}: holds no result record (1 JSON file(s) that are not records: "
            "a.json); it adds no estimate") in err
    # a file where a folder of records goes: said up front, not "no such folder", nor after training a cell
    for option in ("--results", "--estimates-from"):
        assert main(["compare", str(exp), "--out", str(tmp_path / "runs"), option, str(configs / "a.json")]) == 2
        err = capsys.readouterr().err
        assert f"error: {option} {configs / 'a.json'}: a file, not a folder of result records" in err
        assert fake_fit.calls == []


def test_expected_durations_follow_the_cells_epoch_cap() -> None:
    """A record stands for a cell through its seconds per epoch and the epochs the cell will run: a capped smoke
    record (1 epoch of 60 s) makes a 12-epoch cell 12 minutes, not one; an early-stopped record (160 of 1000 epochs)
    stands as it is for the same cap and is cut by a smaller one; a resumed cell needs the epochs left."""
    def rec(wall: float, epochs: int, cap: int) -> dict:
        return {**_record("mooc", "lnm", "base", wall, epochs=epochs), "config": {"train": {"max_epochs": cap}}}

    cells = [_Cell(n, "mooc", "lnm", "base") for n in "abcd"]
    assert expected_seconds(cells[:1], [rec(60.0, 1, 1)], max_epochs={"a": 12}) == {"a": 720.0}
    early = [rec(1600.0, 160, 1000)]
    got = expected_seconds(cells, early, epochs_done={"d": 100}, max_epochs={"a": 1000, "b": 50, "c": 5000, "d": 1000})
    assert got == {"a": 1600.0, "b": 500.0, "c": 1600.0, "d": pytest.approx(600.0)}
    assert expected_seconds(cells[:1], early) == {"a": 1600.0}  # no cap given: the record as it is
    # the record's own stopped_by decides: early stopping on the last allowed epoch is not a capped run
    last = [{**rec(1000.0, 100, 100), "stopped_by": "early_stopping"}]
    assert expected_seconds(cells[:1], last, max_epochs={"a": 500}) == {"a": 1000.0}
    capped = [{**rec(1000.0, 100, 100), "stopped_by": "max_epochs"}]
    assert expected_seconds(cells[:1], capped, max_epochs={"a": 500}) == {"a": 5000.0}


def _replay(queue: list, durations: dict[str, float], jobs: int, limit: float) -> tuple[dict[str, float], list[str]]:
    """The real hand-out (``Deadline`` with the estimates, free workers in time order) when the cells take
    ``durations``: what the dry run predicts."""
    import heapq

    estimates = {n: d for n, d in durations.items() if not n.startswith("u")}  # "u*": no estimate
    now = [0.0]
    deadline, left, starts, free = Deadline(limit, estimates, clock=lambda: now[0]), list(queue), {}, [0.0] * jobs
    while left:
        now[0] = heapq.heappop(free)
        cell = deadline.take(left)
        if cell is None:
            break
        starts[cell.name] = now[0]
        heapq.heappush(free, now[0] + durations[cell.name])
    return starts, [c.name for c in left]


def test_dry_run_simulation_of_the_limit() -> None:
    cells = [_Cell(n, "mooc", "lnm", "base") for n in ("long", "mid", "short", "late")]
    expected = {"long": 500.0, "mid": 80.0, "short": 10.0, "late": 95.0}
    # in grid order among what fits: worker 1 takes mid (0-80), worker 2 short (0-10); at 10 late (95) no longer
    # fits; long never does
    assert simulate(cells, expected, jobs=2, limit=100.0) == ({"mid": 0.0, "short": 0.0}, ["long", "late"], [])
    assert format_minutes(30.0) == "30 s" and format_minutes(8940.0) == "149 min"


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_the_dry_run_is_certain_only_of_what_no_unestimated_cell_can_change(jobs: int) -> None:
    """A cell without an estimate starts like one that fits; its length then decides later hand-outs, both ways (a
    short one lets a cell start that a long one defers). Whatever it takes, the real hand-out starts every
    "certain" cell at the time said and defers every "deferred" one."""
    names = ("a", "u", "x", "d", "e", "big")
    cells = [_Cell(n, "m", "x", "base") for n in names]
    expected = {"a": 20.0, "x": 80.0, "d": 30.0, "e": 10.0, "big": 95.0}
    starts, deferred, undecided = simulate(cells, expected, jobs=jobs, limit=100.0)
    assert sorted([*starts, *deferred, *undecided]) == sorted(names)
    assert "a" in starts and "u" in starts  # before or at the unestimated cell: certain
    outcomes = set()
    for length in (0.0, 5.0, 15.0, 30.0, 60.0, 100.0, 1e4):
        real_starts, real_deferred = _replay(cells, {**expected, "u": length}, jobs, 100.0)
        assert all(real_starts[n] == t for n, t in starts.items()) and set(deferred) <= set(real_deferred)
        outcomes.add(tuple(sorted(real_starts.items())))
    if undecided:
        assert len(outcomes) > 1  # undecided: the unestimated cell's length changes what starts, or when
    # the case found in review: one worker, U unknown, then X=80, D=30, E=10: X starts only if U is short
    q = [_Cell(n, "m", "x", "base") for n in ("U", "X", "D", "E")]
    starts, deferred, undecided = simulate(q, {"X": 80.0, "D": 30.0, "E": 10.0}, jobs=1, limit=100.0)
    assert starts == {"U": 0.0} and deferred == [] and undecided == ["X", "D", "E"]
    # two workers: A starts beside U for certain
    q = [_Cell(n, "m", "x", "base") for n in ("U", "A", "B")]
    assert simulate(q, {"A": 50.0, "B": 40.0}, jobs=2, limit=100.0) == ({"U": 0.0, "A": 0.0}, [], ["B"])
    # U starts at 30: L (80) no longer fits in the 70 s left after it, so it is deferred whatever U takes
    q = [_Cell(n, "m", "x", "base") for n in ("A", "B", "U", "C", "L")]
    starts, deferred, undecided = simulate(q, {"A": 30.0, "B": 50.0, "C": 10.0, "L": 80.0}, jobs=2, limit=100.0)
    assert starts == {"A": 0.0, "B": 0.0, "U": 30.0} and undecided == ["C"] and deferred == ["L"]


def test_a_free_worker_takes_the_first_cell_that_fits() -> None:
    now = [0.0]
    d = Deadline(100.0, {"long": 500.0, "mid": 80.0, "short": 10.0}, clock=lambda: now[0])
    queue = [_Cell(n, "m", "x", "base") for n in ("long", "mid", "unknown", "short")]
    assert d.take(queue).name == "mid"  # grid order among those that fit; "long" waits
    now[0] = 30.0
    assert d.take(queue).name == "unknown"  # no estimate: started while time is left
    assert d.take(queue).name == "short"
    assert d.take(queue) is None and [c.name for c in queue] == ["long"]
    now[0] = 100.0
    assert d.take([_Cell("unknown2", "m", "x", "base")]) is None  # time is up: nothing starts
    q = [_Cell(n, "m", "x", "base") for n in ("long", "mid")]
    assert Deadline(None).take(q).name == "long" and Deadline(None).take([]) is None


def test_run_grid_defers_cells_expected_to_end_after_the_limit(tmp_path: Path, fake_fit: FakeFit, capsys) -> None:
    cells = ex.expand(ex.experiment_from_dict(small_grid()))
    results_dir = tmp_path / "results"
    for c in cells:  # split 1 recorded (thp slow, lnm fast): the estimates for split 0
        if c.labels()["split"] == 1:
            wall = 7200.0 if c.labels()["model"] == "thp" else 60.0
            write_record(results_dir, c.name, {**_record("synthetic_hawkes", c.labels()["model"],
                                                         c.labels()["parametrisation"], wall, epochs=1),
                                               "cell": c.labels()})
    todo = [c for c in cells if c.labels()["split"] == 0]
    results = ex.run_grid(todo, tmp_path / "runs", progress=False, results_dir=results_dir, time_limit=3600.0)
    status = {r.name: r.status for r in results}
    assert {n for n, s in status.items() if s == "done"} == {c.name for c in todo if "lnm" in c.name}
    assert {n for n, s in status.items() if s == "deferred"} == {c.name for c in todo if "thp" in c.name}
    assert not any((tmp_path / "runs" / c.name).exists() for c in todo if "thp" in c.name)
    assert ex.results_summary(results)["deferred"] == 2
    # without a limit everything runs
    results = ex.run_grid(todo, tmp_path / "runs", progress=False, results_dir=results_dir)
    assert sorted(r.status for r in results) == ["done", "done", "skipped", "skipped"]


def test_compare_command_says_what_it_deferred(tmp_path: Path, fake_fit: FakeFit, capsys) -> None:
    import yaml

    from mtpp.cli import main

    exp = tmp_path / "grid.yaml"
    exp.write_text(yaml.safe_dump(small_grid(splits=[0])))
    results_dir = tmp_path / "results"
    for c in ex.expand(ex.experiment_from_dict(small_grid(splits=[1]))):
        if c.labels()["model"] == "thp":
            write_record(results_dir, c.name, {**_record("synthetic_hawkes", "thp", c.labels()["parametrisation"],
                                                         9000.0, epochs=1), "cell": c.labels()})
    args = ["compare", str(exp), "--out", str(tmp_path / "runs"), "--results", str(results_dir), "--no-report"]
    assert main([*args, "--time-limit", "2 hours"]) == 2
    assert "--time-limit: '2 hours' is not a positive duration" in capsys.readouterr().err
    assert main([*args, "--time-limit", "2h"]) == 0
    err = capsys.readouterr().err
    assert "time limit 2h00m:" in err and "2 of 4 pending cell(s) without an estimate" in err
    assert "2 trained, 0 skipped (already complete), 0 failed, 2 deferred" in err
    # the dry run shows what each cell left is expected to take
    (tmp_path / "runs2").mkdir()
    assert main([*args[:3], str(tmp_path / "runs2"), *args[4:-1], "--dry-run"]) == 0
    out, err = capsys.readouterr()
    thp = [line for line in out.splitlines() if "/thp-" in line]
    assert len(thp) == 2 and all(line.startswith("new") and line.endswith("(expected 150 min)") for line in thp)
    assert "expected wall time of the 2 cell(s) with an estimate: 5.0 cell-hours" in err
    # with --time-limit, the dry run shows what the real run would start and defer (--jobs workers)
    assert main([*args[:3], str(tmp_path / "runs2"), *args[4:-1], "--dry-run", "--time-limit", "3h", "-j", "1"]) == 0
    out, err = capsys.readouterr()
    thp = [line for line in out.splitlines() if "/thp-" in line]
    assert [line.split("  ")[-1] for line in thp] == ["starts at +0s", "deferred (does not fit in --time-limit)"]
    assert "--time-limit 3h00m with --jobs 1: 1 cell(s) would start, 1 deferred" in err
    # summary.md says which cells of the grid it leaves out, and why: one finished run folder here, the other
    # lnm cell complete by its record only (trained on "another machine"), the thp cells deferred
    import shutil

    lnm = sorted(p.parent for p in (tmp_path / "runs").rglob("metrics.json") if "/lnm-" in str(p))
    assert len(lnm) == 2 and len(list(results_dir.rglob("*lnm-*/*.json"))) == 2  # their records, written above
    here = tmp_path / "runs5"
    shutil.copytree(lnm[0], here / lnm[0].relative_to(tmp_path / "runs"))
    assert main(["compare", str(exp), "--out", str(here), "--results", str(results_dir), "--no-progress",
                 "--time-limit", "2h"]) == 0  # fmt: skip
    md = (here / "summary.md").read_text()
    notes = md.split("**Not in this table:**")[1].split("\n\n")[1]
    assert md.index("**Not in this table:**") < md.index("|")  # above the tables
    other = lnm[1].relative_to(tmp_path / "runs").as_posix()
    assert f"- 1 cell(s) complete by its result record under {results_dir}" in notes and other in notes
    assert "- 2 cell(s) deferred by --time-limit" in notes and notes.count("/thp-") == 2


def test_estimates_from_other_record_folders_never_mark_a_cell_done(tmp_path: Path, fake_fit: FakeFit,
                                                                    capsys) -> None:
    """A remedies grid records into its own folder; its remedy cells' costs are known from the sum cells of the
    grid it extends (another folder): ``--estimates-from`` reads those for the estimates only, so a slow cell is
    deferred instead of started blind, and a cell recorded there is still trained here."""
    import yaml

    from mtpp.cli import main

    exp = tmp_path / "grid.yaml"
    exp.write_text(yaml.safe_dump(small_grid(splits=[0], aggregators=["pcgrad"], parametrisations=["base"])))
    table1 = tmp_path / "table1"
    for c in ex.expand(ex.experiment_from_dict(small_grid(splits=[0]))):  # the sum cells, elsewhere
        wall = 9000.0 if c.labels()["model"] == "thp" else 60.0
        write_record(table1, c.name, {**_record("synthetic_hawkes", c.labels()["model"], c.labels()["parametrisation"],
                                                wall, epochs=1), "cell": c.labels()})
    args = ["compare", str(exp), "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "remedies"),
            "--no-report", "--time-limit", "1h"]
    assert main([*args, "--dry-run", "--estimates-from", str(tmp_path / "nowhere")]) == 2
    assert "--estimates-from" in capsys.readouterr().err
    assert main([*args, "--dry-run", "--estimates-from", str(table1)]) == 0
    out = capsys.readouterr().out
    assert all("(expected 150 min)  deferred" in line for line in out.splitlines() if "/thp-" in line)
    assert all("(expected 60 s)  starts at +0s" in line for line in out.splitlines() if "/lnm-" in line)
    assert main([*args, "--estimates-from", str(table1)]) == 0
    err = capsys.readouterr().err
    assert "estimated from 4 result record(s); 0 of 2 pending cell(s) without an estimate" in err
    assert "1 trained, 0 skipped (already complete), 0 failed, 1 deferred" in err
    assert sorted(p.name for p in (tmp_path / "table1").rglob("*.json")) == ["split0-seed0.json"] * 4  # untouched
    # given twice, or equal to --results, a folder's records count once
    cells = ex.expand(ex.experiment_from_dict(small_grid(splits=[0], aggregators=["pcgrad"],
                                                         parametrisations=["base"])))
    states = {c.name: "new" for c in cells}
    _, n = ex.expected_durations(cells, states, tmp_path / "runs", [], table1, [table1, tmp_path / "table1"])
    assert n == 4
    # without --time-limit or --dry-run it does nothing, and says so; a missing folder is refused up front
    assert main([*args[:-2], "--estimates-from", str(table1)]) == 0
    assert "note: --estimates-from informs --time-limit's estimates" in capsys.readouterr().err
    assert main([*args[:-2], "--estimates-from", str(tmp_path / "nowhere")]) == 2
    assert "--estimates-from " + str(tmp_path / "nowhere") + ": no such folder" in capsys.readouterr().err
    # a file in it that is not JSON (cut by a kill) is named, not a traceback
    (table1 / "broken.json").write_text('{"record_version": 1, "cell": {"data')
    assert main([*args, "--dry-run", "--estimates-from", str(table1)]) == 2
    err = capsys.readouterr().err
    assert f"{table1 / 'broken.json'}: not readable as JSON" in err and "Traceback" not in err
