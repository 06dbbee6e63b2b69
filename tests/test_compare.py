"""Experiment grids (``mtpp.experiments``) and ``mtpp compare``: expansion, resume/skip, failures, end to end."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mtpp import experiments as ex
from mtpp.cli import main
from mtpp.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "experiments" / "smoke.yaml"
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))


def write_experiment(tmp_path: Path, exp: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(exp))
    return path


def small_grid(**grid) -> dict:
    base = {"data": {"name": "synthetic_hawkes"}, "model": {"hidden_size": 8}, "train": {"max_epochs": 1}}
    return {
        "base": base,
        "grid": {
            "models": [{"name": "thp", "decoder": "thp"}, {"name": "lnm", "decoder": "lnm"}],
            "parametrisations": ["base", "plusplus"],
            "splits": [0, 1],
            **grid,
        },
    }


# --------------------------------------------------------------------------------------------- expansion


def test_expansion_is_the_cartesian_product_with_stable_unique_names() -> None:
    exp = ex.experiment_from_dict(small_grid(seeds=[0, 3]))
    cells = ex.expand(exp)
    assert len(cells) == 2 * 2 * 2 * 2
    names = [c.name for c in cells]
    assert len(set(names)) == len(names)
    assert names == [c.name for c in ex.expand(ex.experiment_from_dict(small_grid(seeds=[0, 3])))]
    assert names[0] == "synthetic_hawkes/thp-base-sum/split0-seed0"
    assert "synthetic_hawkes/lnm-plusplus-sum/split1-seed3" in names
    cell = next(c for c in cells if c.name == "synthetic_hawkes/lnm-plusplus-sum/split1-seed3")
    cfg = ex.resolve(cell)
    assert (cfg.model.decoder, cfg.model.parametrisation, cfg.model.hidden_size) == ("lnm", "plusplus", 8)
    assert (cfg.data.split, cfg.train.seed, cfg.gradients.aggregator) == (1, 3, "sum")


def test_per_model_and_per_dataset_overrides_and_precedence() -> None:
    raw = small_grid(
        datasets=["synthetic_hawkes", {"name": "other", "path": "/x/y", "overrides": {"train": {"batch_size": 4}}}],
        models=[
            {"name": "thp", "decoder": "thp", "overrides": {"train": {"lr": 0.01, "batch_size": 16}}},
            {"name": "lnm", "decoder": "lnm", "hidden_size": 40},
        ],
        aggregators=["sum", {"name": "cograd", "options": {"gamma": 0.5}}],
    )
    cells = {c.name: c for c in ex.expand(ex.experiment_from_dict(raw))}
    thp = ex.resolve(cells["other/thp-base-cograd/split0-seed0"])
    assert thp.data.name == "/x/y"
    assert thp.train.lr == 0.01 and thp.train.batch_size == 16  # model overrides beat dataset overrides
    assert thp.gradients.aggregator == "cograd" and thp.gradients.options == {"gamma": 0.5}
    lnm = ex.resolve(cells["synthetic_hawkes/lnm-base-sum/split0-seed0"])
    assert lnm.model.hidden_size == 40 and lnm.train.lr == 1e-3
    assert ex.resolve(cells["other/lnm-base-sum/split0-seed0"]).train.batch_size == 4
    # --set is applied last, over every layer
    assert ex.resolve(cells["other/thp-base-sum/split0-seed0"], ["train.batch_size=2"]).train.batch_size == 2


def test_exclude_rules() -> None:
    raw = small_grid(aggregators=["sum", "pcgrad"])
    raw["exclude"] = [{"parametrisation": "plusplus", "aggregator": ["pcgrad"]}, {"model": "lnm", "split": 1}]
    names = [c.name for c in ex.expand(ex.experiment_from_dict(raw))]
    assert not any("plusplus-pcgrad" in n for n in names)
    assert not any(n.startswith("synthetic_hawkes/lnm-") and "split1" in n for n in names)
    assert "synthetic_hawkes/thp-base-pcgrad/split1-seed0" in names
    assert len(names) == 16 - 4 - 4 + 1  # 16 cells; minus plusplus-pcgrad (4) and lnm split 1 (4), one overlap


@pytest.mark.parametrize("rules", [[{"seed": 0}], [{"model": "*"}], [{"parametrisation": "base"},
                                                                     {"parametrisation": "plusplus"}]])
@pytest.mark.parametrize("dry_run", [True, False])
def test_exclude_rules_that_remove_every_cell_are_named_not_blamed_on_only(
    tmp_path: Path, rules: list[dict], dry_run: bool, capsys: pytest.CaptureFixture
) -> None:
    """An exclude list that leaves nothing said "no cell of EXP matches --only " when --only was not given."""
    raw = small_grid()
    raw["exclude"] = rules
    path = write_experiment(tmp_path, raw)
    with pytest.raises(ConfigError, match=r"the exclude rules remove every one of the grid's 8 cell\(s\)"):
        ex.expand(ex.experiment_from_dict(raw))
    assert main(["compare", str(path), "--out", str(tmp_path / "out"), *(["--dry-run"] if dry_run else [])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--only" not in err[0] and f"{path}: the exclude rules remove every one" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda r: r.update(bogus=1), "bogus"),
        (lambda r: r["grid"].update(decoders=["thp"]), "decoders"),
        (lambda r: r["base"].update(optimiser={}), "optimiser"),
        (lambda r: r.update(exclude=[{"modle": "thp"}]), "modle"),
        (lambda r: r["grid"]["models"][0].update(overrides={"trian": {}}), "trian"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(mutate, key: str) -> None:
    raw = small_grid()
    mutate(raw)
    with pytest.raises(ConfigError, match=key):
        ex.expand(ex.experiment_from_dict(raw))


@pytest.mark.parametrize("where, typo, meant", [("grid", "split", "splits"), ("grid", "dataset", "datasets"),
                                                ("experiment", "bsae", "base"), ("exclude", "modle", "model")])
def test_a_misspelt_experiment_key_gets_the_key_it_resembles(where: str, typo: str, meant: str) -> None:
    """``grid: {split: ...}`` said only "unknown key 'split' in grid; valid: ...", unlike run-config typos."""
    raw = small_grid()
    if where == "grid":
        raw["grid"][typo] = raw["grid"].pop(meant, [0])
    elif where == "experiment":
        raw[typo] = raw.pop(meant)
    else:
        raw["exclude"] = [{typo: "thp"}]
    with pytest.raises(ConfigError, match=rf"unknown key '{typo}' in .*\(did you mean '{meant}'\?\)"):
        ex.expand(ex.experiment_from_dict(raw))


def test_unknown_run_config_key_names_the_key_and_the_cell() -> None:
    raw = small_grid()
    raw["grid"]["models"][1]["hiden_size"] = 3
    cells = ex.expand(ex.experiment_from_dict(raw))
    with pytest.raises(ConfigError, match="hiden_size"):
        ex.resolve_all(cells)


def test_unknown_aggregator_or_option_is_an_error_before_training() -> None:
    for entry, match in (("pcgard", "pcgard"), ({"name": "cograd", "options": {"gama": 1}}, "gama")):
        cells = ex.expand(ex.experiment_from_dict(small_grid(aggregators=[entry])))
        with pytest.raises(ConfigError, match=match):
            ex.resolve_all(cells)
    # the cell, then the key the aggregator's own message names, once ("gradients: gradients.options..." before)
    cells = ex.expand(ex.experiment_from_dict(small_grid(aggregators=[{"name": "gradvac", "options": {"beta": 3}}])))
    with pytest.raises(ConfigError) as err:
        ex.resolve_all(cells)
    assert re.fullmatch(r"cell \S+-gradvac/\S+: gradients\.options\.beta: must be in \[0, 1\], got 3 "
                        r"\(aggregator 'gradvac'\)", str(err.value)), str(err.value)


def test_by_parametrisation_settings() -> None:
    raw = small_grid(models=[{"name": "lnm", "decoder": "lnm", "hidden_size": 36,
                              "by_parametrisation": {"plusplus": {"hidden_size": 27,
                                                                  "overrides": {"train": {"lr": 0.5}}}}}])
    cells = {c.parametrisation: ex.resolve(c) for c in ex.expand(ex.experiment_from_dict(raw)) if c.split == 0}
    assert (cells["base"].model.hidden_size, cells["base"].train.lr) == (36, 1e-3)
    assert (cells["plusplus"].model.hidden_size, cells["plusplus"].train.lr) == (27, 0.5)
    raw["grid"]["models"][0]["by_parametrisation"] = {"plus_plus": {"hidden_size": 3}}
    with pytest.raises(ConfigError, match="plus_plus"):
        ex.expand(ex.experiment_from_dict(raw))


def test_duplicate_names_are_errors() -> None:
    raw = small_grid(models=[{"name": "m", "decoder": "thp"}, {"name": "m", "decoder": "lnm"}])
    with pytest.raises(ConfigError, match="same run directory"):
        ex.expand(ex.experiment_from_dict(raw))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_experiments_expand_and_validate(path: Path) -> None:
    cells = ex.expand(ex.load_experiment(path))
    assert cells
    ex.resolve_all(cells)


def test_grid_override_and_only() -> None:
    exp = ex.load_experiment(SMOKE, ["grid.splits=[0]", "train.max_epochs=1"])
    cells = ex.expand(exp)
    assert {c.split for c in cells} == {0}
    only = ex.select(cells, ["*/lnm-*"])
    assert only and all("/lnm-" in c.name for c in only)
    # a pattern that matches nothing is a typo, not a smaller grid: said, with the cell names' shape
    with pytest.raises(ConfigError, match=r"--only 'nomatch/\*': matches no cell of the grid.*splitS-seedN"):
        ex.select(cells, ["*/lnm-*", "nomatch/*"])
    with pytest.raises(ConfigError, match=r"did you mean 'synthetic_hawkes/lnm-base-sum/\*'"):
        ex.select(cells, ["synthetic_hawkes/lnm-base-sun"])


# --------------------------------------------------------------------------------------------- runner (fake fit)


class FakeFit:
    """Stands in for the trainer: writes a metrics.json, or fails for cells whose name matches ``fail``."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.fail = fail

    def __call__(self, config, out_dir: Path, resume: bool = False, overwrite: bool = False) -> dict:
        self.calls.append((str(out_dir), resume))
        if self.fail and self.fail in str(out_dir):
            raise RuntimeError("boom: loss is NaN")
        metrics = {"val": {"nll_time_per_seq": 1.0}, "test": {"nll_time_per_seq": float(config.data.split)}}
        (Path(out_dir) / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
        (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics))
        return metrics


