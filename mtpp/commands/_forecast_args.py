"""The options every forecasting command (``predict``, ``generate``, ``plot``, ``evaluate --horizon``) shares:
which run's data, where, and the cap on sampled continuations."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mtpp.commands._types import positive_float, positive_int
from mtpp.commands._types import seed as seed_type

__all__ = ["add_max_events", "add_run_options", "input_sequences", "positive_float", "positive_int",
           "require_scored_events", "sequence_index", "SEQUENCE_HELP"]

SEQUENCE_HELP = ("an index of the split's (or --input's) sequences (0, 1, ...), or a seq_id of the data (user_17, or "
                 "id:17)")
"""How ``--sequence`` / ``--sequences`` name a sequence (:func:`sequence_index`)."""


def sequence_index(seqs: list, token: str, flag: str, where: str) -> int:
    """The index in ``seqs`` (``where``: "the test split" of a run's data, or an ``--input`` file) that ``token`` names: an integer is an index; ``id:X`` or any
    other text is the seq_id ``X`` of the data (``EventSequence.name``: a table's ``seq_id``). ``MtppError`` in one
    line naming ``flag`` otherwise."""
    from mtpp.errors import MtppError

    text = str(token).strip()
    if not text.startswith("id:"):
        try:
            i = int(text)
        except ValueError:
            pass
        else:
            if not 0 <= i < len(seqs):
                raise MtppError(f"{flag} {i}: out of range, {where} has {len(seqs)} sequences "
                                f"(0..{len(seqs) - 1})")
            return i
    name = text.removeprefix("id:")
    for i, s in enumerate(seqs):
        if s.name == name:
            return i
    known = [s.name for s in seqs if s.name is not None]
    hint = (f" (its seq_ids: {', '.join(repr(n) for n in known[:3])}{', ...' if len(known) > 3 else ''})" if known
            else " (its sequences have no seq_id: name them by index)")
    raise MtppError(f"{flag} {text!r}: no sequence of {where} has seq_id {name!r}{hint}")


def add_run_options(p: argparse.ArgumentParser, seed: bool = True, input: bool = False) -> None:
    """``--split``, ``--data-dir``, ``--device``, ``--overwrite`` (and ``--seed`` unless ``seed=False``; ``--input``
    and ``--sort`` with ``input``: :func:`input_sequences`)."""
    p.add_argument("--split", choices=("train", "val", "test"), default=None, help="default: test")
    if input:
        p.add_argument("--input", type=Path, metavar="FILE",
                       help="forecast the sequences of this file or folder instead of a split of the run's data (a "
                       "CSV / Parquet table with seq_id, time, mark, or any format mtpp data describe reads; marks "
                       "in the ids of the run's data)")
        p.add_argument("--sort", action="store_true", help="with --input: sort unsorted sequences instead of "
                       "refusing them")
    if seed:
        p.add_argument("--seed", type=seed_type, default=0,
                       help="seed of the sampled continuations, 0 to 2**32-1 (default 0: the same samples every time)")
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


def input_sequences(run: Any, args: argparse.Namespace) -> tuple[list, str]:
    """The sequences a forecasting command works on and how to name them: ``--input FILE``'s
    (``LoadedRun.read_sequences``, in the model's mark ids), or the run's ``--split`` (default test). ``MtppError``
    when both ``--input`` and ``--split`` are given."""
    from mtpp.errors import MtppError

    if getattr(args, "input", None) is None:
        if getattr(args, "sort", False):
            raise MtppError("--sort only applies with --input (the run's own data were read as its config says)")
        args.split = args.split or "test"
        return run.split(args.split), f"the {args.split} split"
    if args.split is not None:
        raise MtppError(f"--input {args.input} and --split {args.split}: give one (the sequences of a file, or a split "
                        "of the run's data)")
    return run.read_sequences(args.input, sort=args.sort, log=lambda m: print(m, file=sys.stderr),
                              progress=True), str(args.input)


def require_scored_events(seqs: list, first_event: str, where: str, fix: str) -> None:
    """``MtppError`` naming ``where`` (an ``--input`` file, "the test split") when ``seqs`` hold no scored event:
    every sequence is one event long and ``first_event: skip`` leaves each first event unscored. Every metric
    would be 0 / 0 (``evaluate``) or the table empty with NaN summaries (``predict``); ``fix`` says what works
    instead."""
    from mtpp.errors import MtppError

    if first_event == "skip" and seqs and all(len(s) == 1 for s in seqs):
        raise MtppError(f"{where}: {len(seqs)} sequence(s) of one event each and no scored event (the run's "
                        f"model.first_event: skip leaves each sequence's first event unscored); {fix}")
