"""Experiment tracking beside ``log.jsonl``: MLflow and Weights & Biases sinks, off by default.

Turned on per run by the configuration (``mtpp.config.LoggingConfig``)::

    logging:
      trackers: [mlflow, wandb]
      tracker_options:
        mlflow: {tracking_uri: sqlite:///mlflow.db, experiment: mtpp}   # also run_name, tags
        wandb: {project: mtpp, mode: offline}                          # also entity, group, run_name, tags

Each needs its package (extras ``mlflow`` -> ``mlflow-skinny``, ``wandb`` -> ``wandb``); a tracker whose package is
missing is a ``ConfigError`` at the start of the run, before any training.

What is sent. ``RunLogger`` (``mtpp.training.logging``) forwards every record it writes to ``log.jsonl`` to
:meth:`Trackers.log` (its one hook), each value at its training step, under a name that says what it is
(:func:`metric_name`; TensorBoard gets the same names):

- ``train/<key>``: step records, the training batch's values (``train/loss_time``, ``train/loss_mark`` in nats per
  sequence, ``train/cos_tm``, ``train/cos_tm.encoder``, ``train/gms``, ``train/grad_norm``, ``train/skipped``);
- ``val/<metric>``: the validation values of each epoch record, in nats (``val/nll_per_seq``,
  ``val/nll_time_per_seq``, ``val/nll_mark_per_seq``, ``val/nll_per_event``, ``val/nll_time_binned_per_seq``);
- ``epoch/<key>``: the rest of each epoch record (``epoch/seconds``, ``epoch/validation_seconds``,
  ``epoch/train_events_per_second``, ``epoch/lr``, ``epoch/skipped_batches``, ``epoch/best_epoch``);
- ``final/<split>/<metric>``: at the end, the final metrics of ``metrics.json`` as summary values, with the file's
  names (``final/test/nll_time_per_seq``, ``final/val/accuracy_forecast``); its ``train`` section as
  ``final/train/<key>`` without a leading ``train_`` (``final/train/seconds``, ``final/train/events_per_second``,
  ``final/train/best_epoch``), where the run-level fields that ``metrics.json`` repeats in every split are sent once.

A ``/`` inside a record key becomes ``.`` (``train/cos_tm.encoder``), so no name nests under another.

When. Each epoch reaches a tracker once. Its records (its steps and its validation) are held until the epoch's
``checkpoint.pt`` is written, then sent together (:meth:`Trackers.commit`): a dashboard shows an epoch when it
ends, and tracking adds no host sync and no call per step. An epoch interrupted before its checkpoint (Ctrl-C,
a kill, a divergence) never reaches a tracker (``log.jsonl`` has what was written of it): a resume trains it again
from the checkpoint, and the rerun is what is sent, at the same steps, so no step or epoch appears twice (MLflow
and W&B cannot take back a logged point, so a superseded one is never sent). ``OUT/tracking.json`` keeps the last
epoch each tracker was sent (``logged_through_epoch``); a resume first sends each tracker the checkpointed epochs
it has not had (none, normally; every epoch to a tracker new to the run or one switched off by a failure).
At the start the resolved configuration (``config.yaml``: every section flattened to ``section.key``, and
``run_info``) is logged as parameters; at the end the run is marked finished, or failed when the run ended
without ``metrics.json`` (interrupted, diverged).

Failures. A tracker that cannot start (unreachable server, bad URI, no credentials) stops the run before
training with one line (``MtppError``); one that fails later is switched off with a warning and the run goes on
(``log.jsonl`` is always complete).

Where. ``OUT/tracking.json`` records each tracker's run and store: MLflow ``{run_id, tracking_uri, experiment,
experiment_id}`` with the URI made absolute (``sqlite:///mlflow.db`` is the working directory's file:
``sqlite:////abs/dir/mlflow.db``), W&B ``{run_id, project, entity, mode, dir}``; the run's header says the same
(``tracker mlflow sqlite:////abs/dir/mlflow.db, experiment 'mtpp' (id 1), run <id>``).

Resume. ``mtpp train --resume`` continues the same MLflow run and W&B run, in the store ``OUT/tracking.json``
records, from any working directory (``tracking_uri`` and the W&B project / entity / mode of the configuration
are for new runs). A recorded MLflow run that cannot be reached (its SQLite file or folder gone, its server down,
the run deleted) stops the resume before training with one line (``MtppError``); a missing SQLite file is not
created empty.

Settings a resume changes (``mtpp train --resume --set train.max_epochs=30``; ``config.yaml`` ``run_info.resumed``).
MLflow parameters cannot change, so they keep the values the run started with and each such resume adds tags:
``resume_<n>/after_epoch`` (the checkpoint it continued) and ``resume_<n>/<key>`` with the new value
(``resume_1/after_epoch = 12``, ``resume_1/train.max_epochs = 30``). W&B's config can change: it shows the
settings in force, with ``run_info.resumed`` listing each resume's changes (``[old, new]``).

W&B runs its writer in a service process: an offline run's ``run-<id>.wandb`` file is complete once that service
has shut down (``wandb.teardown()``, or the end of the Python process), not necessarily when ``fit`` returns.

Defaults. MLflow: ``tracking_uri`` from MLflow itself (``$MLFLOW_TRACKING_URI``, else its default store, MLflow
3's ``sqlite:///mlflow.db`` in the working directory; the header and ``tracking.json`` name it),
experiment ``mtpp``, run name the run folder's name. W&B: project ``mtpp``, ``mode`` from ``$WANDB_MODE`` (else
online, which needs ``wandb login``; ``offline`` writes ``OUT/wandb`` for a later ``wandb sync``), files under
``OUT``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import yaml

from mtpp.config import flatten
from mtpp.errors import ConfigError, MtppError
from mtpp.files import read_jsonl

__all__ = ["Trackers", "open_trackers", "metric_name", "record_metrics", "final_metrics", "TRACKING_FILE"]

TRACKING_FILE = "tracking.json"
_SKIP = ("kind", "step", "epoch")


def _key(name: str) -> str:
    """``cos_tm/encoder`` -> ``cos_tm.encoder``: a record key never nests under another (MLflow's file store makes
    every ``/`` a folder, so ``cos_tm`` and ``cos_tm/encoder`` could not both exist)."""
    return name.replace("/", ".")


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numeric fields of a record (booleans as 0 / 1), without the bookkeeping keys."""
    out = {}
    for k, v in record.items():
        if k in _SKIP or v is None or isinstance(v, (str, list, dict)):
            continue
        v = float(v)
        if math.isfinite(v):
            out[k] = v
    return out


