"""Experiment grids: one YAML file -> many fully resolved run configurations ("cells"), and the runner
behind ``mtpp compare``.

Experiment file format
----------------------
::

    name: smoke                   # optional label (the summary's title); `description:` free text
    base:                         # a partial run config: sections data / model / train / gradients / logging
      model: {encoder: gru, hidden_size: 16}
      train: {max_epochs: 5, batch_size: 32}
    grid:                         # every axis is optional (default: the single value the base config gives)
      datasets:                   # catalog names or paths, or {name: LABEL, path: P, overrides: {...}}
        - synthetic_hawkes
        - {name: lastfm, overrides: {train: {batch_size: 4}}}
      models:                     # model-section keys, a label `name`, optional per-model `overrides`
        - {name: thp, decoder: thp}
        - {name: lnm, decoder: lnm, hidden_size: 32, overrides: {train: {lr: 3.0e-3}},
           by_parametrisation: {plusplus: {hidden_size: 24}}}   # settings for one parametrisation only
      parametrisations: [base, plus, plusplus]
      aggregators:                # names, or {name: pcgrad, label: LABEL, options: {...}}
        - sum
        - {name: cograd, options: {gamma: 1.0e-6}}
      splits: [0, 1]
      seeds: [0]
    exclude:                      # optional; a cell is dropped when it matches every key of one rule
      - {parametrisation: plusplus, aggregator: [cograd]}

A file may start from another one with ``extends: OTHER.yaml`` (a path relative to the file): its ``base`` is
deep-merged over the other file's ``base``, each axis it gives under ``grid`` replaces that axis (the others are
inherited), and its ``exclude`` list, when given, replaces the other's. So a grid that differs from a reference
protocol only in its axes states only those (``configs/experiments/paper_remedies.yaml``).

Expansion is the cartesian product datasets x models x parametrisations x aggregators x splits x seeds, minus
the excluded cells. Each cell's configuration is built, later layers winning:

    run-config defaults < base < dataset ``overrides`` < model keys and model ``overrides``
    < the model's ``by_parametrisation`` entry for the cell's parametrisation
    < the cell's axis values (data.name, data.split, train.seed, model.parametrisation, gradients.aggregator
      and gradients.options)
    < ``--set`` overrides of the command line

and validated with :func:`mtpp.config.config_from_dict`, so an unknown key anywhere is a ``ConfigError``
naming it. Rule keys of ``exclude`` are the axis names ``dataset``, ``model``, ``parametrisation``,
``aggregator``, ``split``, ``seed`` (a value or a list of values; labels for datasets, models and aggregators).

Each cell has a stable, readable run-directory name ``DATASET/MODEL-PARAMETRISATION-AGGREGATOR/splitS-seedN``
(e.g. ``mooc/lnm-plus-sum/split0-seed0``); names are checked to be unique. Beside the trainer's files each run
directory holds ``cell.json`` (the cell's axis labels), which the reports use to group runs.

Running (``run_grid``): a cell whose run directory has a complete ``metrics.json`` is skipped, one with a
``checkpoint.pt`` but no metrics resumes, every other cell trains from scratch; ``jobs > 1`` runs cells in
spawned processes with ``max(1, cores // jobs)`` torch threads each. A failing cell is recorded in
``OUT/failures.json`` and the others continue.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import itertools
import json
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

from mtpp.config import NON_SEMANTIC_KEYS, read_yaml
from mtpp.errors import ConfigError
from mtpp.experiments_claims import CellClaims
from mtpp.files import write_text
from mtpp.experiments_schedule import Deadline, expected_seconds

TOP_LEVEL_KEYS = ("name", "description", "extends", "base", "grid", "exclude")
GRID_KEYS = ("datasets", "models", "parametrisations", "aggregators", "splits", "seeds")
AXES = ("dataset", "model", "parametrisation", "aggregator", "split", "seed")
DATASET_KEYS = ("name", "path", "overrides")
MODEL_META_KEYS = ("name", "overrides", "by_parametrisation")
AGGREGATOR_KEYS = ("name", "label", "options")
RUN_SECTIONS = ("data", "model", "train", "gradients", "logging")

METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"
CELL_FILE = "cell.json"
FAILURES_FILE = "failures.json"
GRID_OUTPUTS = ("experiment.yaml", FAILURES_FILE, "summary.csv", "summary.md", "plots")
"""What ``mtpp compare`` writes in its output folder beside the datasets' folders of cells: no dataset label may be
one of them (a dataset file named summary.csv trained the whole grid, then its folder stood where the summary goes)."""


# --------------------------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Cell:
    """One run of a grid: its axis labels, its run-directory name and its (unvalidated) run-config dict."""

    name: str  # run directory relative to the experiment's output folder
    dataset: str
    model: str
    parametrisation: str
    aggregator: str
    split: int
    seed: int
    config: dict = field(compare=False, hash=False, repr=False)

    def labels(self) -> dict[str, Any]:
        return {axis: getattr(self, axis) for axis in AXES}


@dataclass
class Experiment:
    """A parsed experiment file (``base`` / ``grid`` / ``exclude`` already checked for unknown keys)."""

    name: str
    base: dict
    grid: dict
    exclude: list[dict]
    source: str | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base, "grid": self.grid, "exclude": self.exclude}


@dataclass
class CellResult:
    name: str
    status: str  # done | skipped | failed | deferred (not started: expected to end after the time limit)
    # | elsewhere (not started: another process sharing the results folder trains it, mtpp.experiments_claims)
    seconds: float = 0.0
    error: str | None = None
    traceback: str | None = None


# --------------------------------------------------------------------------------------------- loading


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Read an experiment YAML; ``grid.AXIS=[...]`` overrides replace an axis (others go to the cells).

    In ``grid.datasets`` / ``grid.models`` a plain name that the file defines as an entry with settings (e.g.
    ``{name: lastfm, overrides: {train: {batch_size: 4}}}`` or a model's hidden sizes) selects that entry, settings
    included: ``--set "grid.datasets=[lastfm]"`` runs LastFM as the file does, not with the defaults.
    """
    p = Path(path)
    raw = _read_raw(p, seen=())
    exp = experiment_from_dict(raw, source=str(p))
    grid_overrides, _ = split_overrides(overrides)
    for key, value in grid_overrides:
        axis = key.split(".", 1)[1]
        _check_keys({axis: None}, GRID_KEYS, "grid")
        if axis == "models":
            _check_model_names(exp.grid.get(axis), value, p)
        exp.grid[axis] = _select_entries(exp.grid.get(axis), value) if axis in ("datasets", "models") else value
    return exp


def _check_model_names(defined: Any, value: Any, path: Path) -> None:
    """A plain name in a ``grid.models`` override is a model entry of the file or a decoder: say which exist."""
    from mtpp.models.config import TIME_DECODERS

    names = [e["name"] for e in defined or [] if isinstance(e, dict) and isinstance(e.get("name"), str)]
    for v in value if isinstance(value, list) else []:
        if isinstance(v, str) and v not in names and v not in TIME_DECODERS:
            raise ConfigError(f"--set grid.models: {v!r} is neither a model of {path.name} ({', '.join(names) or '-'})"
                              f" nor a decoder ({', '.join(TIME_DECODERS)})")


