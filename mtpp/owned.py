"""Files mtpp regenerates (summaries, plots, an experiment's provenance): never overwrite one mtpp did not write.

``mtpp report`` and ``mtpp compare`` rewrite ``summary.csv`` / ``summary.md``, ``plots/*.png``,
``experiment.yaml`` and ``failures.json`` on every run. A user's own file of the same name in the output folder
(notes in ``summary.md``, a hand-made figure) must survive: before writing, :func:`check_ours` refuses, in one
line, any existing file that does not carry the mark of the mtpp writer of that kind. The marks are the files'
own content (no hidden manifest), so output folders of earlier mtpp versions are recognised too:

- ``*.md``: the ``<!-- written by mtpp ... -->`` first line, or (earlier versions) a ``# title`` heading with
  the report's units paragraph or its "No finished runs." line;
- ``*.csv``: the summary's columns: the cell columns from ``dataset`` on, then ``metric, meaning, unit, mean, stderr,
  n, runs`` (earlier versions: without ``meaning, unit``, or ending at ``n``);
- ``*.png``: the PNG ``Software`` text chunk, ``mtpp (matplotlib)``; earlier versions left matplotlib's own
  (``Matplotlib version ...``), which counts as mtpp's only in a plots folder beside the mtpp summary of the same
  report (``plots_val/`` beside ``summary_val.md``, ``plots/`` beside ``summary.md``). Limitation: a figure of
  the user's own, saved by matplotlib under one of the report's plot names inside such a folder, cannot be told
  from an earlier report's;
- ``experiment.yaml``: a mapping with ``source`` and ``cells`` (what ``compare`` records);
- ``failures.json``: a list of ``{cell, error, traceback}`` rows;
- ``hawkes_fit.json`` (a run's cached ``hawkes-fit`` baseline, ``mtpp.forecast.baselines``): a mapping with
  ``written_by: mtpp`` and ``baseline: hawkes-fit``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

from mtpp.errors import MtppError

MD_MARK = "<!-- written by mtpp: regenerated from the runs on every report; edits are lost -->"
"""First line of every Markdown summary mtpp writes."""

PNG_SOFTWARE = "mtpp (matplotlib)"
"""``Software`` metadata of every PNG mtpp writes (``fig.savefig(..., metadata={"Software": PNG_SOFTWARE})``)."""


def _text(path: Path, limit: int = 65536) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def _md(path: Path) -> bool:
    text = _text(path)
    if text.startswith("<!-- written by mtpp"):
        return True
    return text.startswith("# ") and ("Units: NLL in nats" in text or "No finished runs." in text)


def _csv(path: Path) -> bool:
    header = _text(path, 8192).splitlines()[:1]
    columns = header[0].rstrip("\r").split(",") if header else []
    tail = ["metric", "mean", "stderr", "n"]
    described = ["metric", "meaning", "unit", "mean", "stderr", "n", "runs"]  # since the units column
    return columns[:1] == ["dataset"] and (columns[-7:] == described or columns[-5:] == [*tail, "runs"]
                                           or columns[-4:] == tail)  # fmt: skip


def _png(path: Path) -> bool:
    try:
        from PIL import Image  # a dependency of matplotlib

        with Image.open(path) as im:
            software = str(im.info.get("Software", ""))
    except Exception:  # not an image PIL reads: not ours
        return False
    if software == PNG_SOFTWARE:
        return True
    return software.startswith("Matplotlib") and _beside_an_mtpp_summary(path)


def _beside_an_mtpp_summary(plot: Path) -> bool:
    """Whether ``plot`` is in the plots folder of an earlier report: ``plots<suffix>/`` beside an mtpp-written
    ``summary<suffix>.md``."""
    folder = plot.parent.name
    if not folder.startswith("plots"):
        return False
    summary = plot.parent.parent / f"summary{folder.removeprefix('plots')}.md"
    return summary.is_file() and _md(summary)


def _experiment_yaml(path: Path) -> bool:
    import yaml

    try:
        doc = yaml.safe_load(_text(path, 10**7))
    except yaml.YAMLError:
        return False
    return isinstance(doc, dict) and "source" in doc and "cells" in doc


def _failures_json(path: Path) -> bool:
    try:
        rows = json.loads(_text(path, 10**8))
    except ValueError:
        return False
    return isinstance(rows, list) and all(isinstance(r, dict) and {"cell", "error"} <= set(r) for r in rows)


def _hawkes_fit_json(path: Path) -> bool:
    try:
        record = json.loads(_text(path, 10**7))
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("written_by") == "mtpp" and record.get("baseline") == "hawkes-fit"


_BY_NAME: dict[str, Callable[[Path], bool]] = {"experiment.yaml": _experiment_yaml, "failures.json": _failures_json,
                                               "hawkes_fit.json": _hawkes_fit_json}
_BY_SUFFIX: dict[str, Callable[[Path], bool]] = {".md": _md, ".csv": _csv, ".png": _png}


def is_ours(path: str | Path) -> bool:
    """Whether ``path`` is absent or a file an mtpp writer of its kind wrote (module docstring); a folder or a
    file of another kind is not ours."""
    path = Path(path)
    if not path.exists():
        return True
    if not path.is_file():
        return False
    test = _BY_NAME.get(path.name) or _BY_SUFFIX.get(path.suffix.lower())
    try:
        return bool(test and test(path))
    except OSError:
        return False


def check_ours(paths: Iterable[str | Path], option: str = "--out") -> None:
    """``MtppError`` in one line naming the first of ``paths`` that exists but was not written by mtpp (so would
    be overwritten): move it, or pass another ``option``."""
    for path in paths:
        if not is_ours(path):
            raise MtppError(f"{path}: exists and was not written by mtpp; it would be overwritten: move it away "
                            f"or pass another {option}")


__all__ = ["MD_MARK", "PNG_SOFTWARE", "check_ours", "is_ours"]
