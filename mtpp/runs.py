"""Run directories as things that know their data and have one writer: fingerprints, locks, safe names, loading.

A run directory (written by :func:`mtpp.training.trainer.fit`) records the data it was trained on, so every later
command (``evaluate``, ``train --resume``, ``compare``) uses that data by default and refuses other data.

Data record (``config.yaml`` under ``run_info.data``, and in ``checkpoint.pt`` / ``best.pt`` under ``data``)::

    name: mooc                       # data.name of the config
    source: /abs/path/split folder   # the resolved folder or file the sequences were read from
    split: 0                         # the split index used
    num_marks: 50
    max_sequences: null             # the cut applied to every part
    options: {use_window: false, sort: false, remap_marks: false}   # how the source was read (data.*)
    parts: {train: {sequences: N, events: M, windows: W, sha256: HEX}, val: {...}, test: {...}}
    given: null                     # or why no configuration reloads them (a Dataset built by hand, fit(model, data))

``windows`` counts the sequences with a window end; ``options``, ``windows`` and ``given`` are absent from older
records. A refusal names what differs beyond the fingerprints (options, marks, sizes, window ends; else that the
content itself differs). A run whose record has ``given`` is refused by every command that reloads its data,
saying so, unless a ``data_dir`` is given.

``sha256`` is the content fingerprint of one part after the ``max_sequences`` cut: SHA-256 over, for every
sequence in order, its length (int64), its times (float64 bytes), its marks (int64 bytes) and its window end
(float64, NaN when ``None``). Two parts have the same fingerprint exactly when they hold the same sequences in the
same order, whatever the file format or folder they came from. Cost: one pass over the arrays (measured: 0.015 s
for MOOC, 6,234 sequences, 312k events).

Loading (:func:`load_recorded_data`): the recorded ``source`` when it still exists and no ``data_dir`` was
given, else the config's ``data.name`` resolved as usual; then the fingerprints are compared and a mismatch is an
``MtppError`` naming both sources and the parts that differ (``--other-data`` in ``mtpp evaluate`` accepts it and
writes elsewhere). Runs written before records existed carry none: they load as configured, with a warning.

One writer per run folder (:class:`RunLock`): ``OUT/.mtpp.lock`` holds an exclusive ``fcntl.flock`` for the life
of the writing command and names the holder (pid, host, command, start time). The kernel drops the lock when the
holder dies (SIGKILL included), so a stale lock file of a dead process is taken over silently; a live holder makes
the second writer fail with a message naming it. Where ``flock`` does not work (Windows, some network file
systems) the file's content decides: free when empty or when its holder is a dead process of this host.

Folder names from user input (variant names, experiment labels) pass :func:`check_folder_name` before they become
paths: never empty, ``.``, ``..``, or holding a path separator.

This module sits beside ``training`` and ``evaluation``: it imports ``config``, ``data`` and
``training.setup`` / ``training.checkpoint`` only, never the trainer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from mtpp.errors import ConfigError, MtppError

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".mtpp.lock"
PARTS = ("train", "val", "test")
#: Temporary files of interrupted atomic writes (``checkpoint.save_atomic``, ``mtpp.files.replacing``:
#: ``.<name>.<random>.tmp``; earlier versions: ``.<name>.tmp``) of the files mtpp writes into a run folder: removed
#: when a command takes the run folder over (a ``kill -9`` leaves them; any other interruption removes its own).
_RUN_FILES = ("metrics.json", "metrics.interim.json", "metrics.other-*.json", "arrays_*.json", "config.yaml",
              "tracking.json", "log.jsonl", "cell.json")
TEMP_PATTERNS = (
    ".checkpoint.pt.*.tmp", ".best.pt.*.tmp", ".initial.pt.*.tmp",
    *(f".{name}.tmp" for name in _RUN_FILES), *(f".{name}.*.tmp" for name in _RUN_FILES),
)


# --------------------------------------------------------------------------------------------- fingerprints


def fingerprint(sequences: Iterable[Any]) -> str:
    """SHA-256 hex digest of a list of ``EventSequence`` (lengths, times, marks, window ends, in order)."""
    import numpy as np

    h = hashlib.sha256()
    nan = np.float64(np.nan).tobytes()
    for s in sequences:
        times = np.ascontiguousarray(s.times, dtype=np.float64)
        marks = np.ascontiguousarray(s.marks, dtype=np.int64)
        h.update(np.int64(times.shape[0]).tobytes())
        h.update(times.tobytes())
        h.update(marks.tobytes())
        h.update(nan if s.window_end is None else np.float64(s.window_end).tobytes())
    return h.hexdigest()


def data_record(run_data: Any, data_cfg: Any) -> dict[str, Any]:
    """The record of ``run_data`` (a ``mtpp.training.setup.RunData``) loaded for ``data_cfg`` (``DataConfig``)."""
    source = getattr(run_data, "source", None)
    parts = {}
    for part in PARTS:
        seqs = run_data.split(part)
        parts[part] = {
            "sequences": len(seqs),
            "events": int(sum(len(s) for s in seqs)),
            "windows": sum(s.window_end is not None for s in seqs),  # sequences with a window end (use_window)
            "sha256": fingerprint(seqs),
        }
    record = {
        "name": data_cfg.name,
        "source": None if source is None else str(Path(source).resolve()),
        "split": data_cfg.split,
        "num_marks": int(run_data.num_marks),
        "max_sequences": data_cfg.max_sequences,
        "options": {k: getattr(data_cfg, k, None) for k in _READING_KEYS},
        "parts": parts,
    }
    if getattr(run_data, "given", None):  # data handed to fit(model, data) that no configuration reloads
        record["given"] = run_data.given
    return record


def differing_parts(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Parts (``train``/``val``/``test``, and ``num_marks``) whose fingerprints or counts differ."""
    out = [p for p in PARTS if recorded.get("parts", {}).get(p, {}).get("sha256") != current["parts"][p]["sha256"]]
    if recorded.get("num_marks") is not None and recorded["num_marks"] != current["num_marks"]:
        out.append("num_marks")
    return out