_NAMES: dict[tuple[str, str], str] = {}
"""``(record kind, record key) -> metric name``, filled as keys are first seen (:func:`metric_name`)."""


def metric_name(kind: str | None, key: str) -> str:
    """The metric name under which a ``log.jsonl`` record field is sent to trackers and TensorBoard.

    Step records (``kind: step``): ``train/<key>`` (``train/loss_time``, ``train/cos_tm.encoder``). Epoch records
    (``kind: epoch``): a validation value ``val_<m>`` is ``val/<m>`` (``val/nll_per_seq``), ``epoch_seconds`` is
    ``epoch/seconds``, every other field ``epoch/<key>`` (``epoch/lr``, ``epoch/train_events_per_second``,
    ``epoch/validation_seconds``, ``epoch/best_epoch``). A ``/`` inside a key becomes ``.`` (:func:`_key`).
    """
    name = _NAMES.get((kind or "", key))
    if name is None:
        if kind == "epoch":
            if key.startswith("val_"):
                name = f"val/{_key(key[4:])}"
            else:
                name = f"epoch/{_key(key[6:] if key.startswith('epoch_') else key)}"
        else:
            name = f"{kind if kind and kind != 'step' else 'train'}/{_key(key)}"
        _NAMES[(kind or "", key)] = name
    return name


