"""Time-limited grid runs (``mtpp compare --time-limit``): start only the cells expected to finish in time.

A grid that runs inside a job with a wall-time limit (a SLURM allocation, a machine lent for a few hours) loses
the work of every cell still running when the limit strikes (its checkpoints may not survive the machine). With a
deadline, the runner hands a free worker the first pending cell, in grid order, whose **expected duration** fits
in the time left; cells that fit nowhere are not started ("deferred": the same command continues them later).

Expected duration of a cell: the median ``wall_seconds`` of the result records (``mtpp.records``) of the same
dataset, model, parametrisation and aggregator; failing that, of the same dataset, model and parametrisation under
any aggregator (a remedy costs about what its ``sum`` cell does), then of the same model, parametrisation and
aggregator on any dataset, then of the same model and parametrisation anywhere (an estimate from other datasets'
records, which ``--dry-run`` marks as such). Each record stands for the
pending cell through its seconds per epoch times the epochs the cell is expected to run: the record's epochs if it
stopped early (its ``stopped_by``; at most the cell's ``train.max_epochs``), the cell's ``train.max_epochs`` if
the record ran into its own cap (a 1-epoch smoke record does not make a 12-epoch cell look like one epoch). A cell
that resumes from a checkpoint is expected to need the epochs it has not yet run (at least 10 % of them). A cell
with no recorded counterpart has no estimate and is started whenever time is left (its duration is unknown, not
short).
"""

from __future__ import annotations

import re
import statistics
import time
from typing import Any, Callable, Iterable

from mtpp.errors import ConfigError
from mtpp.records import stopped_by

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


_SLURM = re.compile(r"(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?")


def _slurm_seconds(s: str) -> float | None:
    """Seconds of a SLURM ``--time`` value (``sbatch`` manual): ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``; ``None`` when ``s`` is none of these."""
    m = _SLURM.fullmatch(s)
    if not m:
        return None
    d, a, b, c = (int(v) if v is not None else None for v in m.group("d", "a", "b", "c"))
    if d is not None:  # D-H, D-H:M, D-H:M:S
        return float(d * 86400 + a * 3600 + (b or 0) * 60 + (c or 0))
    if c is not None:  # H:M:S
        return float(a * 3600 + b * 60 + c)
    return float(a * 60 + (b or 0))  # M or M:S


def parse_duration(text: str) -> float | None:
    """Seconds in ``text``: a length with units (``2h30m``, ``150m``, ``90s``, ``1d2h``, ``0.5h``) or a SLURM
    ``--time`` value read exactly as SLURM reads it (``150`` and ``150:00`` are minutes and minutes:seconds,
    ``2:30:00`` is H:M:S, ``1-12`` and ``1-12:30`` are days-hours[:minutes]); ``None`` (no limit) for SLURM's
    ``UNLIMITED`` / ``INFINITE``.

    Raises ``ConfigError`` for anything else or a length that is not positive.
    """
    s = str(text).strip().lower()
    if s in ("unlimited", "infinite"):
        return None
    seconds = _slurm_seconds(s)
    if seconds is None and re.fullmatch(r"(\d+(\.\d+)?[dhms])+", s):
        seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms])", s))
    if seconds is None or seconds <= 0:
        raise ConfigError(
            f"--time-limit: {text!r} is not a positive duration (units: 2h30m, 150m, 9000s; or a SLURM time: "
            "150 = minutes, 150:00 = minutes:seconds, 2:30:00 = hours:minutes:seconds, 1-12 = days-hours; "
            "UNLIMITED)"
        )
    return seconds


def duration_note(text: str) -> str | None:
    """A warning for a value that reads like hours:minutes but is minutes:seconds to SLURM and to
    :func:`parse_duration` (``2:30`` is 2 min 30 s; earlier mtpp versions read it as 2 h 30 min); ``None``
    otherwise."""
    m = re.fullmatch(r"(\d+):(\d+)", str(text).strip())
    if not m or int(m.group(1)) >= 24 or int(m.group(2)) >= 60:
        return None
    h, mi = int(m.group(1)), int(m.group(2))
    return (f"note: --time-limit {text.strip()} is minutes:seconds, as SLURM reads it ({h} min {mi} s); for {h} h "
            f"{mi} min write {h}:{mi:02d}:00 or {h}h{mi}m")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


_LEVELS = (
    ("dataset", "model", "parametrisation", "aggregator"),
    ("dataset", "model", "parametrisation"),
    ("model", "parametrisation", "aggregator"),
    ("model", "parametrisation"),
)
"""The labels a recorded cell must share with a pending one to stand for its duration, most specific first."""


def _remaining(record: dict, cap: int | None, done: int) -> float:
    """Seconds the cell of ``record`` took, re-read for a cell with ``train.max_epochs`` ``cap`` that has ``done``
    epochs behind it (module docstring)."""
    wall, epochs = float(record["wall_seconds"]), record.get("epochs")
    if not isinstance(epochs, (int, float)) or epochs <= 0:
        return wall
    early = stopped_by(record) != "max_epochs"  # stopped by early stopping (or unknown), not by its cap
    n = float(epochs) if early else float(cap if cap is not None else epochs)
    if cap is not None:
        n = min(n, float(cap))
    return wall * (max(n - done, 0.1 * n) / epochs)