def describe_difference(recorded: dict[str, Any], current: dict[str, Any], parts: Sequence[str]) -> str:
    """``recorded SOURCE (split s, events train/val/test a/b/c, test sha256 HEX12) vs now ...; differing: ...``."""
    shown = next((p for p in parts if p in PARTS), "test")

    def side(rec: dict[str, Any]) -> str:
        sizes = "/".join(str(rec.get("parts", {}).get(p, {}).get("events", "?")) for p in PARTS)
        fp = str(rec.get("parts", {}).get(shown, {}).get("sha256", "?"))
        return f"{rec.get('source')} (split {rec.get('split')}, events train/val/test {sizes}, {shown} sha256 {fp[:12]})"

    return (f"recorded {side(recorded)} vs now {side(current)}; differing: {', '.join(parts)}"
            + "".join(f" ({d})" for d in _content_differences(recorded, current, parts)))


def _content_differences(recorded: dict[str, Any], current: dict[str, Any], parts: Sequence[str]) -> list[str]:
    """What differs between two data records beyond the fingerprints, in words: the reading options
    (``data.use_window`` / ``sort`` / ``remap_marks``), the number of marks, and per part the sequence, event and
    window-end counts; when all of them agree, that the content itself (times, marks or window ends) differs."""
    out = []
    a, b = recorded.get("options") or {}, current.get("options") or {}
    out += [f"data.{k} {a.get(k)!r} (recorded) vs {b.get(k)!r} (now)" for k in _READING_KEYS
            if k in a and k in b and a[k] != b[k]]
    if "num_marks" in parts:
        out.append(f"num_marks {recorded.get('num_marks')} (recorded) vs {current.get('num_marks')} (now)")
    for p in (p for p in parts if p in PARTS):
        ra, rb = recorded.get("parts", {}).get(p, {}), current.get("parts", {}).get(p, {})
        counts = [f"{what} {ra[what]} vs {rb[what]}" for what in ("sequences", "events", "windows")
                  if what in ra and what in rb and ra[what] != rb[what]]
        if counts:
            out.append(f"{p}: {', '.join(counts)}" + (" (window ends: data.use_window)" if any(
                c.startswith("windows") for c in counts) else ""))
    if not out:
        out.append("same sizes: the times, marks or window ends themselves differ (the files changed, or were read "
                   "with other options)")
    return out


