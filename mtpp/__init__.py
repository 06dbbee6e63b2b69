"""mtpp: neural marked temporal point processes in PyTorch.

Public API (imported lazily, so ``import mtpp`` stays cheap: no torch, no side effects)::

    from mtpp import load_dataset, build_model, fit, evaluate
    ds = load_dataset("synthetic_hawkes")                      # Dataset: train / val / test, num_marks
    model = build_model({"decoder": "lnm"}, ds.num_marks)      # MarkedTPP (a ModelConfig or a dict)
    result = fit(model, ds, "runs/nb", config={"train": {"max_epochs": 5}})   # metrics.json + run_dir
    evaluate(model, data=ds, split="test")                     # metrics of the trained model

* ``load_dataset`` (``mtpp.data.catalog``): a named or path dataset, one split.
* ``build_model`` (``mtpp.models``): a ``MarkedTPP`` from a ``ModelConfig``, a dict or a run configuration.
* ``fit`` (``mtpp.training.api``): ``fit(model, data, out_dir, config=...)`` or ``fit(config, out_dir)``.
* ``evaluate`` (``mtpp.evaluation.evaluate``): a run directory or a model on a split.
* ``log_likelihood`` (``mtpp.evaluation.likelihood``): each sequence's time and mark log-likelihood under a model.
* Configuration (``mtpp.config``): ``load_config``, ``config_from_dict``, ``RunConfig``, ``DataConfig``,
  ``ModelConfig``, ``TrainConfig``, ``GradientsConfig``, ``LoggingConfig``.
* ``predict``, ``generate`` (``mtpp.forecast``): next-event predictions and sampled continuations.
* ``load_run`` (``mtpp.forecast.runs``): a trained run folder's model (``.model``, from ``best.pt``), configuration
  and data; ``.read_sequences(path)`` reads a file of new sequences in the ids of the run's data.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "load_dataset": "mtpp.data.catalog",
    "build_model": "mtpp.models",
    "fit": "mtpp.training.api",
    "evaluate": "mtpp.evaluation.evaluate",
    "log_likelihood": "mtpp.evaluation.likelihood",
    "load_config": "mtpp.config",
    "config_from_dict": "mtpp.config",
    "RunConfig": "mtpp.config",
    "DataConfig": "mtpp.config",
    "ModelConfig": "mtpp.config",
    "TrainConfig": "mtpp.config",
    "GradientsConfig": "mtpp.config",
    "LoggingConfig": "mtpp.config",
    "predict": "mtpp.forecast.predict",
    "generate": "mtpp.forecast.generate",
    "load_run": "mtpp.forecast.runs",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mtpp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