def _select_entries(defined: Any, value: Any) -> Any:
    """``value`` (an axis override) with every plain name replaced by the file's entry of that name, if any."""
    if not isinstance(value, list) or not isinstance(defined, list):
        return value
    by_name = {e["name"]: e for e in defined if isinstance(e, dict) and isinstance(e.get("name"), str)}
    return [by_name.get(v, v) if isinstance(v, str) else v for v in value]


def _read_raw(p: Path, seen: tuple[Path, ...]) -> dict:
    """The experiment mapping of ``p`` with its ``extends`` chain applied (see the module docstring)."""
    if not p.is_file():
        where = f" (extended by {seen[-1]})" if seen else ""
        raise ConfigError(f"experiment file {str(p)!r} not found{where}")
    if p.resolve() in seen:
        raise ConfigError(f"{p}: 'extends' loops back to itself ({' -> '.join(map(str, seen))})")
    raw = read_yaml(p)
    if raw is None:  # an empty file: the default model trained on the synthetic data, without a word
        raise ConfigError(f"{p}: the file is empty (no setting); an experiment needs at least a grid")
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw
    _check_keys(raw, TOP_LEVEL_KEYS, "experiment")
    child = dict(raw)
    parent = dict(_read_raw(p.parent / str(child.pop("extends")), (*seen, p.resolve())))
    for key in ("base", "grid"):
        for section in (parent.get(key), child.get(key)):
            if section is not None and not isinstance(section, dict):
                raise ConfigError(f"{p}: {key}: expected a mapping")
    base = _deep_merge(copy.deepcopy(parent.get("base") or {}), copy.deepcopy(child.get("base") or {}))
    grid = {**(parent.get("grid") or {}), **(child.get("grid") or {})}
    parent.pop("description", None)
    return {**parent, **child, "base": base, "grid": grid,
            "exclude": child.get("exclude", parent.get("exclude") or [])}  # fmt: skip


def experiment_from_dict(raw: Any, source: str | None = None) -> Experiment:
    where = source or "experiment"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: an experiment must be a mapping with 'base' and 'grid'")
    _check_keys(raw, TOP_LEVEL_KEYS, "experiment")
    if "extends" in raw:
        raise ConfigError(f"{where}: 'extends' names a file; load the experiment with load_experiment(PATH)")
    base = raw.get("base") or {}
    grid = raw.get("grid") or {}
    exclude = raw.get("exclude") or []
    if not isinstance(base, dict):
        raise ConfigError("base: expected a mapping of run-config sections")
    _check_keys(base, RUN_SECTIONS, "base")
    if not isinstance(grid, dict):
        raise ConfigError("grid: expected a mapping of axes to lists")
    _check_keys(grid, GRID_KEYS, "grid")
    if not isinstance(exclude, list) or not all(isinstance(r, dict) for r in exclude):
        raise ConfigError("exclude: expected a list of mappings like {parametrisation: plusplus}")
    for rule in exclude:
        _check_keys(rule, AXES, "exclude rule")
    name = str(raw.get("name") or (Path(source).stem if source else "experiment"))
    return Experiment(name=name, base=base, grid=grid, exclude=exclude, source=source)


def split_overrides(overrides: Sequence[str]) -> tuple[list[tuple[str, Any]], list[str]]:
    """``--set`` items -> (``grid.*`` overrides parsed, run-config overrides kept as text)."""
    from mtpp.config import parse_override

    grid: list[tuple[str, Any]] = []
    run: list[str] = []
    for item in overrides:
        key, value = parse_override(item)
        if key.startswith("grid."):
            grid.append((key, value))
        elif key.split(".", 1)[0] in TOP_LEVEL_KEYS:  # base.data.name=x, exclude=[...]: the file's keys, not a cell's
            top = key.split(".", 1)[0]
            what = (f"--set {key.split('.', 1)[1]}=... changes every cell" if top == "base" and "." in key
                    else "write an experiment file that extends this one (extends: FILE) and sets it")
            raise ConfigError(f"--set {item}: {top!r} is a key of the experiment file, and --set changes each cell's "
                              f"run config (section.key=value) or a grid axis (grid.AXIS=[...]); {what}")
        else:
            axis = next((a for k, a in AXIS_KEYS.items() if key == k or k.startswith(key + ".")), None)
            if axis is not None:
                raise ConfigError(f"--set {item}: {key} is set per cell by the grid's {axis} axis (cell names would not "
                                  f"say what ran); use --set grid.{axis}=[...] or edit the experiment file")
            run.append(item)
    return grid, run


#: Run settings that a grid axis sets per cell (and that its cell names say): a ``--set`` of one would make every
#: cell's name lie, so it is refused.
AXIS_KEYS = {
    "data.name": "datasets", "data.split": "splits", "train.seed": "seeds", "model.decoder": "models",
    "model.parametrisation": "parametrisations", "gradients.aggregator": "aggregators",
    "gradients.options": "aggregators",
}


def _check_keys(mapping: dict, valid: Iterable[str], where: str) -> None:
    import difflib

    valid = tuple(valid)
    for key in mapping:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {key!r} in {where}{hint}; valid: {', '.join(valid)}")


# --------------------------------------------------------------------------------------------- expansion


def _label(text: Any) -> str:
    """A file-system-safe label: letters, digits, '_', '.', '+' kept, anything else becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_.+]+", "_", str(text)).strip("_") or "x"


def _as_list(value: Any, axis: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        return [value]
    if not value:
        raise ConfigError(f"grid.{axis}: empty list (leave the axis out to use the base value)")
    return value


def _deep_merge(into: dict, update: dict) -> dict:
    out = copy.deepcopy(into)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_overrides(overrides: Any, where: str) -> dict:
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}.overrides: expected a mapping of run-config sections")
    _check_keys(overrides, RUN_SECTIONS, f"{where}.overrides")
    return overrides


def _datasets(exp: Experiment) -> list[tuple[str, str, dict]]:
    """(label, name or path for data.name, overrides) per dataset entry."""
    entries = _as_list(exp.grid.get("datasets"), "datasets")
    if not entries:
        entries = [exp.base.get("data", {}).get("name", "synthetic_hawkes")]
    out = []
    for i, entry in enumerate(entries):
        where = f"grid.datasets[{i}]"
        if isinstance(entry, dict):
            _check_keys(entry, DATASET_KEYS, where)
            if "name" not in entry and "path" not in entry:
                raise ConfigError(f"{where}: needs a 'name' or a 'path'")
            target = str(entry.get("path") or entry["name"])
            label = _label(entry.get("name") or Path(target).name)
            out.append((label, target, _check_overrides(entry.get("overrides"), where)))
        elif isinstance(entry, str):
            out.append((_label(Path(entry).name if ("/" in entry or os.sep in entry) else entry), entry, {}))
        else:
            raise ConfigError(f"{where}: expected a name, a path or a mapping, got {entry!r}")
    return out


def _model_fragment(entry: dict, where: str) -> dict:
    """Run-config fragment of a model entry: its model-section keys plus its ``overrides`` of other sections."""
    model_keys = {k: v for k, v in entry.items() if k not in MODEL_META_KEYS}
    return _deep_merge(_check_overrides(entry.get("overrides"), where), {"model": model_keys})


def _by_parametrisation(entry: dict, where: str) -> dict[str, dict]:
    """``{parametrisation: fragment}`` from a model entry's ``by_parametrisation`` mapping."""
    from mtpp.models.config import PARAMETRISATIONS

    raw = entry.get("by_parametrisation") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}.by_parametrisation: expected a mapping like {{plusplus: {{hidden_size: 24}}}}")
    out = {}
    for param, sub in raw.items():
        if param not in PARAMETRISATIONS:
            raise ConfigError(
                f"unknown key {param!r} in {where}.by_parametrisation; valid: {', '.join(PARAMETRISATIONS)}"
            )
        if not isinstance(sub, dict) or {"name", "parametrisation", "by_parametrisation"} & set(sub):
            raise ConfigError(f"{where}.by_parametrisation.{param}: expected model keys and optional 'overrides'")
        out[param] = _model_fragment(sub, f"{where}.by_parametrisation.{param}")
    return out