@pytest.fixture()
def fake_fit(monkeypatch: pytest.MonkeyPatch) -> FakeFit:
    """``mtpp.training.trainer.fit`` replaced (in this process: the runner's jobs=1 path)."""
    fake = FakeFit()
    try:
        from mtpp.training import trainer
    except ImportError:  # trainer not importable: stand in a module
        trainer = types.ModuleType("mtpp.training.trainer")
        monkeypatch.setitem(sys.modules, "mtpp.training.trainer", trainer)
    monkeypatch.setattr(trainer, "fit", fake, raising=False)
    # the fake reads no data: the grids here name split 1 of the one-split synthetic set, which compare's up-front
    # check of the splits (mtpp.data.catalog.known_splits) would refuse
    from mtpp.data import catalog

    monkeypatch.setattr(catalog, "known_splits", lambda entry, path: None)
    return fake


def test_breadth_order_runs_every_model_at_its_first_split_before_any_second(
    tmp_path: Path, fake_fit: FakeFit, capsys: pytest.CaptureFixture
) -> None:
    """``--order breadth``: replicate rank first (split 0 of every model, then split 1, ...), file order within a
    rank; the dry run lists the cells in the order they would run; ``grid`` keeps the file's order."""
    cells = ex.expand(ex.experiment_from_dict(small_grid(seeds=[0, 1])))
    assert ex.ordered(cells) == cells
    breadth = ex.ordered(cells, "breadth")
    assert sorted(c.name for c in breadth) == sorted(c.name for c in cells)
    replicates = [(c.split, c.seed) for c in breadth]
    assert replicates == sorted(replicates) and replicates[:4] == [(0, 0)] * 4  # 4 models x param. per replicate
    assert [c.name for c in breadth[:4]] == [c.name for c in cells if (c.split, c.seed) == (0, 0)]
    with pytest.raises(ConfigError, match="--order: one of grid, breadth, got 'random'"):
        ex.ordered(cells, "random")
    from mtpp.commands import compare

    sub = argparse.ArgumentParser().add_subparsers()
    compare.register(sub)
    order = next(a for a in sub.choices["compare"]._actions if a.dest == "order")
    assert tuple(order.choices) == ex.ORDERS  # the CLI's literal choices stay those of mtpp.experiments
    path = write_experiment(tmp_path, small_grid())
    assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--dry-run", "--order", "breadth"]) == 0
    listed = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
    assert [n.rsplit("/", 1)[1] for n in listed] == ["split0-seed0"] * 4 + ["split1-seed0"] * 4
    main(["compare", str(path), "--out", str(tmp_path / "o"), "--order", "breadth", "--no-report", "--no-progress"])
    assert [Path(out).name for out, _ in fake_fit.calls] == ["split0-seed0"] * 4 + ["split1-seed0"] * 4


