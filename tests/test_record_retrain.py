"""``mtpp train RECORD``: a grid cell's committed result record trained again, on the record's data, and compared
with the record (``mtpp.records.reproduction``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mtpp.cli import main
from mtpp.records import describe_reproduction, read_records, record_path, reproduction

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "experiments" / "smoke.yaml"
CELL = "synthetic_hawkes/thp-plus-sum/split0-seed0"  # a Monte Carlo compensator: its random nodes too


def _record(**train) -> dict:
    metrics = {"train": {"epochs": 10, "best_epoch": 6, "stopped_by": "early_stopping", "train_seconds": 5.0, **train},
               "val": {"nll_per_seq": 10.0, "accuracy_given_time": 0.5, "pce": None},
               "test": {"nll_per_seq": 12.0, "accuracy_given_time": 0.25, "train_events_per_second": 1e4}}
    return {"record_version": 1, "metrics": metrics,
            "config": {"run_info": {"git_revision": "abc", "torch_version": "2.13.0", "threads": 1}}}


def test_reproduction_tells_exact_relative_and_another_path_apart() -> None:
    rec = _record()
    same = json.loads(json.dumps(rec["metrics"]))
    same["train"]["train_seconds"] = 9.0  # the machine's speed is never compared
    same["test"]["train_events_per_second"] = 3e4
    same["val"]["pce"] = None  # n/a on both sides: equal
    result = reproduction(rec, same, {"run_info": {"git_revision": "abc", "torch_version": "2.13.0", "threads": 1}})
    assert result == {"trajectory": [], "compared": 5, "different": [], "mismatched": [], "provenance": []}
    assert describe_reproduction("R.json", result) == (
        "R.json: reproduced exactly (the same epochs; 5 validation and test values equal)")
    nan = json.loads(json.dumps(rec["metrics"]))
    nan["test"]["nll_per_seq"] = float("nan")
    rec_nan = {**rec, "metrics": json.loads(json.dumps(nan))}
    assert reproduction(rec_nan, nan)["different"] == [] and reproduction(rec_nan, nan)["mismatched"] == []
    assert describe_reproduction("R.json", reproduction(rec, {"train": rec["metrics"]["train"], "val": {"other": 1}})).startswith(
        "R.json: nothing to compare (the record and the run share no validation or test value)")

    close = json.loads(json.dumps(rec["metrics"]))
    close["test"]["nll_per_seq"] = 12.0 * (1 + 1e-7)
    close["val"]["nll_per_seq"] = 10.0 * (1 - 1e-9)
    run = {"run_info": {"git_revision": "def", "torch_version": "2.13.0", "threads": 1, "cpu_capability": "AVX512"},
           "train": {"compile_integrand": True}}  # cpu_capability: a key the record predates, not a difference
    result = reproduction(rec, close, run)
    assert result["provenance"] == [("git_revision", "abc", "def"), ("train.compile_integrand", None, True)]
    assert [d[0] for d in result["different"]] == ["test.nll_per_seq", "val.nll_per_seq"]
    assert result["different"][0][3] == pytest.approx(1e-7, rel=1e-3) and result["mismatched"] == []
    line = describe_reproduction("R.json", result)
    assert line.startswith("R.json: reproduced to a relative 1.0e-07 (the same epochs; 3 of 5 validation and test")
    assert ("differs from the record's run: git_revision 'abc' recorded vs 'def' now, train.compile_integrand None "
            "recorded vs True now") in line
    # a value against n/a has no relative size: it is not rounding, and the line does not call it reproduced
    odd = json.loads(json.dumps(close))
    odd["val"]["pce"] = 0.1
    result = reproduction(rec, odd)
    assert result["mismatched"] == [("val.pce", None, 0.1)] and math.isfinite(result["different"][0][3])
    assert describe_reproduction("R.json", result).startswith(
        "R.json: NOT reproduced: values differ beyond rounding (val.pce None recorded vs 0.1 now); largest relative "
        "differences: test.nll_per_seq")

    other = json.loads(json.dumps(rec["metrics"]))
    other["train"].update(epochs=14, best_epoch=9)
    result = reproduction(rec, other)
    assert result["trajectory"] == [("epochs", 10, 14), ("best_epoch", 6, 9)]
    assert describe_reproduction("R.json", result).startswith(
        "R.json: NOT reproduced: the run took another path (epochs 10 recorded vs 14 now, best_epoch 6 recorded vs 9")


def test_train_retrains_a_record_on_its_data_and_says_whether_it_reproduced(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTPP_CACHE_DIR", str(tmp_path / "cache"))
    results = tmp_path / "results"
    argv = ["compare", str(SMOKE), "--out", str(tmp_path / "grid"), "--results", str(results), "--no-progress",
            "--only", CELL, "--set", "train.max_epochs=2", "--set", "data.max_sequences=16"]
    assert main(argv) == 0, capsys.readouterr().err
    (record,) = read_records(results)
    path = record_path(results, CELL)
    capsys.readouterr()

    # the same settings on the same data: the same run, to the last digit, on the same machine
    assert main(["train", str(path), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"retraining the result record {path}: on its data, compared with it when the run ends"
    last = err[-1]
    assert last.startswith(f"{path}: reproduced exactly (the same epochs; ")
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["test"]["nll_per_seq"] == record["metrics"]["test"]["nll_per_seq"]

    # interrupted after an epoch: the hint names the record again, and following it still ends with the comparison
    from mtpp.training.trainer import Trainer

    real = Trainer._end_epoch

    def end_then_interrupt(self, *a):
        real(self, *a)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_epoch", end_then_interrupt)
    cut = tmp_path / "cut"
    assert main(["train", str(path), "--out", str(cut), "--quiet"]) == 130
    hint = f"interrupted; continue with: mtpp train {path} --out {cut} --resume"
    assert hint in capsys.readouterr().err and hint in (cut / "train.log").read_text()
    monkeypatch.setattr(Trainer, "_end_epoch", real)
    assert main(hint.split("continue with: mtpp ")[1].split()) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"{path}: reproduced exactly (the same epochs; ")

    # another setting: a new run, said so, and nothing compared
    assert main(["train", str(path), "--out", str(tmp_path / "lr"), "--quiet", "--set", "train.lr=0.02"]) == 0
    err = capsys.readouterr().err
    assert f"note: {path} is a result record trained here with other settings (train.lr: 0.01 -> 0.02)" in err
    assert "a new run, not compared with the record, on its data" in err and "reproduced" not in err

    # data that are not the record's are refused before training, naming what differs
    forged = json.loads(path.read_text())
    forged["config"]["run_info"]["data"]["parts"]["test"]["sha256"] = "0" * 64
    forged["config"]["run_info"]["data"]["source"] = str(tmp_path / "gone")
    other = tmp_path / "forged.json"
    other.write_text(json.dumps(forged))
    assert main(["train", str(other), "--out", str(tmp_path / "forged"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "retraining a result record: the data differ from the run's" in err and "differing: test" in err
    assert not (tmp_path / "forged" / "metrics.json").exists()
    # ... also as a new run with other training settings (still the record's data); another data.* setting
    # selects other data, resolved as usual, and is not held to the record's
    assert main(["train", str(other), "--out", str(tmp_path / "forged_lr"), "--quiet", "--set", "train.lr=0.02"]) != 0
    assert "the data differ from the run's" in capsys.readouterr().err
    assert main(["train", str(other), "--out", str(tmp_path / "forged_data"), "--quiet",
                 "--set", "data.max_sequences=12"]) == 0
    err = capsys.readouterr().err
    assert "data.max_sequences: 16 -> 12" in err and "not compared with the record" in err and "on its data" not in err


def test_a_record_whose_run_a_resume_changed_says_retraining_it_is_another_run(tmp_path: Path, capsys) -> None:
    """A grid cell resumed with other settings (``run_info.resumed`` in the record's config) is not what its
    configuration trains from the first epoch: ``mtpp train RECORD`` warns as it does for such a run's
    config.yaml (``mtpp.commands.train._warn_unreproducible_record`` reads the record's ``config.run_info``)."""
    from mtpp.commands.train import _warn_unreproducible_record
    from mtpp.config import load_config, read_config_file

    config = {"train": {"lr": 0.05, "max_epochs": 3},
              "run_info": {"resumed": [{"epoch": 2, "changed": {"train.lr": [0.001, 0.05]}}]}}
    path = tmp_path / "split0-seed0.json"
    path.write_text(json.dumps({"record_version": 1, "cell": {}, "config": config, "metrics": {}}))
    parsed = read_config_file(path)
    cfg = load_config(path, parsed=parsed)
    assert cfg.train.lr == 0.05 and "run_info" in parsed["config"]  # loading the configuration left the file's
    _warn_unreproducible_record(path, parsed, cfg)
    err = capsys.readouterr().err
    assert "is the record of a run that training it again does not reproduce" in err
    assert "train.lr 0.001 -> 0.05 after epoch 2" in err


@pytest.mark.parametrize("edit, named", [
    (lambda r: r["config"].__setitem__("run_info", "x"), "config.run_info"),
    (lambda r: r["config"]["run_info"].__setitem__("data", "x"), "config.run_info.data"),
    (lambda r: r.__setitem__("metrics", [1]), "metrics"),
    (lambda r: r["metrics"].__setitem__("test", [1]), "metrics.test"),
])
def test_a_hand_edited_record_is_one_line_naming_the_file_before_training(tmp_path: Path, capsys, edit,
                                                                          named: str) -> None:
    """A record whose sections are not mappings crashed with a bare AttributeError naming no file (or, for its
    metrics, only after training); it is refused before anything trains, whatever the file's name."""
    record = {"record_version": 1, "cell": {}, "config": {"data": {"name": "synthetic_hawkes"},
                                                          "run_info": {"data": {"parts": {}}}},
              "metrics": {"train": {}, "val": {}, "test": {}}}
    edit(record)
    path = tmp_path / "renamed.yaml"  # a record is one by its content, not its suffix
    path.write_text(json.dumps(record))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{path}: a result record whose {named} is not a mapping (mtpp.records): not a record mtpp "
                        "wrote, or edited by hand")
    assert "Traceback" not in err and not (tmp_path / "run").exists()