def check_same_data(
    recorded: dict[str, Any] | None, current: dict[str, Any], what: str, hint: str = "",
    tried: Sequence[tuple[str, dict | None]] = (),
) -> None:  # fmt: skip
    """Raise ``MtppError`` when ``current`` is not the data ``recorded`` for the run (``what`` names the caller,
    ``hint`` adds a way out); nothing to check when there is no record. ``tried``: the other places
    :func:`load_recorded_data` read and refused (the recorded folder, changed too), named in the message so that
    it does not look as if only the last one was looked at."""
    if not recorded:
        return
    parts = differing_parts(recorded, current)
    if parts:
        also = [f"{where} ({'differs: ' + ', '.join(differing_parts(recorded, rec)) if rec else 'not readable as data'})"
                for where, rec in tried if where != current.get("source")]  # fmt: skip
        raise MtppError(
            f"{what}: the data differ from the run's: {describe_difference(recorded, current, parts)}"
            + (f"; also tried {'; '.join(also)}" if also else "")
            + f". Point --data-dir at the recorded data (or restore it){hint}"
        )


def load_recorded_data(
    data_cfg: Any, data_dir: str | None, recorded: dict[str, Any] | None,
    tried: list[tuple[str, dict | None]] | None = None, progress: bool = False,
) -> tuple[Any, dict]:  # fmt: skip
    """``(run_data, its record)`` for a run: the data whose fingerprints match ``recorded`` where possible.
    ``progress``: a bar counting the sequences read, on a terminal (``mtpp.data.formats.reading_progress``).

    Tried in order: the recorded ``source`` (unless ``data_dir`` is given or it is gone); for a dataset given as a
    path (not a catalog name, so ``--data-dir`` has no folder to resolve it in), ``data_dir`` itself as the data
    (a copy of the recorded split folder, or of the file); then ``data_cfg`` resolved as usual (``data_dir``,
    ``data.data_dir``, ``$MTPP_DATA_DIR``, ``./data``). The first that matches is returned; when none does, the
    last one tried (the caller refuses it with :func:`check_same_data`). When the recorded source is gone and the
    configuration finds nothing, ``MtppError`` naming the recorded source and ``--data-dir``. ``tried`` (a list)
    receives ``(place, its record or None when it did not read as data)`` for each earlier place that did not
    match.
    """
    from mtpp.data.catalog import CATALOG

    given = (recorded or {}).get("given")
    if given and data_dir is None:
        raise MtppError(
            f"the run was trained on data handed to fit(model, data) that its configuration cannot reload ({given}): "
            "evaluate or predict with the model object and those data (evaluate(model, data=...)), or write them "
            "as a split folder (mtpp.data.formats.write_split_folder) and pass that folder as data_dir / --data-dir")
    if data_dir is not None and not Path(data_dir).exists():  # a mistyped --data-dir was silently passed over
        raise MtppError(f"--data-dir {data_dir}: no such file or folder")
    candidates = []
    source = (recorded or {}).get("source")
    if data_dir is None and source and Path(source).exists():
        candidates.append(source)
    if data_dir is not None and data_cfg.name not in CATALOG and Path(data_dir).exists():
        candidates.append(str(data_dir))
    for where in candidates:
        found = _load_as(data_cfg, where, progress)
        record = data_record(found, data_cfg) if found is not None else None
        if record is not None and not differing_parts(recorded or {}, record):
            return found, record
        if tried is not None:
            tried.append((where, record))
    from mtpp.errors import DataError
    from mtpp.training.setup import load_data

    try:
        data = load_data(data_cfg, data_dir, progress=progress)
    except DataError as e:  # the recorded folder is gone and the configuration finds nothing either: say both
        if data_dir is not None or not source or Path(source).exists():
            raise
        where = ("its new location (the folder or file itself)" if data_cfg.name not in CATALOG
                 else "the data folder that holds it now")  # fmt: skip
        raise MtppError(f"{e}; the run read its data from {source}, which no longer exists (moved or deleted?): "
                        f"pass --data-dir with {where}") from None
    return data, data_record(data, data_cfg)


