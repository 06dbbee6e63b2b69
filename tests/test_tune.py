"""``mtpp tune``: an Optuna search on the synthetic data finishes in seconds, writes the best config (a valid run
configuration holding the best trial's values), one run directory per trial and a resumable SQLite study."""

from __future__ import annotations

import csv

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


def test_tune_marks_an_interrupted_trial_failed(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    study = optuna.create_study(study_name="mtpp", storage=f"sqlite:///{out / 'study.db'}")
    study.ask()  # a trial left RUNNING, as by a killed search
    code, cap = _tune(tmp_path, 1, capsys)
    assert code == 0 and "trial 0 was interrupted" in cap.out
    states = [t.state for t in optuna.load_study(study_name="mtpp", storage=f"sqlite:///{out / 'study.db'}").trials]
    assert states[0] == optuna.trial.TrialState.FAIL and states[1].is_finished()


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
        ({"train.batch_size": {"type": "int", "low": 1.5, "high": 4}}, "expected an integer"),
    ],
)
def test_bad_spaces_are_one_line(space, message):
    with pytest.raises(ConfigError, match=pytest.importorskip("re").escape(message)):
        parse_space(space, "space.yaml")


def test_space_keys_are_checked_against_the_config_before_any_trial(tmp_path, capsys):
    base, space = _write(tmp_path)
    space.write_text(yaml.safe_dump({"model.decodr": ["lnm"], "train.lr": [0.01]}))
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
    import logging

    import mtpp.training.trainer as trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "fit", interrupted)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage() + str(record.exc_info))

    keep = Keep()
    logging.getLogger("optuna").addHandler(keep)
    try:
        code, cap = _tune(tmp_path, 2, capsys)
    finally:
        logging.getLogger("optuna").removeHandler(keep)
    assert code != 0
    assert "interrupted; trial 0 is marked failed in the study" in cap.out + cap.err
    assert "run the same mtpp tune command again to continue the search" in cap.out + cap.err
    assert not [m for m in seen if "KeyboardInterrupt" in m], seen  # no Optuna traceback
    assert (tmp_path / "out" / "trials.csv").is_file()
