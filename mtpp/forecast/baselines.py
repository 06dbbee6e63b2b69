"""Reference forecasters for reading the numbers: homogeneous marked Poisson, a fitted Hawkes process, and the true
synthetic Hawkes process.

- ``poisson``: ``PoissonProcess`` with the MLE rates of the training split (``fit_poisson``): constant intensity
  ``lambda_k = n_k / sum T``. Its next-mark forecast is the training-set mark frequency ``n_k / n`` (the "mark
  frequencies" baseline: for the mark metrics the two are the same forecaster), its gap law ``Exp(sum_k lambda_k)``.
- ``hawkes-fit``: the classical parametric baseline, a ``K``-mark exponential-kernel Hawkes process (``mu: [K]``,
  ``alpha: [K, K]``, scalar ``beta``) fitted by maximum likelihood on the training split of any dataset
  (``mtpp.forecast.hawkes_fit.fit_hawkes``: each sequence given its first event, as ``fit_poisson``; times in the
  data's units). The fit is cached in the run folder (:data:`HAWKES_FIT_CACHE`), keyed by the training split's
  fingerprint (``mtpp.runs.fingerprint``), so it runs once per run and data. Not in :func:`available_baselines`:
  the first fit costs minutes on the benchmarks (measured: 41 s, 199 L-BFGS iterations, on MOOC's 186k training
  events, one thread; 3 s on synthetic_hawkes), and on bursty data the fit is non-stationary (MOOC: branching ratio
  1.08), so sampling it runs to ``--max-events``. Ask for it by name (``mtpp generate --baseline hawkes-fit``).
- ``hawkes``: the generating process of ``synthetic_hawkes`` (``mtpp.data.synthetic.SYNTHETIC_PARAMS``), its
  exact intensity: the best any model can do on that data. Refused for any other dataset.

Each is a ``factory(histories) -> process`` for ``mtpp.forecast.generate.generate`` and
``mtpp.forecast.horizon.evaluate_horizon``, so baselines are scored by exactly the model's metrics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from mtpp.errors import MtppError

BASELINES = ("poisson", "hawkes-fit", "hawkes")
SYNTHETIC_NAME = "synthetic_hawkes"
HAWKES_FIT_CACHE = Path("baselines") / "hawkes_fit.json"
"""The fitted Hawkes baseline's cache, relative to the run folder: ``{"written_by": "mtpp", "baseline":
"hawkes-fit", "key": {...}, "params": {mu, alpha, beta}, "fit": {log_likelihood, events, iterations, converged,
branching_ratio, seconds}}``. ``key``: the training split's ``sha256`` (``mtpp.runs.fingerprint``), ``num_marks``
and :data:`HAWKES_FIT_VERSION`; a cache of another key is refitted and replaced. A file there that mtpp did not
write (``mtpp.owned.is_ours``) is never replaced: the fit is used uncached, with a warning."""
HAWKES_FIT_VERSION = 1
"""Changes when the fit would give other parameters for the same data (invalidating older caches)."""

logger = logging.getLogger(__name__)


def baseline_factory(name: str, run, *, log: Callable[[str], None] | None = None) -> Callable:
    """``factory(histories)`` of baseline ``name`` for a loaded run (``mtpp.forecast.runs.LoadedRun``); ``log``
    gets one line saying where ``hawkes-fit``'s parameters came from (fitted, or read from the cache)."""
    from mtpp.forecast.process import HawkesProcess, PoissonProcess, fit_poisson

    if name == "poisson":
        rates = fit_poisson(run.data.train, run.data.num_marks)
        return lambda histories: PoissonProcess(rates, histories)
    if name == "hawkes-fit":
        params = fitted_hawkes(run, log=log)
        return lambda histories: HawkesProcess(params, histories)
    if name == "hawkes":
        if run.cfg.data.name != SYNTHETIC_NAME:
            raise MtppError(f"the true Hawkes baseline exists for {SYNTHETIC_NAME} only, not {run.cfg.data.name!r}")
        from mtpp.data.synthetic import SYNTHETIC_PARAMS

        return lambda histories: HawkesProcess(SYNTHETIC_PARAMS, histories)
    raise MtppError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")