def _models(exp: Experiment) -> list[tuple[str, dict, dict[str, dict]]]:
    """(label, run-config fragment, fragments by parametrisation) per model entry."""
    entries = _as_list(exp.grid.get("models"), "models")
    if not entries:
        entries = [{}]
    out = []
    for i, entry in enumerate(entries):
        where = f"grid.models[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry, "decoder": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping like {{name: lnm, decoder: lnm}}, got {entry!r}")
        if "parametrisation" in entry:
            raise ConfigError(
                f"{where}: 'parametrisation' belongs to grid.parametrisations (use by_parametrisation or exclude)"
            )
        fragment = _model_fragment(entry, where)
        default = entry.get("decoder") or exp.base.get("model", {}).get("decoder") or "model"
        out.append((_label(entry.get("name", default)), fragment, _by_parametrisation(entry, where)))
    return out


def _aggregators(exp: Experiment) -> list[tuple[str, str, dict]]:
    """(label, aggregator name, options) per aggregator entry."""
    entries = _as_list(exp.grid.get("aggregators"), "aggregators")
    if not entries:
        grads = exp.base.get("gradients", {})
        return [(_label(grads.get("aggregator", "sum")), grads.get("aggregator", "sum"), grads.get("options", {}))]
    out = []
    for i, entry in enumerate(entries):
        where = f"grid.aggregators[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{where}: expected a name or a mapping like {{name: pcgrad, options: {{...}}}}")
        _check_keys(entry, AGGREGATOR_KEYS, where)
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{where}.options: expected a mapping of aggregator options")
        out.append((_label(entry.get("label", entry["name"])), str(entry["name"]), options))
    return out


def _ints(exp: Experiment, axis: str, section: str, key: str) -> list[int]:
    given = exp.grid.get(axis)
    if isinstance(given, int) and not isinstance(given, bool):
        # `seeds: 3` reads as "three seeds" to some and as "seed 3" to others: refuse the guess
        raise ConfigError(
            f"grid.{axis}: {given} is one number, not a list; write [{given}] for {axis[:-1]} {given} alone"
            + (f" or {list(range(given)) if given <= 10 else '[0, 1, ...]'} for {given} {axis}" if given > 0 else "")
        )
    values = _as_list(given, axis) or [exp.base.get(section, {}).get(key, 0)]
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"grid.{axis}: expected non-negative integers, got {v!r}")
    return values


def _parametrisations(exp: Experiment) -> list[str]:
    values = _as_list(exp.grid.get("parametrisations"), "parametrisations")
    values = values or [exp.base.get("model", {}).get("parametrisation", "base")]
    from mtpp.models.config import PARAMETRISATIONS

    for v in values:
        if v not in PARAMETRISATIONS:
            raise ConfigError(f"grid.parametrisations: invalid value {v!r}; valid: {', '.join(PARAMETRISATIONS)}")
    return [str(v) for v in values]


def unmatched_exclude_rules(exp: Experiment) -> list[dict]:
    """The ``exclude`` rules that match no cell of the grid's full product (a misspelt label, or a rule inherited
    through ``extends:`` for axis values this file no longer has); ``compare`` warns about each."""
    if not exp.exclude:
        return []
    datasets, models, params, aggregators, splits, seeds = _axes(exp)
    axes = ([d[0] for d in datasets], [m[0] for m in models], params, [a[0] for a in aggregators], splits, seeds)
    names = ("dataset", "model", "parametrisation", "aggregator", "split", "seed")
    matched = [False] * len(exp.exclude)
    for values in itertools.product(*axes):
        labels = dict(zip(names, values))
        for i, rule in enumerate(exp.exclude):
            if not matched[i] and _excluded(labels, [rule]):
                matched[i] = True
    return [rule for rule, hit in zip(exp.exclude, matched) if not hit]


def _excluded(labels: dict[str, Any], rules: list[dict]) -> bool:
    for rule in rules:
        if all(_matches(labels[axis], wanted) for axis, wanted in rule.items()):
            return True
    return False


def _matches(value: Any, wanted: Any) -> bool:
    wanted = wanted if isinstance(wanted, list) else [wanted]
    return any(str(value) == str(w) or fnmatch.fnmatchcase(str(value), str(w)) for w in wanted)


def cell_name(dataset: str, model: str, parametrisation: str, aggregator: str, split: int, seed: int) -> str:
    return f"{dataset}/{model}-{parametrisation}-{aggregator}/split{split}-seed{seed}"


def _checked_name(name: str) -> str:
    """A cell's run-directory name stays below the output folder: no component is empty, '.' or '..'."""
    from mtpp.runs import check_folder_name

    top, *rest = name.split("/")
    try:  # a folder beside the grid's own files
        check_folder_name(top, f"cell {name}: the dataset label", GRID_OUTPUTS)
    except ConfigError as e:
        raise ConfigError(f"{e} (a dataset given by path is labelled by its file name: give it one, "
                          "{name: LABEL, path: PATH})") from None
    for part in rest:
        check_folder_name(part, f"cell {name}: a dataset, model or aggregator label")
    return name


def _axes(exp: Experiment) -> tuple:
    """The grid's six axes (datasets, models, parametrisations, aggregators, splits, seeds), validated; a
    ``ConfigError`` names the experiment file."""
    try:
        return (_datasets(exp), _models(exp), _parametrisations(exp), _aggregators(exp),
                _ints(exp, "splits", "data", "split"), _ints(exp, "seeds", "train", "seed"))
    except ConfigError as e:
        if exp.source and not str(e).startswith(exp.source):
            raise ConfigError(f"{exp.source}: {e}") from None
        raise


