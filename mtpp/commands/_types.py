"""argparse ``type`` functions the commands share: a bad number is refused in one line by argparse (exit 2),
never passed on to fail deep inside numpy or torch."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer ``>= 1`` (``--batch-size 0`` is refused in one line, not run)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number ``> 0`` (``--max-memory 0`` or ``-1`` is refused in one line)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def seed(text: str) -> int:
    """An argparse ``type``: a seed, an integer in ``0 .. 2^32 - 1`` (``mtpp.config.SEED_MAX``), the range numpy's
    generators and ``torch.manual_seed`` both take (``--seed -1`` failed inside numpy)."""
    from mtpp.config import SEED_MAX

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed must be in 0 .. {SEED_MAX} (2^32 - 1), got {value}")
    return value