def test_runner_skips_complete_cells_and_resumes_checkpoints(tmp_path: Path, fake_fit: FakeFit) -> None:
    cells = ex.expand(ex.experiment_from_dict(small_grid()))
    results = ex.run_grid(cells[:3], tmp_path, progress=False)
    assert [r.status for r in results] == ["done"] * 3
    assert all((tmp_path / c.name / "cell.json").is_file() for c in cells[:3])
    # an interrupted cell: a checkpoint but no metrics -> resumed; a truncated metrics.json is not complete
    (tmp_path / cells[3].name).mkdir(parents=True)
    (tmp_path / cells[3].name / "checkpoint.pt").write_bytes(b"x")
    (tmp_path / cells[4].name).mkdir(parents=True)
    (tmp_path / cells[4].name / "metrics.json").write_text('{"val": {')
    (tmp_path / cells[3].name / "log.jsonl").write_text('{"kind": "epoch", "epoch": 3, "best_epoch": 2}\n')
    fake_fit.calls.clear()
    said: list[str] = []
    results = ex.run_grid(cells[:5], tmp_path, progress=False, log=said.append)
    assert f"1 interrupted cell(s) resume from their checkpoints: {cells[3].name} (after epoch 3)" in said
    assert sorted(r.status for r in results) == ["done", "done", "skipped", "skipped", "skipped"]
    assert fake_fit.calls == [(str(tmp_path / cells[3].name), True), (str(tmp_path / cells[4].name), False)]
    fake_fit.calls.clear()
    ex.run_grid(cells[:5], tmp_path, progress=False)
    assert fake_fit.calls == []


def test_runner_records_failures_and_continues(tmp_path: Path, fake_fit: FakeFit) -> None:
    fake_fit.fail = "lnm-base"
    cells = ex.expand(ex.experiment_from_dict(small_grid()))
    results = ex.run_grid(cells, tmp_path, progress=False)
    failed = [r for r in results if r.status == "failed"]
    assert len(failed) == 2 and len(results) == len(cells)
    rows = json.loads((tmp_path / "failures.json").read_text())
    assert {r["cell"] for r in rows} == {r.name for r in failed}
    assert all("boom: loss is NaN" in r["error"] for r in rows)
    fake_fit.fail = None  # fixed: the rerun trains only the failed cells and clears failures.json
    fake_fit.calls.clear()
    ex.run_grid(cells, tmp_path, progress=False)
    assert len(fake_fit.calls) == 2 and not (tmp_path / "failures.json").exists()


def test_stale_finished_cells_are_refused_unless_rerun(tmp_path: Path, fake_fit: FakeFit) -> None:
    cells = ex.expand(ex.experiment_from_dict(small_grid()))[:2]
    ex.run_grid(cells, tmp_path, progress=False, overrides=["train.max_epochs=1"])
    fake_fit.calls.clear()
    # where / how it runs is not a change of experiment
    ex.run_grid(cells, tmp_path, progress=False,
                overrides=["train.device=cpu", "logging.flush_every=7", "train.threads=4"])  # fmt: skip
    assert fake_fit.calls == []
    with pytest.raises(ConfigError, match=r"train.max_epochs: 1 -> 5.*--rerun-stale"):
        ex.run_grid(cells, tmp_path, progress=False, overrides=["train.max_epochs=5"])
    assert fake_fit.calls == []
    assert ex.cell_state(tmp_path / cells[0].name, ex.resolved_dict(cells[0], ["train.max_epochs=5"])) == "stale"
    ex.run_grid(cells, tmp_path, progress=False, overrides=["train.max_epochs=5"], rerun_stale=True)
    assert fake_fit.calls == [(str(tmp_path / c.name), False) for c in cells]


def test_an_interrupted_cell_of_another_configuration_is_stale_not_resumed(tmp_path: Path, fake_fit: FakeFit) -> None:
    """A checkpoint started under other settings (here train.max_epochs) is not continued under this cell's name:
    stale, refused without --rerun-stale, and retrained from scratch with it; the same settings resume."""
    cells = ex.expand(ex.experiment_from_dict(small_grid()))[:2]
    for c in cells:  # interrupted runs of max_epochs=300: a config.yaml and a checkpoint, no metrics
        d = tmp_path / c.name
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump(ex.resolve(c, ["train.max_epochs=300"]).to_dict()))
        (d / "checkpoint.pt").write_bytes(b"x")
    assert ex.grid_states(cells, tmp_path, ["train.max_epochs=300"]) == {c.name: "resume" for c in cells}
    assert ex.grid_states(cells, tmp_path, ["train.max_epochs=2"]) == {c.name: "stale" for c in cells}
    with pytest.raises(ConfigError, match=r"finished or interrupted.*train.max_epochs: 300 -> 2.*--rerun-stale"):
        ex.run_grid(cells, tmp_path, progress=False, overrides=["train.max_epochs=2"])
    assert fake_fit.calls == []
    ex.run_grid(cells[:1], tmp_path, progress=False, overrides=["train.max_epochs=300"])
    assert fake_fit.calls == [(str(tmp_path / cells[0].name), True)]
    fake_fit.calls.clear()
    ex.run_grid(cells[1:], tmp_path, progress=False, overrides=["train.max_epochs=2"], rerun_stale=True)
    assert fake_fit.calls == [(str(tmp_path / cells[1].name), False)]


