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
``suggest_int``). Every key must be a key of the run configuration and every bound a valid value: the space is
checked before the first trial and a bad entry is one ``ConfigError`` naming the file and the key.

Objective: the **validation NLL per sequence** (``L_T + L_M``, nats per sequence, ``metrics.json["val"]``) of the
trial's best epoch, minimised. Trial ``n`` trains the base config with the sampled values into
``OUT/trial_<n>/`` (a complete run directory, so ``mtpp report OUT`` tables every trial). A run whose validation
NLL is not finite counts as failed.

Pruning: after every epoch the trainer's ``on_epoch`` callback reports the epoch's validation NLL per sequence
(``val_nll_per_seq``, the early-stopping quantity) to Optuna's ``MedianPruner`` (``n_startup_trials=2``,
``n_warmup_steps=1``: a trial is stopped after its second epoch or later when it is worse than the median of the
earlier trials at the same epoch). A pruned trial keeps its folder (``checkpoint.pt``, no ``metrics.json``).

Resuming: the study lives in ``OUT/study.db`` (SQLite, study name ``mtpp``); rerunning the same command continues
it, and ``--trials N`` is the total number of finished (complete or pruned) trials wanted, so an interrupted search
runs only what is missing. A trial that was running when the search was interrupted is marked failed and its
folder left as it is (so run one search per folder at a time). The sampler is TPE seeded by ``seed`` (``train.seed`` unless given) plus the number of
trials already in the study.

Outputs: ``OUT/best.yaml`` (the base configuration with the best trial's values: train it with ``mtpp train
OUT/best.yaml --out DIR``; a header comment gives the trial, its validation NLL and the search), ``OUT/trials.csv``
(one row per trial: number, state, value, parameters, seconds) and the study database.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mtpp.config import RunConfig, apply_overrides, config_from_dict, dump_yaml
from mtpp.errors import ConfigError, MtppError

__all__ = ["Param", "load_space", "parse_space", "tune", "STUDY_FILE", "BEST_FILE", "TRIALS_FILE"]