def expand(exp: Experiment) -> list[Cell]:
    """The grid's cells in a stable order (datasets, models, parametrisations, aggregators, splits, seeds).
    ``ConfigError`` (naming the experiment file) on an invalid axis or when the ``exclude`` rules remove every cell."""
    axes = _axes(exp)
    cells = []
    total = 0
    for (dlabel, dtarget, doverrides), (mlabel, mfragment, by_param), param, (alabel, aname, aoptions), split, seed in (
        itertools.product(*axes)
    ):
        labels = dict(dataset=dlabel, model=mlabel, parametrisation=param, aggregator=alabel, split=split, seed=seed)
        total += 1
        if _excluded(labels, exp.exclude):
            continue
        axis_values = {
            "data": {"name": dtarget, "split": split},
            "train": {"seed": seed},
            "model": {"parametrisation": param},
            "gradients": {"aggregator": aname, "options": aoptions},
        }
        config = exp.base
        for layer in (doverrides, mfragment, by_param.get(param, {}), axis_values):
            config = _deep_merge(config, layer)
        cells.append(Cell(name=_checked_name(cell_name(**labels)), config=config, **labels))
    if total and not cells:  # not "matches no --only": the file itself leaves nothing to run
        rules = "; ".join(str(r) for r in exp.exclude[:3]) + (" ..." if len(exp.exclude) > 3 else "")
        raise ConfigError(f"{exp.source or 'the experiment'}: the exclude rules remove every one of the grid's "
                          f"{total} cell(s) ({rules}); nothing would run")
    _check_unique(cells)
    return cells


def _check_unique(cells: list[Cell]) -> None:
    seen: set[str] = set()
    dupes = sorted({c.name for c in cells if c.name in seen or seen.add(c.name)})  # type: ignore[func-returns-value]
    if dupes:
        raise ConfigError(
            f"two grid entries give the same run directory ({', '.join(dupes[:3])}); give models, datasets or "
            "aggregators distinct 'name' / 'label' values"
        )


def select(cells: list[Cell], patterns: Sequence[str] | None) -> list[Cell]:
    """Cells whose name matches any glob pattern (``mooc/lnm-*``); a pattern without wildcards is a substring.
    A pattern that matches no cell is a ``ConfigError`` naming it (a typo would otherwise shrink the grid
    silently)."""
    if not patterns:
        return cells
    globs = {p: p if any(c in p for c in "*?[") else f"*{p}*" for p in patterns}
    unmatched = [p for p, g in globs.items() if not any(fnmatch.fnmatchcase(c.name, g) for c in cells)]
    if unmatched:
        names = sorted({c.name.rsplit("/", 1)[0] for c in cells})
        close = difflib.get_close_matches(unmatched[0], names, n=1, cutoff=0.5)
        example = f"; its cells are named DATASET/MODEL-PARAM-AGG/splitS-seedN, e.g. {cells[0].name}" if cells else ""
        raise ConfigError(f"--only {' '.join(repr(p) for p in unmatched)}: matches no cell of the grid"
                          + (f" (did you mean {close[0] + '/*'!r}?)" if close else "") + example)
    return [c for c in cells if any(fnmatch.fnmatchcase(c.name, g) for g in globs.values())]


ORDERS = ("grid", "breadth")
"""``mtpp compare --order``: ``grid`` runs cells in the experiment file's order (each model's splits and seeds one
after another); ``breadth`` runs every (dataset, model, parametrisation, aggregator) at its first split/seed before
any at its second, so an interrupted grid has a first result for every model early (``ordered``)."""


def ordered(cells: list[Cell], order: str = "grid") -> list[Cell]:
    """``cells`` in run order (``ORDERS``): for ``breadth``, by replicate rank (0 for a group's first split/seed in
    the file, 1 for its second, ...) and then by file order; ``ConfigError`` for another order."""
    if order not in ORDERS:
        raise ConfigError(f"--order: one of {', '.join(ORDERS)}, got {order!r}")
    if order == "grid":
        return list(cells)
    rank: dict[tuple, int] = {}
    keyed = []
    for i, c in enumerate(cells):
        group = (c.dataset, c.model, c.parametrisation, c.aggregator)
        keyed.append((rank.setdefault(group, 0), i, c))
        rank[group] += 1
    return [c for *_, c in sorted(keyed, key=lambda t: t[:2])]


def run_order(cells: list[Cell], states: dict[str, str]) -> list[Cell]:
    """``cells`` in the order a run takes them: those with a checkpoint in the output folder (state ``resume``)
    first, the others after, each group in its given order. A restarted process so finishes what it started rather
    than leaving it to another process sharing the results folder, which would train it from scratch in its own."""
    return sorted(cells, key=lambda c: states[c.name] != "resume")


def resolve(cell: Cell, overrides: Sequence[str] = ()):
    """The cell's validated ``RunConfig`` (``--set`` overrides applied last); errors name the cell."""
    from mtpp.config import apply_overrides, config_from_dict

    try:
        return config_from_dict(apply_overrides(cell.config, list(overrides)))
    except ConfigError as e:
        raise ConfigError(f"cell {cell.name}: {e}") from None


def resolve_all(cells: list[Cell], overrides: Sequence[str] = ()) -> list:
    """Validate every cell up front (config keys, aggregator names and options), so a typo fails before hours
    of training, not after."""
    from mtpp.training.aggregators import make_aggregator

    configs = [resolve(c, overrides) for c in cells]
    checked: set[str] = set()
    for cell, cfg in zip(cells, configs):
        key = json.dumps([cfg.gradients.aggregator, cfg.gradients.options], sort_keys=True, default=str)
        if key not in checked:
            checked.add(key)
            try:
                make_aggregator(cfg.gradients.aggregator, **cfg.gradients.options)
            except ConfigError as e:  # the aggregator's own messages name their key (gradients.options.c: ...)
                text = str(e)
                raise ConfigError(f"cell {cell.name}: {'' if text.startswith('gradients.') else 'gradients: '}{text}"
                                  ) from None  # fmt: skip
    return configs


# --------------------------------------------------------------------------------------------- run state


def is_complete(run_dir: Path) -> bool:
    """True when ``metrics.json`` exists, parses, and holds the test evaluation."""
    path = Path(run_dir) / METRICS_FILE
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and isinstance(metrics.get("test"), dict) and bool(metrics["test"])


def is_resumable(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINT_FILE).is_file()




def _flatten(d: Any) -> dict[str, Any]:
    """Dotted keys of a configuration for comparing two of them: an aggregator's ``options`` and empty mappings are
    compared whole (``options: {}`` differs from ``options: {c: 0.5}`` and from its absence)."""
    from mtpp.config import flatten

    return flatten(d, leaf=lambda key, value: not value or key.rsplit(".", 1)[-1] == "options")


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NON_SEMANTIC_KEYS)