def test_compare_cli_dry_run_and_failure_exit_code(
    tmp_path: Path, fake_fit: FakeFit, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    path = write_experiment(tmp_path, small_grid())
    assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and lines[0].split() == ["new", "synthetic_hawkes/thp-base-sum/split0-seed0"]
    assert fake_fit.calls == []
    # an unfinished cell says how far it got; one whose folder a live process holds is "running"
    from mtpp.runs import RunLock

    cell = tmp_path / "o" / "synthetic_hawkes" / "thp-base-sum" / "split0-seed0"
    cell.mkdir(parents=True)
    (cell / "checkpoint.pt").write_bytes(b"")
    (cell / "log.jsonl").write_text('{"kind": "epoch", "epoch": 3, "best_epoch": 2}\n{"kind": "step"}\n')
    assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split() == ["resume", "synthetic_hawkes/thp-base-sum/split0-seed0", "(epoch",
                                           "3/1,", "best", "2)"]  # fmt: skip
    assert "8 cells: 7 new, 1 resume" in err
    with RunLock(cell):
        assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
        assert capsys.readouterr().out.splitlines()[0].startswith("running ")
    (cell / "checkpoint.pt").unlink()
    (cell / "log.jsonl").unlink()
    fake_fit.fail = "thp-plusplus"
    code = main(["compare", str(path), "--out", str(tmp_path / "o"), "--no-progress", "--no-report"])
    assert code == 1
    assert "thp-plusplus" in capsys.readouterr().err
    assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--set", "grid.bogus=1"]) == 2


def test_threads_per_job() -> None:
    assert ex.threads_per_job(1, cores=2) == 2
    assert ex.threads_per_job(2, cores=2) == 1
    assert ex.threads_per_job(4, cores=2) == 1


# --------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_smoke_grid_end_to_end_with_the_real_trainer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "smoke"
    argv = [
        "compare", str(SMOKE), "--out", str(out), "--jobs", "2", "--no-progress",
        "--set", "train.max_epochs=1", "--set", "data.max_sequences=16", "--set", "model.integration_nodes=4",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    cells = ex.expand(ex.load_experiment(SMOKE))
    assert len(cells) == 12
    for cell in cells:
        run = out / cell.name
        assert ex.is_complete(run), cell.name
        assert {"config.yaml", "log.jsonl", "checkpoint.pt", "best.pt", "cell.json"} <= {p.name for p in run.iterdir()}
    assert (out / "summary.csv").is_file() and (out / "summary.md").is_file()
    assert list((out / "plots").glob("*.png"))
    assert not (out / "failures.json").exists()
    summary = (out / "summary.md").read_text()  # what each mark metric conditions on is said, both kinds
    assert "mark NLL per sequence, given the time p(k | τ_obs, H)" in summary
    assert "mark NLL per sequence, forecast p(k | H)" in summary

    # summary.csv holds the mean over the two replicates of the per-run metrics.json
    import pandas as pd

    summary = pd.read_csv(out / "summary.csv")
    said = summary.set_index("metric")[["meaning", "unit"]].drop_duplicates()  # each row says what it measures
    assert tuple(said.loc["nll_mark_per_seq"]) == ("mark NLL per sequence, given the time p(k | τ_obs, H)", "nats")
    runs = [out / c.name for c in cells if c.model == "lnm" and c.parametrisation == "plus"]
    values = [json.loads((r / "metrics.json").read_text())["test"]["nll_time_per_seq"] for r in runs]
    row = summary[(summary["model"] == "lnm") & (summary["parametrisation"] == "plus")
                  & (summary["metric"] == "nll_time_per_seq")]
    assert len(row) == 1 and row["mean"].iloc[0] == pytest.approx(sum(values) / len(values))

    # rerunning retrains nothing
    stamps = {c.name: (out / c.name / "metrics.json").stat().st_mtime_ns for c in cells}
    capsys.readouterr()
    assert main(argv) == 0
    assert "12 skipped" in capsys.readouterr().err
    assert stamps == {c.name: (out / c.name / "metrics.json").stat().st_mtime_ns for c in cells}

    # an interrupted cell (checkpoint, no metrics) is resumed by the real trainer; the others stay skipped
    (out / cells[0].name / "metrics.json").unlink()
    assert main(argv) == 0
    assert "1 trained, 11 skipped" in capsys.readouterr().err
    assert ex.is_complete(out / cells[0].name)
    assert stamps[cells[1].name] == (out / cells[1].name / "metrics.json").stat().st_mtime_ns


# --------------------------------------------------------------------------------------------- reproduce_table1.py


def _load_script(monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce_table1", ROOT / "scripts" / "reproduce_table1.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reproduce_table1", module)
    spec.loader.exec_module(module)
    return module


def test_reproduce_table1_subset_and_comparison_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _load_script(monkeypatch)
    argv = ["--datasets", "mooc", "--models", "lnm", "thp", "--splits", "0", "1", "--out", str(tmp_path)]
    args = script.parse_args(argv)
    raw = yaml.safe_load((ROOT / "configs" / "experiments" / "paper_table1.yaml").read_text())
    sub = script.subset_experiment(raw, args, {"mooc": tmp_path / "prep" / "mooc", "lastfm": tmp_path / "x"})
    cells = ex.expand(ex.experiment_from_dict(sub))
    assert len(cells) == 2 * 3 * 2 and {c.dataset for c in cells} == {"mooc"}
    assert ex.resolve(cells[0]).data.name == str((tmp_path / "prep" / "mooc").resolve())
    # fake finished runs: L_T = -300 - split, L_M = 80 + split
    for c in cells:
        run = tmp_path / c.name
        run.mkdir(parents=True)
        (run / "cell.json").write_text(json.dumps(c.labels()))
        test = {"nll_time_per_seq": -300.0 - c.split, "nll_mark_per_seq": 80.0 + c.split}
        (run / "metrics.json").write_text(json.dumps({"val": test, "test": test}))
    table = script.collect(tmp_path)
    assert table[("mooc", "lnm", "plus")]["nll_time_per_seq"] == [-300.0, -301.0]
    text = script.comparison_markdown(table)
    assert "| mooc | L_T | -310.6 (best) | LNM+ | -300.5 ± 0.5 (n=2) |" in text
    assert "| mooc | L_M | 70.9 (best) | THP++ |" in text and "(reference)" not in text  # values: results/published
    assert "lastfm" not in text


def test_result_records_are_written_and_resume_a_grid_elsewhere(tmp_path: Path, fake_fit: FakeFit) -> None:
    """Each finished cell writes a small record under results/; a grid on a fresh machine (no run folders) skips
    the recorded cells and trains the others; scripts/results_md.py renders the records."""
    from mtpp.records import build_record, cos_histogram, read_records, record_path

    cells = ex.expand(ex.experiment_from_dict(small_grid()))[:3]
    results = tmp_path / "results"
    ex.run_grid(cells[:2], tmp_path / "machine1", progress=False, results_dir=results)
    assert all(record_path(results, c.name).is_file() for c in cells[:2])
    rec = json.loads(record_path(results, cells[0].name).read_text())
    assert rec["cell"]["name"] == cells[0].name and rec["cell"]["model"] == cells[0].labels()["model"]
    assert rec["metrics"]["test"]["nll_time_per_seq"] == float(cells[0].split)
    assert rec["wall_seconds"] > 0 and rec["record_version"] == 1
    fake_fit.calls.clear()
    ex.run_grid(cells, tmp_path / "machine2", progress=False, results_dir=results)
    assert fake_fit.calls == [(str(tmp_path / "machine2" / cells[2].name), False)]
    assert len(read_records(results)) == 3
    # a grid that finished without --results gets its records when run again with it, nothing retrained
    fake_fit.calls.clear()
    late = tmp_path / "late"
    ex.run_grid(cells[:2], tmp_path / "machine1", progress=False, results_dir=late)
    assert fake_fit.calls == [] and sorted(r["cell"]["name"] for r in read_records(late)) == sorted(
        c.name for c in cells[:2])
    # the cos_tm histogram of a record: counts in 40 equal bins of [-1, 1]
    h = cos_histogram([-1.0, -0.99, 0.0, 0.5, 1.0])
    assert sum(h) == 5 and h[0] == 2 and h[20] == 1 and h[30] == 1 and h[39] == 1
    assert cos_histogram([]) is None
    # a run folder's log gives epochs, validation time and the histogram
    run = tmp_path / "machine1" / cells[0].name
    lines = [{"kind": "step", "cos_tm": -0.5}, {"kind": "step", "cos_tm": None}, {"kind": "step", "cos_tm": 0.2,
             "skipped": True}, {"kind": "epoch", "epoch_seconds": 2.0, "validation_seconds": 0.5},
             {"kind": "epoch", "epoch_seconds": 4.0, "validation_seconds": 0.25}]  # fmt: skip
    (run / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{cut")
    r = build_record(run, {"name": cells[0].name}, 3.0)
    assert r["epoch_seconds"] == 3.0 and r["validation_seconds"] == 0.75 and sum(r["cos_tm_histogram"]) == 1
    assert r["skipped_steps_to_best"] is None  # no best epoch in this fake run
    lines = [{"kind": "step", "epoch": 1, "skipped": True}, {"kind": "step", "epoch": 3, "skipped": True},
             {"kind": "step", "epoch": 3}]  # fmt: skip
    (run / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "train": {"best_epoch": 2}}))
    r = build_record(run, {"name": cells[0].name}, 3.0)
    assert r["skipped_steps_to_best"] == 1  # epoch 1 <= best epoch 2; the skip in epoch 3 comes after
    md = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_md.py"), str(results)],
                        capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "generated by" in md and "| model | n |" in md


def test_a_record_of_another_configuration_is_stale_not_done(
    tmp_path: Path, fake_fit: FakeFit, capsys: pytest.CaptureFixture
) -> None:
    """A committed record stands in for a cell only when the configuration that trained it is the cell's: a grid
    with another protocol (here train.lr) refuses it as stale, naming the record, and --dry-run shows the state the
    real run acts on."""
    from mtpp.records import record_path

    cells = ex.expand(ex.experiment_from_dict(small_grid()))[:2]
    results = tmp_path / "results"
    ex.run_grid(cells, tmp_path / "machine1", progress=False, results_dir=results)
    fake_fit.calls.clear()
    fresh = tmp_path / "machine2"
    assert ex.grid_states(cells, fresh, [], results) == {c.name: "done" for c in cells}
    assert ex.grid_states(cells, fresh, ["train.lr=0.5"], results) == {c.name: "stale" for c in cells}
    assert ex.grid_states(cells, fresh, ["train.device=cpu"], results) == {c.name: "done" for c in cells}
    assert ex.grid_states(cells, fresh, ["train.lr=0.5"]) == {c.name: "new" for c in cells}  # no --results
    with pytest.raises(ConfigError, match=r"its record .*split0-seed0.json: train.lr: 0.001 -> 0.5.*--rerun-stale"):
        ex.run_grid(cells, fresh, progress=False, overrides=["train.lr=0.5"], results_dir=results)
    assert fake_fit.calls == [] and not (fresh / cells[0].name).exists()
    before = record_path(results, cells[0].name).read_text()
    ex.run_grid(cells, fresh, progress=False, overrides=["train.lr=0.5"], results_dir=results, rerun_stale=True)
    assert fake_fit.calls == [(str(fresh / c.name), False) for c in cells]
    after = json.loads(record_path(results, cells[0].name).read_text())
    assert after["config"]["train"]["lr"] == 0.5 and record_path(results, cells[0].name).read_text() != before
    # the dry run reads the same states
    path = write_experiment(tmp_path, small_grid())
    args = ["compare", str(path), "--out", str(tmp_path / "machine3"), "--results", str(results), "--dry-run"]
    assert main([*args, "--only", "*/thp-base-*"]) == 1  # the real run would refuse the stale cells: said
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split() == ["stale", cells[0].name, "(result", "record)"]
    assert "the real run would stop: 2 stale cell(s)" in err and "--rerun-stale retrains them" in err
    # nothing would start (the real run stops), unless --rerun-stale retrains them
    assert main([*args, "--only", "*/thp-base-*", "--time-limit", "1h"]) == 1
    out, err = capsys.readouterr()
    assert "starts at" not in out and "would start" not in err
    assert main([*args, "--only", "*/thp-base-*", "--time-limit", "1h", "--rerun-stale"]) == 0
    out, err = capsys.readouterr()
    assert "starts at +0s" in out.splitlines()[0] and "2 cell(s) would start" in err
    assert main([*args, "--only", "*/thp-base-*", "--set", "train.lr=0.5"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split() == ["done", cells[0].name, "(result", "record)"]
    assert "2 cells: 2 done" in err


def test_compare_refuses_a_dataset_it_cannot_find_before_making_any_folder(
    tmp_path: Path, fake_fit: FakeFit, capsys: pytest.CaptureFixture
) -> None:
    raw = small_grid(datasets=["synthetic_hawkes", "moooc"])
    path = write_experiment(tmp_path, raw)
    assert main(["compare", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nothing trained: moooc: unknown dataset 'moooc'; did you mean 'mooc'?" in err
    assert err.count("unknown dataset") == 1 and fake_fit.calls == [] and not (tmp_path / "o").exists()
    assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 1  # lists the cells anyway
    out, err = capsys.readouterr()
    assert "data moooc: unknown dataset" in err and len(out.splitlines()) == 16
    assert "the real run would stop: 1 dataset(s) or split(s) not found" in err


def test_compare_refuses_a_split_the_dataset_does_not_have_up_front(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``grid.splits: [0, 7]`` on a 5-split dataset: the dry run listed split 7 as new and the real run failed every
    such cell at run time; both now say it before anything trains (split folders and re-split sources)."""
    from mtpp.data.formats import write_bosser_json
    from mtpp.data.sequence import make_sequence

    data = tmp_path / "five"
    for k in range(5):
        (data / f"split_{k}").mkdir(parents=True)
        (data / f"split_{k}" / "args.json").write_text('{"marks": 2}')
        for part in ("train", "val", "test"):
            write_bosser_json(data / f"split_{k}" / f"{part}.json", [make_sequence([0.5, 1.0], [0, 1])] * 3)
    raw = small_grid(datasets=[str(data)])
    raw["grid"]["splits"] = [0, 7]
    path = write_experiment(tmp_path, raw)
    assert main(["compare", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "five: split 7 does not exist (available: 0, 1, 2, 3, 4)" in err
    assert not (tmp_path / "o").exists()
    assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.count("split 7 does not exist") == 1 and "the real run would stop" in err


def test_extends_inherits_the_protocol_and_replaces_only_the_given_axes(tmp_path: Path) -> None:
    """paper_remedies.yaml is paper_table1.yaml's THP and SAHP base cells with the remedies: same configs but the
    aggregator."""
    folder = ROOT / "configs" / "experiments"
    table1 = {c.name: c for c in ex.expand(ex.load_experiment(folder / "paper_table1.yaml"))}
    remedies = ex.expand(ex.load_experiment(folder / "paper_remedies.yaml"))
    assert len(remedies) == 48 and {c.aggregator for c in remedies} == {
        "pcgrad", "cograd", "gradops", "metabalance", "cagrad", "mgda", "imtl", "gradvac"}
    # the source papers' four remedies on THP come first (the 12 cells recorded first), SAHP's last
    assert [c.model for c in remedies] == ["thp"] * 24 + ["sahp"] * 24
    assert {c.aggregator for c in remedies[:12]} == {"pcgrad", "cograd", "gradops", "metabalance"}

    def without_aggregator(cfg: dict) -> dict:
        grads = {k: v for k, v in cfg["gradients"].items() if k not in ("aggregator", "options")}
        return {**cfg, "gradients": grads}

    for cell in remedies:
        twin = table1[cell.name.replace(f"-{cell.aggregator}/", "-sum/")]
        assert cell.model in ("thp", "sahp") and (cell.parametrisation, cell.dataset) == ("base", "mooc")
        assert without_aggregator(cell.config) == without_aggregator(twin.config)
        assert cell.config["gradients"]["aggregator"] == cell.aggregator
    # deep merge of base, per-axis replacement of grid, loops and missing parents named
    (tmp_path / "a.yaml").write_text("base: {train: {lr: 0.1, batch_size: 4}}\ngrid: {splits: [0, 1], seeds: [3]}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nbase: {train: {lr: 0.2}}\ngrid: {splits: [5]}\n")
    exp = ex.load_experiment(tmp_path / "b.yaml")
    assert exp.base == {"train": {"lr": 0.2, "batch_size": 4}} and exp.grid == {"splits": [5], "seeds": [3]}
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        ex.load_experiment(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml.*not found.*extended by"):
        ex.load_experiment(tmp_path / "c.yaml")


def test_an_axis_override_by_name_keeps_the_files_settings_for_that_entry() -> None:
    """``--set "grid.datasets=[lastfm]"`` runs LastFM at the file's batch 4, ``grid.models=[thp]`` with the file's
    hidden sizes: the same cell configs as the full grid (a name the file does not define stays plain)."""
    path = ROOT / "configs" / "experiments" / "paper_table1.yaml"
    full = {c.name: c.config for c in ex.expand(ex.load_experiment(path))}
    subset = ex.expand(ex.load_experiment(path, ["grid.datasets=[lastfm,mooc]", "grid.models=[thp,lnm]"]))
    assert len(subset) == 2 * 2 * 3 * 5 and all(c.config == full[c.name] for c in subset)
    lastfm = [c for c in subset if c.dataset == "lastfm"]
    assert {c.config["train"]["batch_size"] for c in lastfm} == {4}
    assert {c.config["model"]["hidden_size"] for c in subset if c.model == "thp"} == {46, 40, 27}
    plain = ex.load_experiment(path, ["grid.datasets=[synthetic_hawkes]"])
    assert plain.grid["datasets"] == ["synthetic_hawkes"]


@pytest.mark.parametrize("name", ["paper_table1.yaml", "paper_remedies.yaml"])
def test_every_cell_of_the_paper_grids_reports_with_a_normalised_compensator(name: str) -> None:
    """The shipped Table 1 and remedies grids validate and report every THP / SAHP cell with the normalised rule:
    100 fixed Gauss-Legendre nodes once made their L_T 0.07-0.67 nats/seq too low on MOOC (RESULTS.md, History)."""
    from mtpp.models import build_model
    from mtpp.models.time_decoders import evaluation_rule_warning

    cells = ex.expand(ex.load_experiment(ROOT / "configs" / "experiments" / name))
    seen = set()
    for c in cells:
        key = (c.model, c.parametrisation)
        if key in seen:
            continue
        seen.add(key)
        assert evaluation_rule_warning(build_model(ex.resolve(c).model, num_marks=3)) is None, c.name
    assert {m for m, _ in seen} >= ({"thp"} if name == "paper_remedies.yaml" else {"thp", "sahp", "lnm", "fnn"})


def test_the_header_says_how_to_stop_the_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """A grid started in the background by a script ignores SIGINT: the header names the pid and the kill."""
    import os
    import signal

    from mtpp.commands.compare import stop_hint

    monkeypatch.setattr(signal, "getsignal", lambda sig: signal.SIG_IGN)
    assert stop_hint() == f"pid {os.getpid()}, SIGINT ignored here: stop with kill {os.getpid()}"
    monkeypatch.setattr(signal, "getsignal", lambda sig: signal.default_int_handler)
    assert stop_hint() == f"pid {os.getpid()}: stop with Ctrl-C or kill {os.getpid()}"


def test_set_of_a_key_an_axis_sets_per_cell_is_refused(tmp_path: Path, fake_fit: FakeFit,
                                                         capsys: pytest.CaptureFixture) -> None:
    """--set model.decoder=rmtpp used to turn every grid model into rmtpp under names saying thp and lnm."""
    path = write_experiment(tmp_path, small_grid())
    for item, axis in (("model.decoder=rmtpp", "models"), ("model.parametrisation=plus", "parametrisations"),
                       ("train.seed=3", "seeds"), ("data.split=1", "splits"), ("data.name=mooc", "datasets"),
                       ("gradients.aggregator=pcgrad", "aggregators")):  # fmt: skip
        assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--set", item]) == 2
        err = capsys.readouterr().err
        assert f"is set per cell by the grid's {axis} axis" in err and f"--set grid.{axis}=" in err
    # the experiment file's own keys: said so, with the route that works (it was "unknown section 'base'" of a cell)
    for item, route in (("base.train.lr=0.01", "--set train.lr=... changes every cell"),
                        ("exclude=[]", "extends: FILE")):  # fmt: skip
        assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--set", item]) == 2
        err = capsys.readouterr().err
        assert "is a key of the experiment file" in err and route in err and "cell " not in err
    assert fake_fit.calls == [] and not (tmp_path / "o").exists()
    assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--set", "model.hidden_size=4",
                 "--dry-run"]) == 0  # other settings apply to every cell, as documented


def test_an_unknown_model_name_in_a_grid_override_says_what_exists(tmp_path: Path) -> None:
    path = write_experiment(tmp_path, small_grid())
    with pytest.raises(ConfigError, match=r"'gru' is neither a model of exp.yaml \(thp, lnm\) nor a decoder \(lnm, "):
        ex.load_experiment(path, ["grid.models=[gru]"])
    assert {c.model for c in ex.expand(ex.load_experiment(path, ["grid.models=[rmtpp]"]))} == {"rmtpp"}


def test_compare_never_overwrites_a_file_it_did_not_write(
    tmp_path: Path, fake_fit: FakeFit, capsys: pytest.CaptureFixture
) -> None:
    """experiment.yaml, failures.json, the summaries and the plots in --out: a user's own file of that name is
    refused before anything trains (not replaced, not deleted); compare's own files are rewritten on the next run."""
    path = write_experiment(tmp_path, small_grid())
    out = tmp_path / "o"
    (out / "plots").mkdir(parents=True)
    for name in ("experiment.yaml", "summary.md", "summary.csv", "failures.json", "plots/bars_synthetic_hawkes.png",
                 "plots/cos_tm_synthetic_hawkes_thp.png", "plots/pit_lastfm.png"):  # any run's plots under --out
        mine = out / name
        mine.write_text("my notes\n")
        args = ["compare", str(path), "--out", str(out), "--no-progress"]
        assert main(args) == 2
        assert f"{mine}: exists and was not written by mtpp" in capsys.readouterr().err
        assert mine.read_text() == "my notes\n" and fake_fit.calls == []
        mine.unlink()
    (out / "plots" / "my_figure.png").write_text("not a plot name of the report: left alone\n")
    assert main(["compare", str(path), "--out", str(out), "--no-progress"]) == 0
    assert (out / "summary.md").read_text().startswith("<!-- written by mtpp")
    assert (out / "plots" / "my_figure.png").read_text() == "not a plot name of the report: left alone\n"
    fake_fit.calls.clear()
    assert main(["compare", str(path), "--out", str(out), "--no-progress"]) == 0  # its own files: rewritten
    # a user's failures.json is left in place when there is nothing to list (a stale mtpp one is removed)
    (out / "failures.json").write_text("my notes\n")
    assert ex.write_failures(out, []) is None and (out / "failures.json").read_text() == "my notes\n"
    (out / "failures.json").write_text('[{"cell": "a", "error": "b", "traceback": ""}]')
    assert ex.write_failures(out, []) is None and not (out / "failures.json").exists()


def test_a_smaller_grid_in_the_same_folder_summarises_only_its_own_cells(
    tmp_path: Path, fake_fit: FakeFit, capsys: pytest.CaptureFixture
) -> None:
    """A grid of splits 0-1, then one of split 0 only into the same --out: experiment.yaml described the second,
    summary.md still pooled both splits' runs, and nothing said so. Now the summary is the grid's, and the other
    finished runs are named in it and on the console."""
    out = tmp_path / "o"
    assert main(["compare", str(write_experiment(tmp_path, small_grid())), "--out", str(out), "--no-progress"]) == 0
    assert "split1-seed0" in (out / "summary.md").read_text()
    capsys.readouterr()
    smaller = write_experiment(tmp_path, small_grid(splits=[0]))
    assert main(["compare", str(smaller), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    md = (out / "summary.md").read_text()
    said = f"4 finished run(s) in {out} are not cells of this grid (an earlier grid's?) and are not in this summary"
    assert said in err and said in md and "synthetic_hawkes/lnm-base-sum/split1-seed0" in md
    table = md[md.index("| "):]
    assert "split1-seed0" not in table and "split0-seed0" in table
    assert set(pd.read_csv(out / "summary.csv")["n"]) == {1}  # one run per row: split 0's
    assert main(["report", str(out), "--out", str(tmp_path / "all"), "--no-plots"]) == 0  # report: every run
    assert "split1-seed0" in (tmp_path / "all" / "summary.md").read_text()


def test_a_grid_run_with_only_one_cell_keeps_its_other_finished_cells_in_the_summary(
    tmp_path: Path, fake_fit: FakeFit, capsys: pytest.CaptureFixture
) -> None:
    """``--only`` one cell into a folder holding the grid's other finished cells: summary.md kept that one cell and
    called the others "not cells of this grid (an earlier grid's?)" (a new user's trial). They are the grid's: they
    stay in the summary, with a note that this command neither trained nor checked them."""
    exp = write_experiment(tmp_path, small_grid(splits=[0]))
    out = tmp_path / "o"
    assert main(["compare", str(exp), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    cell = "synthetic_hawkes/lnm-base-sum/split0-seed0"
    assert main(["compare", str(exp), "--out", str(out), "--no-progress", "--only", cell]) == 0
    err = capsys.readouterr().err
    md = (out / "summary.md").read_text()
    assert "not cells of this grid" not in err + md
    said = "finished run(s) of this grid's cells outside --only are in this summary as found, not trained or checked"
    assert said in err and said in md
    assert len(pd.read_csv(out / "summary.csv").drop_duplicates(subset=["model", "parametrisation"])) > 1


def test_a_grid_whose_every_cell_is_recorded_elsewhere_still_writes_its_summary(
    tmp_path: Path, fake_fit: FakeFit, capsys: pytest.CaptureFixture
) -> None:
    """Every cell complete by its --results record (trained on another machine): summary.md lists them as such,
    as docs/guide/grid.md says, instead of no summary at all ("no finished run to summarise")."""
    exp, results = write_experiment(tmp_path, small_grid(splits=[0])), tmp_path / "results"
    assert main(["compare", str(exp), "--out", str(tmp_path / "machine1"), "--results", str(results),
                 "--no-progress", "--no-report"]) == 0  # fmt: skip
    fake_fit.calls.clear()
    capsys.readouterr()
    out = tmp_path / "machine2"
    assert main(["compare", str(exp), "--out", str(out), "--results", str(results), "--no-progress"]) == 0
    assert fake_fit.calls == [] and "no finished run to summarise" not in capsys.readouterr().err
    md = (out / "summary.md").read_text()
    assert md.startswith("<!-- written by mtpp") and "|" not in md and not (out / "summary.csv").exists()
    assert f"- 4 cell(s) complete by its result record under {results}" in md
    assert "synthetic_hawkes/lnm-base-sum/split0-seed0" in md


def test_a_notes_only_summary_beside_another_grids_runs_leaves_no_old_table(
    tmp_path: Path, fake_fit: FakeFit, capsys: pytest.CaptureFixture
) -> None:
    """A folder holding only another grid's finished runs, for a grid whose cells are all recorded elsewhere: the
    notes-only summary.md said "No finished run in this folder" above a note listing finished runs, and the
    earlier summary.csv kept the other grid's table. It now says "of this grid", and the CSV keeps only its
    header."""
    out, results = tmp_path / "o", tmp_path / "results"
    assert main(["compare", str(write_experiment(tmp_path, small_grid(splits=[0]))), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    assert len(pd.read_csv(out / "summary.csv")) > 0
    other = write_experiment(tmp_path, small_grid(splits=[1]), name="other.yaml")
    assert main(["compare", str(other), "--out", str(tmp_path / "elsewhere"), "--results", str(results),
                 "--no-progress", "--no-report"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["compare", str(other), "--out", str(out), "--results", str(results), "--no-progress"]) == 0
    md = (out / "summary.md").read_text()
    assert "No finished run of this grid in this folder: no table." in md and "are not cells of this grid" in md
    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 0 and list(table.columns)[-7:] == ["metric", "meaning", "unit", "mean", "stderr", "n", "runs"]


def test_a_restarted_runner_finishes_the_cells_it_started_first(
    tmp_path: Path, fake_fit: FakeFit, capsys: pytest.CaptureFixture
) -> None:
    """Cells with a checkpoint in this output folder run before new ones, whatever the order: two processes that
    share a results folder and restart each pick up their own interrupted cell, not the other's (which would start
    it again from scratch in their own folder)."""
    cells = ex.expand(ex.experiment_from_dict(small_grid()))[:3]
    (tmp_path / cells[2].name).mkdir(parents=True)
    (tmp_path / cells[2].name / "checkpoint.pt").write_bytes(b"x")
    states = ex.grid_states(cells, tmp_path, [])
    assert [c.name for c in ex.run_order(cells, states)] == [cells[2].name, cells[0].name, cells[1].name]
    ex.run_grid(cells, tmp_path, progress=False)
    assert fake_fit.calls == [(str(tmp_path / cells[2].name), True), (str(tmp_path / cells[0].name), False),
                              (str(tmp_path / cells[1].name), False)]  # fmt: skip
    # an interrupted folder whose cell another process has finished (its record is in the shared results folder)
    # is done here: not trained again, its record not rewritten
    from mtpp.records import write_record

    results = tmp_path / "results"
    other = tmp_path / "other"
    (other / cells[1].name).mkdir(parents=True)
    (other / cells[1].name / "checkpoint.pt").write_bytes(b"x")
    config = ex.resolved_dict(cells[1])
    write_record(results, cells[1].name, {"record_version": 1, "cell": {"name": cells[1].name}, "config": config,
                                          "metrics": {"test": {}}})  # fmt: skip
    assert ex.grid_states(cells, other, [], results)[cells[1].name] == "done"
    assert ex.grid_states(cells, other, [])[cells[1].name] == "resume"
    # the dry run lists the cells in that order too
    out = tmp_path / "dry"
    (out / cells[2].name).mkdir(parents=True)
    (out / cells[2].name / "checkpoint.pt").write_bytes(b"x")
    capsys.readouterr()
    main(["compare", str(write_experiment(tmp_path, small_grid())), "--out", str(out), "--dry-run"])
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert listed[0][:2] == ["resume", cells[2].name] and listed[1][1] == cells[0].name


@pytest.mark.parametrize("axis", ["seeds", "splits"])
@pytest.mark.parametrize("value", [3, 0])
def test_a_bare_number_for_an_integer_axis_is_refused_not_guessed(tmp_path: Path, axis: str, value: int,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """``seeds: 3`` ran seed 3 alone, where a user writing it may have meant three seeds: both readings are
    plausible, so the grid refuses the bare number and names both spellings."""
    raw = small_grid(**{axis: value})
    with pytest.raises(ConfigError, match=rf"grid\.{axis}: {value} is one number, not a list; write \[{value}\]"):
        ex.expand(ex.experiment_from_dict(raw))
    path = write_experiment(tmp_path, raw)
    assert main(["compare", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and f"grid.{axis}" in err[0], err
    # the list spellings still expand: one cell value per list entry
    one = ex.expand(ex.experiment_from_dict(small_grid(**{axis: [value]})))
    section, key = ("train", "seed") if axis == "seeds" else ("data", "split")
    assert {c.config[section][key] for c in one} == {value}


def test_an_exclude_rule_matching_no_cell_is_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``exclude: [{model: tph}]`` (a misspelt label) excluded nothing and said nothing: the grid ran cells the
    user meant to drop. Each rule that matches no cell of the full grid is now named in a warning; rules that do
    match (even only together with --only) are not."""
    raw = small_grid()
    raw["exclude"] = [{"model": "tph"}, {"model": "thp", "parametrisation": "plusplus"}, {"split": [7, 8]}]
    exp = ex.experiment_from_dict(raw)
    assert ex.unmatched_exclude_rules(exp) == [{"model": "tph"}, {"split": [7, 8]}]
    assert len(ex.expand(exp)) == 8 - 2  # the matching rule still removes its cells
    path = write_experiment(tmp_path, raw)
    assert main(["compare", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--only", "*/lnm-*/split0-*"]) == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert warnings == [f"warning: {path}: exclude rule {{'model': 'tph'}} matches no cell of the grid (a misspelt "
                        "label, or a value no axis has?)",
                        f"warning: {path}: exclude rule {{'split': [7, 8]}} matches no cell of the grid (a misspelt "
                        "label, or a value no axis has?)"]
    assert ex.unmatched_exclude_rules(ex.experiment_from_dict(small_grid())) == []
