"""The options every forecasting command (``predict``, ``generate``, ``plot``, ``evaluate --horizon``) shares:
which run's data, where, and the cap on sampled continuations."""

from __future__ import annotations

import argparse

from mtpp.commands._types import positive_float, positive_int
from mtpp.commands._types import seed as seed_type

__all__ = ["add_max_events", "add_run_options", "positive_float", "positive_int"]


def add_run_options(p: argparse.ArgumentParser, seed: bool = True) -> None:
    """``--split``, ``--data-dir``, ``--device``, ``--overwrite`` (and ``--seed`` unless ``seed=False``)."""
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="default: test")
    if seed:
        p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--data-dir", help="where the datasets are (default: the run's recorded data, $MTPP_DATA_DIR)")
    p.add_argument("--device", help="override train.device (auto, cpu, cuda[:n])")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


MAX_EVENTS = 1000
"""The default of ``--max-events`` (``mtpp.forecast.generate.DEFAULT_MAX_EVENTS``, not imported here: building the
parser stays free of torch)."""


def add_max_events(p: argparse.ArgumentParser) -> None:
    """``--max-events N``: the cap on events per sampled continuation, one definition for every command that samples
    (``generate``, ``plot``, ``evaluate --horizon``); continuations cut there are counted and said, never silent."""
    p.add_argument("--max-events", type=positive_int, default=None, metavar="N",
                   help=f"cap on events per sampled continuation (default {MAX_EVENTS}); continuations cut there "
                   "before the horizon are reported, and event counts from them are lower bounds")