def available_baselines(run) -> list[str]:
    """The baselines ``mtpp evaluate --horizon`` scores on ``run``'s data: ``poisson``, and ``hawkes`` on
    ``synthetic_hawkes`` only; never ``hawkes-fit`` (module docstring: asked for by name)."""
    return [b for b in BASELINES if b != "hawkes-fit" and (b != "hawkes" or run.cfg.data.name == SYNTHETIC_NAME)]


def fitted_hawkes(run, *, progress: bool = True, log: Callable[[str], None] | None = None):
    """The ``HawkesParams`` of the ``hawkes-fit`` baseline of a loaded run: read from the run's cache
    (:data:`HAWKES_FIT_CACHE`) when its key matches the training split, else fitted on ``run.data.train``
    (``fit_hawkes``; ``progress``: its bar, on a terminal) and cached. The cache is written atomically; a folder
    that cannot be written, or a file there that mtpp did not write, leaves the fit uncached with one warning.
    ``log`` gets one line: read from the cache, or fitted (time, iterations, branching ratio)."""
    import time

    from mtpp.data.synthetic import HawkesParams
    from mtpp.forecast.hawkes_fit import fit_hawkes
    from mtpp.runs import fingerprint

    path = Path(run.path) / HAWKES_FIT_CACHE
    key = {"train_sha256": fingerprint(run.data.train), "num_marks": int(run.data.num_marks),
           "version": HAWKES_FIT_VERSION}
    cached = read_hawkes_fit_cache(path)
    if cached is not None and cached.get("key") == key:
        try:
            p = cached["params"]
            params = HawkesParams(mu=p["mu"], alpha=p["alpha"], beta=p["beta"], require_stationary=False)
            if log is not None:
                log(f"hawkes-fit: parameters read from {path} (fitted on this training split; branching ratio "
                    f"{params.spectral_radius:.3g})")
            _warn_if_explosive(params.spectral_radius)  # said at every use, not only when fitted
            return params
        except (KeyError, TypeError, ValueError):  # a damaged record of ours: fitted again and replaced
            pass
    start = time.perf_counter()
    fit = fit_hawkes(run.data.train, int(run.data.num_marks), progress=progress)
    record = {
        "written_by": "mtpp", "baseline": "hawkes-fit", "key": key, "params": fit.params.to_dict(),
        "fit": {"log_likelihood": fit.log_likelihood, "events": fit.events, "iterations": fit.iterations,
                "converged": fit.converged, "branching_ratio": fit.branching_ratio,
                "seconds": round(time.perf_counter() - start, 3)},
        "conditioning": "each training sequence given its first event; times in the data's units",
    }
    cached = _write_cache(path, record)
    if log is not None:  # after the write: it says whether the fit was cached
        log(f"hawkes-fit: fitted on {len(run.data.train)} training sequences ({fit.events} scored events) in "
            f"{record['fit']['seconds']:.1f} s, {fit.iterations} L-BFGS iterations"
            f"{'' if fit.converged else ' (not converged: max_iter reached)'}, branching ratio "
            f"{fit.branching_ratio:.3g}; " + (f"cached in {path}" if cached else "not cached (see the warning)"))
    return fit.params


def _warn_if_explosive(rho: float) -> None:
    if not rho < 1.0:
        logger.warning(f"the hawkes-fit baseline is not stationary (branching ratio {rho:.4g} >= 1): generating "
                       "from it may explode (its samples grow until --max-events)")


def read_hawkes_fit_cache(path: str | Path) -> dict | None:
    """The record of a ``hawkes_fit.json`` that mtpp wrote (``mtpp.owned.is_ours``), or ``None`` (absent,
    unreadable, not mtpp's)."""
    from mtpp.owned import is_ours

    path = Path(path)
    if not path.is_file() or not is_ours(path):
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_cache(path: Path, record: dict) -> bool:
    """Write the cache; ``False``, with one warning, when it cannot be (a file mtpp did not write, an OSError)."""
    from mtpp.files import write_text
    from mtpp.owned import is_ours

    if not is_ours(path):
        logger.warning(f"{path} exists and was not written by mtpp: the fitted Hawkes baseline is not cached "
                       "(move the file away to cache it)")
        return False
    try:
        path.parent.mkdir(exist_ok=True)
        write_text(path, json.dumps(record, indent=1) + "\n")
    except OSError as e:
        logger.warning(f"cannot cache the fitted Hawkes baseline in {path} ({e.strerror or e}); it is refitted "
                       "next time")
        return False
    return True
