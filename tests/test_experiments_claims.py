"""Several compare processes sharing one results folder never train the same cell (mtpp.experiments_claims)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtpp import experiments as ex
from mtpp.experiments_claims import CellClaims, claim_holder, claim_path
from mtpp.records import record_path, write_record

from test_compare import FakeFit, fake_fit, small_grid  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


class OtherProcess:
    """A separate Python process that claims ``cell`` of ``results_dir`` and holds it until ``stop()``."""

    def __init__(self, results_dir: Path, cell: str) -> None:
        code = (
            "import sys; from mtpp.experiments_claims import CellClaims; "
            f"c = CellClaims({str(results_dir)!r}); assert c.take({cell!r}) is None; "
            "print('held', flush=True); sys.stdin.read()"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=ROOT)  # fmt: skip
        assert self.proc.stdout.readline().strip() == "held"

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture()
def cells() -> list:
    return [c for c in ex.expand(ex.experiment_from_dict(small_grid())) if c.labels()["split"] == 0]


def test_a_claim_is_exclusive_across_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    name = "synthetic_hawkes/thp-base-sum/split0-seed0"
    assert claim_holder(tmp_path, name) is None and claim_holder(None, name) is None
    other = OtherProcess(tmp_path, name)
    try:
        holder = claim_holder(tmp_path, name)
        assert holder is not None and holder["pid"] == other.proc.pid
        status, why = CellClaims(tmp_path).take(name)
        assert status == "elsewhere" and f"pid {other.proc.pid} on " in why and why.endswith("trains it")
    finally:
        other.stop()
    # the holder is gone (however it ended, the kernel drops its flock): the cell can be claimed here
    mine = CellClaims(tmp_path)
    assert mine.take(name) is None
    assert claim_holder(tmp_path, name)["pid"] != other.proc.pid
    mine.release(name)
    assert claim_holder(tmp_path, name) is None and not claim_path(tmp_path, name).exists()
    # no results folder: nothing to share, every claim granted, nothing written
    assert CellClaims(None).take(name) is None


def test_a_cell_finished_by_another_process_meanwhile_is_not_trained_again(tmp_path: Path) -> None:
    name = "synthetic_hawkes/thp-base-sum/split0-seed0"
    claims = CellClaims(tmp_path, fresh={name})
    write_record(tmp_path, name, {"cell": {}})  # another process finished it after this one read the folder
    status, why = claims.take(name)
    assert status == "skipped" and str(record_path(tmp_path, name)) in why
    assert claim_holder(tmp_path, name) is None  # not kept
    # a cell that had its (stale) record when the run started is retrained (--rerun-stale): not "fresh"
    assert CellClaims(tmp_path).take(name) is None


def test_run_grid_leaves_a_cell_another_process_trains(tmp_path: Path, cells: list, fake_fit: FakeFit,
                                                       capsys) -> None:  # fmt: skip
    results_dir = tmp_path / "results"
    busy = cells[1].name
    other = OtherProcess(results_dir, busy)
    try:
        results = ex.run_grid(cells, tmp_path / "runs", progress=False, results_dir=results_dir)
    finally:
        other.stop()
    status = {r.name: r.status for r in results}
    assert status == {c.name: ("elsewhere" if c.name == busy else "done") for c in cells}
    assert f"pid {other.proc.pid}" in next(r.error for r in results if r.name == busy)
    assert not (tmp_path / "runs" / busy).exists() and str(tmp_path / "runs" / busy) not in dict(fake_fit.calls)
    assert ex.results_summary(results)["elsewhere"] == 1
    # every claim of this run was let go and its file removed; only the other process's is left (it ended
    # without letting go, as a killed process would: its lock died with it)
    assert [p for p in results_dir.rglob("*.lock")] == [claim_path(results_dir, busy)]
    assert all(claim_holder(results_dir, c.name) is None for c in cells)
    # the next run trains it
    results = ex.run_grid(cells, tmp_path / "runs", progress=False, results_dir=results_dir)
    assert {r.name: r.status for r in results}[busy] == "done"


def test_run_grid_skips_a_cell_another_process_finished_meanwhile(tmp_path: Path, cells: list,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    results_dir = tmp_path / "results"
    first, later = cells[0].name, cells[-1].name
    fit = FakeFit()

    def fit_and_finish_elsewhere(config, out_dir: Path, **kw) -> dict:  # while `first` trains here, another
        if first in str(out_dir):  # process writes `later`'s record
            write_record(results_dir, later, {"cell": cells[-1].labels()})
        return fit(config, out_dir, **kw)

    from mtpp.training import trainer

    monkeypatch.setattr(trainer, "fit", fit_and_finish_elsewhere)
    results = ex.run_grid(cells, tmp_path / "runs", progress=False, results_dir=results_dir)
    status = {r.name: r.status for r in results}
    assert status[later] == "skipped" and "finished by another process" in next(
        r.error for r in results if r.name == later)
    assert all(s == "done" for n, s in status.items() if n != later)
    assert not any(later in call for call, _ in fit.calls)


def test_compare_says_which_cells_another_process_trains(tmp_path: Path, fake_fit: FakeFit, capsys) -> None:
    from mtpp.cli import main

    exp = tmp_path / "grid.yaml"
    exp.write_text(yaml.safe_dump(small_grid(splits=[0])))
    results_dir = tmp_path / "results"
    busy = ex.expand(ex.experiment_from_dict(small_grid(splits=[0])))[0].name
    args = ["compare", str(exp), "--out", str(tmp_path / "runs"), "--results", str(results_dir)]
    other = OtherProcess(results_dir, busy)
    try:
        assert main([*args, "--dry-run", "--time-limit", "1h"]) == 0
        out, err = capsys.readouterr()
        line = next(s for s in out.splitlines() if busy in s)
        assert line.startswith("running ") and f"(elsewhere: pid {other.proc.pid} on " in line
        assert "starts at" not in line and "3 new" in err and "1 running" in err
        assert main([*args, "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert "3 trained, 0 skipped (already complete), 0 failed, 1 running in another process" in err
        md = (tmp_path / "runs" / "summary.md").read_text()
        assert f"1 cell(s) running in another process that shares {results_dir}" in md and busy in md
    finally:
        other.stop()


def test_parallel_workers_leave_a_cell_another_process_trains(tmp_path: Path, cells: list) -> None:
    results_dir = tmp_path / "results"
    busy = cells[2].name
    other = OtherProcess(results_dir, busy)
    try:  # FakeFit pickles by reference: the spawned workers import it from test_compare
        results = ex.run_grid(cells, tmp_path / "runs", jobs=2, progress=False, fit=FakeFit(), results_dir=results_dir)
    finally:
        other.stop()
    assert {r.name: r.status for r in results} == {c.name: ("elsewhere" if c.name == busy else "done") for c in cells}
    assert not (tmp_path / "runs" / busy).exists()
    assert all(record_path(results_dir, c.name).is_file() for c in cells if c.name != busy)
    assert all(claim_holder(results_dir, c.name) is None for c in cells)
