"""Run logging: ``log.jsonl``, optional TensorBoard scalars, the tqdm progress bars, the console copy
``train.log``, on-device step records.

Nothing here forces a host sync: per-step values (losses, cosines, norms, the skip flag) stay 0-dim device
tensors in a ``mtpp.training.gradients.StatsBuffer`` until the trainer flushes it (every
``logging.flush_every`` steps and at epoch ends, one transfer) and hands the records to ``RunLogger``. The
progress bar advances every step (``Progress.step``: a host-side counter, tqdm redraws at most every 0.1 s);
losses and the run's ETA in its postfix change on flushes only.

Console copy: inside ``console_log(path)`` every line given to :func:`echo` (the run's header, epoch lines,
warnings, summary, the resume hint) and every warning of the ``mtpp`` loggers (auto-preparation of a dataset) is
also appended to ``path`` with a time stamp, whether or not the console shows it (``quiet``). Progress bars are
not copied (they are redrawn, not lines). The lines are held in memory until the trainer has accepted the folder
(:func:`attach_console_logs`): a folder refused (another run in it, files mtpp did not write) gets no ``train.log``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import torch

from mtpp.evaluation.evaluate import json_safe

LOG_FILE = "log.jsonl"
TRAIN_LOG = "train.log"
_SINKS: list["_ConsoleCopy"] = []  # open console copies (console_log)


class _ConsoleCopy:
    """A ``train.log`` being written: lines held in memory until :meth:`attach` opens the file (append) and from
    then on written through."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held = [f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {' '.join(sys.argv)}\n"]
        self.fh: IO[str] | None = None

    def attach(self) -> None:
        if self.fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = self.path.open("a", encoding="utf-8")
            self.fh.writelines(self.held)
            self.fh.flush()
            self.held = []

    def write(self, text: str) -> None:
        (self.fh.write if self.fh is not None else self.held.append)(text)

    def flush(self) -> None:
        if self.fh is not None:
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def attach_console_logs() -> None:
    """Start writing the open console copies (``console_log``) to their files, with the lines held so far: called
    once the run's folder is accepted (``mtpp.training.trainer``)."""
    for sink in _SINKS:
        sink.attach()


class RunLogger:
    """Appends JSON objects to ``OUT/log.jsonl`` and mirrors numeric fields to TensorBoard when enabled, and to
    the experiment trackers of ``OUT/config.yaml`` (``logging.trackers``: ``mtpp.training.tracking``)."""

    def __init__(self, out_dir: Path, tensorboard: bool = False) -> None:
        from mtpp.training.tracking import open_trackers

        self.path = Path(out_dir) / LOG_FILE
        self._trackers = open_trackers(out_dir)  # before the log is opened: an empty log means a fresh run
        # a resume: TensorBoard drops the earlier session's points after the checkpoint's last step (an interrupted
        # epoch's), which the rerun writes again (log.jsonl holds the checkpointed steps only: truncate_log)
        purge = _last_step(self.path) + 1 if tensorboard and self.path.is_file() else None
        self._fh = self.path.open("a", encoding="utf-8")
        self._tb = _make_tensorboard(Path(out_dir) / "tensorboard", purge) if tensorboard else None

    @property
    def tracking(self) -> list[str]:
        """Where each experiment tracker sends this run (its store and run), for the run's header."""
        return self._trackers.where

    def write(self, record: dict[str, Any], track: bool = True) -> None:
        """Append one record; its numeric fields go to TensorBoard and the trackers under the names of
        ``mtpp.training.tracking.metric_name`` (``train/...`` for ``kind: step``, ``val/...`` and ``epoch/...``
        for ``kind: epoch``)."""
        record = json_safe(record)
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")
        if track:
            self._trackers.log([record])
        if self._tb is not None:
            from mtpp.training.tracking import record_metrics

            step = record.get("step", 0)
            for k, v in record_metrics(record).items():
                self._tb.add_scalar(k, v, step)

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        records = list(records) if self._trackers else records
        for r in records:
            self.write(r, track=False)
        self._fh.flush()
        self._trackers.log(records)

    def checkpointed(self, epoch: int) -> None:
        """Epoch ``epoch``'s checkpoint is written: the experiment trackers get its records (each epoch once, a
        resume sends none twice; ``mtpp.training.tracking.Trackers.commit``)."""
        self._trackers.commit(epoch)

    def flush(self) -> None:
        self._fh.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        self._trackers.close()


def truncate_log(out_dir: Path, max_epoch: int) -> None:
    """On resume: keep only the records of epochs ``<= max_epoch`` (those covered by the checkpoint)."""
    path = Path(out_dir) / LOG_FILE
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the interruption
            continue
        if rec.get("epoch", 0) <= max_epoch:
            kept.append(line)
    from mtpp.files import write_text

    write_text(path, "".join(line + "\n" for line in kept))  # an interruption here keeps the whole old log