def record_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A ``log.jsonl`` record's finite numeric fields under their metric names (:func:`metric_name`)."""
    kind = record.get("kind")
    return {metric_name(kind, k): v for k, v in _scalars(record).items()}


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The final metrics of a ``metrics.json`` as tracker summary values: ``final/<split>/<metric>`` with the
    file's names (``final/test/nll_time_per_seq``, ``final/val/accuracy_forecast``); the ``train`` section (the
    run's summary) as ``final/train/<key>`` without a leading ``train_`` (``final/train/seconds``,
    ``final/train/events_per_second``, ``final/train/best_epoch``). The run-level fields that ``metrics.json``
    repeats in every split (``RUN_LEVEL_KEYS``: best epoch, parameters, conflict rate, training speed) are sent
    once, under ``final/train/``."""
    from mtpp.evaluation.evaluate import RUN_LEVEL_KEYS

    train = metrics.get("train") if isinstance(metrics.get("train"), dict) else {}
    out: dict[str, float] = {}
    for split, values in metrics.items():
        if not isinstance(values, dict):
            continue
        for k, v in _scalars(values).items():
            if split == "train":
                out[f"final/train/{_key(k[6:] if k.startswith('train_') else k)}"] = v
            elif not (k in RUN_LEVEL_KEYS and k in train):
                out[f"final/{split}/{_key(k)}"] = v
    return out


def absolute_uri(uri: str) -> str:
    """An MLflow tracking URI that means the same store from any working directory: a relative SQLite path
    (``sqlite:///mlflow.db``) or local folder (``file:mlruns``, ``mlruns``) made absolute; a server, an absolute
    path or ``databricks`` unchanged."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and not path.startswith(("/", ":memory:")):
            return "sqlite:///" + str(Path(path).resolve())
        return uri
    if uri.startswith("file:"):
        return uri if uri.startswith("file://") else Path(uri[len("file:") :]).resolve().as_uri()
    if ":" not in uri and not uri.startswith(("databricks", "uc")):  # a plain folder: MLflow's file store
        return Path(uri).resolve().as_uri()
    return uri


def _missing_local_store(uri: str) -> str | None:
    """Why a local store named by an absolute ``uri`` is gone (its SQLite file or its folder), else ``None``.
    Checked before MLflow opens it: opening a missing SQLite file would create an empty store."""
    if uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///") :].split("?")[0])
        return None if path.is_file() else f"no file {path}"
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(uri).path))
        return None if path.is_dir() else f"no folder {path}"
    return None


def _unreachable(run_id: str, where: str, uri: str, why: str) -> MtppError:
    return MtppError(f"--resume: the MLflow run {run_id} recorded in {where} cannot be reached in {uri} ({why}); "
                     f"make that store reachable again, or remove the \"mlflow\" entry of {where} to send this "
                     "run's history to a new MLflow run")


def check_recorded_stores(out_dir: str | Path) -> None:
    """Before a resume touches the run folder (``config.yaml``'s ``run_info.resumed``, ``log.jsonl``): the local
    MLflow store recorded in ``OUT/tracking.json`` (a SQLite file, a folder) still exists, else the same one-line
    ``MtppError`` as when the tracker opens; a server is only tried when the tracker opens."""
    path = Path(out_dir) / TRACKING_FILE
    entry = (_recorded(path) if path.is_file() else {}).get("mlflow") or {}
    uri = entry.get("tracking_uri")
    missing = _missing_local_store(uri) if uri else None
    if missing:
        raise _unreachable(entry.get("run_id"), str(path), uri, missing)


def resume_tags(config: dict) -> dict[str, str]:
    """What each ``--resume`` changed (``run_info.resumed`` of ``config.yaml``) as MLflow tags: for the n-th such
    resume ``resume_<n>/after_epoch`` (the checkpoint it continued) and ``resume_<n>/<key>`` (the new value, e.g.
    ``resume_1/train.max_epochs = 30``; an environment change as ``resume_1/run_info.git_revision``); the
    parameters keep the values the run started with (MLflow parameters cannot change)."""
    out = {}
    for n, entry in enumerate((config.get("run_info") or {}).get("resumed") or [], 1):
        out[f"resume_{n}/after_epoch"] = str(entry.get("epoch"))
        environment = {f"run_info.{k}": v for k, v in (entry.get("environment") or {}).items()}
        for key, change in {**(entry.get("changed") or {}), **environment}.items():
            new = change[1] if isinstance(change, (list, tuple)) and len(change) == 2 else change
            out[f"resume_{n}/{key}"] = str(new)[:5000]
    return out


