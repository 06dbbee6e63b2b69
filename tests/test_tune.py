"""``mtpp tune``: an Optuna search on the synthetic data finishes in seconds, writes the best config (a valid run
configuration holding the best trial's values), one run directory per trial and a resumable SQLite study."""

from __future__ import annotations

import contextlib
import csv
from typing import Iterator

import pytest
import yaml

from mtpp.cli import main
from mtpp.config import load_config
from mtpp.errors import ConfigError
from mtpp.tuning import parse_space

optuna = pytest.importorskip("optuna")
pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {
    "data": {"name": "synthetic_hawkes", "max_sequences": 24},
    "model": {"encoder": "gru", "decoder": "lnm", "hidden_size": 8, "mark_embedding_size": 4,
              "time_embedding_size": 4, "decoder_hidden_size": 8, "num_components": 3},
    "train": {"max_epochs": 3, "batch_size": 8},
}
SPACE = {
    "train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
    "model.hidden_size": {"type": "int", "low": 4, "high": 16, "step": 4},
    "model.decoder": ["lnm", "rmtpp"],
}


@contextlib.contextmanager
def _optuna_records() -> Iterator[list[str]]:
    """The messages (with their exception info) Optuna's logger emits inside the block."""
    import logging

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage() + str(record.exc_info))

    keep = Keep()
    logging.getLogger("optuna").addHandler(keep)
    try:
        yield seen
    finally:
        logging.getLogger("optuna").removeHandler(keep)


def _write(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return tmp_path / "base.yaml", tmp_path / "space.yaml"


def _tune(tmp_path, trials, capsys):
    base, space = _write(tmp_path)
    code = main(["tune", str(base), "--space", str(space), "--trials", str(trials), "--out", str(tmp_path / "out")])
    return code, capsys.readouterr()


def test_tune_four_trials_writes_the_best_config_and_resumes(tmp_path, capsys):
    code, cap = _tune(tmp_path, 4, capsys)
    assert code == 0, cap.err
    out = tmp_path / "out"
    study = optuna.load_study(study_name="mtpp", storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state.is_finished()]
    assert len(done) == 4
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value)
    # best.yaml is a valid run configuration with the best trial's values, and says which trial it is
    cfg = load_config(out / "best.yaml")
    assert cfg.train.lr == pytest.approx(best.params["train.lr"])
    assert cfg.model.hidden_size == best.params["model.hidden_size"]
    assert cfg.model.decoder == best.params["model.decoder"]
    assert cfg.data.max_sequences == 24 and cfg.model.num_components == 3  # the rest is the base config
    assert f"# trial {best.number}: val nll_per_seq = " in (out / "best.yaml").read_text()
    # the objective is the trial run's own validation NLL per sequence
    m = yaml.safe_load((out / f"trial_{best.number:03d}" / "metrics.json").read_text())["val"]
    assert best.value == pytest.approx(m["nll_time_per_seq"] + m["nll_mark_per_seq"], rel=1e-6)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["trial"]) for r in rows] == [t.number for t in study.trials]
    assert f"best: trial {best.number}" in cap.out
    # resuming: asking for 5 runs exactly one more trial in the same study
    code, cap = _tune(tmp_path, 5, capsys)
    assert code == 0 and "over 1 more trial(s)" in cap.out
    study = optuna.load_study(study_name="mtpp", storage=f"sqlite:///{out / 'study.db'}")
    assert len([t for t in study.trials if t.state.is_finished()]) == 5
    assert (out / "trial_004").is_dir()


