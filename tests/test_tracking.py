"""Experiment trackers (``logging.trackers``): off by default; MLflow (file and SQLite stores in tmp) and W&B
(offline mode) receive the resolved config, every ``log.jsonl`` record at its step under a name that says what it
is (``train/``, ``val/``, ``epoch/``, ``final/``), the final metrics and the run status; ``tracking.json`` records
each store; a resumed run continues the same tracker run in that store, with each epoch sent once."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest

from mtpp.config import config_from_dict
from mtpp.errors import ConfigError
from mtpp.training.trainer import fit

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "data": {"name": "synthetic_hawkes", "max_sequences": 16},
    "model": {"encoder": "gru", "decoder": "lnm", "hidden_size": 8, "mark_embedding_size": 4,
              "time_embedding_size": 4, "decoder_hidden_size": 8, "num_components": 3},
    "train": {"max_epochs": 2, "batch_size": 8},
    "logging": {"quiet": True, "progress": False, "flush_every": 3},
}


def _cfg(trackers, options, epochs=2):
    raw = json.loads(json.dumps(TINY))
    raw["logging"].update(trackers=trackers, tracker_options=options)
    raw["train"]["max_epochs"] = epochs
    return config_from_dict(raw)


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_off_by_default(tmp_path):
    assert config_from_dict({}).logging.trackers == []
    fit(_cfg([], {}, epochs=1), tmp_path / "r")
    assert not (tmp_path / "r" / "tracking.json").exists()


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown tracker 'mlflw' \\(did you mean 'mlflow'\\?\\)"):
        config_from_dict({"logging": {"trackers": ["mlflw"]}})
    with pytest.raises(ConfigError, match="logging.tracker_options.wandb.projekt' \\(did you mean 'project'"):
        config_from_dict({"logging": {"tracker_options": {"wandb": {"projekt": "x"}}}})


def test_missing_package_stops_before_training(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ConfigError, match=r'mlflow is not installed \(pip install -e "\.\[mlflow\]"\)'):
        fit(_cfg(["mlflow"], {}), tmp_path / "r")
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


EPOCH_NAMES = {
    "val/nll_per_seq", "val/nll_time_per_seq", "val/nll_mark_per_seq", "val/nll_per_event", "epoch/seconds",
    "epoch/validation_seconds", "epoch/train_events_per_second", "epoch/lr", "epoch/skipped_batches",
    "epoch/best_epoch",
}  # fmt: skip
"""The metric names of an epoch record (``mtpp.training.tracking.metric_name``)."""


class _Recorder:
    """A sink that keeps what it is sent: ``items`` (name, value, step) and the final ``summary``."""

    name = "mlflow"
    sent: list = []

    def __init__(self, out_dir, config, options, recorded):
        self.run_id, self.items, self.summary, self.recorded = "recorded", [], None, recorded
        self.store, self.where = {"run_id": self.run_id}, "a recorder"
        _Recorder.sent.append(self)

    def log(self, items):
        self.items += items

    def finish(self, summary, ok):
        self.summary = summary


def test_metric_names_say_what_each_value_is(tmp_path, monkeypatch):
    from mtpp.training import tracking

    monkeypatch.setitem(tracking._KINDS, "mlflow", _Recorder)
    monkeypatch.setattr(_Recorder, "sent", [])
    fit(_cfg(["mlflow"], {}), tmp_path / "r")
    (sink,) = _Recorder.sent
    log = _log(tmp_path / "r")
    by_step: dict = {}
    for name, value, step in sink.items:
        by_step.setdefault(step, {})[name] = value
    epochs = [r for r in log if r["kind"] == "epoch"]
    for r in epochs:
        got = {k: v for k, v in by_step[r["step"]].items() if not k.startswith("train/")}
        assert set(got) == EPOCH_NAMES
        assert got["val/nll_per_seq"] == pytest.approx(r["val_nll_per_seq"])
        assert got["val/nll_time_per_seq"] == pytest.approx(r["val_nll_time_per_seq"])
        assert got["epoch/seconds"] == pytest.approx(r["epoch_seconds"])
        assert got["epoch/lr"] == pytest.approx(r["lr"])
        assert got["epoch/train_events_per_second"] == pytest.approx(r["train_events_per_second"])
    step = next(r for r in log if r["kind"] == "step")
    train = {k: v for k, v in by_step[step["step"]].items() if k.startswith("train/")}
    assert set(train) == {"train/loss_time", "train/loss_mark", "train/cos_tm", "train/cos_tm.encoder", "train/gms",
                          "train/norm_time", "train/norm_mark", "train/grad_norm", "train/skipped"}  # fmt: skip
    assert train["train/loss_time"] == pytest.approx(step["loss_time"])
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    final = sink.summary
    assert final["final/test/nll_time_per_seq"] == pytest.approx(metrics["test"]["nll_time_per_seq"])
    assert final["final/val/accuracy_forecast"] == pytest.approx(metrics["val"]["accuracy_forecast"])
    assert final["final/train/seconds"] == pytest.approx(metrics["train"]["train_seconds"])
    assert final["final/train/events_per_second"] == pytest.approx(metrics["train"]["train_events_per_second"])
    assert final["final/train/best_epoch"] == metrics["train"]["best_epoch"]
    assert final["final/train/conflict_rate.encoder"] == metrics["train"]["conflict_rate/encoder"]
    # the run-level fields metrics.json repeats in each split are sent once, under final/train/
    assert not [k for k in final if k.startswith(("final/val/", "final/test/")) and k.rsplit("/", 1)[1] in
                ("best_epoch", "num_parameters", "conflict_rate", "train_events_per_second")]  # fmt: skip
    assert not [k for k in final if k.startswith("final/train/train_")]


def test_tensorboard_gets_the_same_names(tmp_path, monkeypatch):
    from mtpp.training import logging as run_logging

    class Writer:
        tags: dict = {}

        def add_scalar(self, tag, value, step):
            Writer.tags.setdefault(tag, []).append(step)

        def flush(self): ...

        def close(self): ...

    purges = []
    monkeypatch.setattr(run_logging, "_make_tensorboard", lambda log_dir, purge: purges.append(purge) or Writer())
    cfg = _cfg([], {}, epochs=2)
    cfg.logging.tensorboard = True
    fit(cfg, tmp_path / "r")
    assert EPOCH_NAMES <= set(Writer.tags) and "train/loss_time" in Writer.tags
    assert all(t.startswith(("train/", "val/", "epoch/")) for t in Writer.tags)
    assert not [t for t in Writer.tags if t.startswith(("val/val_", "val/lr", "val/epoch"))]
    assert Writer.tags["val/nll_per_seq"] == [r["step"] for r in _log(tmp_path / "r") if r["kind"] == "epoch"]
    # a resume purges what the earlier session wrote after the checkpoint (an interrupted epoch's points): TensorBoard
    # showed them twice
    last = max(r["step"] for r in _log(tmp_path / "r"))
    cfg = _cfg([], {}, epochs=3)
    cfg.logging.tensorboard = True
    fit(cfg, tmp_path / "r", resume=True)
    assert purges == [None, last + 1]


def test_mlflow_file_store_gets_params_records_final_metrics_and_resume(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # tests send nothing anywhere
    uri = f"file:{tmp_path / 'mlruns'}"
    run = tmp_path / "r"
    cfg = _cfg(["mlflow"], {"mlflow": {"tracking_uri": uri, "experiment": "tests"}}, epochs=1)
    fit(cfg, run)
    run_id = json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]
    client = MlflowClient(tracking_uri=uri)
    info = client.get_run(run_id)
    assert info.info.status == "FINISHED" and info.info.run_name == "r"
    assert info.data.params["model.decoder"] == "lnm" and info.data.params["train.max_epochs"] == "1"
    steps = [r for r in _log(run) if r.get("kind") == "step"]
    hist = client.get_metric_history(run_id, "train/loss_time")
    assert [(m.step, m.value) for m in hist] == [(r["step"], pytest.approx(r["loss_time"])) for r in steps]
    metrics = json.loads((run / "metrics.json").read_text())
    assert info.data.metrics["final/test/nll_time_per_seq"] == pytest.approx(metrics["test"]["nll_time_per_seq"])
    final_point = client.get_metric_history(run_id, "final/test/nll_time_per_seq")[0]
    assert final_point.timestamp >= info.info.start_time  # when the run ended, not 1970
    assert set(info.data.metrics) >= EPOCH_NAMES | {"train/loss_time", "final/train/events_per_second"}
    assert not [k for k in info.data.metrics if k.startswith(("val/val_", "val/epoch", "val/lr", "final/train/train_"))]
    # resume with one more epoch: the same MLflow run, now with two validation records
    fit(_cfg(["mlflow"], {"mlflow": {"tracking_uri": uri, "experiment": "tests"}}, epochs=2), run, resume=True)
    assert json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"] == run_id
    resumed = client.get_run(run_id).data  # parameters cannot change: the resume's new value is a tag
    assert resumed.params["train.max_epochs"] == "1"
    assert resumed.tags["resume_1/train.max_epochs"] == "2" and resumed.tags["resume_1/after_epoch"] == "1"
    val = client.get_metric_history(run_id, "val/nll_per_seq")
    assert sorted(m.step for m in val) == [r["step"] for r in _log(run) if r.get("kind") == "epoch"]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([info.info.experiment_id])) == 1


def test_mlflow_records_its_store_and_resume_uses_it_from_another_directory(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from mtpp.errors import MtppError

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run = tmp_path / "r"
    opts = {"mlflow": {"tracking_uri": "sqlite:///ml.db"}}  # relative: the working directory's ml.db
    monkeypatch.chdir(tmp_path / "a")
    cfg = _cfg(["mlflow"], opts, epochs=1)
    cfg.logging.quiet = False
    fit(cfg, run)
    uri = f"sqlite:///{tmp_path / 'a' / 'ml.db'}"
    recorded = json.loads((run / "tracking.json").read_text())["mlflow"]
    assert recorded["tracking_uri"] == uri and recorded["experiment"] == "mtpp"
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(recorded["run_id"]).info.experiment_id == recorded["experiment_id"]
    header = capsys.readouterr().err
    exp_id, run_id = recorded["experiment_id"], recorded["run_id"]
    assert f"  tracker mlflow {uri}, experiment 'mtpp' (id {exp_id}), run {run_id}" in header
    # --resume from another directory: the same store, not b/ml.db
    monkeypatch.chdir(tmp_path / "b")
    fit(_cfg(["mlflow"], opts, epochs=2), run, resume=True)
    assert not (tmp_path / "b" / "ml.db").exists()
    assert len(client.get_metric_history(recorded["run_id"], "val/nll_per_seq")) == 2
    assert json.loads((run / "tracking.json").read_text())["mlflow"] == {**recorded, "logged_through_epoch": 2}
    # the store gone: --resume refuses in one line, before training, and creates no empty store
    (tmp_path / "a" / "ml.db").rename(tmp_path / "a" / "moved.db")
    before = {f: (run / f).read_bytes() for f in ("config.yaml", "log.jsonl", "tracking.json")}
    with pytest.raises(MtppError) as err:
        fit(_cfg(["mlflow"], opts, epochs=3), run, resume=True)
    assert str(err.value) == (
        f"--resume: the MLflow run {recorded['run_id']} recorded in {run / 'tracking.json'} cannot be reached in "
        f"{uri} (no file {tmp_path / 'a' / 'ml.db'}); make that store reachable again, or remove the \"mlflow\" "
        f"entry of {run / 'tracking.json'} to send this run's history to a new MLflow run")
    assert not (tmp_path / "a" / "ml.db").exists()
    assert sum(r["kind"] == "epoch" for r in _log(run)) == 2  # nothing trained
    # and nothing rewritten: no run_info.resumed entry for a resume that did not happen, the log as it was
    assert {f: (run / f).read_bytes() for f in before} == before


def _interrupt_at_checkpoint(monkeypatch, epoch):
    """Ctrl-C after epoch ``epoch``'s record is in log.jsonl, before its checkpoint: a resume trains it again."""
    from mtpp.training import checkpoint

    save = checkpoint.save_atomic

    def interrupted(state, path):
        if Path(path).name == "checkpoint.pt" and state["epoch"] == epoch:
            raise KeyboardInterrupt
        save(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", interrupted)


def _resumable_cfg(trackers, options, epochs):
    cfg = _cfg(trackers, options, epochs=epochs)
    cfg.train.batch_size = 2  # 8 steps an epoch, flushed every 3: the interrupted epoch's steps were written
    return cfg


def test_an_interrupted_epoch_reaches_the_trackers_once(tmp_path, monkeypatch):
    from mtpp.training import tracking

    monkeypatch.setitem(tracking._KINDS, "mlflow", _Recorder)
    monkeypatch.setattr(_Recorder, "sent", [])
    run = tmp_path / "r"
    with monkeypatch.context() as m:
        _interrupt_at_checkpoint(m, 2)
        with pytest.raises(KeyboardInterrupt):
            fit(_resumable_cfg(["mlflow"], {}, 3), run, interrupt_hint=False)
    first = _Recorder.sent[0]
    assert {step for _, _, step in first.items} == {r["step"] for r in _log(run) if r["epoch"] == 1}
    assert json.loads((run / "tracking.json").read_text())["mlflow"]["logged_through_epoch"] == 1
    fit(_resumable_cfg(["mlflow"], {}, 3), run, resume=True)
    second = _Recorder.sent[1]
    assert second.recorded == {"run_id": "recorded", "logged_through_epoch": 1}
    sent = [(name, step) for name, _, step in first.items + second.items]
    assert len(sent) == len(set(sent))  # no value twice
    log = _log(run)
    val = {step: v for name, v, step in first.items + second.items if name == "val/nll_per_seq"}
    assert val == {r["step"]: pytest.approx(r["val_nll_per_seq"]) for r in log if r["kind"] == "epoch"}
    assert sorted(step for name, step in sent if name == "train/loss_time") == [r["step"] for r in log if
                                                                               r["kind"] == "step"]  # fmt: skip
    assert json.loads((run / "tracking.json").read_text())["mlflow"]["logged_through_epoch"] == 3


def test_a_tracker_new_to_a_resumed_run_gets_its_whole_history(tmp_path, monkeypatch):
    from mtpp.training import tracking

    monkeypatch.setitem(tracking._KINDS, "mlflow", _Recorder)
    monkeypatch.setattr(_Recorder, "sent", [])
    run = tmp_path / "r"
    fit(_cfg(["mlflow"], {}, epochs=1), run)
    (run / "tracking.json").write_text("{}")  # as the refusal of an unreachable store advises
    fit(_cfg(["mlflow"], {}, epochs=2), run, resume=True)
    new = _Recorder.sent[1]
    assert new.recorded is None
    assert sorted(step for name, _, step in new.items if name == "val/nll_per_seq") == [
        r["step"] for r in _log(run) if r["kind"] == "epoch"]


def test_mlflow_resumed_after_an_interruption_has_each_epoch_once(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"file:{tmp_path / 'mlruns'}"
    run = tmp_path / "r"
    opts = {"mlflow": {"tracking_uri": uri}}
    with monkeypatch.context() as m:
        _interrupt_at_checkpoint(m, 2)
        with pytest.raises(KeyboardInterrupt):
            fit(_resumable_cfg(["mlflow"], opts, 3), run, interrupt_hint=False)
    run_id = json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "FAILED"
    fit(_resumable_cfg(["mlflow"], opts, 3), run, resume=True)
    log = _log(run)
    val = client.get_metric_history(run_id, "val/nll_per_seq")
    assert sorted(m.step for m in val) == [r["step"] for r in log if r["kind"] == "epoch"]  # 3 points, not 4
    loss = client.get_metric_history(run_id, "train/loss_time")
    assert sorted(m.step for m in loss) == [r["step"] for r in log if r["kind"] == "step"]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_absolute_uri():
    from mtpp.training.tracking import absolute_uri

    here = Path.cwd()
    assert absolute_uri("sqlite:///ml.db") == f"sqlite:///{here / 'ml.db'}"
    assert absolute_uri("sqlite:////abs/ml.db") == "sqlite:////abs/ml.db"
    assert absolute_uri("file:mlruns") == (here / "mlruns").as_uri()
    assert absolute_uri("mlruns") == (here / "mlruns").as_uri()
    assert absolute_uri("file:///abs/mlruns") == "file:///abs/mlruns"
    for uri in ("http://localhost:5000", "https://x.example/mlflow", "databricks", "databricks://profile"):
        assert absolute_uri(uri) == uri


def _wandb_records(path):
    """The protobuf records of an offline ``run-<id>.wandb`` file (W&B's LevelDB-style log: 7-byte file header,
    32 KiB blocks, each chunk ``crc32 u32, length u16, type u8`` with type 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
    records = []
    for raw in out:
        r = pb.Record()
        r.ParseFromString(raw)
        records.append(r)
    return records


def test_wandb_offline_gets_records_and_final_metrics(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    run = tmp_path / "r"
    fit(_cfg(["wandb"], {"wandb": {"mode": "offline", "project": "tests"}}, epochs=1), run)
    wandb.teardown()  # the W&B service writes the offline file asynchronously: wait until it has shut down
    recorded = json.loads((run / "tracking.json").read_text())["wandb"]
    run_id = recorded["run_id"]
    assert recorded["project"] == "tests" and recorded["mode"] == "offline"
    assert recorded["dir"] == str((run / "wandb").resolve())
    files = list((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    records = _wandb_records(files[0])
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    logged: dict = {}
    for h in history:  # the train and val records of a step are two history rows
        logged.setdefault(h["step"], {}).update(h)
    for r in (r for r in _log(run) if r.get("kind") == "step"):
        assert logged[r["step"]]["train/loss_mark"] == pytest.approx(r["loss_mark"])
    epoch = next(r for r in _log(run) if r.get("kind") == "epoch")
    assert EPOCH_NAMES <= set(logged[epoch["step"]])  # the same names as MLflow
    assert logged[epoch["step"]]["val/nll_per_seq"] == pytest.approx(epoch["val_nll_per_seq"])
    assert logged[epoch["step"]]["epoch/lr"] == pytest.approx(epoch["lr"])
    summary = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for r in records
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    metrics = json.loads((run / "metrics.json").read_text())
    assert summary["final/val/nll_mark_per_seq"] == pytest.approx(metrics["val"]["nll_mark_per_seq"])
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert exits == [0]


class _Flaky:
    """A sink that starts, then fails on its second batch of records."""

    name = "mlflow"

    def __init__(self, out_dir, config, options, recorded):
        self.run_id, self.calls = "flaky", 0
        self.store, self.where = {"run_id": self.run_id}, "a flaky sink"

    def log(self, items):
        self.calls += 1
        if self.calls == 2:
            raise ConnectionError("server went away")

    def finish(self, summary, ok):
        raise AssertionError("a switched-off tracker is not called again")


class _Unreachable(_Flaky):
    def __init__(self, *args):
        raise ConnectionError("no server at http://nowhere:5000")


def test_a_failing_tracker_is_switched_off_and_the_run_goes_on(tmp_path, monkeypatch):
    from mtpp.training import tracking

    monkeypatch.setitem(tracking._KINDS, "mlflow", _Flaky)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # one WARNING line of mtpp's logger, not a Python warning
        metrics = fit(_cfg(["mlflow"], {}), tmp_path / "r")
    said = [line for line in (tmp_path / "r" / "train.log").read_text().splitlines() if "mlflow failed" in line]
    assert len(said) == 1 and "(ConnectionError: server went away); switched off" in said[0], said
    assert metrics["train"]["epochs"] == 2 and (tmp_path / "r" / "metrics.json").is_file()
    assert sum(r.get("kind") == "epoch" for r in _log(tmp_path / "r")) == 2  # log.jsonl is complete


def test_a_tracker_that_cannot_start_stops_the_run_with_one_line(tmp_path, monkeypatch):
    from mtpp.errors import MtppError
    from mtpp.training import tracking

    monkeypatch.setitem(tracking._KINDS, "mlflow", _Unreachable)
    with pytest.raises(MtppError, match="logging.trackers: mlflow could not start \\(ConnectionError: no server"):
        fit(_cfg(["mlflow"], {}), tmp_path / "r")
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_a_run_killed_in_its_first_epoch_leaves_no_mlflow_run_running(tmp_path, monkeypatch):
    """SIGKILL (or power loss) during the first epoch left its MLflow run RUNNING forever; the restart, which starts
    over, opened a second one. Starting over now ends the abandoned run KILLED, tagged with its successor; a
    finished run replaced by ``--overwrite`` stays FINISHED."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from mtpp.training.tracking import open_trackers

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"file:{tmp_path / 'mlruns'}"
    run = tmp_path / "r"
    cfg = _cfg(["mlflow"], {"mlflow": {"tracking_uri": uri}}, epochs=1)
    run.mkdir()
    (run / "config.yaml").write_text(json.dumps({**cfg.to_dict(), "run_info": {}}))
    open_trackers(run)  # what a start does before its first epoch; then the process is killed: nothing ends it
    dead = json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(dead).info.status == "RUNNING"
    fit(cfg, run)  # the same command again: starts over
    new = json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]
    assert new != dead and client.get_run(new).info.status == "FINISHED"
    assert client.get_run(dead).info.status == "KILLED" and client.get_run(dead).data.tags["mtpp.replaced_by"] == new
    fit(cfg, run, overwrite=True)
    assert client.get_run(new).info.status == "FINISHED"


def test_missing_tensorboard_is_one_line_on_the_console_and_in_train_log(tmp_path, monkeypatch, capsys):
    """``logging.tensorboard: true`` without tensorboard printed a Python ``UserWarning`` with a source line of
    mtpp's code; it is now one WARNING line, also in ``train.log``, and the run goes on with ``log.jsonl``."""
    import builtins
    import warnings

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    cfg = _cfg([], {}, epochs=1)
    cfg.logging.tensorboard = True
    cfg.logging.quiet = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no Python warning any more
        fit(cfg, tmp_path / "r")
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "tensorboard is not importable" in line]
    assert len(said) == 1 and said[0].startswith("WARNING: ") and "UserWarning" not in err
    assert "tensorboard is not importable" in (tmp_path / "r" / "train.log").read_text()
    assert (tmp_path / "r" / "log.jsonl").is_file() and not (tmp_path / "r" / "tensorboard").exists()



def test_amp_asked_for_on_cpu_is_one_warning_line_not_a_python_warning(tmp_path, capsys):
    """``train.amp: true`` on a CPU printed a ``UserWarning`` and the source line ``self.amp = amp_enabled(...)``
    of mtpp's trainer; it is one WARNING line on the console and in ``train.log``, like every run warning."""
    cfg = _cfg([], {}, epochs=1)
    cfg.train.amp, cfg.train.device, cfg.logging.quiet = True, "cpu", False
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fit(cfg, tmp_path / "r")
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "train.amp is only used on CUDA" in line]
    assert len(said) == 1 and said[0].startswith("WARNING: ") and "amp_enabled" not in err, err
    assert "train.amp is only used on CUDA" in (tmp_path / "r" / "train.log").read_text()