STUDY_FILE = "study.db"
BEST_FILE = "best.yaml"
TRIALS_FILE = "trials.csv"
STUDY_NAME = "mtpp"
OBJECTIVE = "val nll_per_seq"
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

    def examples(self) -> list:
        """The values at the ends of the range (checked against the config before the search)."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


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


def parse_space(raw: Any, source: str = "space") -> list[Param]:
    """The parameters of a search space mapping (see the module docstring); ``ConfigError`` naming ``source`` and
    the key for anything malformed. Keys are not checked against the config here (``tune`` does)."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: a search space is a non-empty mapping of config keys (train.lr: ...)")
    params = []
    for key, spec in raw.items():
        where = f"{source}: {key}"
        if not isinstance(key, str) or "." not in key:
            raise ConfigError(f"{where}: keys are dotted config keys like train.lr or model.hidden_size")
        if isinstance(spec, list):
            spec = {"type": "categorical", "choices": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a list of choices or a mapping with type, low, high")
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
            params.append(Param(key, kind, choices=tuple(choices)))
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
        params.append(Param(key, kind, low, high, log, step))
    return params


def load_space(path: str | Path) -> list[Param]:
    """:func:`parse_space` of a YAML file (``ConfigError`` for a missing or invalid file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space {str(p)!r} not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(e).split())})") from None
    return parse_space(raw, str(p))


def _check_space(cfg: RunConfig, params: list[Param], source: str) -> None:
    base = cfg.to_dict()
    for prm in params:
        for value in prm.examples():
            try:
                config_from_dict(apply_overrides(base, [(prm.key, value)]))
            except ConfigError as e:
                raise ConfigError(f"{source}: {prm.key}={value!r} is not a valid configuration ({e})") from None


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
    echo: Any = print,
) -> dict[str, Any]:
    """Run (or continue) the search into ``out_dir`` until ``trials`` trials are finished (see the module doc).

    Returns ``{"best_value", "best_params", "best_trial", "best_config" (path), "finished", "pruned", "failed"}``;
    ``best_value`` is the validation NLL per sequence in nats. ``timeout`` (seconds): stop starting new trials
    after it. Raises ``ConfigError`` (Optuna missing, a bad space, a config with variants) or ``MtppError`` (no
    trial finished).
    """
    optuna = _import_optuna()
    from mtpp.training.trainer import fit

    if config.variants:
        raise ConfigError("mtpp tune: the config has a 'variants' list; tune one configuration (drop variants)")
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    _check_space(config, space, space_source)
    from mtpp.runs import make_out_folder

    out = make_out_folder(out_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(out / STUDY_FILE).resolve()}"
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True, direction="minimize")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # interrupted earlier
        echo(f"trial {t.number} was interrupted in an earlier search; marked failed (its folder is kept)")
    base = config.to_dict()
    base.pop("variants", None)
    _check_same_search(study, base, space, out / STUDY_FILE)
    base_seed = config.train.seed if seed is None else seed
    study.sampler = optuna.samplers.TPESampler(seed=base_seed + len(study.trials))
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)

    def objective(trial: Any) -> float:
        values = {p.key: p.suggest(trial) for p in space}
        cfg = config_from_dict(apply_overrides(base, list(values.items())))
        run_dir = out / f"trial_{trial.number:03d}"

        def report(epoch: int, val: dict[str, float]) -> None:
            v = val["val_nll_per_seq"]
            if math.isfinite(v):
                trial.report(v, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch} (val NLL/seq {v:.4g})")

        start = time.perf_counter()
        try:
            metrics = fit(cfg, run_dir, data_dir=data_dir, on_epoch=report)
        except optuna.TrialPruned:
            echo(f"trial {trial.number:>3}  pruned  {_fmt(values)}  ({time.perf_counter() - start:.1f}s)")
            raise
        v = metrics["val"]
        value = _total(v)
        echo(f"trial {trial.number:>3}  {OBJECTIVE} {value:.4f}  {_fmt(values)}  ({time.perf_counter() - start:.1f}s)")
        return value

    def finished() -> int:
        return len(study.get_trials(deepcopy=False, states=done_states))

    todo = trials - finished()
    if todo > 0:
        echo(f"tuning {len(space)} key(s) over {todo} more trial(s) into {out} (study {out / STUDY_FILE})")
        deadline = None if timeout is None else time.monotonic() + timeout
        while finished() < trials and (deadline is None or time.monotonic() < deadline):
            try:
                with _no_interrupt_traceback():
                    study.optimize(objective, n_trials=1, catch=(MtppError,))
            except KeyboardInterrupt:
                _write_trials(study, out / TRIALS_FILE)
                echo(f"mtpp tune: interrupted; trial {len(study.trials) - 1} is marked failed in the study (its folder "
                     "is kept, but resuming it with mtpp train would train it outside the search); run the same "
                     "mtpp tune command again to continue the search")
                raise
            if len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))) > 2 * trials:
                raise MtppError(f"mtpp tune: more than {2 * trials} trials failed; see the trial folders in {out}")
    else:
        echo(f"{out / STUDY_FILE} already holds {finished()} finished trial(s) (asked for {trials}); nothing to run")
    _write_trials(study, out / TRIALS_FILE)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise MtppError(f"mtpp tune: no trial completed (all pruned or failed); see {out / TRIALS_FILE}")
    best = study.best_trial
    best_path = out / BEST_FILE
    best_cfg = _trial_config(out / f"trial_{best.number:03d}") or config_from_dict(
        apply_overrides(base, list(best.params.items()))).to_dict()  # the configuration that scored best.value
    best_cfg.pop("variants", None)
    header = (
        f"# mtpp tune: best of {len(complete)} complete trial(s) in {out / STUDY_FILE}\n"
        f"# trial {best.number}: {OBJECTIVE} = {best.value:.6g} (nats per sequence, lower is better)\n"
        + "".join(f"#   {k} = {v!r}\n" for k, v in best.params.items())
        + f"# train it: mtpp train {best_path} --out DIR\n"
    )
    best_path.write_text(header + dump_yaml(best_cfg), encoding="utf-8")
    states = [t.state for t in study.trials]
    return {
        "best_value": best.value,
        "best_params": dict(best.params),
        "best_trial": best.number,
        "best_config": str(best_path),
        "finished": len(complete),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
    }


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


def _trial_config(run_dir: Path) -> dict | None:
    """A trial's own resolved configuration (its ``config.yaml``), ``None`` when unreadable."""
    try:
        raw = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        raw.pop("run_info", None)
        return config_from_dict(raw).to_dict()
    except (OSError, yaml.YAMLError, AttributeError, ConfigError, TypeError, ValueError):
        return None


class _no_interrupt_traceback:
    """Optuna logs a trial cut by Ctrl-C with the whole traceback; the command says it in one line instead."""

    def __enter__(self) -> None:
        import logging

        # on every optuna logger: a logger's filter sees only the records created on it, not its children's
        names = [n for n in logging.root.manager.loggerDict if n == "optuna" or n.startswith("optuna.")]
        self.loggers = [logging.getLogger(n) for n in names]
        self.filter = lambda record: not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt)
                                          or "KeyboardInterrupt" in record.getMessage()
                                          or "failed with value None" in record.getMessage())  # fmt: skip
        for logger in self.loggers:
            logger.addFilter(self.filter)

    def __exit__(self, *exc: Any) -> None:
        for logger in self.loggers:
            logger.removeFilter(self.filter)


def _total(val: dict[str, Any]) -> float:
    v = val.get("nll_per_seq")
    if v is None:
        t, m = val.get("nll_time_per_seq"), val.get("nll_mark_per_seq")
        v = None if t is None or m is None else t + m
    return float("nan") if v is None else float(v)  # NaN: Optuna marks the trial failed


def _fmt(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _write_trials(study: Any, path: Path) -> None:
    import csv

    keys = sorted({k for t in study.trials for k in t.params})
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["trial", "state", OBJECTIVE.replace(" ", "_"), *keys, "seconds"])
        for t in study.trials:
            secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else ""
            w.writerow([t.number, t.state.name.lower(), "" if t.value is None else t.value,
                        *[t.params.get(k, "") for k in keys], secs])