def _last_step(path: Path) -> int:
    """The largest ``step`` of the records in ``path`` (a ``log.jsonl``), -1 when none has one."""
    last = -1
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                step = json.loads(line).get("step")
            except (ValueError, AttributeError):
                continue
            if isinstance(step, int):
                last = max(last, step)
    return last


def _make_tensorboard(log_dir: Path, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # ImportError, or tensorboard present but broken
        # a WARNING of mtpp's logger: one line on the console and in train.log (warnings.warn printed a source line)
        logging.getLogger(__name__).warning(
            "logging.tensorboard is true but tensorboard is not importable (pip install 'mtpp[tensorboard]'); "
            "writing log.jsonl only"
        )
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def bar_disable() -> bool | None:
    """tqdm's ``disable`` for mtpp's bars: ``None`` (off when stderr is not a terminal: a redirected log gets no
    carriage-return redraws) except in a notebook kernel, whose output is not a terminal but shows bars."""
    return False if "ipykernel" in sys.modules else None


class Progress:
    """tqdm bars: one over the steps of an epoch (with the run's ETA), one over validation / evaluation batches.

    A no-op when disabled. ``step()`` advances the epoch bar by one step on the host (no device sync); tqdm
    redraws at most every 0.1 s. ``eta_run`` (set by the trainer at flushes) is shown as ``run ETA``.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        self._postfix: dict[str, Any] = {}

    def start_epoch(self, epoch: int, total: int, desc: str = "") -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.close()
        self._postfix = {}
        self._bar = tqdm(total=total, desc=desc or f"epoch {epoch}", leave=False, file=sys.stderr,
                         dynamic_ncols=True, unit="step", disable=bar_disable())  # fmt: skip

    @property
    def done(self) -> int:
        """Steps counted on the epoch bar so far (0 when disabled)."""
        return self._bar.n if self._bar is not None else 0

    def step(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def update(self, steps: int, postfix: dict[str, Any]) -> None:
        """Advance ``steps`` (0 when ``step`` already counted them) and show ``postfix`` (None values hidden)."""
        if self._bar is None:
            return
        if steps:
            self._bar.update(steps)
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items() if v is not None}
        self._postfix = shown
        self._bar.set_postfix(shown, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @contextlib.contextmanager
    def phase(self, desc: str, total: int | None) -> Iterator[Any]:
        """A bar over ``total`` batches of validation or evaluation (``bar.update()`` per batch); ``None`` when off."""
        if not self.enabled:
            yield None
            return
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True, unit="batch",
                   disable=bar_disable())  # fmt: skip
        try:
            yield bar
        finally:
            bar.close()


def format_eta(seconds: float | None) -> str | None:
    """``1h02m``, ``3m05s``, ``12s``; ``None`` for unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return None
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


_SAID: set[str] = set()
"""Console lines already printed with ``echo(..., once=True)`` in this process."""


def echo(message: str, quiet: bool = False, *, stream: IO[str] | None = None, once: bool = False,
         console: str | None = None) -> None:
    """A line for the user (stderr, so stdout stays clean for tables, unless ``stream``), unless quiet; always
    copied into the open console logs (``console_log``). ``once``: on the console only the first time this
    process says it (a data warning repeated for every cell of a grid), in every run's log each time.
    ``console``: what the console shows instead of ``message`` (the log copy keeps ``message``)."""
    if not quiet and not (once and message in _SAID):
        print(message if console is None else console, file=stream or sys.stderr, flush=True)
        if once:
            _SAID.add(message)
    if _SINKS:
        stamp = time.strftime("%H:%M:%S")
        for fh in _SINKS:
            for line in str(message).splitlines() or [""]:
                fh.write(f"{stamp} {line}\n")
            fh.flush()


class _EchoHandler(logging.Handler):
    """Warnings of mtpp's loggers (e.g. a dataset auto-prepared on first use) as :func:`echo` lines: on the
    console as before, and in ``train.log``."""

    def emit(self, record: logging.LogRecord) -> None:
        echo(self.format(record))


@contextlib.contextmanager
def console_log(path: Path) -> Iterator[None]:
    """Append every :func:`echo` line, and every warning of the ``mtpp`` loggers, to ``path`` (the run's
    ``train.log``) while inside, from the moment :func:`attach_console_logs` is called (the lines before it are held
    in memory and written then; never attached, nothing is written)."""
    fh = _ConsoleCopy(Path(path))
    _SINKS.append(fh)
    logger = logging.getLogger("mtpp")
    handler = _EchoHandler(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        _SINKS.remove(fh)
        fh.close()
