"""Hyper-parameter search with Optuna: ``tune(config, space, out_dir, trials)`` (the library of ``mtpp tune``).

Optional: needs the ``tune`` extra (``pip install -e ".[tune]"``, i.e. ``optuna``); without it ``tune`` raises a
``ConfigError`` saying so.

Search space (``SPACE.yaml``): a mapping of dotted config keys to a distribution::

    train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    train.batch_size: {type: int, low: 16, high: 64, step: 16}
    model.hidden_size: {type: int, low: 8, high: 64, log: true}
    model.decoder: [lnm, rmtpp, thp]            # a list: a categorical choice
    model.parametrisation: {type: categorical, choices: [base, plusplus]}

``float`` / ``int`` take ``low``, ``high`` and optionally ``log`` or ``step`` (Optuna's ``suggest_float`` /
``suggest_int``). Every key must be a key of the run configuration and every value a valid one: before the first
trial every value of a categorical or of a range of at most ``VALUES_CHECKED`` values is checked (a continuous
float range, or a longer one, at its two ends), and every combination of them when there are at most
``POINTS_CHECKED`` (else each key's values with the other keys at their first value); a configuration that is not
valid (its model is built on the ``meta`` device, so model constraints count) is one ``ConfigError`` naming the
file and the point. A point outside what was
checked that is not a valid configuration fails its trial, in one line, and the search goes on. Refused too: an
entry of one value (nothing to search: ``--set`` it), keys that change what the validation NLL is measured on or
how it is computed (``NOT_SEARCHABLE``: ``data.name``, ``data.split``, ``data.max_sequences``, ...,
``model.eval_integration``, ``model.eval_integration_nodes``, ``model.tie_resolution``: NLLs of different data, or of
the same model scored by another rule, cannot be ranked), seeds (``RANDOM_SEEDS``: ``train.seed``: the winner would
be the luckiest draw on the validation split), a space whose checked points score the NLL with different
rules (``model.integration_nodes`` when the evaluation nodes follow it) and settings that change nothing a run
computes (``mtpp.config.NON_SEMANTIC_KEYS``).

Objective: the **validation NLL per sequence** (``L_T + L_M``, nats per sequence, ``metrics.json["val"]``) of the
trial's best epoch, minimised: the score its early stopping follows, so under ``train.select_time_on: binned`` (data
on a lattice) the binned ``L_T`` (``nll_time_binned_per_seq``) plus ``L_M``, named ``val nll_binned_per_seq``
(``train.select_time_on`` itself cannot be searched). Trial ``n`` trains the base config with the sampled values into
``OUT/trial_<n>/`` (a complete run directory, so ``mtpp report OUT`` tables every trial). A run whose validation
NLL is not finite counts as failed.

Pruning: after every epoch the trainer's ``on_epoch`` callback reports the epoch's validation NLL per sequence
(``val_nll_per_seq``, or its binned form: the early-stopping quantity) to Optuna's ``MedianPruner``
(``n_startup_trials=2``, ``n_warmup_steps=PRUNE_FROM_EPOCH``, epochs counted from 1: a trial is stopped after its
second epoch or later, never after its first nor after its last (``train.max_epochs``: nothing left to save), when
its best epoch so far is worse than the median of the complete trials at the same epoch). A pruned trial keeps its
folder (``checkpoint.pt``, no ``metrics.json``); its value in ``trials.csv`` is the validation NLL of the epoch it
was pruned after.

Resuming: the study lives in ``OUT/study.db`` (SQLite, study name ``mtpp``) with the search (base configuration
and space) and the fingerprints of its data (``mtpp.runs``); rerunning the same command on the same data continues
it (other data, or another configuration or space, is refused in one line before any trial), and ``--trials N``
is the total number of finished (complete or pruned) trials wanted, so an interrupted search runs only what is
missing. A trial that was running when the search was interrupted is marked failed and its
folder left as it is; a second search of a folder in use is refused (``OUT/.mtpp.lock``, ``mtpp.runs.RunLock``).
The sampler is TPE seeded by ``seed`` (``train.seed`` unless given) plus the number of trials already in the study.

Outputs: ``OUT/best.yaml`` (the best trial's configuration, i.e. the base one with its values, with the base
configuration's own run settings such as ``logging``: train it with ``mtpp train OUT/best.yaml --out DIR``; a
header comment gives the trial, its validation NLL and the search), ``OUT/trials.csv`` (one row per trial: number,
state, value, parameters, seconds (empty for a trial killed with its search: its end is unknown); written even
when the search stops on an error) and the study database.
``OUT`` must be absent, empty or a folder ``tune`` wrote (:func:`check_tune_folder`): anything else, a foreign or
corrupt ``study.db`` or trial folders whose study is gone included, is refused in one line before any work.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mtpp.config import RunConfig, apply_overrides, config_from_dict, dump_yaml, read_yaml
from mtpp.errors import ConfigError, MtppError
from mtpp.files import replacing, write_text

__all__ = ["Param", "load_space", "parse_space", "tune", "check_tune_folder", "STUDY_FILE", "BEST_FILE", "TRIALS_FILE"]

STUDY_FILE = "study.db"
BEST_FILE = "best.yaml"
TRIALS_FILE = "trials.csv"
STUDY_NAME = "mtpp"
OBJECTIVE = "val nll_per_seq"
OBJECTIVE_BINNED = "val nll_binned_per_seq"
"""The objective's name under ``train.select_time_on: binned``: the binned validation ``L_T`` (of each gap's lattice
bin, ``nll_time_binned_per_seq``) plus ``L_M``, the score that run's early stopping and ``best.pt`` follow."""
KINDS = ("float", "int", "categorical")


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` in :data:`KINDS`; ``low`` / ``high`` / ``log`` / ``step`` for numbers, ``choices``
    for a categorical."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log, step=self.step)

    def count(self) -> float:
        """How many distinct values the search can sample (``math.inf`` for a continuous float range). A stepped
        range counts in decimal like Optuna (``_adjust_discrete_uniform_high``): ``low: 0.1, high: 0.3, step: 0.2``
        is the two values 0.1 and 0.3, where binary floats give ``(0.3 - 0.1) // 0.2 == 0``."""
        if self.kind == "categorical":
            return len(self.choices)
        if self.kind == "float" and self.step is None:
            return 1 if self.low == self.high else math.inf
        if self.kind == "int":
            return (int(self.high) - int(self.low)) // int(self.step or 1) + 1
        low, high, step = (_decimal(x) for x in (self.low, self.high, self.step))
        return int((high - low) // step) + 1

    def values(self, limit: int) -> list:
        """Every value the search can sample when there are at most ``limit``, else the ends of the range."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.count() > limit:
            return [self.low, self.high]
        if self.kind == "int":
            return [int(self.low) + i * int(self.step or 1) for i in range(int(self.count()))]
        low, step = _decimal(self.low), _decimal(self.step)
        return [float(low + i * step) for i in range(int(self.count()))]


def _decimal(x: float) -> Any:
    """``x`` as the decimal it is written as (``0.1`` -> ``Decimal("0.1")``), as Optuna counts stepped ranges."""
    import decimal

    return decimal.Decimal(str(x))


def _number(value: Any, where: str, integer: bool) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    return int(value) if integer else float(value)


#: What the validation NLL is measured on: trials that differ in these are scored on different data or events, or
#: with another rule (the evaluation compensator, the tie rule: the same model gets another NLL), so their NLLs cannot
#: be ranked (``data.time_scale`` and ``data.dtype`` change the model, not the data: searchable). A key that changes
#: the evaluation rule indirectly (``model.integration_nodes`` when ``model.eval_integration`` is ``mc`` or
#: ``gauss_legendre`` and its nodes are not set) is refused by the space check (:func:`_check_space`).
NOT_SEARCHABLE = {
    "data.name": "the dataset",
    "data.data_dir": "where the dataset is read from",
    "data.split": "the split (fold)",
    "data.max_sequences": "how many sequences",
    "data.use_window": "the observation window scored after the last event",
    "data.sort": "which sequences are read (sorted or refused)",
    "model.first_event": "which events are scored",
    "model.eval_integration": "the compensator rule (THP / SAHP)",
    "model.eval_integration_nodes": "the compensator's nodes (THP / SAHP)",
    "model.tie_resolution": "the tie rule (which gaps score log F(delta), a probability, not a density)",
    "train.select_time_on": "the L_T (continuous or lattice-binned: the objective itself)",
}


#: Seeds of random draws: trials that differ only in one differ by chance, and the "best" is the luckiest draw on the
#: validation split (selection on noise), not a better setting.
RANDOM_SEEDS = {
    "train.seed": "the random draws (initial weights, batch order, Monte Carlo nodes)",
    "gradients.options.seed": "the aggregator's random draws (PCGrad's task order, ...)",
}


def _why_not_searchable(key: str) -> str | None:
    """Why searching ``key`` is meaningless (``None``: it is not), from :data:`NOT_SEARCHABLE` and
    ``mtpp.config.NON_SEMANTIC_KEYS``."""
    from mtpp.config import NON_SEMANTIC_KEYS

    if key in NOT_SEARCHABLE:
        return (f"it changes {NOT_SEARCHABLE[key]} the validation NLL is measured on, so the trials' NLLs could not "
                "be compared; run one search per value")
    if key in RANDOM_SEEDS:
        return (f"it changes only {RANDOM_SEEDS[key]}, so the search would pick a lucky draw and overfit the "
                "validation split; tune at one seed, then compare seeds with mtpp compare (grid.seeds)")
    if any(key == k or key.startswith(k + ".") for k in NON_SEMANTIC_KEYS):
        return "it changes only where or how fast a run goes or what it prints, not what it computes"
    return None


def parse_space(raw: Any, source: str = "space") -> list[Param]:
    """The parameters of a search space mapping (see the module docstring); ``ConfigError`` naming ``source`` and
    the key for anything malformed, for a key that cannot be searched (:data:`NOT_SEARCHABLE`, a setting of
    ``mtpp.config.NON_SEMANTIC_KEYS``) and for an entry with one value (nothing to search: ``--set`` it). Keys are
    not checked against the config here (``tune`` does)."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: a search space is a non-empty mapping of config keys (train.lr: ...)")
    params = []
    for key, spec in raw.items():
        where = f"{source}: {key}"
        if not isinstance(key, str) or "." not in key:
            raise ConfigError(f"{where}: keys are dotted config keys like train.lr or model.hidden_size")
        why = _why_not_searchable(key)
        if why:
            raise ConfigError(f"{where}: cannot be searched: {why}; set it with --set {key}=VALUE")
        if isinstance(spec, list):
            spec = {"type": "categorical", "choices": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a list of choices or a mapping with type, low, high")
        fields = ("type", "choices", "low", "high", "log", "step")
        unknown = sorted(set(map(str, spec)) - set(fields))
        if unknown:  # before the type: a misspelt 'type' said "type must be one of ..., got None"
            import difflib

            close = difflib.get_close_matches(unknown[0], fields, 1, 0.6)
            raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}"
                              + (f" (did you mean {close[0]!r}?)" if close else "")
                              + "; valid: type, low, high, log, step (a range) or type, choices (categorical)")
        kind = spec.get("type")
        if kind not in KINDS:
            raise ConfigError(f"{where}: type must be one of {', '.join(KINDS)}, got {kind!r}")
        allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
        extra = sorted(set(spec) - allowed)
        if extra:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(extra)}; valid: {', '.join(sorted(allowed))}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: choices must be a non-empty list")
            repeated = [c for i, c in enumerate(choices) if c in choices[:i]]
            if repeated:
                raise ConfigError(f"{where}: the choices repeat {repeated[0]!r}")
            params.append(_one_value_refused(Param(key, kind, choices=tuple(choices)), where))
            continue
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where}: a {kind} needs low and high")
        integer = kind == "int"
        low, high = _number(spec["low"], f"{where}.low", integer), _number(spec["high"], f"{where}.high", integer)
        if low > high:
            raise ConfigError(f"{where}: low ({low}) > high ({high})")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
        step = spec.get("step")
        if step is not None:
            step = _number(step, f"{where}.step", integer)
            if step <= 0 or log:
                raise ConfigError(f"{where}: step must be > 0 and cannot be combined with log")
        if log and low <= 0:
            raise ConfigError(f"{where}: log needs low > 0, got {low}")
        params.append(_one_value_refused(Param(key, kind, low, high, log, step), where))
    return params


def _one_value_refused(prm: Param, where: str) -> Param:
    if prm.count() == 1:
        value = prm.choices[0] if prm.kind == "categorical" else prm.low
        raise ConfigError(f"{where}: searches one value ({value!r}), so nothing; set it with --set {prm.key}={value} "
                          "or widen the range")
    return prm


def load_space(path: str | Path) -> list[Param]:
    """:func:`parse_space` of a YAML file (``ConfigError`` for a missing or invalid file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space {str(p)!r} not found")
    return parse_space(read_yaml(p), str(p))


VALUES_CHECKED = 256
"""Before the search every value of a key is checked when it has at most this many (categorical choices, int and
stepped float ranges); a continuous float range, or a longer one, at its two ends."""
POINTS_CHECKED = 512
"""... and every combination of the searched keys' checked values when there are at most this many."""


def _check_space(cfg: RunConfig, params: list[Param], source: str) -> None:
    """``ConfigError`` naming ``source`` and the point for the first value of the space (:data:`VALUES_CHECKED`,
    :data:`POINTS_CHECKED`) that does not make a valid configuration with the base ``cfg``: the configuration is
    validated and, for each distinct ``model`` section, the model built on PyTorch's ``meta`` device (no memory, a
    few ms: constraints such as hidden_size divisible by num_heads are checked there). A point outside what is
    checked that fails anyway fails its trial (one line, the search goes on). Also refused: two checked points whose
    models score the validation NLL with different rules (:func:`_scoring_rules`: the evaluation compensator and its
    nodes, the tie resolution), e.g. ``model.integration_nodes`` searched while ``model.eval_integration`` is
    ``gauss_legendre`` without its own nodes."""
    import copy
    import itertools
    import json

    import torch

    from mtpp.config import _set_dotted
    from mtpp.models import build_model

    base = apply_overrides(cfg.to_dict(), [])
    built: set[str] = set()
    rules: dict[tuple, tuple] = {}  # how a model scores the validation NLL -> the first point whose model does

    def check(point: tuple) -> None:
        raw = copy.deepcopy(base)  # apply_overrides' YAML round trip costs ~6x more per point
        built_model = None
        try:
            for key, value in point:
                _set_dotted(raw, key, value)
            model = config_from_dict(raw).model
            seen = json.dumps(raw.get("model"), sort_keys=True, default=str)
            if seen not in built:
                built.add(seen)
                try:
                    with torch.device("meta"):
                        built_model = build_model(model, num_marks=2)  # the marks are the data's: any count will do
                except ConfigError:
                    raise
                except Exception:  # noqa: BLE001 - a layer that cannot be built on meta: left to the trial
                    built_model = None
        except ConfigError as e:
            raise ConfigError(f"{source}: {_point_text(point)} is not a valid configuration ({e})") from None
        for rule in _scoring_rules(built_model) if built_model is not None else []:
            first, where = rules.setdefault(rule[0], (rule, point))
            if first != rule:
                raise ConfigError(
                    f"{source}: {_point_text(point)} scores the validation NLL with {rule[1]}, {_point_text(where)} "
                    f"with {first[1]}: the same model gets another NLL, so the trials could not be ranked; set "
                    f"{rule[2]} in the base config (--set {rule[2]}=VALUE) instead of searching it")

    grids = [[(p.key, v) for v in p.values(VALUES_CHECKED)] for p in params]
    if math.prod(len(g) for g in grids) <= POINTS_CHECKED:
        points = itertools.product(*grids)
    else:  # each key's values, the other keys at their first (points of the space, not of the base config)
        first = [g[0] for g in grids]
        points = ((*first[:i], item, *first[i + 1:]) for i, g in enumerate(grids) for item in g)
    for point in points:
        check(point)


def _point_text(point: tuple) -> str:
    what = ", ".join(f"{k}={v!r}" for k, v in point)
    return f"the point {what}" if len(point) > 1 else (what or "the base configuration")


def _scoring_rules(model: Any) -> list[tuple]:
    """How ``model`` scores an NLL beyond its parameters, as ``(kind, text, key to set)``: the evaluation
    compensator rule of its THP / SAHP decoders (``QuadratureDecoder.eval_rule``) and the tie resolution of every
    decoder (``TiePolicy``). Two points of a space whose models differ in one of them measure the NLL differently."""
    from mtpp.models.time_decoders import QuadratureDecoder, TiePolicy

    out = []
    evals = sorted({m.eval_rule for m in model.modules() if isinstance(m, QuadratureDecoder)})
    if evals:
        text = ", ".join(f"model.eval_integration={r} with {n} nodes" for r, n in evals)
        out.append(("compensator", text, "model.eval_integration_nodes"))
    ties = sorted({float(m.tie_resolution) for m in model.modules() if isinstance(m, TiePolicy)})
    if ties:
        out.append(("ties", f"model.tie_resolution={', '.join(f'{t:g}' for t in ties)}", "model.tie_resolution"))
    return out


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError('mtpp tune needs Optuna: pip install -e ".[tune]" (or pip install optuna)') from None
    return optuna


def tune(
    config: RunConfig,
    space: list[Param],
    out_dir: str | Path,
    trials: int,
    *,
    data_dir: str | None = None,
    seed: int | None = None,
    timeout: float | None = None,
    space_source: str = "space",
    verbose_runs: bool = False,
    echo: Any = print,
) -> dict[str, Any]:
    """Run (or continue) the search into ``out_dir`` until ``trials`` trials are finished (see the module doc).

    Returns ``{"best_value", "objective", "best_params", "best_trial", "best_config" (path), "finished", "pruned",
    "failed"}``; ``best_value`` is the validation NLL per sequence in nats (``objective`` names it:
    :data:`OBJECTIVE`, or :data:`OBJECTIVE_BINNED` under ``train.select_time_on: binned``). ``timeout``
    (seconds, > 0): stop starting new trials after it. ``seed``: the sampler's, in [0, 2**32) (default
    ``train.seed``). ``verbose_runs``: the trials print their progress bars and epoch lines (default:
    ``logging.quiet`` / ``logging.progress`` off in the trials only; ``best.yaml`` keeps ``config``'s). Raises,
    before anything is written, ``ConfigError`` (Optuna missing, a bad space, a config with variants, a bad number)
    or ``MtppError`` (``out_dir`` is not empty and not a folder of this command: :func:`check_tune_folder`); before
    any trial, ``ConfigError`` / ``MtppError`` when the study in ``out_dir`` searched another base configuration or
    space, or other data (:func:`_check_same_data`); after the search, ``MtppError`` when no trial completed or
    more than ``2 * trials`` failed (``trials.csv`` is written first).
    """
    optuna = _import_optuna()
    if config.variants:
        raise ConfigError("the config has a 'variants' list; tune one configuration (drop variants)")
    base_seed = _check_numbers(trials, seed, timeout, config.train.seed)
    _check_space(config, space, space_source)
    check_tune_folder(out_dir)
    from mtpp.runs import RunLock, make_out_folder

    out = make_out_folder(out_dir)
    with RunLock(out):  # one search per folder at a time: a second would mark the first's running trial failed
        return _search(optuna, config, space, out, trials, base_seed, data_dir=data_dir, timeout=timeout,
                       verbose_runs=verbose_runs, echo=echo)


def _search(optuna: Any, config: RunConfig, space: list[Param], out: Path, trials: int, base_seed: int, *,
            data_dir: str | None, timeout: float | None, verbose_runs: bool, echo: Any) -> dict[str, Any]:
    """The body of :func:`tune` once its arguments are checked and ``out`` is locked."""
    from mtpp.training.trainer import fit

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    study = _open_study(optuna, out / STUDY_FILE)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # interrupted earlier
        # its end is unknown (now is when this search found it): trials.csv leaves its seconds empty
        study.set_user_attr(KILLED_ATTR, sorted({*study.user_attrs.get(KILLED_ATTR, []), t.number}))
        echo(f"trial {t.number} was interrupted in an earlier search; marked failed (its folder is kept)")
    base = config.to_dict()
    base.pop("variants", None)
    _check_same_search(study, base, space, out / STUDY_FILE)
    _check_same_data(study, config, data_dir, out)
    study.sampler = optuna.samplers.TPESampler(seed=(base_seed + len(study.trials)) % 2**32)
    # epochs count from 1: the first epoch is never judged (Optuna prunes at steps >= n_warmup_steps)
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=PRUNE_FROM_EPOCH)
    quiet = [] if verbose_runs else [("logging.quiet", True), ("logging.progress", False)]
    binned = config.train.select_time_on == "binned"  # the score every trial's early stopping follows
    label = OBJECTIVE_BINNED if binned else OBJECTIVE

    def objective(trial: Any) -> float:
        values = {p.key: p.suggest(trial) for p in space}
        run_dir = out / f"trial_{trial.number:03d}"
        last_epoch = [0]  # the trial's train.max_epochs, once its configuration is built

        def report(epoch: int, val: dict[str, float]) -> None:
            v = val["val_nll_time_binned_per_seq"] + val["val_nll_mark_per_seq"] if binned else val["val_nll_per_seq"]
            if math.isfinite(v):
                trial.report(v, epoch)
            if epoch >= last_epoch[0]:  # trained to the end: nothing left to save, the trial completes
                return
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch} ({label} {v:.4f}: its best so far is worse "
                                         "than the median of the complete trials at that epoch)")

        start = time.perf_counter()
        try:
            cfg = config_from_dict(apply_overrides(base, [*values.items(), *quiet]))
            last_epoch[0] = cfg.train.max_epochs
            metrics = fit(cfg, run_dir, data_dir=data_dir, on_epoch=report, interrupt_hint=False)
            value = _total(metrics["val"], binned)
            if not math.isfinite(value):
                raise MtppError(f"the objective {label} is {value} (see {run_dir})")
        except optuna.TrialPruned as e:  # says after which epoch, its value there, and why
            echo(f"trial {trial.number:>3}  {e}  {_fmt(values)}  ({time.perf_counter() - start:.1f}s)")
            raise
        except MtppError as e:  # one line; Optuna's own warning with the traceback is filtered out
            echo(f"trial {trial.number:>3}  failed  {_fmt(values)}: {e}")
            raise
        echo(f"trial {trial.number:>3}  {label} {value:.4f} nats  {_fmt(values)}  ({time.perf_counter() - start:.1f}s)")
        return value

    def finished() -> int:
        return len(study.get_trials(deepcopy=False, states=done_states))

    todo = trials - finished()
    try:
        if todo > 0:
            echo(f"tuning {len(space)} key(s) over {todo} more trial(s) into {out} (study {out / STUDY_FILE}), "
                 f"minimising {label}: {'binned L_T' if binned else 'L_T'} + L_M on the validation split, "
                 "nats per sequence")
            deadline = None if timeout is None else time.monotonic() + timeout
            while finished() < trials and (deadline is None or time.monotonic() < deadline):
                try:
                    with _one_line_failures():
                        study.optimize(objective, n_trials=1, catch=(MtppError,))
                except KeyboardInterrupt:
                    echo(f"mtpp tune: interrupted; trial {len(study.trials) - 1} is marked failed in the study (its "
                         "folder is kept, but resuming it with mtpp train would train it outside the search); run the "
                         "same mtpp tune command again to continue the search")
                    raise
                failed = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
                if failed > 2 * trials:
                    raise MtppError(f"{failed} trials failed (more than twice --trials {trials}); the search stops: "
                                    f"see the lines above, {out / TRIALS_FILE} and the trial folders")
        else:
            echo(f"{out / STUDY_FILE} already holds {finished()} finished trial(s) (asked for {trials}); nothing to run")
    finally:
        _write_trials(study, out / TRIALS_FILE, label)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        ran = "no trial ran (--timeout)" if not study.trials else "all pruned or failed"
        raise MtppError(f"no trial completed ({ran}); see {out / TRIALS_FILE}")
    best = study.best_trial
    best_path = out / BEST_FILE
    trained = _trial_config(out / f"trial_{best.number:03d}")  # the configuration that scored best.value
    best_cfg = _with_settings_of(trained, base) if trained else config_from_dict(
        apply_overrides(base, list(best.params.items()))).to_dict()
    best_cfg.pop("variants", None)
    header = (
        f"{BEST_MARK} best of {len(complete)} complete trial(s) in {out / STUDY_FILE}\n"
        f"# trial {best.number}: {label} = {best.value:.6g} (nats per sequence, lower is better)\n"
        + "".join(f"#   {k} = {v!r}\n" for k, v in best.params.items())
        + f"# train it: mtpp train {best_path} --out DIR\n"
    )
    write_text(best_path, header + dump_yaml(best_cfg))
    states = [t.state for t in study.trials]
    return {
        "best_value": best.value,
        "objective": label,
        "best_params": dict(best.params),
        "best_trial": best.number,
        "best_config": str(best_path),
        "finished": len(complete),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
    }


def _check_numbers(trials: int, seed: int | None, timeout: float | None, train_seed: int) -> int:
    """``ConfigError`` for a number of ``tune`` out of range; returns the sampler's seed."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials must be an integer >= 1, got {trials!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"--timeout must be a number of seconds > 0, got {timeout!r} (leave it out for no limit)")
    which, value = ("--seed", seed) if seed is not None else ("train.seed (the default of --seed)", train_seed)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ConfigError(f"{which} must be an integer in [0, 2**32), got {value!r}")
    return value


def _with_settings_of(trained: dict, base: dict) -> dict:
    """``trained`` (a trial's configuration) with ``base``'s settings that do not change what a run computes
    (``mtpp.config.NON_SEMANTIC_KEYS``: logging, device, threads, ...; a trial's ``config.yaml`` omits
    ``logging.quiet`` / ``logging.progress`` and the trials run quiet)."""
    import copy

    from mtpp.config import NON_SEMANTIC_KEYS

    out = copy.deepcopy(trained)
    for key in NON_SEMANTIC_KEYS:
        section, _, name = key.partition(".")
        if section not in base:
            continue
        if name:
            out.setdefault(section, {})[name] = copy.deepcopy(base[section].get(name))
        else:
            out[section] = copy.deepcopy(base[section])
    return out


BEST_MARK = "# mtpp tune:"
"""First characters of every ``best.yaml`` ``tune`` writes (how a folder of its own is recognised)."""
TRIALS_COLUMNS = ("trial", "state", OBJECTIVE.replace(" ", "_"))
"""First columns of every ``trials.csv`` ``tune`` writes (its last one is ``seconds``; the third is
``val_nll_binned_per_seq`` under ``train.select_time_on: binned``)."""
_TRIAL_DIR = re.compile(r"trial_(\d{3,})")
_STUDY_TABLES = {"studies", "trials", "trial_params", "study_user_attributes", "version_info"}


def check_tune_folder(out_dir: str | Path) -> None:
    """``MtppError`` in one line, before anything is written, unless ``out_dir`` is absent, empty or a folder that
    ``tune`` wrote, recognised by content (no hidden marker, so folders of earlier versions count):

    - ``study.db`` (and SQLite's ``-journal`` / ``-wal`` / ``-shm`` beside it): an Optuna SQLite database holding
      one study, ``mtpp``, which records its search (the ``mtpp_search`` user attribute) or, written by an earlier
      version, searches only configuration keys; a file that is not such a database is named, never opened by
      Optuna (which would add its tables to it);
    - ``best.yaml`` starting with :data:`BEST_MARK`; ``trials.csv`` with the :data:`TRIALS_COLUMNS` header;
    - ``trial_NNN/``: the folder of trial NNN of that study, either a run (a ``config.yaml`` with ``run_info``)
      with the trial's values or, killed before its ``config.yaml``, only a run's files; without ``study.db``
      no trial folder is accepted (their study is gone: a new one would number its trials from 0 into them);
    - what ``mtpp report DIR`` writes there (``summary*.md`` / ``summary*.csv``, ``plots*/``: ``mtpp.owned``);
    - ``.mtpp.lock``; a folder whose lock another live process holds (a search running there) is refused, naming it.
    """
    from mtpp.owned import is_ours
    from mtpp.runs import LOCK_FILE, RunLock

    out = Path(out_dir)
    if not out.is_dir():
        return  # absent (created) or a file (make_out_folder says so)
    if RunLock.holder_of(out) is not None:  # a search (or a run) in progress: its files are not ours to judge
        with RunLock(out):  # raises, naming the holder (pid, host, command); let go at once if it just ended
            pass
    entries = sorted(out.iterdir())
    if not entries:
        return
    study_db = out / STUDY_FILE
    trial_dirs = [e for e in entries if e.is_dir() and _TRIAL_DIR.fullmatch(e.name)]
    if (out / "config.yaml").is_file():
        raise MtppError(f"{out}: holds a run (config.yaml), not a search of mtpp tune; choose another --out")
    for e in entries:
        if e in trial_dirs or e.name in (STUDY_FILE, *(f"{STUDY_FILE}-{x}" for x in ("journal", "wal", "shm")),
                                         LOCK_FILE):
            continue
        if e.name == BEST_FILE and e.is_file() and _text_head(e).startswith(BEST_MARK):
            continue
        if e.name == TRIALS_FILE and e.is_file() and _is_trials_csv(e):
            continue
        if e.name.startswith("summary") and e.is_file() and e.suffix in (".md", ".csv") and is_ours(e):
            continue
        if e.name.startswith("plots") and e.is_dir() and all(f.is_file() and is_ours(f) for f in e.iterdir()):
            continue
        raise MtppError(f"{out}: not empty and not a folder mtpp tune wrote ({e.name} is not one of its files: a "
                        f"{STUDY_FILE}, {BEST_FILE}, {TRIALS_FILE}, trial_NNN/ runs of its study); choose another "
                        "--out or an empty one")
    if not study_db.exists():
        if trial_dirs:
            raise MtppError(f"{out}: holds {', '.join(d.name for d in trial_dirs[:3])}"
                            f"{' ...' if len(trial_dirs) > 3 else ''} but no {STUDY_FILE}: those trials belong to a "
                            "study that is gone, and a new one would train into them; move them away or choose "
                            "another --out")
        return
    _check_study_db(study_db)
    if trial_dirs:
        optuna = _import_optuna()
        trials = {t.number: t for t in _open_study(optuna, study_db, create=False).get_trials(deepcopy=False)}
        for d in trial_dirs:
            problem = _not_a_trial_run(d, trials.get(int(_TRIAL_DIR.fullmatch(d.name).group(1))))
            if problem:
                raise MtppError(f"{d}: {problem}; move it away or choose another --out")


def _text_head(path: Path, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _is_trials_csv(path: Path) -> bool:
    columns = _text_head(path).splitlines()[:1]
    columns = columns[0].rstrip("\r").split(",") if columns else []
    objectives = {o.replace(" ", "_") for o in (OBJECTIVE, OBJECTIVE_BINNED)}
    return tuple(columns[:2]) == TRIALS_COLUMNS[:2] and columns[2:3] in ([o] for o in objectives) \
        and columns[-1:] == ["seconds"]


def _check_study_db(path: Path) -> None:
    """``MtppError`` unless ``path`` is a study database of ``tune`` (:func:`check_tune_folder`); read only."""
    import json
    import sqlite3

    from mtpp.config import SECTIONS

    def refuse(why: str) -> MtppError:
        return MtppError(f"{path}: not a study database of mtpp tune ({why}); move it away or choose another --out")

    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not _STUDY_TABLES <= tables:
                raise refuse("not an Optuna study database" if tables else "an empty database")
            names = [r[0] for r in con.execute("SELECT study_name FROM studies")]
            if names != [STUDY_NAME]:
                raise refuse(f"its studies are {', '.join(map(repr, names)) or 'none'}, not the one {STUDY_NAME!r}")
            row = con.execute("SELECT a.value_json FROM study_user_attributes a JOIN studies s USING (study_id) "
                              "WHERE s.study_name = ? AND a.key = ?", (STUDY_NAME, SEARCH_ATTR)).fetchone()
            params = [r[0] for r in con.execute(
                "SELECT DISTINCT p.param_name FROM trial_params p JOIN trials t USING (trial_id) "
                "JOIN studies s ON t.study_id = s.study_id WHERE s.study_name = ?", (STUDY_NAME,))]
        finally:
            con.close()
    except sqlite3.Error as e:
        raise refuse(f"not a readable SQLite database: {e}") from None
    if row is not None:
        search = json.loads(row[0]) if row[0] else None
        if isinstance(search, dict) and "config" in search and "space" in search:
            return
        raise refuse(f"its {SEARCH_ATTR} attribute is not a search of mtpp tune")
    other = [p for p in params if p.split(".", 1)[0] not in SECTIONS or "." not in p]
    if other:
        raise refuse(f"study {STUDY_NAME!r} searches {', '.join(other[:3])}, not configuration keys")


def _open_study(optuna: Any, path: Path, create: bool = True) -> Any:
    """The study ``mtpp`` of ``path`` (created when absent and ``create``); a database Optuna cannot use is one
    ``MtppError`` naming it (call :func:`check_tune_folder` first: Optuna adds its tables to any SQLite file)."""
    import sqlalchemy.exc

    storage = f"sqlite:///{path.resolve()}"
    try:
        if create:
            return optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True,
                                       direction="minimize")
        return optuna.load_study(study_name=STUDY_NAME, storage=storage)
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError, KeyError) as e:
        raise MtppError(f"{path}: Optuna cannot open its study ({' '.join(str(e).split())[:300]}); move it away or "
                        "choose another --out") from None


def _not_a_trial_run(run_dir: Path, trial: Any) -> str | None:
    """Why ``run_dir`` is not the folder of ``trial`` (``None`` when absent from the study), or ``None``."""
    from mtpp.runs import LOCK_FILE
    from mtpp.training.trainer import RUN_FILES, TRAIN_LOG

    if trial is None:
        return f"trial_NNN folder of no trial of the study in {run_dir.parent / STUDY_FILE}"
    config = run_dir / "config.yaml"
    if not config.is_file():
        own = {*RUN_FILES, TRAIN_LOG, LOCK_FILE, "arrays_val.json", "arrays_test.json"}
        other = sorted(p.name for p in run_dir.iterdir() if p.name not in own)
        return f"holds {', '.join(other[:3])}, not a run of trial {trial.number}" if other else None
    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raw = None
    if not (isinstance(raw, dict) and isinstance(raw.get("run_info"), dict)):
        return f"its config.yaml is not a run's (no run_info), so not trial {trial.number}'s"
    for key, want in trial.params.items():
        node: Any = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        same = node == want or (isinstance(want, float) and isinstance(node, (int, float))
                                and math.isclose(node, want, rel_tol=1e-9))  # fmt: skip
        if not same:
            return f"a run with {key}={node!r}, not trial {trial.number}'s {key}={want!r}"
    return None


PRUNE_FROM_EPOCH = 2
"""The first epoch (counting from 1) after which a trial may be pruned: one epoch says too little to stop a trial."""

KILLED_ATTR = "mtpp_killed"
"""The study's user attribute listing the trials a later search found RUNNING (their search killed) and marked
failed: their end is unknown, so ``trials.csv`` gives them no ``seconds``."""

SEARCH_ATTR = "mtpp_search"
"""The study's user attribute holding what it searches: the base configuration and the space (``tune`` refuses to
continue a study with other ones)."""


def _check_same_search(study: Any, base: dict, space: list[Param], where: Path) -> None:
    """Record the search in a new study; refuse (``ConfigError``, naming the differences) to continue one that
    searched another base configuration or space: its trials would be ranked with the new ones, and ``best.yaml``
    would describe neither. Settings that do not change what a run computes (``NON_SEMANTIC_KEYS``) and the
    searched keys' own base values are not compared."""
    import dataclasses
    import json

    from mtpp.experiments import stored_differences

    search = json.loads(json.dumps({"config": base, "space": [dataclasses.asdict(p) for p in space]}, default=list))
    stored = study.user_attrs.get(SEARCH_ATTR)
    if stored is None:
        if study.trials:  # a study written before the search was recorded: nothing to check it against
            return
        study.set_user_attr(SEARCH_ATTR, search)
        return
    searched = {p.key for p in space} | {p["key"] for p in stored.get("space", [])}
    diffs = [d for d in stored_differences(stored.get("config"), base, "the study's base configuration")
             if d.split(":", 1)[0] not in searched]
    old = {p["key"]: p for p in stored.get("space", [])}
    new = {p["key"]: p for p in search["space"]}
    diffs += [f"space {k}: {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new))
              if old.get(k) != new.get(k)]
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; ... ({len(diffs)} differences)" if len(diffs) > 4 else "")
        raise ConfigError(f"{where} searched another base configuration or space ({shown}): continue it with the same "
                          "CONFIG, --set and --space, or search into another --out")


DATA_ATTR = "mtpp_data"
"""The study's user attribute holding the record of the data it searches on (``mtpp.runs.data_record``: source,
sizes and SHA-256 fingerprints of train / val / test): ``tune`` refuses to continue the study on other data."""


def _check_same_data(study: Any, config: RunConfig, data_dir: str | None, out: Path) -> None:
    """Load the data the trials will train and be scored on and record it in a new study; refuse (``MtppError``,
    naming both sources and the parts that differ) to continue a study on other data: the validation NLLs of
    trials on other data cannot be ranked, and the pruner's medians would mix them. Data that moved keeps its
    fingerprints and is accepted. A study written before the record existed is checked against its first trial
    folder that records its data."""
    from mtpp.runs import data_record, describe_difference, differing_parts, open_run
    from mtpp.training.setup import load_data

    current = data_record(load_data(config.data, data_dir), config.data)
    stored = study.user_attrs.get(DATA_ATTR)
    for t in study.get_trials(deepcopy=False) if stored is None else []:
        try:
            stored = open_run(out / f"trial_{t.number:03d}").data_record
        except (MtppError, OSError):
            continue
        if stored:
            break
    if stored and study.trials:
        parts = differing_parts(stored, current)
        if parts:
            raise MtppError(f"{out / STUDY_FILE}: the data differ from those its {len(study.trials)} trial(s) were "
                            f"trained and scored on: {describe_difference(stored, current, parts)}; their "
                            "validation NLLs cannot be ranked with new ones: point --data-dir at the recorded data "
                            "(or restore it), or search this data into another --out")
    else:
        study.set_user_attr(DATA_ATTR, current)


def _trial_config(run_dir: Path) -> dict | None:
    """A trial's own resolved configuration (its ``config.yaml``), ``None`` when unreadable."""
    try:
        raw = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        raw.pop("run_info", None)
        return config_from_dict(raw).to_dict()
    except (OSError, yaml.YAMLError, AttributeError, ConfigError, TypeError, ValueError):
        return None


class _one_line_failures:
    """Optuna logs a failed trial (an ``MtppError``: a point of the space that is not a valid configuration, data
    that cannot be trained on) or one cut by Ctrl-C with the whole traceback and a second line; the objective
    says it in one line instead, so both records are dropped."""

    def __enter__(self) -> None:
        import logging

        # on every optuna logger: a logger's filter sees only the records created on it, not its children's
        names = [n for n in logging.root.manager.loggerDict if n == "optuna" or n.startswith("optuna.")]
        self.loggers = [logging.getLogger(n) for n in names]
        quiet = (KeyboardInterrupt, MtppError)
        self.filter = lambda record: not (record.exc_info and isinstance(record.exc_info[1], quiet)
                                          or "KeyboardInterrupt" in record.getMessage()
                                          or "failed with value None" in record.getMessage())  # fmt: skip
        for logger in self.loggers:
            logger.addFilter(self.filter)

    def __exit__(self, *exc: Any) -> None:
        for logger in self.loggers:
            logger.removeFilter(self.filter)


def _total(val: dict[str, Any], binned: bool = False) -> float:
    """The objective from a run's ``metrics.json["val"]``: ``nll_per_seq`` (``L_T + L_M``), or with ``binned``
    (``train.select_time_on: binned``) ``nll_time_binned_per_seq + nll_mark_per_seq``; NaN when absent."""
    if binned:
        t, m = val.get("nll_time_binned_per_seq"), val.get("nll_mark_per_seq")
        return float("nan") if t is None or m is None else float(t + m)
    v = val.get("nll_per_seq")
    if v is None:
        t, m = val.get("nll_time_per_seq"), val.get("nll_mark_per_seq")
        v = None if t is None or m is None else t + m
    return float("nan") if v is None else float(v)  # NaN: Optuna marks the trial failed


def _fmt(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _write_trials(study: Any, path: Path, label: str = OBJECTIVE) -> None:
    import csv

    keys = sorted({k for t in study.trials for k in t.params})
    killed = set(study.user_attrs.get(KILLED_ATTR, []))  # marked failed by a later search: no known end
    with replacing(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*TRIALS_COLUMNS[:2], label.replace(" ", "_"), *keys, "seconds"])
        for t in study.trials:
            secs = ((t.datetime_complete - t.datetime_start).total_seconds()
                    if t.datetime_complete and t.number not in killed else "")
            w.writerow([t.number, t.state.name.lower(), "" if t.value is None else t.value,
                        *[t.params.get(k, "") for k in keys], secs])