def config_differences(run_dir: Path, config: dict) -> list[str]:
    """``['train.max_epochs: 1 -> 1000', ...]`` between a run's stored ``config.yaml`` and ``config`` (a resolved
    run-config dict); empty when they agree or the run stored no configuration."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return []
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        return [f"config.yaml unreadable ({e})"]
    return stored_differences(raw, config, "config.yaml")


def stored_differences(raw: Any, config: dict, where: str = "stored config") -> list[str]:
    """``['train.max_epochs: 1 -> 1000', ...]`` between a stored run configuration ``raw`` (a run's
    ``config.yaml`` or a result record's ``config``, ``run_info`` ignored) and ``config`` (a resolved run-config
    dict); settings in ``mtpp.config.NON_SEMANTIC_KEYS`` are not compared, settings added since it was stored count with
    their defaults."""
    from mtpp.config import config_from_dict

    try:
        raw = dict(raw or {})
        raw.pop("run_info", None)
        stored = _flatten(config_from_dict(raw).to_dict())
    except (ConfigError, TypeError, ValueError, AttributeError) as e:
        return [f"{where} unreadable ({e})"]
    new = _flatten(config)
    keys = sorted(k for k in set(stored) | set(new) if not _ignored(k))
    return [f"{k}: {stored.get(k)!r} -> {new.get(k)!r}" for k in keys if stored.get(k) != new.get(k)]


def last_epoch_record(run_dir: Path, chunk: int = 1 << 18, limit: int = 1 << 24) -> dict | None:
    """The last ``{"kind": "epoch", ...}`` line of a run's ``log.jsonl`` (epoch, best_epoch, validation losses), read
    backwards in ``chunk``-byte blocks (step lines sit between epoch lines; the log of a long run holds hundreds of
    MB); ``None`` without a log or without an epoch line in its last ``limit`` bytes."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return None
    with path.open("rb") as f:
        end = f.seek(0, 2)
        pos, tail = end, b""
        while pos > 0 and end - pos < limit:
            pos = max(0, pos - chunk)
            f.seek(pos)
            tail = f.read(min(chunk, end - pos)) + tail
            lines = tail.split(b"\n")
            for line in reversed(lines if pos == 0 else lines[1:]):  # the first may be cut
                if b'"kind": "epoch"' in line:
                    try:
                        return json.loads(line)
                    except ValueError:
                        continue  # a line cut by a kill
    return None


def cell_state(run_dir: Path, config: dict | None = None) -> str:
    """``done`` (skip), ``stale`` (complete or interrupted, but started with a different ``config``: resuming it
    would continue another experiment under this cell's name), ``resume`` (checkpoint of this ``config``, no
    metrics) or ``new``."""
    if is_complete(run_dir):
        return "stale" if config is not None and config_differences(run_dir, config) else "done"
    if not is_resumable(run_dir):
        return "new"
    return "stale" if config is not None and config_differences(run_dir, config) else "resume"


def record_differences(results_dir: str | Path, name: str, config: dict) -> list[str] | None:
    """``None`` without a result record of cell ``name`` under ``results_dir`` (``mtpp.records``); else the
    differences between the configuration that trained it and ``config`` (empty: the record is this cell's)."""
    from mtpp.records import record_path

    path = record_path(results_dir, name)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [f"record {path} unreadable ({e})"]
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        return [f"record {path} holds no configuration"]
    return stored_differences(record["config"], config, f"record {path}")


def grid_states(
    cells: list[Cell], out: Path, overrides: Sequence[str] = (), results_dir: str | Path | None = None,
) -> dict[str, str]:  # fmt: skip
    """``{cell name: state}`` as ``run_grid`` and ``mtpp compare --dry-run`` see them: ``cell_state`` of the run
    folder under ``out``; a cell without one (``new``) that has a result record under ``results_dir`` (a grid
    continued on another machine) is ``done`` when the record's configuration is the cell's, ``stale`` when not
    (a record of another protocol never stands in for this one); an interrupted one (``resume``) whose record with
    the cell's configuration is there (another process sharing the results folder finished it) is ``done``."""
    states = {}
    for c in cells:
        config = resolved_dict(c, overrides)
        state = cell_state(Path(out) / c.name, config)
        if state in ("new", "resume") and results_dir is not None:
            diff = record_differences(results_dir, c.name, config)
            if diff is not None and (state == "new" or not diff):
                # an interrupted run folder here whose cell another process or machine has finished since: the
                # record stands (resuming would train it again and rewrite the record)
                state = "stale" if diff else "done"
        states[c.name] = state
    return states


def resolved_dict(cell: Cell, overrides: Sequence[str] = ()) -> dict:
    return resolve(cell, overrides).to_dict()


# --------------------------------------------------------------------------------------------- running


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    return max(1, (cores or available_cores()) // max(1, jobs))


def _quiet_overrides(overrides: Sequence[str], quiet: bool) -> list[str]:
    extra = ["logging.progress=false", "logging.quiet=true"] if quiet else []
    return [*extra, *overrides]


FitFn = Callable[..., Any]  # fit(config: RunConfig, out_dir: Path, resume: bool = False) -> dict


def run_cell(
    name: str,
    config: dict,
    overrides: Sequence[str],
    run_dir: str,
    threads: int,
    labels: dict,
    fit: FitFn | None = None,
    results_dir: str | None = None,
) -> CellResult:
    """Train one cell (in this or a worker process); never raises for a failing run, returns its error.

    A run directory with a checkpoint of this configuration but no complete metrics is resumed; anything else
    there (a finished or interrupted run of another configuration, a half-written run without a checkpoint) is
    overwritten. ``fit`` defaults to ``mtpp.training.trainer.fit``
    (it must be picklable when run in a worker).
    """
    from mtpp.config import apply_overrides, config_from_dict
    from mtpp.runs import torch_threads

    start = time.perf_counter()
    with torch_threads(threads):  # the cell's share of the cores, restored afterwards
        try:
            cfg = config_from_dict(apply_overrides(config, list(overrides)))
            if cfg.train.threads > threads:  # jobs x threads never exceeds the cores
                cfg.train.threads = threads
            out = Path(run_dir)
            # a checkpoint of another configuration (a stale cell the caller chose to retrain) is never resumed
            resume = not is_complete(out) and is_resumable(out) and not config_differences(out, cfg.to_dict())
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / CELL_FILE, json.dumps({"name": name, **labels}, indent=2) + "\n")
            if fit is None:
                from mtpp.training.trainer import fit
            fit(cfg, out, resume=resume, overwrite=not resume)
            if not is_complete(out):
                raise RuntimeError(f"training finished but {out / METRICS_FILE} is missing or has no test metrics")
            seconds = time.perf_counter() - start
            if results_dir is not None:  # the committed record of the cell (mtpp.records)
                from mtpp.records import build_record, write_record

                write_record(results_dir, name, build_record(out, {"name": name, **labels}, seconds))
            return CellResult(name, "done", seconds)
        except Exception as e:  # a failing cell must not stop the grid
            message = f"{type(e).__name__}: {e}"
            return CellResult(name, "failed", time.perf_counter() - start, message, traceback.format_exc())


