"""Next-event predictions as a table: one row per scored event (``mtpp predict``, ``mtpp.predict``).

For sequence ``s`` and event ``i`` (0-based; the scored events of the likelihood contract: every event but the
first with ``first_event: skip``), the model's prediction from the events ``0..i-1``:

========================  ========================================================================================
``sequence``              index of the sequence in the split (or in the list given)
``seq_id``                the source's own id of the sequence (a table's ``seq_id``: ``EventSequence.name``), only
                          when the sequences have one
``index``                 ``i``
``time``                  observed ``t_i`` (data units, absolute)
``history_end``           ``t_{i-1}``, the time the prediction is made from (0, the window start, for ``i = 0``):
                          the predicted next time is ``history_end + median_gap``
``observed_gap``          ``tau_i = t_i - t_{i-1}`` (``t_{-1} = 0``, the window start)
``observed_mark``         ``k_i`` (pandas ``Int64``: missing, not a number, on ``include_next`` rows)
``median_gap``            ``F^{-1}(0.5 | H_i)``
``mean_gap``              ``E[tau | H_i]`` where the decoder has a closed form (LNM), else NaN
``lower_gap_P``,          central interval at ``level`` (``P`` its percent, e.g. ``lower_gap_90`` for 0.9):
``upper_gap_P``           ``F^{-1}((1 - level) / 2)``, ``F^{-1}((1 + level) / 2)`` (:func:`interval_columns`)
``mark_1..k``             the ``k`` most probable marks under the forecast ``p(k | H_i)`` (the next time unknown,
                          ``mtpp.models.marginal``), most probable first
``prob_1..k``             their forecast probabilities
``log_density_gap``       ``log f(tau_i | H_i)`` per data unit (``-`` the event's ``L_T`` term)
``log_prob_mark``         ``log p(k_i | H_i)``, the forecast probability of the observed mark
========================  ========================================================================================

``include_next=True`` adds, per sequence, the prediction after its last event (``index = n``; observed columns
missing: NaN, ``<NA>`` for the mark, an empty field in CSV): the forecast a user acts on. Where the sequence's
window ends after its last event (``data.use_window``, a table's window), that forecast is given that no event
came before the window end (``MarkedTPP.survived_next``: quantiles, mean and marks of the gap law given
``tau > T - t_n``; the gap still counted from ``history_end = t_n``), as ``generate`` continues the sequence. ``top_k`` above the
number of marks ``K`` gives ``K`` mark columns. Numbers equal ``MarkedTPP.predict`` (median, mean, marks) and
``MarkedTPP.score`` (log density) on the same batch (tested). Vectorised over a batch of sequences; Monte Carlo
compensators run under a fixed seed (``train.seed``; counter-based nodes, ``mtpp.models.mtpp.evaluation_seed``), so
the table is reproducible and a sequence's rows do not depend on the batch it was scored in.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mtpp.data.batch import collate
from mtpp.data.sampler import cut_batches
from mtpp.data.sequence import EventSequence
from mtpp.errors import MtppError
from mtpp.files import check_writable, replacing

DEFAULT_LEVEL = 0.9
DEFAULT_TOP_K = 5


def _check_level(level: float) -> float:
    from mtpp.data.checks import check_real

    return check_real(level, "level", 0.0, 1.0)


def interval_columns(level: float) -> tuple[str, str]:
    """The names of the central interval's columns at ``level``: ``("lower_gap_90", "upper_gap_90")`` for 0.9,
    ``("lower_gap_97.5", "upper_gap_97.5")`` for 0.975, so that a table says which interval it holds."""
    pct = f"{round(level * 100, 6):g}"
    return f"lower_gap_{pct}", f"upper_gap_{pct}"


@torch.no_grad()
def predict_batch(model, batch, level: float = DEFAULT_LEVEL, top_k: int = DEFAULT_TOP_K) -> dict[str, torch.Tensor]:
    """Predictions after every prefix of ``batch`` (positions ``0..L``, ``[B, L + 1]``; data units).

    Returns ``median``, ``mean`` (or ``None``), ``lower``, ``upper``, ``mark_log_probs: [B, L + 1, K]`` (forecast),
    ``top_marks`` / ``top_log_probs: [B, L + 1, k]``, ``log_density: [B, L]`` (at the observed gaps),
    ``scored: [B, L]``. Computed at the real positions only (``MarkedTPP.forecasts_at``); at the padding after
    each sequence's ``lengths[b] + 1`` positions the gaps and the log density are 0, the marks uniform.
    """
    from mtpp.models.mtpp import _autocast_off, pack_positions, unpack_positions

    _check_level(level)
    h_time, h_mark = model.histories(batch)
    s = float(model.time_scale)
    n = h_time.shape[1]
    dtype, device = h_time.dtype, h_time.device
    positions = torch.arange(n, device=device)
    lengths = batch.lengths.to(device).unsqueeze(-1)
    quiet = model.quiet_positions(batch)
    # the positions predicted from: after 0..n events (beyond: padding, never computed); the quiet ones below
    at = positions <= lengths if quiet is None else (positions <= lengths) & ~quiet
    streams = model.mc_streams(batch)  # [B, L + 1] histories' keys for Monte Carlo nodes (None: not needed)
    if streams is not None:
        streams = streams.to(device)

    with _autocast_off(device):
        # the three quantiles as trailing query points of ONE icdf call: one bracketing grid, one Newton search
        probs = torch.tensor([(1.0 - level) / 2.0, 0.5, (1.0 + level) / 2.0], dtype=dtype, device=device)
        q, mean, flp = model.forecasts_at(h_time, h_mark, at, probs)  # [B, L + 1, 3], [B, L + 1], [B, L + 1, K]
        lower, median, upper = (q * s).unbind(-1)
        if quiet is not None:  # after the last event of a window that ends later: given no event before its end
            q, m, marks = model.survived_next(model.last_history(h_time, batch.lengths),
                                              model.last_history(h_mark, batch.lengths), batch.survival_gap / s,
                                              probs, stream=None if streams is None
                                              else model.last_stream(streams, batch.lengths))  # fmt: skip
            lower, median, upper = (torch.where(quiet, x.unsqueeze(-1), y)
                                    for x, y in zip((q * s).unbind(-1), (lower, median, upper)))  # fmt: skip
            if mean is not None:
                mean = torch.where(quiet, m.unsqueeze(-1) if m is not None else torch.nan, mean)
            flp = torch.where(quiet.unsqueeze(-1), marks.unsqueeze(1), flp)
        # log f at the observed gaps, at the events only
        seen = batch.mask.to(device)
        keys = None if streams is None else pack_positions(seen, streams[:, :-1])
        dist = model.next_time_distribution(pack_positions(seen, h_time[:, :-1]), keys)  # batch_shape [R, 1]
        taus = pack_positions(seen, batch.taus.to(dtype) / s)  # [R, 1]
        log_density = unpack_positions(seen, dist.log_prob(taus) - math.log(s), 0.0)  # [B, L]
    k = min(top_k, model.num_marks)
    top = flp.topk(k, dim=-1)
    return {
        "median": median,
        "mean": None if mean is None else mean * s,
        "lower": lower,
        "upper": upper,
        "mark_log_probs": flp,
        "top_marks": top.indices,
        "top_log_probs": top.values,
        "log_density": log_density,
        "scored": model.scored_mask(batch),
    }


def predict_frame(
    model,
    sequences: Sequence[EventSequence],
    *,
    level: float = DEFAULT_LEVEL,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = 256,
    include_next: bool = False,
    seed: int = 0,
    ids: Sequence[int] | None = None,
    progress: bool = False,
    max_events: int | None | str = "auto",
    log: Callable[[str], None] | None = None,
):
    """The table of the module docstring for ``sequences`` (a ``pandas.DataFrame``, rows in the order of
    ``sequences``); ``progress``: a bar over the sequences on a terminal; ``log``: one line up front when the mark
    forecast (a quadrature with many marks) is estimated to take over a minute
    (``mtpp.evaluation.evaluate.forecast_estimate``). Batches hold sequences of similar length,
    at most ``batch_size`` of them and ``max_events`` padded events (``mtpp.data.sampler.cut_batches``;
    ``"auto"``: the default run's bound for the model's marks, ``mtpp.config.TrainConfig.evaluation_events``)."""
    import pandas as pd
    from tqdm.auto import tqdm

    _check_level(level)
    if top_k < 1:
        raise MtppError(f"top_k must be >= 1, got {top_k}")
    sequences = list(sequences)
    if not sequences:
        raise MtppError("nothing to predict: no sequences")
    ids = np.arange(len(sequences)) if ids is None else np.asarray(ids)
    named = any(s.name is not None for s in sequences)  # a seq_id column: the user's own names of the sequences
    from mtpp.models.mtpp import evaluation_seed

    param = next(model.parameters())
    was_training = model.training
    model.eval()
    if max_events == "auto":
        from mtpp.evaluation.evaluate import default_evaluation_events

        max_events = default_evaluation_events(model)
    lengths = np.fromiter((len(x) for x in sequences), dtype=np.int64, count=len(sequences))
    frames = []
    bar = tqdm(total=len(sequences), desc="predict", unit="seq", leave=False, disable=None if progress else True)
    try:
        with torch.random.fork_rng(devices=[param.device.index or 0] if param.device.type == "cuda" else []), \
                evaluation_seed(model, seed):
            torch.manual_seed(seed)
            # similar lengths share a batch (an outlier does not pad the others), rows put back in order below
            for idx in cut_batches(np.argsort(lengths, kind="stable"), lengths, batch_size, max_events):
                idx = np.sort(idx)  # within a batch the given order (all in one batch: the batch of the list)
                chunk = [sequences[i] for i in idx]
                batch = collate(chunk, dtype=param.dtype).to(param.device)
                if log is not None and not frames:
                    from mtpp.evaluation.evaluate import forecast_estimate

                    forecast_estimate(model, sequences, batch, log, "the mark columns are this forecast; fewer "
                                      "sequences (--input FILE) take less")
                out = predict_batch(model, batch, level, top_k)
                frames.append(_rows(chunk, ids[idx], batch, out, include_next, level, named, positions=idx))
                bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    frame = pd.concat(frames, ignore_index=True)
    order = np.argsort(frame.pop(_POSITION).to_numpy(), kind="stable")  # by sequence; events stay in order
    return frame.iloc[order].reset_index(drop=True)


_POSITION = "_position"
"""A working column of ``_rows``: the row's sequence's position in the list given to ``predict_frame``."""


def _rows(chunk, ids, batch, out, include_next: bool, level: float, named: bool = False, positions=None):
    """The rows of one batch; with ``positions`` (each sequence's place in the caller's list) a last column
    ``_POSITION`` to put the batches' rows back in that order."""
    import pandas as pd

    lengths = batch.lengths.cpu().numpy()
    L = batch.marks.shape[1]
    scored = out["scored"].cpu().numpy()
    sel = np.pad(scored, ((0, 0), (0, 1)))  # [B, L + 1]
    if include_next:
        sel[np.arange(len(chunk)), lengths] = True
    b_idx, i_idx = np.nonzero(sel)
    observed = i_idx < lengths[b_idx]
    # absolute times and marks from the float64 sequences (flat index of event (b, i))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    all_times = np.concatenate([s.times for s in chunk])
    all_marks = np.concatenate([s.marks for s in chunk])
    all_taus = np.concatenate([s.taus for s in chunk])
    flat = np.where(observed, starts[b_idx] + np.minimum(i_idx, lengths[b_idx] - 1), 0)
    prev = starts[b_idx] + np.maximum(i_idx - 1, 0)  # event i - 1 (i <= n, so always inside the sequence)
    nan = np.nan

    def at(x: torch.Tensor) -> np.ndarray:
        return x.detach().double().cpu().numpy()[b_idx, i_idx]

    cols = {
        "sequence": ids[b_idx],
        **({"seq_id": pd.array(np.array([s.name for s in chunk], dtype=object)[b_idx], dtype="string")}
           if named else {}),
        "index": i_idx,
        "time": np.where(observed, all_times[flat], nan),
        "history_end": np.where(i_idx > 0, all_times[prev], 0.0),
        "observed_gap": np.where(observed, all_taus[flat], nan),
        "observed_mark": pd.array(np.where(observed, all_marks[flat], 0), dtype="Int64"),
        "median_gap": at(out["median"]),
        "mean_gap": at(out["mean"]) if out["mean"] is not None else np.full(b_idx.shape, nan),
    }
    cols["observed_mark"][~observed] = pd.NA
    lo_name, hi_name = interval_columns(level)
    cols[lo_name], cols[hi_name] = at(out["lower"]), at(out["upper"])
    top_m = out["top_marks"].cpu().numpy()[b_idx, i_idx]
    top_p = out["top_log_probs"].detach().double().exp().cpu().numpy()[b_idx, i_idx]
    for j in range(top_m.shape[1]):  # k columns (a handful), not events
        cols[f"mark_{j + 1}"] = top_m[:, j]
    for j in range(top_m.shape[1]):
        cols[f"prob_{j + 1}"] = top_p[:, j]
    log_density = np.pad(out["log_density"].detach().double().cpu().numpy(), ((0, 0), (0, 1)))[b_idx, i_idx]
    cols["log_density_gap"] = np.where(observed, log_density, nan)
    obs_mark = np.where(observed, all_marks[flat], 0)
    # one value per row, gathered where the [B, L + 1, K] forecast is (never copied whole: K may be 20,000)
    flp = out["mark_log_probs"]
    rows = [torch.as_tensor(x, device=flp.device) for x in (b_idx, i_idx, obs_mark)]
    cols["log_prob_mark"] = np.where(observed, flp[rows[0], rows[1], rows[2]].detach().double().cpu().numpy(), nan)
    assert L + 1 == out["median"].shape[1]
    if positions is not None:
        cols[_POSITION] = np.asarray(positions)[b_idx]
    return pd.DataFrame(cols)