def _load_as(data_cfg: Any, where: str, progress: bool = False) -> Any:
    """The run's data read from ``where`` (a split folder or file) under the run's dataset name; ``None`` when it
    does not read as data (e.g. the folder holds something else now)."""
    from dataclasses import replace

    from mtpp.errors import DataError
    from mtpp.training.setup import load_data

    try:
        return load_data(replace(data_cfg, name=where, data_dir=None), None, name=data_cfg.name, progress=progress)
    except DataError:
        return None


def describe_data(run_data: Any) -> str:
    """``name <- source (split s): train/val/test n/n/n sequences, K marks`` for a command's first lines."""
    sizes = "/".join(str(len(run_data.split(p))) for p in PARTS)
    source = getattr(run_data, "source", None)
    where = Path(source).resolve() if source else "?"
    return (f"{run_data.name} <- {where} (split {getattr(run_data, 'split_index', '?')}): "
            f"train/val/test {sizes} sequences, {run_data.num_marks} marks")


# --------------------------------------------------------------------------------------------- a finished run


@dataclass
class Run:
    """A run directory read once: its configuration (without ``run_info``), ``run_info`` and data record."""

    path: Path
    config: Any  # RunConfig
    run_info: dict[str, Any]

    @property
    def data_record(self) -> dict[str, Any] | None:
        return self.run_info.get("data")

    def load_data(self, data_dir: str | None = None, *, other_data: bool = False,
                  purpose: str = "evaluate", progress: bool = False) -> tuple[Any, dict, bool]:  # fmt: skip
        """``(run_data, its record, same)``: the recorded data (see :func:`load_recorded_data`; ``progress``: its
        reading bar).

        ``same`` is False when the fingerprints differ; that is an ``MtppError`` unless ``other_data``.
        ``purpose``: the command the error names; only ``evaluate`` offers ``--other-data``.
        """
        tried: list[tuple[str, dict | None]] = []
        data, current = load_recorded_data(self.config.data, data_dir, self.data_record, tried, progress)
        recorded = self.data_record
        if not recorded:
            import logging  # one WARNING line (warnings.warn printed a source line of mtpp's code)

            logging.getLogger(__name__).warning(f"{self.path} records no data fingerprint (written by an older "
                                                "mtpp); cannot check that these are its data")
            return data, current, True
        same = not differing_parts(recorded, current)
        if not same and not other_data:
            hint = (", or pass --other-data to evaluate on these data into another file" if purpose == "evaluate"
                    else "; mtpp evaluate --other-data scores the run on other data")
            check_same_data(recorded, current, f"{purpose} {self.path}", hint, tried)
        return data, current, same

    def best_state(self, map_location: Any = "cpu") -> dict[str, Any]:
        from mtpp.training import checkpoint

        return checkpoint.load(self.path / checkpoint.BEST, map_location=map_location)

    def load_best(self, model: Any, state: dict[str, Any] | None = None) -> None:
        """``best.pt``'s weights into ``model`` (built from ``config.yaml``); ``MtppError`` when they do not fit
        (see :func:`load_weights`)."""
        from mtpp.training import checkpoint

        state = self.best_state() if state is None else state
        load_weights(model, state, self.path / checkpoint.BEST, self.config.to_dict())