class _MLflow:
    """One MLflow run through ``MlflowClient`` (no global active run, so several runs may share a process).

    ``recorded``: this tracker's entry of ``OUT/tracking.json`` on a resume; its store (``tracking_uri``, absolute)
    is used whatever the working directory or ``tracking_uri`` now, and a run that cannot be found there is a
    one-line ``MtppError``."""

    name = "mlflow"

    def __init__(self, out_dir: Path, config: dict, options: dict, recorded: dict | None) -> None:
        try:
            import mlflow
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError('logging.trackers: mlflow is not installed (pip install -e ".[mlflow]")') from None
        from mlflow.entities import Param, RunTag

        uri = (recorded or {}).get("tracking_uri") or absolute_uri(options.get("tracking_uri") or
                                                                   mlflow.get_tracking_uri())  # fmt: skip
        if recorded is None:
            self.client = MlflowClient(tracking_uri=uri)
            name = options.get("experiment", "mtpp")
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
            run = self.client.create_run(exp_id, run_name=options.get("run_name") or out_dir.name,
                                         tags={"mtpp.run_dir": str(out_dir.resolve()), **options.get("tags", {})})
            run_id = run.info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(run_id, params=params[i : i + 100])
        else:
            run_id = recorded["run_id"]
            where = f"{Path(out_dir) / TRACKING_FILE}"
            try:
                missing = _missing_local_store(uri)
                if missing:
                    raise FileNotFoundError(missing)
                self.client = MlflowClient(tracking_uri=uri)
                exp_id = self.client.get_run(run_id).info.experiment_id
                name = self.client.get_experiment(exp_id).name
            except Exception as e:  # noqa: BLE001  (a store gone, a server down, a run deleted)
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise _unreachable(run_id, where, uri, why) from None
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[RunTag("mtpp.resumed", "true")])
        tags = [RunTag(k, v) for k, v in resume_tags(config).items()]  # tags, unlike parameters, can be set again
        for i in range(0, len(tags), 100):
            self.client.log_batch(run_id, tags=tags[i : i + 100])
        self.run_id = run_id
        self.store = {"run_id": run_id, "tracking_uri": uri, "experiment": name, "experiment_id": str(exp_id)}
        self.where = f"mlflow {uri}, experiment {name!r} (id {exp_id}), run {run_id}"

    def end_abandoned(self, entry: dict) -> None:
        """The MLflow run of an earlier start in this folder (``entry``: its ``OUT/tracking.json`` entry) that is
        still RUNNING was killed without ending it (SIGKILL, power loss; an interrupt ends it FAILED): marked KILLED,
        tagged ``mtpp.replaced_by`` with this run. No process still writes it: a run folder has one writer
        (``mtpp.runs.RunLock``). Best effort: a store that is gone or unreachable leaves it as it was."""
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(tracking_uri=entry.get("tracking_uri") or self.store["tracking_uri"])
            if entry["run_id"] != self.run_id and client.get_run(entry["run_id"]).info.status == "RUNNING":
                client.set_tag(entry["run_id"], "mtpp.replaced_by", self.run_id)
                client.set_terminated(entry["run_id"], status="KILLED")
        except Exception:  # noqa: BLE001, S110  (housekeeping of a run that is gone: nothing to lose)
            pass

    def log(self, items: list[tuple[str, float, int]]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v, step in items]
        for i in range(0, len(metrics), 1000):  # the batch limit of log_batch
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def finish(self, summary: dict[str, float], ok: bool) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # when the run ended (timestamp 0 read as 1970 in MLflow's charts)
        metrics = [Metric(k, v, now, 0) for k, v in summary.items()]
        for i in range(0, len(metrics), 1000):  # the batch limit of log_batch
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


class _WandB:
    """One W&B run (``wandb.init`` with ``reinit``-safe ``finish``); the training step is the ``step`` metric.

    ``recorded``: this tracker's entry of ``OUT/tracking.json`` on a resume; its project, entity and mode are used
    whatever ``logging.tracker_options.wandb`` now says (the run id belongs to them)."""

    name = "wandb"

    def __init__(self, out_dir: Path, config: dict, options: dict, recorded: dict | None) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError('logging.trackers: wandb is not installed (pip install -e ".[wandb]")') from None
        kwargs = {k: options[k] for k in ("project", "entity", "group", "mode", "tags") if k in options}
        kwargs.update({k: v for k, v in (recorded or {}).items() if k in ("project", "entity", "mode") and v})
        kwargs.setdefault("project", "mtpp")
        self.run = wandb.init(
            dir=str(out_dir), name=options.get("run_name") or out_dir.name, config=config,
            id=(recorded or {}).get("run_id"), resume="allow", settings=wandb.Settings(silent=True, console="off"),
            **kwargs,
        )  # fmt: skip
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.run_id = self.run.id
        mode = getattr(self.run.settings, "mode", None) or kwargs.get("mode") or "online"
        files = str((Path(out_dir) / "wandb").resolve())
        self.store = {"run_id": self.run_id, "project": self.run.project, "entity": self.run.entity or None,
                      "mode": mode, "dir": files}  # fmt: skip
        url = getattr(self.run, "url", None)
        self.where = (f"wandb project {self.run.project!r}, mode {mode}, run {self.run_id}"
                      + (f", {url}" if url else f", files under {files}"))  # fmt: skip

    def log(self, items: list[tuple[str, float, int]]) -> None:
        by_step: dict[int, dict[str, float]] = {}
        for k, v, step in items:
            by_step.setdefault(step, {})[k] = v
        for step in sorted(by_step):
            self.run.log({**by_step[step], "step": step})

    def finish(self, summary: dict[str, float], ok: bool) -> None:
        for k, v in summary.items():
            self.run.summary[k] = v
        self.run.finish(exit_code=0 if ok else 1)