def source_marks(frame, mark_ids: Sequence[int] | None, columns: Sequence[str]):
    """``frame`` with the mark ids of ``columns`` (those present) given back in the source's own ids:
    ``mark_ids[k]`` for model mark ``k`` (``Dataset.mark_ids``, the data's ``--remap-marks`` map; missing values
    kept). ``mark_ids`` ``None``: ``frame`` unchanged. In place; returns ``frame``."""
    import pandas as pd

    if not mark_ids:
        return frame
    table = np.asarray(mark_ids, dtype=np.int64)
    for col in columns:
        if col not in frame.columns:
            continue
        values = frame[col]
        missing = values.isna().to_numpy()
        mapped = table[np.where(missing, 0, values.fillna(0).to_numpy(dtype=np.int64))]
        frame[col] = pd.array(np.where(missing, 0, mapped), dtype="Int64") if missing.any() else mapped
        if missing.any():
            frame.loc[missing, col] = pd.NA
    return frame


def mark_columns(frame) -> list[str]:
    """The columns of a predict / generate table that hold mark ids."""
    return [c for c in frame.columns if c in ("observed_mark", "mark") or re.fullmatch(r"mark_\d+", c)]


def check_table_path(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` as a ``Path`` if a table can be written there (``.csv``, or ``.parquet`` with pyarrow installed; not
    a folder; not an existing file unless ``overwrite``; in a folder this process may write, ``check_writable``);
    ``MtppError`` in one line otherwise. The commands check
    it before any work, so that a typo does not cost a model load and a prediction."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise MtppError(f"{path}: the output must end in .csv or .parquet")
    if path.is_dir():  # never replaced, not even with --overwrite (a folder is not a table this wrote)
        raise MtppError(f"{path}: is a folder; --out must name a file")
    if path.exists() and not overwrite:
        raise MtppError(f"{path}: exists; choose another --out or pass --overwrite")
    check_writable(path)  # a folder that cannot be written is refused now, not after the prediction
    if suffix == ".parquet":
        import importlib.util

        if importlib.util.find_spec("pyarrow") is None:
            raise MtppError(f"{path}: writing Parquet needs pyarrow (pip install pyarrow); or use .csv")
    return path


def write_table(frame, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``frame`` as CSV or Parquet by the suffix of ``path`` (``check_table_path``); never replaces a file
    unless ``overwrite``."""
    path = check_table_path(path, overwrite)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:  # whole or not at all; the temporary file is removed on any error
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            try:
                frame.to_parquet(tmp, index=False)
            except ImportError as e:
                raise MtppError(f"{path}: writing Parquet needs pyarrow ({e}); use .csv") from None
    return path


def predict(
    run_dir_or_model,
    split: str = "test",
    data_dir: str | None = None,
    *,
    sequences: Sequence[EventSequence] | None = None,
    level: float = DEFAULT_LEVEL,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int | None = None,
    include_next: bool = False,
    device: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
):
    """The prediction table of a run directory's ``split`` (or of a model on ``sequences``): ``mtpp predict``'s
    numbers from Python. Returns a ``pandas.DataFrame`` (columns in the module docstring); ``progress``: a bar
    over the sequences on a terminal; ``log``: one line naming the run's data (``load_run``).

    ``sequences``: a list of ``EventSequence``, or a ``Dataset`` (its ``split`` part, as ``evaluate(model,
    data=ds)``); with a run directory, ``None`` predicts the run's own ``split``. Their marks are the model's ids
    ``0..K-1``; a run trained on remapped marks writes its output in the data's own ids, and
    ``load_run(run_dir).read_sequences(path)`` reads a file in those ids (``mtpp predict --input``). Given sequences are checked
    against the model before any work (``mtpp.data.checks.check_sequences``: marks in ``[0, K)``, times finite and
    sorted, within the model's dtype): ``DataError`` in one line otherwise. ``batch_size``: a positive integer or
    ``None`` (the run's evaluation batch size; 256 for a model). ``device``: where a run's model is loaded; a
    model is computed where it is (a ``device`` given must be that one: ``ConfigError`` otherwise)."""
    from mtpp.data.checks import check_batch_size, check_flag, check_int, check_sequences, sequences_of

    batch_size = check_batch_size(batch_size)
    level = _check_level(level)
    top_k = check_int(top_k, "top_k", 1)
    include_next = check_flag(include_next, "include_next")
    if isinstance(run_dir_or_model, torch.nn.Module):
        if sequences is None:
            raise MtppError("predict(model, ...) needs sequences= (a list of EventSequence, or a Dataset)")
        from mtpp.training.setup import model_device

        model = run_dir_or_model
        model_device(model, device, "predict(model, device=...)")  # computed where the model is
        seqs = check_sequences(sequences_of(sequences, split, "predict(sequences=...)"), int(model.num_marks),
                               what="predict(sequences=...)", dtype=next(model.parameters()).dtype)
        return predict_frame(model, seqs, level=level, top_k=top_k, batch_size=batch_size or 256,
                             include_next=include_next, progress=progress)
    from mtpp.forecast.runs import load_run

    if not isinstance(run_dir_or_model, (str, Path)):
        raise MtppError(f"predict: expected a run directory or a model (MarkedTPP), got "
                        f"{type(run_dir_or_model).__name__}")
    if sequences is not None:
        sequences = sequences_of(sequences, split, "predict(sequences=...)")
    run = load_run(run_dir_or_model, data_dir, device, log=log, progress=progress)
    return predict_run(run, run.split(split) if sequences is None else sequences, level=level, top_k=top_k,
                       batch_size=batch_size, include_next=include_next, progress=progress)


def predict_run(run, sequences: Sequence[EventSequence], *, level: float = DEFAULT_LEVEL, top_k: int = DEFAULT_TOP_K,
                batch_size: int | None = None, include_next: bool = False, progress: bool = False,
                log: Callable[[str], None] | None = None):
    """:func:`predict`'s table for a loaded run (``mtpp.forecast.runs.load_run``) on ``sequences`` (its own split's,
    or others, checked against its model first), computed with the run's threads, its seed and batch size (unless
    ``batch_size``), marks given back in the data's own ids where the run's data were remapped."""
    from mtpp.data.checks import check_sequences

    seqs = check_sequences(sequences, int(run.model.num_marks), what="predict(sequences=...)",
                           whose=f"the run {run.path}", dtype=run.dtype)
    bs = batch_size or run.cfg.train.evaluation_batch_size
    events = run.cfg.train.evaluation_events(int(run.model.num_marks))  # the run's bound on a batch's padded events
    with run.threads():
        frame = predict_frame(run.model, seqs, level=level, top_k=top_k, batch_size=bs, include_next=include_next,
                              seed=run.cfg.train.seed, progress=progress, max_events=events, log=log)
    # marks in the data's own ids where they were remapped (a model's marks are 0..K-1)
    return source_marks(frame, getattr(run.data, "mark_ids", None), mark_columns(frame))