def load_weights(model: Any, state: dict[str, Any], source: Path, config: dict[str, Any] | None = None) -> None:
    """``state["model"]`` into ``model``; when the tensors do not fit (a ``config.yaml`` edited after training,
    a checkpoint of another run), one ``MtppError`` naming ``source``, the first mismatch and the ``model.*``
    settings where ``config`` (the configuration the model was built from) differs from the one stored in the
    checkpoint, instead of torch's list of shapes."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]
        more = f" and {len(lines) - 1} more" if len(lines) > 1 else ""
        stored = state.get("config")
        diffs = []
        if isinstance(stored, dict) and config is not None:
            from mtpp.config import flatten

            a, b = flatten(stored.get("model") or {}, "model"), flatten(config.get("model") or {}, "model")
            diffs = [f"{k}: {a.get(k)!r} (trained) vs {b.get(k)!r} (config.yaml)" for k in sorted(set(a) | set(b))
                     if a.get(k) != b.get(k)]
        why = (f"; the run's config.yaml differs from the configuration it was trained with: {', '.join(diffs[:4])}"
               if diffs else "; was config.yaml edited after training, or the file copied from another run?")
        raise MtppError(f"{source}: the weights do not fit the model its config.yaml describes ({lines[0]}{more})"
                        f"{why}") from None


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` (a run's ``train.threads``) while inside, the previous count
    restored afterwards; ``None`` leaves it as it is. Every command that computes with a run's model (train,
    evaluate, predict, generate, plot, bench, compare's cells) goes through here, so none of them takes every core
    by default (BENCHMARKS.md, "Threads")."""
    import torch

    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def training_finished(run_dir: str | Path) -> bool:
    """Whether the run's training ended: its ``metrics.json`` holds the ``train`` summary the trainer writes last
    (an interrupted run, or one still training, has none: its ``best.pt`` is the best model so far)."""
    try:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and isinstance(metrics.get("train"), dict)


def make_out_folder(path: str | Path) -> Path:
    """``path`` created as a folder (parents too) and returned; ``MtppError`` in one line when it exists as a file
    (``--out`` naming a file: ``train``, ``compare``, ``tune``)."""
    from mtpp.files import check_writable

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MtppError(f"{path}: exists and is a file; --out must name a folder")
    if not path.exists():
        check_writable(path)  # a file on the way, a dangling link, no write permission: named in one line
    path.mkdir(parents=True, exist_ok=True)
    return path


def not_a_run(path: Path) -> str:
    """Why ``path`` is not a run directory, and what to pass instead: it does not exist; it is a folder of runs
    (variants or a grid: names a few); or it has no ``config.yaml``."""
    if not path.exists():
        return f"{path}: does not exist"
    if path.is_dir():
        runs = sorted(str(c.parent) for c in path.glob(f"*/{CONFIG_FILE}"))
        runs += sorted(str(c.parent) for c in path.glob(f"*/*/{CONFIG_FILE}")) if not runs else []
        if runs:
            shown = ", ".join(runs[:3]) + (f" (and {len(runs) - 3} more)" if len(runs) > 3 else "")
            return f"{path}: a folder of {len(runs)} runs, not one run; pass one of them: {shown}"
    return f"{path}: not a run directory (no {CONFIG_FILE})"