def run_grid(
    cells: list[Cell],
    out_dir: str | Path,
    jobs: int = 1,
    overrides: Sequence[str] = (),
    progress: bool = True,
    quiet_runs: bool = True,
    log: Callable[[str], None] = print,
    fit: FitFn | None = None,
    rerun_stale: bool = False,
    results_dir: str | Path | None = None,
    time_limit: float | None = None,
    estimates_from: Sequence[str | Path] = (),
) -> list[CellResult]:
    """Run every cell not yet complete; record failures in ``out_dir/failures.json``; return one result per cell.

    ``jobs == 1`` trains in this process; ``jobs > 1`` uses a spawn-context process pool, each worker with
    ``max(1, cores // jobs)`` torch threads. ``quiet_runs`` turns the trainer's own progress bar and summary
    off (always with ``jobs > 1``); ``overrides`` may turn them back on. ``fit`` replaces the trainer (tests).
    A complete cell whose stored configuration differs from the grid's (other hyper-parameters than the ones
    that trained it) is a ``ConfigError`` before anything trains, unless ``rerun_stale`` retrains it.
    ``results_dir``: each finished cell also writes its record there (``mtpp.records``), and a cell that has a
    record there but no run directory under ``out_dir`` is skipped (a grid continued on another machine).
    ``time_limit`` (seconds from now): start only cells expected to finish by then (``mtpp.experiments_schedule``,
    estimates from the records under ``results_dir`` and the folders of ``estimates_from``, which only inform the
    estimates); the others are returned as ``deferred``.
    Processes sharing ``results_dir`` never train the same cell at once (``mtpp.experiments_claims``): a cell
    another one trains is returned as ``elsewhere``, one it finished meanwhile as ``skipped``.
    """
    from mtpp.runs import make_out_folder

    out = make_out_folder(out_dir)
    states = grid_states(cells, out, overrides, results_dir)
    data_reasons = data_changes(cells, states, out, overrides, log, results_dir)
    states.update({name: "stale" for name in data_reasons})
    _check_stale(cells, states, out, overrides, rerun_stale, data_reasons, results_dir)
    results = [CellResult(c.name, "skipped") for c in cells if states[c.name] == "done"]
    pending = [c for c in cells if states[c.name] != "done"]
    if results:
        log(f"{len(results)} of {len(cells)} cells already complete: skipped")
    resumed = [c for c in pending if states[c.name] == "resume"]
    if resumed:  # interrupted cells go on from their checkpoints: said here, not only in their train.log
        at = [f"{c.name} (after epoch {(last_epoch_record(out / c.name) or {}).get('epoch', '?')})" for c in resumed]
        log(f"{len(resumed)} interrupted cell(s) resume from their checkpoints: {', '.join(at)}")
    if results_dir is not None:
        written = write_missing_records(cells, states, out, results_dir)
        if written:
            log(f"{written} finished cell(s) had no record under {results_dir}: written from their run folders")
    jobs = max(1, min(jobs, len(pending) or 1))
    threads = threads_per_job(jobs)
    cell_overrides = _quiet_overrides(overrides, quiet=quiet_runs or jobs > 1)
    deadline = _deadline(pending, states, out, overrides, results_dir, time_limit, log, estimates_from)
    queue = run_order(pending, states)
    claims = CellClaims(results_dir, fresh={c.name for c in pending if states[c.name] in ("new", "resume")})
    bar = _progress_bar(len(pending), enabled=progress)
    try:
        if jobs == 1:
            while (c := _take(queue, deadline, claims, results, bar)) is not None:
                *args, rd = _payload(c, out, cell_overrides, threads, results_dir)
                try:
                    results.append(_tick(bar, run_cell(*args, fit=fit, results_dir=rd)))
                finally:
                    claims.release(c.name)
        else:
            results.extend(
                _run_parallel(queue, out, cell_overrides, jobs, threads, bar, fit, results_dir, deadline, claims)
            )
    finally:
        claims.release_all()
        bar.close()
    results.extend(CellResult(c.name, "deferred") for c in queue)  # not started: expected to end too late
    write_failures(out, [r for r in results if r.status == "failed"])
    return results


def check_results_folder(folder: str | Path | None, option: str = "--results") -> None:
    """``ConfigError`` when ``folder`` (``--results``, which may not exist yet) exists and is not a folder: a
    record could never be written there, and the grid would find that out only after training its first cell."""
    if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
        raise ConfigError(f"{option} {folder}: a file, not a folder of result records")


def check_estimate_folders(folders: Sequence[str | Path]) -> list[str]:
    """``ConfigError`` naming the first of ``folders`` (``--estimates-from``) that is not a folder (a file, or
    nothing there); else one note per folder that holds no result record (``--estimates-from configs``: it adds
    no estimate), naming the JSON files found there that are not records, for the command to print."""
    from mtpp.records import read_records

    for folder in folders:
        check_results_folder(folder, "--estimates-from")
        if not Path(folder).is_dir():
            raise ConfigError(f"--estimates-from {folder}: no such folder of result records")
    notes = []
    for folder in folders:
        others: list[str] = []
        if not read_records(folder, others):
            what = f" ({len(others)} JSON file(s) that are not records: {', '.join(others[:3])})" if others else ""
            notes.append(f"note: --estimates-from {folder}: holds no result record{what}; it adds no estimate")
    return notes


def expected_durations(
    cells: list[Cell], states: dict[str, str], out: Path, overrides: Sequence[str], results_dir: str | Path | None,
    estimates_from: Sequence[str | Path] = (), borrowed: dict[str, list[str]] | None = None,
) -> tuple[dict[str, float], int]:
    """Expected remaining seconds of the cells still to train (state ``new`` / ``resume`` / ``stale``), from the
    records under ``results_dir`` and the folders of ``estimates_from`` (e.g. the grid a remedies grid extends,
    whose ``sum`` cells say what its remedy cells cost; ``mtpp.experiments_schedule.expected_seconds``, with each
    cell's resolved ``train.max_epochs`` and a resuming cell's finished epochs), and the number of records read.
    A folder of ``estimates_from`` that does not exist is a ``ConfigError``. ``borrowed``: filled with the cells
    whose estimate comes from other datasets' records (``mtpp.experiments_schedule.expected_seconds``)."""
    from mtpp.records import read_records

    check_estimate_folders(estimates_from)
    folders = ([results_dir] if results_dir is not None and Path(results_dir).is_dir() else []) + list(estimates_from)
    unique = list({Path(f).resolve(): f for f in folders}.values())  # a folder given twice is read once
    records = [r for folder in unique for r in read_records(folder)]
    todo = [c for c in cells if states[c.name] != "done"]
    if not records or not todo:
        return {}, len(records)
    done = {c.name: int((last_epoch_record(out / c.name) or {}).get("epoch") or 0)
            for c in todo if states[c.name] == "resume"}  # fmt: skip
    caps = {c.name: (resolved_dict(c, overrides).get("train") or {}).get("max_epochs") for c in todo}
    return expected_seconds(todo, records, done, caps, borrowed), len(records)


