"""``fit``: the Python entry point that composes with ``load_dataset`` and ``build_model``.

Two routes, one trainer (``mtpp.training.trainer``)::

    # the notebook route: objects in, the same run directory out
    ds = load_dataset("synthetic_hawkes")                       # mtpp.data.catalog.Dataset
    model = build_model({"encoder": "gru", "decoder": "lnm"}, ds.num_marks)
    result = fit(model, ds, "runs/nb", config={"train": {"max_epochs": 5}})

    # the configuration route (what ``mtpp train`` does)
    result = fit("configs/quickstart.yaml", "runs/q")          # or a RunConfig, or a nested dict

Contract
    ``fit(model, data, out_dir=None, *, config=None, ...)``: ``model`` is a ``MarkedTPP`` (anything with a
    ``cfg: ModelConfig`` and ``num_marks``), trained **in place** (it ends holding the best validation state, on
    the configured device and dtype: ``data.dtype`` when the config sets it, else the model's own, so a
    ``model.double()`` trains in float64); ``data`` has ``train``, ``val``, ``test`` (lists of ``EventSequence``) and
    ``num_marks`` (a ``Dataset`` from ``load_dataset``, or a ``RunData``); ``config`` gives the other sections
    (``train``, ``gradients``, ``logging``, ``data.dtype`` / ``data.max_sequences``): a ``RunConfig``, a nested
    dict, a YAML path or ``None`` (defaults). The run's ``model`` section is the model's ``cfg`` and its ``data``
    section names the dataset (its catalog name, else the folder it was read from) and split, so ``config.yaml``
    describes what was trained and ``mtpp evaluate OUT`` can rebuild it.

    ``fit(config, out_dir, resume=False, *, data_dir=None, overwrite=False)``: the configuration route.

    Both return the final metrics (the content of ``metrics.json``: ``{"val": {...}, "test": {...},
    "train": {...}}``; NLLs in nats per sequence and per event) plus ``"run_dir"``, the run directory as a string.
    ``out_dir=None`` (either route) trains into a new temporary folder (``tempfile.mkdtemp(prefix="mtpp-fit-")``),
    named in ``result["run_dir"]``; nothing existing is overwritten unless ``overwrite=True``.

    Global state: the run is seeded from ``train.seed`` (python, numpy, torch), and the generators' states, torch's
    thread count and its deterministic-algorithm flags are restored when ``fit`` returns (or raises), so a loop
    ``for seed in seeds: x = np.random.rand(); fit(...)`` draws a new ``x`` every time.

Errors: ``ConfigError`` for an invalid configuration, a model without a ``ModelConfig``, data without
train / val / test, or a model built for another number of marks than the data has; the trainer's ``MtppError``
for an occupied run directory.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mtpp.config import DataConfig, RunConfig, as_run_config
from mtpp.errors import ConfigError
from mtpp.models.config import ModelConfig

__all__ = ["fit"]


def fit(
    model_or_config: nn.Module | RunConfig | dict | str | Path | None,
    data_or_out: Any = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    *,
    config: RunConfig | dict | str | Path | None = None,
    data_dir: str | None = None,
    overwrite: bool = False,
    on_epoch: Callable[[int, dict[str, float]], Any] | None = None,
) -> dict[str, Any]:
    """Train a model on data (``fit(model, data, out_dir)``) or a configuration (``fit(config, out_dir)``).

    See the module docstring for both routes, shapes and units. Returns ``metrics.json``'s content plus
    ``"run_dir"``. ``on_epoch(epoch, val)``: called after each epoch (its checkpoint written) with the validation
    NLLs (``val["val_nll_per_seq"]``, nats per sequence, ...); returning ``"stop"`` ends training there, the best
    epoch's state kept and evaluated (``stopped_by: on_epoch``); an exception it raises ends the run without final
    metrics (``mtpp.training.trainer.fit``).
    """
    from mtpp.training import trainer

    if isinstance(model_or_config, nn.Module):
        if data_or_out is None:
            raise ConfigError("fit(model, data, ...): data is missing (e.g. data=load_dataset('synthetic_hawkes'))")
        if resume:
            raise ConfigError("fit(model, data, ...): resume=True needs the configuration route, "
                              "fit(config, out_dir, resume=True)")
        cfg, run_data = _compose(model_or_config, data_or_out, config)
        out = _out_dir(out_dir)
        metrics = trainer.fit(cfg, out, data_dir=data_dir, overwrite=overwrite, model=model_or_config,
                              data=run_data, on_epoch=on_epoch)
    else:
        if config is not None:
            raise ConfigError("fit(config, out_dir): pass the configuration once (config= is for fit(model, data))")
        if out_dir is not None:
            raise ConfigError("fit(config, out_dir, ...): a third positional argument is only for fit(model, data, "
                              "out_dir); pass resume=True by keyword")
        cfg = as_run_config(model_or_config)
        out = _out_dir(data_or_out)
        metrics = trainer.fit(cfg, out, resume=resume, data_dir=data_dir, overwrite=overwrite, on_epoch=on_epoch)
    return {**metrics, "run_dir": str(out)}


def _out_dir(out_dir: Any) -> Path:
    if out_dir is None:
        return Path(tempfile.mkdtemp(prefix="mtpp-fit-"))
    if not isinstance(out_dir, (str, Path)):
        raise ConfigError(f"out_dir must be a folder path, got {type(out_dir).__name__}")
    return Path(out_dir)


def _given_keys(config: RunConfig | dict | str | Path | None) -> set[str]:
    """The dotted keys (``model.decoder``, ``variants``) ``config`` sets: a dict's or a YAML file's own keys; for a
    ``RunConfig`` (which cannot tell a default from a key set to it) the keys whose values are not the defaults."""
    from mtpp.config import flatten

    if config is None:
        return set()
    if isinstance(config, RunConfig):
        default = flatten(RunConfig().to_dict())
        return {k for k, v in flatten(config.to_dict()).items() if default.get(k, object()) != v}
    raw: Any = config
    if isinstance(config, (str, Path)):
        import yaml

        raw = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}  # as_run_config read it already
        raw.pop("run_info", None)
    keys = set(flatten({k: v for k, v in raw.items() if k != "variants"}))
    return keys | ({"variants"} if raw.get("variants") else set())


def _compose(model: nn.Module, data: Any, config: RunConfig | dict | str | Path | None) -> tuple[RunConfig, Any]:
    """The run configuration of ``model`` trained on ``data`` (model and data sections taken from them) and the
    data as the trainer's ``RunData`` (cut to ``cfg.data.max_sequences`` per split).

    Refused (one line, before any file): a model without a ``ModelConfig``; data without train / val / test; a
    model for another number of marks; data a run cannot train on (``setup.check_data``: the checks ``mtpp train``
    makes, empty parts, marks, times, the dtype's range); ``config`` settings that this route would ignore (a
    ``model`` section other than the model's, ``variants``, a ``data.name`` / ``split`` / reading option other
    than the data's)."""
    from mtpp.config import flatten
    from mtpp.data.catalog import CATALOG
    from mtpp.training.setup import RunData, check_data

    cfg = as_run_config(config)
    model_cfg = getattr(model, "cfg", None)
    if not isinstance(model_cfg, ModelConfig):
        raise ConfigError(f"fit(model, data): the model must be a MarkedTPP from build_model (a module with a "
                          f"ModelConfig .cfg), got {type(model).__name__}")
    missing = [a for a in ("train", "val", "test", "num_marks") if not hasattr(data, a)]
    if missing:
        raise ConfigError(f"fit(model, data): data needs train, val, test and num_marks (a Dataset from "
                          f"load_dataset); {type(data).__name__} has no {', '.join(missing)}")
    k_model, k_data = int(getattr(model, "num_marks", data.num_marks)), int(data.num_marks)
    if k_model != k_data:
        raise ConfigError(f"fit(model, data): the model was built for {k_model} marks, the data has {k_data}; "
                          f"build it with build_model(cfg, ds.num_marks)")
    given = _given_keys(config)
    if "data.dtype" not in given:  # the model's own precision unless the config says otherwise
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        if dtype == torch.float64:
            cfg = replace(cfg, data=replace(cfg.data, dtype="float64"))
    check_data(data, cfg.data.dtype, num_marks=k_model)  # what mtpp train checks, before the run folder
    name = str(getattr(data, "name", "data"))
    source = getattr(data, "source", None)
    if name not in CATALOG and source:
        name = str(source)  # a path: what load_dataset reads again
    split = getattr(data, "split", cfg.data.split)
    split = split if isinstance(split, int) and not isinstance(split, bool) else int(getattr(data, "split_index", 0))
    options = getattr(data, "options", None)
    loaded = isinstance(options, dict)
    fields_of_data: dict[str, Any] = {"name": name, "split": split}
    if loaded:
        fields_of_data.update({k: bool(options.get(k, False)) for k in ("use_window", "sort", "remap_marks")})
        if options.get("data_dir") is not None:
            fields_of_data["data_dir"] = str(options["data_dir"])

    ignored = []
    model_keys = sorted(k for k in given if k.startswith("model."))
    if model_keys:
        mine, theirs = flatten({"model": model_cfg.__dict__}), flatten(cfg.to_dict())
        differ = [k for k in model_keys if mine.get(k) != theirs.get(k)]
        if differ:
            shown = ", ".join(f"{k}: {theirs.get(k)!r} (the model's: {mine.get(k)!r})" for k in differ[:4])
            ignored.append(f"its model section ({shown}{', ...' if len(differ) > 4 else ''}) is not the model "
                           "passed: build the model from it (build_model(config, ds.num_marks)) or drop the section")
    if "variants" in given:
        ignored.append(f"its {len(cfg.variants)} variants are not trained (fit(model, data) trains the one model "
                       "passed): train them with fit(config, out_dir) or mtpp train, or drop variants")
    also_name = {name, str(getattr(data, "name", "")), str(source or "")}
    for key in ("name", "split", "use_window", "sort", "remap_marks"):
        value = getattr(cfg.data, key)
        if f"data.{key}" not in given or key not in fields_of_data:
            continue
        if (key == "name" and str(value) not in also_name) or (key != "name" and value != fields_of_data[key]):
            fix = f"load_dataset({value!r})" if key == "name" else f"load_dataset(..., {key}={value!r})"
            ignored.append(f"data.{key}: {value!r} is not how the data passed were loaded ({fields_of_data[key]!r}): "
                           f"pass {fix} instead, or drop data.{key}")
    if ignored:
        raise ConfigError("fit(model, data, config=...): the config is not applied as given: " + "; ".join(ignored))

    data_cfg: DataConfig = replace(cfg.data, **fields_of_data)
    cfg = replace(cfg, model=model_cfg, data=data_cfg, variants=[])
    n = cfg.data.max_sequences

    def cut(seqs: Any) -> list:
        seqs = list(seqs)
        return seqs[:n] if n is not None else seqs

    why = None if loaded else (f"a {type(data).__name__} not made by load_dataset (no record of how to read it "
                               "again)")
    run_data = RunData(cut(data.train), cut(data.val), cut(data.test), k_data, name, getattr(data, "notes", None),
                       source=None if source is None else str(source), split_index=split, given=why,
                       mark_ids=getattr(data, "mark_ids", None))
    return cfg, run_data