def open_run(run_dir: str | Path) -> Run:
    """Read ``run_dir/config.yaml`` (``MtppError`` naming the file when there is none, or it is empty, not YAML,
    or not a valid run configuration: an empty one is never read as every default, which described another
    model and other data than the run's)."""
    from mtpp.config import config_from_dict, read_yaml

    path = Path(run_dir)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise MtppError(not_a_run(path))
    raw = read_yaml(cfg_file)  # ConfigError naming the file: invalid YAML, a key given twice
    if raw is None:
        raise MtppError(f"{cfg_file}: empty, not a run configuration (mtpp train writes the run's settings there; "
                        "was the file truncated or emptied?)")
    if not isinstance(raw, dict):
        raise MtppError(f"{cfg_file}: not a run configuration")
    info = raw.pop("run_info", None) or {}
    try:
        cfg = config_from_dict(raw)
    except ConfigError as e:  # a hand-edited key or value: name the file it is in
        raise ConfigError(f"{cfg_file}: {e}") from None
    return Run(path, cfg, info if isinstance(info, dict) else {})


def mixed_data(run_dirs: Iterable[str | Path]) -> list[str]:
    """Problems of a set of runs summarised together: runs of one dataset name and split whose recorded test
    parts differ (their test metrics are then not comparable; runs cut to another ``max_sequences`` are another
    cell of the report and not compared). One line per dataset, naming two runs and their sources. Runs without a
    record are not checked."""
    seen: dict[tuple, tuple[str, dict, Any]] = {}
    problems: dict[tuple, str] = {}
    for run_dir in run_dirs:
        try:
            run = open_run(run_dir)
            record = run.data_record
        except (MtppError, OSError):
            continue
        if not record:
            continue
        key = (record.get("name"), record.get("split"), record.get("max_sequences"))  # a cut is its own cell
        if key not in seen:
            seen[key] = (str(run_dir), record, run.config.data)
            continue
        first_dir, first, first_cfg = seen[key]
        differ = first.get("parts", {}).get("test", {}).get("sha256") != record["parts"]["test"]["sha256"]
        if differ and key not in problems:
            problems[key] = (f"{key[0]} split {key[1]}: {first_dir} and {run_dir} were tested on different data: "
                             + describe_difference(first, record, ["test"])
                             + _data_settings_difference(first_cfg, run.config.data))  # fmt: skip
    return list(problems.values())


# data settings that change what a run reads from the same source (the others name the source, or are cells)
_READING_KEYS = ("use_window", "sort", "remap_marks")
_READING_WHY = {
    "remap_marks": "the mark ids are mapped to 0..K-1 with data.remap_marks: true",
    "use_window": "the observation window's end is part of every test sequence (the survival term after the last "
                  "event is scored with data.use_window: true)",
    "sort": "out-of-order sequences are sorted with data.sort: true",
}


def _data_settings_difference(a: Any, b: Any) -> str:
    """``; the runs read their source differently: data.use_window false vs true (why)`` or ``""``."""
    diffs = [k for k in _READING_KEYS if getattr(a, k, None) != getattr(b, k, None)]
    if not diffs:
        return ""
    return "; the runs read their source differently: " + "; ".join(
        f"data.{k} {str(getattr(a, k)).lower()} vs {str(getattr(b, k)).lower()} ({_READING_WHY[k]})" for k in diffs)


# --------------------------------------------------------------------------------------------- names


def check_folder_name(name: str, what: str, taken: Iterable[str] = ()) -> str:
    """``name`` unchanged when it is safe as one folder name; else ``ConfigError`` (``what`` names its origin).
    ``taken``: the names of the files the command writes beside that folder (a variant named ``comparison.md``
    trained, then its folder stood where ``mtpp train`` writes ``comparison.md``); compared in any case, as a
    case-insensitive file system would."""
    bad = (
        not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name
        or (os.sep in name) or (os.altsep is not None and os.altsep in name)
    )
    if bad:
        raise ConfigError(f"{what}: {name!r} cannot be a folder name (empty, '.', '..' or a path); rename it")
    clash = [t for t in taken if t.lower() == name.lower()]
    if clash:
        raise ConfigError(f"{what}: {name!r} is the name of a file this command writes beside it ({', '.join(taken)}); "
                          "rename it")
    return name