def _deadline(
    pending: list[Cell], states: dict[str, str], out: Path, overrides: Sequence[str],
    results_dir: str | Path | None, time_limit: float | None, log: Callable[[str], None],
    estimates_from: Sequence[str | Path] = (),
) -> Deadline:  # fmt: skip
    """The ``Deadline`` of a run with ``time_limit`` seconds (none without one), estimates said in one line."""
    if time_limit is None:
        return Deadline(None)
    from mtpp.training.logging import format_eta

    borrowed: dict[str, list[str]] = {}
    expected, n_records = expected_durations(pending, states, out, overrides, results_dir, estimates_from, borrowed)
    unknown = len(pending) - len(expected)
    other = f", {len(borrowed)} estimated from other datasets' records only" if borrowed else ""
    log(f"time limit {format_eta(time_limit)}: cells start only when their expected duration fits (estimated from "
        f"{n_records} result record(s); {unknown} of {len(pending)} pending cell(s) without an estimate{other})")
    return Deadline(time.time() + time_limit, expected)


def data_changes(
    cells: list[Cell], states: dict[str, str], out: Path, overrides: Sequence[str],
    log: Callable[[str], None] | None = None, results_dir: str | Path | None = None,
) -> dict[str, str]:  # fmt: skip
    """``{cell: reason}`` for finished or interrupted cells whose recorded data (``mtpp.runs``: the run folder's,
    or for a cell done by its result record under ``results_dir``, the record's ``config.run_info.data``) differ
    from the data the grid resolves now (another split folder, an edited file, another ``MTPP_DATA_DIR``): mixing
    them into one summary would compare models on different test sets. Likewise the time scale the cell was
    trained in (``run_info.time_scale``) against the one ``data.time_scale`` resolves to now
    (``mtpp.models.scaling``: a rule for ``auto`` that changed, other training data): the model's unit of time
    shapes what it learns, and an interrupted cell's checkpoint would go on in its old unit. Each distinct dataset
    is loaded once; its resolved path goes to ``log``. Cells without a data record (older runs, test doubles) are
    not checked."""
    from mtpp.errors import MtppError
    from mtpp.models.scaling import resolve_time_scale, same_time_scale
    from mtpp.runs import data_record, describe_difference, differing_parts, open_run
    from mtpp.training.setup import load_data

    current: dict[str, tuple[dict, float]] = {}
    reasons: dict[str, str] = {}
    for cell in cells:
        if states[cell.name] not in ("done", "resume"):
            continue
        if states[cell.name] == "resume" or is_complete(out / cell.name):
            try:
                run_info = open_run(out / cell.name).run_info
            except (MtppError, OSError):
                continue
        else:  # done by its result record: the data it was trained and tested on, as the record says
            run_info = _record_run_info(results_dir, cell.name)
        recorded = run_info.get("data")
        if not recorded:
            continue
        data_cfg = resolve(cell, overrides).data
        key = json.dumps([data_cfg.name, data_cfg.split, data_cfg.max_sequences, data_cfg.data_dir,
                          data_cfg.time_scale])  # fmt: skip
        if key not in current:
            data = load_data(data_cfg)
            current[key] = data_record(data, data_cfg), resolve_time_scale(data_cfg.time_scale, data.train)
            if log is not None:
                log(f"data {data_cfg.name} split {data_cfg.split} <- {current[key][0]['source']}")
        now, scale = current[key]
        parts = differing_parts(recorded, now)
        if parts:
            reasons[cell.name] = "other data: " + describe_difference(recorded, now, parts)
            continue
        trained = run_info.get("time_scale")
        if trained is not None and not same_time_scale(trained, scale):
            reasons[cell.name] = (f"other time scale: trained in units of {float(trained):.6g}, data.time_scale="
                                  f"{data_cfg.time_scale} gives {scale:.6g} now")
    return reasons


def write_missing_records(cells: list[Cell], states: dict[str, str], out: Path, results_dir: str | Path) -> int:
    """Write the result record of every finished cell whose complete run folder has none under ``results_dir``
    (a grid first run without ``--results``); returns how many. Wall time: the run's own (``mtpp.records``)."""
    from mtpp.records import build_record, record_path, write_record

    n = 0
    for c in cells:
        if states[c.name] == "done" and is_complete(out / c.name) and not record_path(results_dir, c.name).exists():
            write_record(results_dir, c.name, build_record(out / c.name, {"name": c.name, **c.labels()}, None))
            n += 1
    return n