@pytest.mark.parametrize("max_epochs, pruned_after", [(4, 2), (2, None), (1, None)])
def test_a_trial_is_pruned_neither_after_its_first_epoch_nor_after_its_last(tmp_path, capsys, monkeypatch,
                                                                            max_epochs, pruned_after):
    """Median pruning judges a trial from its second epoch (one epoch says too little) and not after its last one
    (it has trained to the end: pruning it saves nothing and drops a finished result). Measured before: with
    max_epochs 1, two trials of the same point as a complete one were labelled pruned after that only epoch."""
    import mtpp.training.trainer as trainer

    seen: dict[int, list[int]] = {}

    def scripted_fit(cfg, run_dir, *, on_epoch, **kwargs):  # trials 0 and 1 score 10, later ones 100, every epoch
        number = int(run_dir.name.split("_")[1])
        value = 10.0 if number < 2 else 100.0
        for epoch in range(1, cfg.train.max_epochs + 1):
            seen.setdefault(number, []).append(epoch)
            on_epoch(epoch, {"val_nll_per_seq": value})
        return {"val": {"nll_per_seq": value}}

    monkeypatch.setattr(trainer, "fit", scripted_fit)
    base, space = _write(tmp_path)
    code = main(["tune", str(base), "--space", str(space), "--trials", "3", "--out", str(tmp_path / "out"),
                 "--set", f"train.max_epochs={max_epochs}"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned" if pruned_after else "complete"]
    assert seen[2] == list(range(1, (pruned_after or max_epochs) + 1))
    # what is printed says what is minimised, on which split, in which unit, and why and when a trial was pruned
    assert "minimising val nll_per_seq: L_T + L_M on the validation split, nats per sequence" in cap.out
    assert "trial   0  val nll_per_seq 10.0000 nats" in cap.out
    if pruned_after:
        assert (f"trial   2  pruned after epoch {pruned_after} (val nll_per_seq 100.0000: its best so far is worse "
                "than the median of the complete trials at that epoch)") in cap.out


def test_a_study_is_continued_only_on_the_data_it_was_searched_on(tmp_path, capsys):
    """Rerunning the same command on other data (the files changed, another --data-dir) would rank new trials'
    validation NLLs with the earlier ones' and mix them in the pruner's medians (measured before: half the val
    sequences dropped, the study went on and its pruner and best.yaml mixed both). Refused in one line before any
    trial; the same data in another folder is accepted; a study without the record is checked against a trial's."""
    import numpy as np

    from mtpp.data.formats import write_split_folder
    from mtpp.data.sequence import EventSequence

    rng = np.random.default_rng(0)
    seqs = [EventSequence(np.cumsum(rng.exponential(1.0, 6)), rng.integers(0, 2, 6)) for _ in range(12)]
    for folder, val in (("a", seqs[8:10]), ("moved", seqs[8:10]), ("b", seqs[8:9])):
        write_split_folder(tmp_path / folder / "mine", [{"train": seqs[:8], "val": val, "test": seqs[10:]}],
                           num_marks=2)
    base, space = _write(tmp_path)
    base.write_text(yaml.safe_dump({**BASE, "data": {"name": "mine"}, "train": {"max_epochs": 1, "batch_size": 4}}))
    out = tmp_path / "out"

    def tune(trials, data):
        code = main(["tune", str(base), "--space", str(space), "--trials", str(trials), "--out", str(out),
                     "--data-dir", str(tmp_path / data)])
        return code, capsys.readouterr()

    assert tune(1, "a")[0] == 0
    code, cap = tune(2, "b")
    assert code == 2 and cap.err.count("\n") == 1, cap.err
    assert "study.db: the data differ from those its 1 trial(s) were trained and scored on" in cap.err
    assert "differing: val" in cap.err and "val: sequences 2 vs 1" in cap.err
    assert not (out / "trial_001").exists()
    code, cap = tune(2, "moved")  # the same sequences elsewhere: the same data
    assert code == 0 and (out / "trial_001").is_dir(), cap.err
    import sqlite3

    with sqlite3.connect(out / "study.db") as con:  # a study written before the data record: its trials' record
        assert con.execute("DELETE FROM study_user_attributes WHERE key = 'mtpp_data'").rowcount == 1
    code, cap = tune(3, "b")
    assert code == 2 and "differing: val" in cap.err and not (out / "trial_002").exists(), cap.err


def test_under_binned_selection_the_objective_and_the_pruner_follow_the_binned_score(tmp_path, capsys):
    """With ``train.select_time_on: binned`` (data on a lattice) each trial's early stopping and best.pt follow the
    binned L_T + L_M; the search ranked and pruned on the continuous one, which a density concentrated on the
    lattice points lowers without bound (measured on MOOC: -68.2 continuous vs 450.2 binned for one trial)."""
    import json

    import numpy as np

    from mtpp.data.formats import write_split_folder
    from mtpp.data.sequence import EventSequence

    rng = np.random.default_rng(0)  # gaps of 1-11 hundredths: a lattice of q = 0.01 (binned ~ L_T - log q per event)
    seqs = [EventSequence(np.cumsum(rng.integers(1, 12, 20)) * 0.01, rng.integers(0, 2, 20))
            for _ in range(12)]
    write_split_folder(tmp_path / "data" / "ticks", [{"train": seqs[:8], "val": seqs[8:10], "test": seqs[10:]}],
                       num_marks=2)
    base, space = _write(tmp_path)
    base.write_text(yaml.safe_dump({**BASE, "data": {"name": "ticks"},
                                    "train": {"max_epochs": 2, "batch_size": 4, "select_time_on": "binned"}}))
    out = tmp_path / "out"
    argv = ["tune", str(base), "--space", str(space), "--trials", "1", "--out", str(out),
            "--data-dir", str(tmp_path / "data")]
    assert main(argv) == 0, capsys.readouterr().err
    cap = capsys.readouterr()
    (trial,) = optuna.load_study(study_name="mtpp", storage=f"sqlite:///{out / 'study.db'}").trials
    val = json.loads((out / "trial_000" / "metrics.json").read_text())["val"]
    assert trial.value == pytest.approx(val["nll_time_binned_per_seq"] + val["nll_mark_per_seq"], rel=1e-9)
    assert abs(trial.value - val["nll_per_seq"]) > 10  # not the continuous L_T + L_M
    epochs = [json.loads(line) for line in (out / "trial_000" / "log.jsonl").read_text().splitlines()]
    epochs = {r["epoch"]: r for r in epochs if r["kind"] == "epoch"}
    assert trial.intermediate_values == pytest.approx(
        {e: r["val_nll_time_binned_per_seq"] + r["val_nll_mark_per_seq"] for e, r in epochs.items()})
    assert f"best: trial 0  val nll_binned_per_seq {trial.value:.4f} nats" in cap.out
    assert "# trial 0: val nll_binned_per_seq = " in (out / "best.yaml").read_text()
    assert (out / "trials.csv").read_text().startswith("trial,state,val_nll_binned_per_seq,")
    assert main([*argv[:5], "2", *argv[6:]]) == 0, capsys.readouterr().err  # its own trials.csv: the folder resumes


def test_tune_marks_an_interrupted_trial_failed(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    study = optuna.create_study(study_name="mtpp", storage=f"sqlite:///{out / 'study.db'}")
    study.ask()  # a trial left RUNNING, as by a killed search
    code, cap = _tune(tmp_path, 1, capsys)
    assert code == 0 and "trial 0 was interrupted" in cap.out
    states = [t.state for t in optuna.load_study(study_name="mtpp", storage=f"sqlite:///{out / 'study.db'}").trials]
    assert states[0] == optuna.trial.TrialState.FAIL and states[1].is_finished()
    # its end is unknown: no seconds (they were the time until this search found it, hours after a kill -9)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert rows[0]["state"] == "fail" and rows[0]["seconds"] == "" and float(rows[1]["seconds"]) > 0


@pytest.mark.parametrize(
    "space, message",
    [
        ({}, "non-empty mapping"),
        ({"lr": [1, 2]}, "dotted config keys"),
        ({"train.lr": {"type": "float", "low": 1}}, "needs low and high"),
        ({"train.lr": {"type": "gauss", "low": 0, "high": 1}}, "type must be one of"),
        ({"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "log needs low > 0"),
        ({"train.lr": {"type": "float", "low": 2, "high": 1}}, "low (2.0) > high (1.0)"),
        ({"train.lr": {"type": "float", "low": 0, "high": 1, "sigma": 1}}, "unknown field(s) sigma"),
        # a misspelt field is named, not reported as "type ... got None" (the type was given, as 'typ')
        ({"train.lr": {"typ": "float", "low": 1e-4, "high": 1e-2}}, "unknown field(s) typ (did you mean 'type'?)"),
        ({"train.lr": {"type": "float", "lo": 1e-4, "high": 1e-2}}, "unknown field(s) lo (did you mean 'low'?)"),
        ({"model.decoder": {"type": "categorical", "choice": ["lnm", "thp"]}}, "unknown field(s) choice (did you "
                                                                               "mean 'choices'?)"),
        ({"train.batch_size": {"type": "int", "low": 1.5, "high": 4}}, "expected an integer"),
        # keys that change what the validation NLL is measured on: NLLs of different data cannot be ranked
        ({"data.name": ["synthetic_hawkes", "taxi"]}, "data.name: cannot be searched: it changes the dataset"),
        ({"data.split": [0, 1]}, "data.split: cannot be searched: it changes the split"),
        ({"data.max_sequences": {"type": "int", "low": 8, "high": 64}}, "cannot be searched: it changes how many"),
        ({"data.use_window": [True, False]}, "cannot be searched: it changes the observation window"),
        ({"model.first_event": ["skip", "include"]}, "cannot be searched: it changes which events are scored"),
        # ... or how the same model's validation NLL is computed (the evaluation compensator, the tie rule)
        ({"model.eval_integration": ["adaptive", "gauss_legendre"]}, "model.eval_integration: cannot be searched"),
        ({"model.eval_integration_nodes": [1, 24]}, "model.eval_integration_nodes: cannot be searched"),
        ({"model.tie_resolution": [1e-6, 1e-3]}, "model.tie_resolution: cannot be searched: it changes the tie rule"),
        ({"train.select_time_on": ["nll", "binned"]}, "train.select_time_on: cannot be searched: it changes the L_T"),
        # seeds: the winner would be the luckiest draw on the validation split, not a better setting
        ({"train.seed": {"type": "int", "low": 0, "high": 9}}, "train.seed: cannot be searched: it changes only the "
                                                                 "random draws"),
        ({"gradients.options.seed": [0, 1]}, "gradients.options.seed: cannot be searched: it changes only the "
                                             "aggregator's random draws"),
        # settings that change nothing a run computes
        ({"logging.quiet": [True, False]}, "cannot be searched: it changes only where or how fast"),
        ({"train.threads": [1, 2]}, "cannot be searched: it changes only where or how fast"),
        # one value: nothing to search
        ({"train.lr": {"type": "float", "low": 0.01, "high": 0.01}}, "searches one value (0.01)"),
        ({"model.hidden_size": {"type": "int", "low": 8, "high": 11, "step": 4}}, "searches one value (8)"),
        ({"model.decoder": ["lnm"]}, "searches one value ('lnm')"),
        ({"model.decoder": ["lnm", "rmtpp", "lnm"]}, "the choices repeat 'lnm'"),
    ],
)
def test_bad_spaces_are_one_line(space, message):
    with pytest.raises(ConfigError, match=pytest.importorskip("re").escape(message)):
        parse_space(space, "space.yaml")


@pytest.mark.parametrize(
    "low, high, step",
    [(0.1, 0.3, 0.2), (0.0, 0.2, 0.1), (0.1, 0.3, 0.1), (0.0, 0.3, 0.1), (0.2, 0.7, 0.1), (0.0, 1.0, 0.3),
     (1e-3, 2.2e-3, 4e-4)],
)
def test_a_stepped_float_range_has_the_values_optuna_samples(low, high, step):
    """Counted in decimal like Optuna: ``0.1 .. 0.3 step 0.2`` is {0.1, 0.3} (binary floats gave one value and
    refused the entry as 'searches one value'); every value is checked before the search, the top one included."""
    import warnings

    (prm,) = parse_space({"train.weight_decay": {"type": "float", "low": low, "high": high, "step": step}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's "range not divisible by step" (it lowers high)
        dist = optuna.distributions.FloatDistribution(low, high, step=step)
    want = [dist.low + i * dist.step for i in range(round((dist.high - dist.low) / dist.step) + 1)]
    assert prm.count() == len(want)
    assert prm.values(256) == pytest.approx(want, abs=1e-12)


def test_space_keys_are_checked_against_the_config_before_any_trial(tmp_path, capsys):
    base, space = _write(tmp_path)
    space.write_text(yaml.safe_dump({"model.decodr": ["lnm", "rmtpp"], "train.lr": [0.01, 0.02]}))
    code = main(["tune", str(base), "--space", str(space), "--trials", "2", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "model.decodr" in err and "did you mean 'decoder'" in err
    assert not any((tmp_path / "out").glob("trial_*"))


def test_a_study_refuses_another_base_config_or_space_and_best_yaml_is_the_winning_trials_own(tmp_path, capsys):
    """Continuing a study with other settings used to rank trials of different searches together, and best.yaml
    then held the new base with the old winner's values (max_epochs 50 for a trial trained 1 epoch)."""
    code, cap = _tune(tmp_path, 1, capsys)
    assert code == 0, cap.err
    out = tmp_path / "out"
    base, space = tmp_path / "base.yaml", tmp_path / "space.yaml"
    trained = yaml.safe_load((out / "trial_000" / "config.yaml").read_text())
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["train"] == trained["train"] and best["model"] == trained["model"]
    argv = ["tune", str(base), "--space", str(space), "--trials", "2", "--out", str(out)]
    assert main([*argv, "--set", "train.max_epochs=5"]) == 2
    err = capsys.readouterr().err
    assert "searched another base configuration or space (train.max_epochs: 3 -> 5)" in err
    (tmp_path / "space2.yaml").write_text(yaml.safe_dump({"train.lr": SPACE["train.lr"]}))
    assert main([*argv[:2], "--space", str(tmp_path / "space2.yaml"), *argv[4:]]) == 2
    assert "space model.decoder: {" in capsys.readouterr().err
    assert not (out / "trial_001").exists()  # nothing ran
    # settings that do not change what a run computes may differ (here: the trials' progress output)
    assert main([*argv, "--verbose-runs", "--set", "train.threads=1"]) == 0
    assert (out / "trial_001").is_dir()


def test_ctrl_c_in_a_search_is_one_line_saying_how_to_continue(tmp_path, capsys, monkeypatch):
    import mtpp.training.trainer as trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "fit", interrupted)
    with _optuna_records() as seen:
        code, cap = _tune(tmp_path, 2, capsys)
    assert code != 0
    assert "interrupted; trial 0 is marked failed in the study" in cap.out + cap.err
    assert "run the same mtpp tune command again to continue the search" in cap.out + cap.err
    assert not [m for m in seen if "KeyboardInterrupt" in m], seen  # no Optuna traceback
    assert (tmp_path / "out" / "trials.csv").is_file()


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def _foreign_study(out):
    study = optuna.create_study(study_name="mtpp", storage=f"sqlite:///{out / 'study.db'}")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)


@pytest.mark.parametrize(
    "setup, message",
    [
        # the user's own files named like tune's, and a trial folder of theirs
        (lambda out: [(out / "best.yaml").write_text("keep\n"), (out / "trials.csv").write_text("a,b\n"),
                      (out / "trial_000").mkdir(), (out / "trial_000" / "notes.txt").write_text("x\n")],
         "not empty and not a folder mtpp tune wrote (best.yaml is not one of its files"),
        (lambda out: [(out / "notes.txt").write_text("x\n")], "(notes.txt is not one of its files"),
        (_foreign_study, "study.db: not a study database of mtpp tune (study 'mtpp' searches x, not configuration"),
        (lambda out: (out / "study.db").write_text("not a database\n"),
         "study.db: not a study database of mtpp tune (not a readable SQLite database"),
        # a training run folder
        (lambda out: (out / "config.yaml").write_text("run_info: {}\n"), "holds a run (config.yaml), not a search"),
        # a tune folder whose study.db was deleted: its trial folders belong to a study that is gone
        (lambda out: [(out / "trial_000").mkdir(), (out / "trial_000" / "train.log").write_text("--- x\n")],
         "holds trial_000 but no study.db: those trials belong to a study that is gone"),
    ],
)
def test_an_out_folder_tune_did_not_write_is_refused_in_one_line_before_any_work(tmp_path, capsys, setup, message):
    out = tmp_path / "out"
    out.mkdir()
    setup(out)
    before = _snapshot(out)
    code, cap = _tune(tmp_path, 2, capsys)
    assert code == 2 and message in cap.err and cap.err.count("\n") == 1, cap.err
    assert "Traceback" not in cap.err and not cap.out
    assert _snapshot(out) == before  # nothing written, replaced or added (no study created in the user's db)


def test_a_tune_folder_accepts_its_own_files_and_refuses_a_trial_folder_of_another_run(tmp_path, capsys):
    from mtpp.owned import MD_MARK

    code, cap = _tune(tmp_path, 1, capsys)
    assert code == 0, cap.err
    out = tmp_path / "out"
    (out / "summary.md").write_text(MD_MARK + "\n# tune\n")  # what mtpp report OUT writes there is fine
    (out / "trial_007").mkdir()  # no trial 7 in the study
    code, cap = _tune(tmp_path, 2, capsys)
    assert code == 2 and "trial_007: trial_NNN folder of no trial of the study" in cap.err
    (out / "trial_007").rmdir()
    config = out / "trial_000" / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    decoder = raw["model"]["decoder"]
    raw["model"]["decoder"] = "thp" if decoder != "thp" else "lnm"
    config.write_text(yaml.safe_dump(raw))
    code, cap = _tune(tmp_path, 2, capsys)
    assert code == 2 and f"not trial 0's model.decoder={decoder!r}" in cap.err
    raw["model"]["decoder"] = decoder
    config.write_text(yaml.safe_dump(raw))
    code, cap = _tune(tmp_path, 2, capsys)
    assert code == 0 and (out / "trial_001").is_dir(), cap.err


def test_a_second_search_of_a_folder_in_use_is_refused_and_marks_no_trial_failed(tmp_path, capsys):
    """Two searches of one folder at once: the second marked the first's running trial failed ("interrupted in an
    earlier search") and trained into its numbering. Now the folder's lock refuses it, naming the holder."""
    from mtpp.runs import RunLock

    code, cap = _tune(tmp_path, 1, capsys)
    assert code == 0, cap.err
    out = tmp_path / "out"
    with RunLock(out, command="mtpp tune (the first search)"):
        before = _snapshot(out)
        code, cap = _tune(tmp_path, 2, capsys)
        assert code == 2 and "is in use by pid" in cap.err and "the first search" in cap.err, cap.err
        assert cap.err.count("\n") == 1 and "Traceback" not in cap.err
        assert _snapshot(out) == before  # no trial started, none marked failed
    study = optuna.load_study(study_name="mtpp", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    code, cap = _tune(tmp_path, 2, capsys)  # free again: the search continues, its lock gone when it ends
    assert code == 0 and (out / "trial_001").is_dir() and not (out / ".mtpp.lock").exists(), cap.err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--timeout", "0"], "--timeout must be a number of seconds > 0, got 0.0"),
        (["--timeout", "-5"], "--timeout must be a number of seconds > 0, got -5.0"),
        (["--timeout", "nan"], "--timeout must be a number of seconds > 0, got nan"),
        (["--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
        (["--seed", str(2**32)], "--seed must be an integer in [0, 2**32)"),
        (["--set", "train.seed=-3"], "train.seed: must be >= 0, got -3"),  # the config refuses it first
    ],
)
def test_numbers_of_tune_are_checked_before_any_work(tmp_path, capsys, flags, message):
    base, space = _write(tmp_path)
    code = main(["tune", str(base), "--space", str(space), "--trials", "2", "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    code = main(["tune", str(base), "--space", str(space), "--trials", "0", "--out", str(tmp_path / "out")])
    assert code == 2 and "--trials must be an integer >= 1, got 0" in capsys.readouterr().err


def test_the_space_check_covers_every_value_and_combination_and_model_constraints():
    from mtpp.tuning import _check_space

    cfg = load_config(None, ["model.encoder=thp", "model.num_heads=4"])
    with pytest.raises(ConfigError, match=r"s\.yaml: model\.hidden_size=9 is not a valid configuration \(model\.hidden_"):
        _check_space(cfg, parse_space({"model.hidden_size": {"type": "int", "low": 8, "high": 12}}), "s.yaml")
    _check_space(cfg, parse_space({"model.hidden_size": [12, 24], "model.num_heads": [3, 4]}), "s.yaml")
    with pytest.raises(ConfigError, match=r"the point model\.hidden_size=8, model\.num_heads=3 is not"):
        _check_space(cfg, parse_space({"model.hidden_size": [8, 12], "model.num_heads": [3, 4]}), "s.yaml")


def test_a_space_whose_points_score_the_validation_nll_differently_is_refused():
    """The same model evaluated with another compensator rule gets another validation NLL (measured: THP,
    eval_integration=gauss_legendre, 1 node vs 24: 124.56 vs 125.86 nats/seq, and the search picked 1 node). A key
    that changes the rule indirectly is refused too; keys that change the model but not the rule are fine."""
    from mtpp.tuning import _check_space

    gl = load_config(None, ["model.decoder=thp", "model.eval_integration=gauss_legendre"])
    # eval nodes unset: they follow model.integration_nodes, so searching it changes the evaluation rule
    with pytest.raises(ConfigError, match=r"s\.yaml: model\.integration_nodes=50 scores the validation NLL with "
                                          r"model\.eval_integration=gauss_legendre with 50 nodes, model\."
                                          r"integration_nodes=10 with .* set model\.eval_integration_nodes"):
        _check_space(gl, parse_space({"model.integration_nodes": [10, 50]}), "s.yaml")
    _check_space(load_config(None, ["model.decoder=thp", "model.eval_integration=gauss_legendre",
                                    "model.eval_integration_nodes=24"]),
                 parse_space({"model.integration_nodes": [10, 50]}), "s.yaml")  # pinned: the training rule only
    thp = load_config(None, ["model.decoder=thp"])  # adaptive evaluation: the training nodes do not change it
    _check_space(thp, parse_space({"model.integration_nodes": [10, 50], "model.decoder": ["thp", "sahp", "lnm"],
                                   "model.parametrisation": ["base", "plusplus"]}), "s.yaml")


def test_a_point_that_fails_validation_fails_its_trial_in_one_line_and_trials_csv_is_written(
    tmp_path, capsys, monkeypatch
):
    """A point the space check cannot see (here: the check switched off) fails its trial: one line each, no
    Optuna traceback, trials.csv written, and the final error not prefixed twice."""
    import mtpp.tuning as tuning

    monkeypatch.setattr(tuning, "_check_space", lambda *args: None)
    base, space = _write(tmp_path)
    space.write_text(yaml.safe_dump({"model.hidden_size": [9, 11]}))
    with _optuna_records() as seen:
        code = main(["tune", str(base), "--space", str(space), "--trials", "1", "--out", str(tmp_path / "out"),
                     "--set", "model.encoder=thp", "--set", "model.num_heads=4"])
    cap = capsys.readouterr()
    assert code == 2 and cap.err.count("\n") == 1 and cap.err.startswith("mtpp tune: error: 3 trials failed"), cap.err
    lines = [line for line in cap.out.splitlines() if " failed " in line]
    assert len(lines) == 3 and all("must be divisible by model.num_heads (4)" in line for line in lines), cap.out
    assert not seen, seen  # no Optuna warning, no traceback
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["fail"] * 3


def test_best_yaml_keeps_the_base_settings_and_an_interrupted_trial_gives_tunes_advice(tmp_path, capsys, monkeypatch):
    import mtpp.training.trainer as trainer

    base, space = _write(tmp_path)
    base.write_text(yaml.safe_dump({**BASE, "train": {**BASE["train"], "max_epochs": 1},
                                    "logging": {"quiet": True, "progress": False, "flush_every": 7}}))
    code = main(["tune", str(base), "--space", str(space), "--trials", "1", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    best = yaml.safe_load((tmp_path / "out" / "best.yaml").read_text())
    assert best["logging"] == {**best["logging"], "quiet": True, "progress": False, "flush_every": 7}

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "run", interrupted)  # inside fit: the trainer's own hint would fire
    code = main(["tune", str(base), "--space", str(space), "--trials", "2", "--out", str(tmp_path / "out")])
    cap = capsys.readouterr()
    assert code != 0
    assert "run the same mtpp tune command again to continue the search" in cap.out + cap.err
    assert "mtpp train --out" not in cap.out + cap.err and "run the same command again" not in cap.out + cap.err