def expected_seconds(
    cells: Iterable[Any], records: Iterable[dict], epochs_done: dict[str, int] | None = None,
    max_epochs: dict[str, int] | None = None, borrowed: dict[str, list[str]] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Expected remaining wall seconds per cell name (module docstring); cells without an estimate are absent.

    ``cells``: objects with ``name`` and ``labels()`` (``mtpp.experiments.Cell``); ``records``: result records
    (``mtpp.records.read_records``); ``epochs_done``: finished epochs of the cells that resume; ``max_epochs``: each
    cell's ``train.max_epochs`` (absent: the records' epochs are taken as they are). ``borrowed``, when given,
    gets ``{cell name: the datasets of the records used}`` for each cell whose estimate comes from other datasets'
    records (none of its own dataset, model and parametrisation): an estimate to take with care (another dataset's
    epochs may cost 40 times as much), which ``mtpp compare --dry-run`` says.
    """
    levels: list[dict[tuple, list[dict]]] = [{} for _ in _LEVELS]
    for r in records:
        if isinstance(r.get("wall_seconds"), (int, float)):
            c = r.get("cell") or {}
            for level, fields in zip(levels, _LEVELS):
                level.setdefault(tuple(c.get(f) for f in fields), []).append(r)
    out = {}
    for cell in cells:
        lab = cell.labels()
        same, fields = next(((hit, fields) for level, fields in zip(levels, _LEVELS)
                             if (hit := level.get(tuple(lab.get(f) for f in fields)))), (None, ()))  # fmt: skip
        if not same:
            continue
        if "dataset" not in fields and borrowed is not None:  # no record of the cell's own dataset
            borrowed[cell.name] = sorted({str((r.get("cell") or {}).get("dataset")) for r in same})
        cap, done = (max_epochs or {}).get(cell.name), (epochs_done or {}).get(cell.name) or 0
        out[cell.name] = _median([_remaining(r, cap, done) for r in same])
    return out


def simulate(
    queue: list, expected: dict[str, float], jobs: int, limit: float
) -> tuple[dict[str, float], list[str], list[str]]:
    """What ``--time-limit`` would do with ``queue`` (cells in grid order) and ``jobs`` workers, taking cells as
    :class:`Deadline` does: ``(starts, deferred, undecided)``, the certain starts (seconds from now), the certainly
    deferred cells and the cells whose fate depends on a cell without an estimate, each in grid order.

    The real run starts a cell without an estimate like one that fits, and its length then decides every later
    hand-out: when its worker is free again and which cells are left for the others (a short one can let a cell
    start that would otherwise have been deferred, and change the order of the rest). So the simulation is exact up
    to the first such start, at ``t_u``: hand-outs at ``t_u`` by other free workers are certain, later ones are
    undecided, and a cell left over is certainly deferred only when its expected length exceeds ``limit - t_u``
    (no later hand-out has more time left).
    """
    import heapq

    now = [0.0]
    deadline = Deadline(limit, expected, clock=lambda: now[0])
    left, starts = list(queue), {}
    free = [0.0] * max(1, jobs)
    t_unknown: float | None = None
    while left and free:
        now[0] = heapq.heappop(free)  # the next worker to be free; later ones have less time left
        cell = deadline.take(left)
        if cell is None:  # nothing fits now, so nothing fits any later worker either
            break
        starts[cell.name] = now[0]
        if cell.name not in expected:
            t_unknown = now[0] if t_unknown is None else t_unknown
            continue  # its worker's next turn is unknown: it takes no further part in the simulation
        heapq.heappush(free, now[0] + expected[cell.name])
    if t_unknown is None:
        return starts, [c.name for c in left], []
    certain = {n: t for n, t in starts.items() if t <= t_unknown}
    undecided = [c.name for c in queue if c.name not in certain
                 and (c.name in starts or expected.get(c.name, 0.0) <= limit - t_unknown)]  # fmt: skip
    deferred = [c.name for c in left if c.name not in undecided]
    return certain, deferred, undecided


def format_minutes(seconds: float) -> str:
    """``45 s`` under a minute and a half, else whole minutes (``149 min``): never ``0 min``."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


class Deadline:
    """Which pending cell a free worker starts next under a deadline (``at``, in ``clock()`` seconds).

    ``take(queue)`` removes and returns the first cell of ``queue`` whose expected duration (``expected``, by
    name; unknown counts as fitting) ends by ``at``; ``None`` when none does. ``Deadline(None, ...)`` never
    defers: ``take`` is ``queue.pop(0)``.
    """

    def __init__(self, at: float | None, expected: dict[str, float] | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.at = at
        self.expected = expected or {}
        self.clock = clock

    def take(self, queue: list) -> Any:
        if not queue:
            return None
        if self.at is None:
            return queue.pop(0)
        left = self.at - self.clock()
        for i, cell in enumerate(queue):
            if left > 0 and self.expected.get(cell.name, 0.0) <= left:
                return queue.pop(i)
        return None