def _record_run_info(results_dir: str | Path | None, name: str) -> dict:
    """The ``run_info`` (data record, time scale, ...) a cell's result record carries, ``{}`` without one."""
    if results_dir is None:
        return {}
    from mtpp.records import record_path

    try:
        record = json.loads(record_path(results_dir, name).read_text(encoding="utf-8"))
        run_info = (record.get("config") or {}).get("run_info") or {}
        return run_info if isinstance(run_info, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def _check_stale(
    cells: list[Cell], states: dict[str, str], out: Path, overrides: Sequence[str], rerun_stale: bool,
    data_reasons: dict[str, str] | None = None, results_dir: str | Path | None = None,
) -> None:  # fmt: skip
    stale = [c for c in cells if states[c.name] == "stale"]
    if not stale or rerun_stale:
        return
    first = stale[0]
    config = resolved_dict(first, overrides)
    if results_dir is not None and not is_complete(out / first.name):  # only its result record is stale
        from mtpp.records import record_path

        diff = record_differences(results_dir, first.name, config) or []
        where = f"its record {record_path(results_dir, first.name)}"
    else:
        diff = config_differences(out / first.name, config)
        where = f"its run folder under {out}"
    if data_reasons and first.name in data_reasons:
        diff = [data_reasons[first.name], *diff]
    raise ConfigError(
        f"{len(stale)} finished or interrupted cell(s) were trained with a different configuration or data "
        f"(e.g. {first.name}, "
        f"{where}: {'; '.join(diff[:3])}); pass --rerun-stale to retrain them, or choose another --out / --results"
    )


def _take(
    queue: list[Cell], deadline: Deadline, claims: CellClaims, results: list[CellResult], bar: Any
) -> Cell | None:
    """The next cell to start: the first one ``deadline`` lets start (taken off ``queue``) that this process could
    claim (``claims``, a ``mtpp.experiments_claims.CellClaims``). Cells that another process trains or finished
    meanwhile are taken off too and go to ``results`` (``elsewhere`` / ``skipped``, with the reason)."""
    while (cell := deadline.take(queue)) is not None:
        refused = claims.take(cell.name)
        if refused is None:
            return cell
        status, why = refused
        results.append(_tick(bar, CellResult(cell.name, status, error=why)))
    return None


def _payload(cell: Cell, out: Path, overrides: Sequence[str], threads: int, results_dir: Any = None) -> tuple:
    """``run_cell``'s positional arguments for ``cell`` (picklable), ``results_dir`` last."""
    rd = None if results_dir is None else str(results_dir)
    return cell.name, cell.config, list(overrides), str(out / cell.name), threads, cell.labels(), rd


def _run_parallel(
    queue: list[Cell], out: Path, overrides: Sequence[str], jobs: int, threads: int, bar: Any, fit: FitFn | None,
    results_dir: Any = None, deadline: Deadline | None = None, claims: CellClaims | None = None,
) -> list[CellResult]:
    """Cells in ``jobs`` spawned worker processes, handed one at a time over a pipe (nothing is queued in a
    worker). The workers die with this process (``_worker_main``: parent-death signal on Linux, a watchdog on
    the parent pid elsewhere); on Ctrl-C or any error here the workers are terminated within seconds: finished
    cells stay finished, running ones resume from their last checkpoint on the next run, queued ones never start.
    Cells are taken from ``queue`` (in place) by ``deadline``; the ones it defers stay there. Each running cell is
    claimed in ``claims`` (``mtpp.experiments_claims.CellClaims``; none: no claims) until its result is in.
    """
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    deadline = deadline or Deadline(None)
    claims = claims or CellClaims(None)
    results: list[CellResult] = []

    def take() -> Cell | None:
        return _take(queue, deadline, claims, results, bar)

    workers: dict[Any, tuple[Any, Cell | None]] = {}  # connection -> (process, running cell)
    try:
        for _ in range(min(jobs, len(queue))):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child_end, os.getpid(), fit), daemon=True)
            proc.start()
            child_end.close()
            workers[parent_end] = (proc, None)
        for conn in list(workers):
            _hand_out(conn, workers, take, out, overrides, threads, results_dir)
        while any(cell is not None for _, cell in workers.values()):
            ready = wait([c for c, (_, cell) in workers.items() if cell is not None]
                         + [p.sentinel for p, cell in workers.values() if cell is not None])  # fmt: skip
            for conn, (proc, cell) in list(workers.items()):
                if cell is None:
                    continue
                if conn in ready:
                    try:
                        result = conn.recv()
                    except (EOFError, OSError):
                        result = None
                elif proc.sentinel in ready and not conn.poll():
                    result = None
                else:
                    continue
                if result is None:  # the worker died (out of memory, killed, ...)
                    proc.join(timeout=1)
                    result = CellResult(cell.name, "failed", 0.0, f"worker process died (exit code {proc.exitcode})")
                    workers.pop(conn)
                    conn.close()
                    if queue:  # a fresh worker for the rest
                        parent_end, child_end = ctx.Pipe()
                        proc = ctx.Process(target=_worker_main, args=(child_end, os.getpid(), fit), daemon=True)
                        proc.start()
                        child_end.close()
                        workers[parent_end] = (proc, None)
                        conn = parent_end
                else:
                    workers[conn] = (proc, None)
                claims.release(cell.name)
                results.append(_tick(bar, result))
                if conn in workers:
                    _hand_out(conn, workers, take, out, overrides, threads, results_dir)
    finally:
        _stop_workers(workers)
    return results


def _hand_out(
    conn: Any, workers: dict, take: Callable[[], Cell | None], out: Path, overrides: Sequence[str], threads: int,
    results_dir: Any = None,
) -> None:  # fmt: skip
    proc, _ = workers[conn]
    cell = take()
    if cell is not None:
        conn.send(_payload(cell, out, overrides, threads, results_dir))
        workers[conn] = (proc, cell)
    else:
        workers[conn] = (proc, None)


def _stop_workers(workers: dict, grace: float = 5.0) -> None:
    """Tell idle workers to exit; terminate (SIGTERM, then SIGKILL after ``grace`` s) the ones still running."""
    deadline = time.monotonic() + grace
    for conn, (proc, cell) in workers.items():
        try:
            conn.send(None)
        except (OSError, ValueError):
            pass
        if cell is not None and proc.is_alive():
            proc.terminate()
    for conn, (proc, _) in workers.items():
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=grace)
        conn.close()


def _worker_main(conn: Any, parent_pid: int, fit: FitFn | None) -> None:
    """A ``compare --jobs`` worker: run the cells the parent sends (``None``: exit) until the parent is gone.

    Dies with its parent: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` on Linux, plus a thread that exits the process
    when the parent pid changes (the parent died before the signal was armed, or no prctl). Ctrl-C in the
    terminal reaches the workers too (same process group): the running cell stops, its checkpoint stays.
    """
    import signal
    import threading

    _die_with_parent(parent_pid)

    def watchdog() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watchdog, daemon=True, name="mtpp-parent-watchdog").start()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))  # the checkpoint on disk is complete (atomic)
    from mtpp.allocator import tune_allocator

    tune_allocator()
    try:
        while True:
            try:
                task = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                return
            if task is None:
                return
            *args, results_dir = task
            conn.send(run_cell(*args, fit=fit, results_dir=results_dir))
    except KeyboardInterrupt:
        return


def _die_with_parent(parent_pid: int) -> None:
    """Linux: deliver SIGTERM to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``)."""
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # died before the signal was armed
        os._exit(1)


class _NoBar:
    def update(self, n: int = 1) -> None: ...

    def set_postfix_str(self, s: str) -> None: ...

    def close(self) -> None: ...


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return _NoBar()
    from tqdm.auto import tqdm

    from mtpp.training.logging import bar_disable

    bar = tqdm(total=total, desc="cells", unit="cell", dynamic_ncols=True, disable=bar_disable())
    bar.failed = 0  # type: ignore[attr-defined]
    return bar


def _tick(bar: Any, result: CellResult) -> CellResult:
    if result.status == "failed":
        bar.failed = getattr(bar, "failed", 0) + 1
        bar.set_postfix_str(f"failed={bar.failed} last={result.name}")
    else:
        bar.set_postfix_str(f"last={result.name}")
    bar.update(1)
    return result


def write_failures(out: Path, failed: list[CellResult]) -> Path | None:
    """``out/failures.json`` listing the failed cells; a stale file from an earlier attempt is removed (a file of
    that name mtpp did not write is left alone, and refused when there are failures to list)."""
    from mtpp.owned import check_ours, is_ours

    path = Path(out) / FAILURES_FILE
    if not failed:
        if is_ours(path):
            path.unlink(missing_ok=True)
        return None
    check_ours([path])
    rows = [{"cell": r.name, "error": r.error, "traceback": r.traceback} for r in failed]
    write_text(path, json.dumps(rows, indent=2) + "\n")
    return path


def write_cells(out: Path, exp: Experiment, cells: list[Cell], overrides: Sequence[str]) -> None:
    """``out/experiment.yaml``: the experiment as run (with the command line's overrides) for provenance.
    ``MtppError`` when a file of that name exists that mtpp did not write."""
    from mtpp.owned import check_ours

    check_ours([Path(out) / "experiment.yaml"])
    record = {**exp.to_dict(), "source": exp.source, "overrides": list(overrides), "cells": [c.name for c in cells]}
    write_text(Path(out) / "experiment.yaml", yaml.safe_dump(record, sort_keys=False))


def results_summary(results: list[CellResult]) -> dict[str, int]:
    counts = {"done": 0, "skipped": 0, "failed": 0, "deferred": 0, "elsewhere": 0}
    for r in results:
        counts[r.status] += 1
    return counts