_KINDS = {"mlflow": _MLflow, "wandb": _WandB}


class Trackers:
    """The trackers of one run directory. ``log(records)`` takes ``log.jsonl`` records as they are written,
    ``commit(epoch)`` sends those of the epochs up to ``epoch`` once its checkpoint is written, ``close()`` sends
    the final metrics and the run status. Empty (every call a no-op) when no tracker is configured.

    Each epoch reaches a tracker once: the records of an epoch wait (in memory: one epoch's records) until its
    checkpoint is written; an epoch interrupted before its checkpoint is dropped (a resume trains it again, and
    sends the rerun). ``OUT/tracking.json`` keeps, per tracker, the last epoch it was sent
    (``logged_through_epoch``), so that a resume sends a tracker what it missed and nothing twice."""

    def __init__(self, out_dir: Path, sinks: list[Any], recorded: dict[str, dict] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.sinks = sinks
        self._opened = list(sinks)  # recorded in tracking.json even once switched off
        self._recorded = dict(recorded or {})  # entries of trackers this invocation does not run: kept
        self._through = {s.name: 0 for s in sinks}  # the last epoch each tracker was sent
        self._pending: list[dict[str, Any]] = []  # records of epochs not yet checkpointed

    def __bool__(self) -> bool:
        return bool(self.sinks)

    @property
    def where(self) -> list[str]:
        """Where each tracker sends this run (``mlflow sqlite:////abs/mlflow.db, experiment 'mtpp' (id 1), run
        ...``), for the run's header."""
        return [sink.where for sink in self.sinks]

    def record(self) -> None:
        """Write ``OUT/tracking.json``: each tracker's run, store and last epoch sent (atomically)."""
        from mtpp.evaluation.evaluate import write_json

        entries = {s.name: {**s.store, "logged_through_epoch": self._through[s.name]} for s in self._opened}
        write_json(self.out_dir / TRACKING_FILE, {**self._recorded, **entries})

    def log(self, records: Iterable[dict[str, Any]]) -> None:
        """Hold ``log.jsonl`` records (``kind: step`` / ``epoch``, each with its ``epoch``) until :meth:`commit`."""
        if self.sinks:
            self._pending.extend(records)

    def commit(self, epoch: int) -> None:
        """Epoch ``epoch`` is checkpointed: send every tracker the held records of the epochs up to it."""
        if not self.sinks:
            return
        done = [r for r in self._pending if int(r.get("epoch") or 0) <= epoch]
        self._pending = [r for r in self._pending if int(r.get("epoch") or 0) > epoch]
        self._send(done, epoch)

    def catch_up(self, records: list[dict[str, Any]], epoch: int) -> None:
        """On a resume: send each tracker the records of ``log.jsonl`` (the checkpointed epochs, up to ``epoch``)
        after the last epoch it was sent (all of them to a tracker new to the run)."""
        self._send(records, epoch)

    def _send(self, records: list[dict[str, Any]], epoch: int) -> None:
        rows = [(int(r.get("epoch") or 0), int(r.get("step") or 0), record_metrics(r)) for r in records]
        for sink in list(self.sinks):
            since = self._through[sink.name]
            if since >= epoch:
                continue
            items = [(k, v, step) for e, step, values in rows if since < e <= epoch for k, v in values.items()]
            if items:
                self._guarded(sink, sink.log, items)
            if sink in self.sinks:  # not switched off: a resume sends it what it missed
                self._through[sink.name] = epoch
        self.record()

    def _guarded(self, sink: Any, call: Any, *args: Any) -> None:
        """A tracker that fails (a server gone, a full disk) is switched off with one warning; training goes on
        and ``log.jsonl`` stays complete."""
        try:
            call(*args)
        except Exception as e:  # noqa: BLE001  (any failure of a third-party sink)
            # one WARNING line on the console and in train.log (warnings.warn printed a source line of mtpp's code)
            logging.getLogger(__name__).warning(f"logging.trackers: {sink.name} failed ({type(e).__name__}: {e}); "
                                                "switched off for the rest of this run (log.jsonl is complete)")
            self.sinks.remove(sink)

    def close(self) -> None:
        """Send the final metrics of ``metrics.json`` and mark each run finished (failed without that file). The
        held records of an epoch that has no checkpoint are dropped (a resume trains that epoch again)."""
        self._pending = []
        if not self.sinks:
            return
        path = self.out_dir / "metrics.json"
        ok = path.is_file()
        summary = final_metrics(json.loads(path.read_text(encoding="utf-8"))) if ok else {}
        for sink in list(self.sinks):
            self._guarded(sink, sink.finish, summary, ok)
        self.sinks = []


def _recorded(path: Path) -> dict[str, dict]:
    """The entries of ``OUT/tracking.json``, one per tracker (``{run_id, ...store}``); the older form (a run id
    alone) as ``{run_id}``."""
    raw = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return {k: (v if isinstance(v, dict) else {"run_id": v}) for k, v in raw.items() if isinstance(v, (dict, str))}


def open_trackers(out_dir: str | Path) -> Trackers:
    """The trackers that ``OUT/config.yaml`` (``logging.trackers``) asks for, started, or resumed when
    ``OUT/log.jsonl`` already has records (a resumed run: the tracker runs and their stores recorded in
    ``OUT/tracking.json`` are continued). No config, or no tracker in it: an empty ``Trackers``. ``ConfigError``
    when a tracker's package is missing; ``MtppError`` (one line) when a tracker cannot start or, on a resume,
    its recorded run cannot be reached.

    ``OUT/tracking.json`` records, per tracker, its run and where it lives: MLflow ``{run_id, tracking_uri
    (absolute), experiment, experiment_id}``, W&B ``{run_id, project, entity, mode, dir}``."""
    out_dir = Path(out_dir)
    path = out_dir / "config.yaml"
    if not path.is_file():
        return Trackers(out_dir, [])
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    logging_cfg = config.get("logging") or {}
    names = list(logging_cfg.get("trackers") or [])
    if not names:
        return Trackers(out_dir, [])
    options = logging_cfg.get("tracker_options") or {}
    log = out_dir / "log.jsonl"
    resumed = log.is_file() and log.stat().st_size > 0  # the trainer removes log.jsonl unless it resumes
    recorded = _recorded(out_dir / TRACKING_FILE) if resumed else {}
    sinks = []
    for n in names:
        try:
            sinks.append(_KINDS[n](out_dir, config, dict(options.get(n) or {}), recorded.get(n)))
        except MtppError:
            raise
        except Exception as e:  # noqa: BLE001  (an unreachable server, a bad URI, missing credentials)
            raise MtppError(f"logging.trackers: {n} could not start ({type(e).__name__}: {e}); fix "
                            f"logging.tracker_options.{n} or remove it from logging.trackers") from None
    if not resumed:  # a run starting over in this folder: a tracker run its killed predecessor left open is ended
        before = _recorded(out_dir / TRACKING_FILE)
        for s in sinks:
            entry = before.get(s.name)
            if entry and entry.get("run_id") and hasattr(s, "end_abandoned"):
                s.end_abandoned(entry)
    trackers = Trackers(out_dir, sinks, recorded)
    if resumed:  # log.jsonl holds the checkpointed epochs (mtpp.training.logging.truncate_log): send what is missing
        records = read_jsonl(log)
        last = max((int(r.get("epoch") or 0) for r in records), default=0)
        for s in sinks:
            entry = recorded.get(s.name)
            # a tracker new to the run gets every epoch; one recorded by an older mtpp (no logged_through_epoch)
            # was sent every record as it was written
            trackers._through[s.name] = 0 if entry is None else int(entry.get("logged_through_epoch", last))
        trackers.catch_up(records, last)
    trackers.record()
    return trackers
