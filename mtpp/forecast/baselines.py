"""Reference forecasters for reading the numbers: homogeneous marked Poisson, and the true synthetic Hawkes process.

- ``poisson``: ``PoissonProcess`` with the MLE rates of the training split (``fit_poisson``): constant intensity
  ``lambda_k = n_k / sum T``. Its next-mark forecast is the training-set mark frequency ``n_k / n`` (the "mark
  frequencies" baseline: for the mark metrics the two are the same forecaster), its gap law ``Exp(sum_k lambda_k)``.
- ``hawkes``: the generating process of ``synthetic_hawkes`` (``mtpp.data.synthetic.SYNTHETIC_PARAMS``), its
  exact intensity: the best any model can do on that data. Refused for any other dataset.

Each is a ``factory(histories) -> process`` for ``mtpp.forecast.generate.generate`` and
``mtpp.forecast.horizon.evaluate_horizon``, so baselines are scored by exactly the model's metrics.
"""

from __future__ import annotations

from typing import Callable

from mtpp.errors import MtppError

BASELINES = ("poisson", "hawkes")
SYNTHETIC_NAME = "synthetic_hawkes"


def baseline_factory(name: str, run) -> Callable:
    """``factory(histories)`` of baseline ``name`` for a loaded run (``mtpp.forecast.runs.LoadedRun``)."""
    from mtpp.forecast.process import HawkesProcess, PoissonProcess, fit_poisson

    if name == "poisson":
        rates = fit_poisson(run.data.train, run.data.num_marks)
        return lambda histories: PoissonProcess(rates, histories)
    if name == "hawkes":
        if run.cfg.data.name != SYNTHETIC_NAME:
            raise MtppError(f"the true Hawkes baseline exists for {SYNTHETIC_NAME} only, not {run.cfg.data.name!r}")
        from mtpp.data.synthetic import SYNTHETIC_PARAMS

        return lambda histories: HawkesProcess(SYNTHETIC_PARAMS, histories)
    raise MtppError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")


def available_baselines(run) -> list[str]:
    """The baselines that apply to ``run``'s data (``hawkes`` only on ``synthetic_hawkes``)."""
    return [b for b in BASELINES if b != "hawkes" or run.cfg.data.name == SYNTHETIC_NAME]