# --------------------------------------------------------------------------------------------- temporary files


def clean_temporary_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files interrupted atomic writes left in ``run_dir`` (only those names); return them.

    Call only while holding the run's lock (no writer of ours is then mid-write).
    """
    removed = []
    for pattern in TEMP_PATTERNS:
        for p in Path(run_dir).glob(pattern):
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# --------------------------------------------------------------------------------------------- the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except OSError:
        return False
    return True


class RunLock:
    """Exclusive lock of one run folder (module docstring). Use as a context manager or ``acquire`` / ``release``.

    ``MtppError`` from ``acquire`` when another live process holds it; the message names pid, host and command.
    ``lock_file``: lock this file instead of ``run_dir/.mtpp.lock`` (``run_dir`` is then its folder; used for the
    per-cell claims of a results folder, ``mtpp.experiments_claims``).
    """

    def __init__(self, run_dir: str | Path, command: str | None = None, lock_file: str | Path | None = None) -> None:
        self.dir = Path(run_dir) if lock_file is None else Path(lock_file).parent
        self.path = self.dir / LOCK_FILE if lock_file is None else Path(lock_file)
        self.command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        make_out_folder(self.dir)
        for _ in range(20):  # retry when the file was replaced between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._lock(fd):
                    holder = self._read(fd)
                    os.close(fd)
                    raise MtppError(f"{self.dir} is in use by {holder}; wait for it to finish or stop it "
                                    f"(the lock {self.path} is released when that process ends)")
                if not self._same_file(fd):
                    os.close(fd)
                    continue
            except MtppError:
                raise
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            self._write(fd)
            return self
        raise MtppError(f"{self.path}: could not take the lock (the file keeps being replaced)")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still ours: we hold the lock on this inode
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @classmethod
    def holder_of(cls, run_dir: str | Path, lock_file: str | Path | None = None) -> dict[str, Any] | None:
        """Who holds ``run_dir``'s lock (or ``lock_file``) now (pid, host, command), or ``None`` when nobody does.
        Takes nothing: a free lock is tried and let go at once, and its file is left as it was."""
        lock = cls(run_dir, lock_file=lock_file)
        try:
            fd = os.open(lock.path, os.O_RDWR)
        except OSError:  # no lock file: nobody holds it
            return None
        try:
            if lock._lock(fd):
                return None  # closing the descriptor below lets go of the lock we just took
            return lock._holder(fd) or {}
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- helpers

    def _lock(self, fd: int) -> bool:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except (ImportError, OSError):  # no flock here (Windows, some network file systems): the pid decides
            holder = self._holder(fd)
            if holder is None:
                return True
            # only a holder on this host can be checked; one elsewhere holds until its file is removed
            here = holder.get("host") == socket.gethostname()
            return here and holder.get("pid") != os.getpid() and not _alive(int(holder.get("pid") or 0))
        return True

    def _same_file(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return os.fstat(fd).st_ino == st.st_ino

    def _holder(self, fd: int) -> dict[str, Any] | None:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            raw = os.read(fd, 4096).decode("utf-8", "replace")
            return json.loads(raw) if raw.strip() else None
        except (OSError, ValueError):
            return None

    def _read(self, fd: int) -> str:
        return self.describe(self._holder(fd))

    @staticmethod
    def describe(holder: dict[str, Any] | None) -> str:
        """``pid P on HOST ('COMMAND', since TIME)`` for a holder of ``holder_of``."""
        if not holder:
            return "another process (its lock file names none)"
        return (f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('command')!r}, "
                f"since {holder.get('since')})")

    def _write(self, fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode())


__all__ = [
    "Run", "RunLock", "open_run", "fingerprint", "data_record", "check_same_data", "load_recorded_data",
    "describe_data", "check_folder_name", "clean_temporary_files", "mixed_data", "not_a_run", "load_weights",
    "make_out_folder",
    "training_finished",
]
