"""The time scale (``mtpp.models.scaling``): likelihoods in the data's units whatever the unit of time, exact
relative times for large offsets, and training that does not depend on the unit."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import K, tiny_model

from mtpp.config import load_config
from mtpp.data.batch import collate
from mtpp.data.formats import write_split_folder
from mtpp.data.sequence import EventSequence
from mtpp.errors import ConfigError
from mtpp.models.scaling import typical_gap, resolve_time_scale
from mtpp.training.trainer import fit

pytestmark = pytest.mark.usefixtures("one_thread")

DECODERS = ("lnm", "rmtpp", "rmtpp-baseline", "fnn", "thp", "sahp")  # rmtpp-baseline: model.rmtpp_form
PARAMETRISATIONS = ("base", "plus", "plusplus")


def _sequences(n: int, length: int, seed: int, scale: float = 1.0, offset: float = 0.0) -> list[EventSequence]:
    """Unit-rate gaps; the mark of an event is 1 iff its own gap >= 0.7 (else 0, marks 2.. never occur): a mark
    that the observed gap reveals and a forecast cannot (P(gap >= 0.7) = 0.50)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        gaps = rng.exponential(1.0, length)
        marks = (gaps >= 0.7).astype(np.int64)
        times = np.cumsum(gaps)
        out.append(EventSequence(offset + scale * times, marks, None))
    return out


def _model(decoder: str, parametrisation: str, dtype: torch.dtype = torch.float64):
    return tiny_model(decoder, parametrisation, "thp", dtype)


@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS)
@pytest.mark.parametrize("decoder", DECODERS)
def test_nll_on_scaled_times_shifts_by_n_log_c(decoder: str, parametrisation: str) -> None:
    """At fixed weights, L_T on times ``c t`` = L_T on ``t`` + (scored events that are not ties) ``log c``; L_M, PIT,
    marks unchanged. A tie's term is a probability (the tie policy): it does not change with the unit.

    The scale is the one ``auto`` resolves on each data set (it is proportional to ``c``), so the model sees the
    same numbers; windows (survival terms) and two ties (zero gaps) included."""
    seqs = _sequences(3, 7, seed=1)
    t = seqs[0].times.copy()
    t[3:5] = t[2]  # events 3 and 4 tie with event 2
    seqs[0] = EventSequence(t, seqs[0].marks, None)
    windows = [None, 0.8, 2.5]
    m = _model(decoder, parametrisation)
    ref = None
    for c in (1.0, 1e-4, 3.7, 1e4):
        data = [EventSequence(c * s.times, s.marks, None if w is None else c * (s.times[-1] + w))
                for s, w in zip(seqs, windows)]  # fmt: skip
        m.time_scale = resolve_time_scale("auto", data)
        assert m.time_scale == pytest.approx(c * typical_gap(seqs), rel=1e-12)
        batch = collate(data, dtype=torch.float64)
        with torch.no_grad():
            out = m.nll(batch)
            scores = m.score(batch)
        assert int(scores.tied.sum()) == 2
        n = (out.scored & ~scores.tied).sum(-1).double()
        row = (out.time_nll - n * math.log(c), out.mark_nll, scores.pit, scores.median_tau / c)
        if ref is None:
            ref = row
            continue
        for got, want in zip(row, ref):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("decoder", DECODERS)
def test_large_offset_keeps_relative_times_exact_in_float32(decoder: str) -> None:
    """Unix-second times (1.4e9 + {0, 10, 60, ...}) give the same per-event terms as the same sequences from 0:
    relative times are formed in float64 before the float32 cast (absolute float32 times are 128 s apart)."""
    base = [EventSequence(np.array([0.0, 10.0, 60.0, 75.0, 400.0]), np.array([0, 1, 2, 1, 0]), None),
            EventSequence(np.array([5.0, 6.0, 6.5, 90.0]), np.array([3, 3, 1, 0]), None)]  # fmt: skip
    shifted = [EventSequence(s.times + 1.4e9, s.marks, None) for s in base]
    m = _model(decoder, "base", torch.float32)
    m.time_scale = resolve_time_scale("auto", base)
    b0, b1 = collate(base), collate(shifted)
    assert torch.equal(b0.times, b1.times) and torch.equal(b0.taus[:, 1:], b1.taus[:, 1:])
    with torch.no_grad():
        t0, t1 = m.nll(b0), m.nll(b1)
    # the first event is not scored (first_event: skip); every scored term is identical
    torch.testing.assert_close(t0.time_terms[:, 1:], t1.time_terms[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(t0.mark_terms, t1.mark_terms, rtol=0, atol=0)


def test_time_scale_config_and_checkpoint(tmp_path: Path) -> None:
    for bad in ("hours", -1.0, 0, float("inf"), True):
        with pytest.raises(ConfigError, match="data.time_scale"):
            load_config(None, [f"data.time_scale={bad}"])
    assert load_config(None, ["data.time_scale=3600"]).data.time_scale == 3600.0
    assert load_config(None).data.time_scale == "auto"
    assert resolve_time_scale("none", _sequences(2, 5, 0, scale=1e3)) == 1.0
    assert resolve_time_scale(60.0, []) == 60.0
    # a given scale that puts the typical gap far from 1 model unit is refused, naming what auto would pick
    unit = _sequences(20, 10, 0)
    gap = typical_gap(unit)
    for spec in (1e-30, gap * 1e-5, gap * 1e5, 1e30):
        with pytest.raises(ConfigError, match=r"data.time_scale=.*use data.time_scale=auto \(it picks"):
            resolve_time_scale(spec, unit)
    for spec in (gap * 1e-3, gap * 1e3, "none"):
        assert resolve_time_scale(spec, unit) == (1.0 if spec == "none" else spec)
    with pytest.raises(ConfigError, match="data.time_scale=none"):  # nanosecond-like raw units
        resolve_time_scale("none", _sequences(20, 10, 0, scale=1e6 / gap))
    assert resolve_time_scale("auto", [EventSequence(np.array([2.0]), np.array([0]), None)]) == 2.0  # first gaps
    assert resolve_time_scale("auto", [EventSequence(np.array([0.0]), np.array([0]), None)]) == 1.0  # nothing
    # robust: a few absurd gaps do not move the median
    seqs = _sequences(20, 10, 0)
    wild = seqs[:-1] + [EventSequence(np.cumsum([1.0, 1e30, 1e35]), np.zeros(3, dtype=np.int64), None)]
    assert resolve_time_scale("auto", wild) == pytest.approx(resolve_time_scale("auto", seqs), rel=0.05)
    # the scale is part of the state dict, hence of every checkpoint
    m = _model("lnm", "plus")
    m.time_scale = 123.5
    m2 = _model("lnm", "plus")
    m2.load_state_dict(m.state_dict())
    assert m2.time_scale == 123.5


def _dataset(root: Path, scale: float, offset: float) -> Path:
    splits = {"train": _sequences(160, 16, 1, scale, offset), "val": _sequences(40, 16, 2, scale, offset),
              "test": _sequences(60, 16, 3, scale, offset)}  # fmt: skip
    return write_split_folder(root, [splits], num_marks=2)


@pytest.mark.slow
def test_training_does_not_depend_on_the_unit_of_time(tmp_path: Path) -> None:
    """Training on ``c t`` for c in {1e-4, 1, 1e4} and on Unix-like times (``t + 1.4e9``) reaches the same
    per-event time NLL after the ``log c`` shift and the same accuracies (within noise), with the default
    ``data.time_scale: auto``."""
    results = {}
    for label, c, offset, scale_opt in (("1", 1.0, 0.0, "auto"), ("1e-4", 1e-4, 0.0, "auto"),
                                        ("1e4", 1e4, 0.0, "auto"), ("offset", 1.0, 1.4e9, "auto")):  # fmt: skip
        data = _dataset(tmp_path / f"data_{label}", c, offset)
        cfg = load_config(None, [
            f"data.name={data}", f"data.time_scale={scale_opt}", "model.encoder=gru", "model.decoder=lnm",
            "model.parametrisation=plus", "model.hidden_size=8", "model.mark_embedding_size=4",
            "model.time_embedding_size=4", "model.decoder_hidden_size=16", "model.num_components=4",
            "train.batch_size=16", "train.max_epochs=6", "logging.quiet=true", "logging.progress=false",
        ])  # fmt: skip
        m = fit(cfg, tmp_path / f"run_{label}")
        results[label] = (m["test"]["nll_time_per_event"] - math.log(c), m["test"])
    ref_nll, ref = results["1"]
    for label, (nll, test) in results.items():
        tol = 0.02 if label == "offset" else 1e-3  # the offset changes the (unscored) first gap the encoder sees
        assert nll == pytest.approx(ref_nll, abs=tol), label
        assert test["accuracy_given_time"] == pytest.approx(ref["accuracy_given_time"], abs=0.03), label
        assert test["accuracy_forecast"] == pytest.approx(ref["accuracy_forecast"], abs=0.03), label
    # the marks are revealed by the observed gap, not forecastable: the two accuracies must differ
    assert ref["accuracy_given_time"] > 0.9
    assert ref["accuracy_forecast"] < 0.65


def test_training_refuses_times_beyond_float32_and_warns_about_ties(tmp_path: Path, capsys) -> None:
    """The data-layer range check runs for every run (a time of 1e39 would be inf in float32 batches), and the
    trainer says when the training data has ties."""
    from mtpp.errors import DataError

    good = _sequences(20, 8, 1)
    huge = good[:-1] + [EventSequence(np.array([1.0, 1e39]), np.array([0, 1]), None)]
    data = write_split_folder(tmp_path / "huge", [{"train": huge, "val": good[:5], "test": good[:5]}], num_marks=2)
    cfg = load_config(None, [f"data.name={data}", "train.max_epochs=1", "model.hidden_size=4",
                             "logging.quiet=true", "logging.progress=false"])  # fmt: skip
    with pytest.raises(DataError, match="float32"):
        fit(cfg, tmp_path / "run_huge")
    tied = [EventSequence(np.array([0.0, 1.0, 1.0, 2.0]), np.array([0, 1, 0, 1]), None)] + good
    data = write_split_folder(tmp_path / "tied", [{"train": tied, "val": good[:5], "test": good[:5]}], num_marks=2)
    cfg = load_config(None, [f"data.name={data}", "train.max_epochs=1", "model.hidden_size=4",
                             "logging.progress=false"])  # fmt: skip
    fit(cfg, tmp_path / "run_tied")
    assert "tie" in capsys.readouterr().err.lower()


def test_times_on_an_absolute_clock_are_said_before_training(tmp_path: Path, capsys) -> None:
    """Unix-second times (t + 1.4e9): the first gap, measured from 0, is 44 years; it entered the encoder without
    a word (a user's results differed from the same gaps started at 0). The run and describe now say so; data
    whose first events sit among their gaps (the benchmark sets) get no warning."""
    from mtpp.cli import main
    from mtpp.data.origin import absolute_clock_warning, clock_origin

    unix = _sequences(20, 8, 1, offset=1.4e9)
    origin = clock_origin(unix)
    assert origin.absolute and origin.median_first == pytest.approx(1.4e9, rel=1e-6)
    assert not clock_origin(_sequences(20, 8, 1)).absolute  # first events ~1 gap from 0
    assert not clock_origin(_sequences(20, 8, 1, offset=5.0)).absolute  # a late start, still within gaps' reach
    assert clock_origin([EventSequence(np.array([1.4e9]), np.array([0]), None)]) is None  # no gap to compare
    said = absolute_clock_warning(unix, "include", "seconds")
    assert said.startswith("the times look absolute (Unix seconds?): the median first event is at t = ")
    assert re.search(r"at t = 140000000\d seconds, [\d,]+ x the longest gap within a sequence", said), said
    assert "is scored as one gap (model.first_event: include)" in said
    for label, offset in (("unix", 1.4e9), ("zero", 0.0)):
        splits = {"train": _sequences(20, 8, 1, offset=offset), "val": _sequences(5, 8, 2, offset=offset),
                  "test": _sequences(5, 8, 3, offset=offset)}  # fmt: skip
        data = write_split_folder(tmp_path / label, [splits], num_marks=2)
        cfg = load_config(None, [f"data.name={data}", "train.max_epochs=1", "model.hidden_size=4",
                                 "logging.progress=false"])  # fmt: skip
        fit(cfg, tmp_path / f"run_{label}")
        err = capsys.readouterr().err
        assert ("warning: the times look absolute" in err) == (label == "unix"), label
        assert main(["data", "describe", str(data)]) == 0
        out = capsys.readouterr().out
        assert ("the times look absolute" in out) == (label == "unix"), label
        assert main(["data", "prepare", str(data), "--out", str(tmp_path / f"prep_{label}"), "--splits", "1"]) == 0
        said = "the times look absolute" in capsys.readouterr().out  # where the times can still be fixed
        assert said == (label == "unix"), label
        if label == "unix":  # the range with the digits that tell its ends apart (was 1.4e+09 .. 1.4e+09)
            assert re.search(r"time range     14000000\d\d(\.\d+)? \.\. 14000000\d\d\.\d+ ", out), out
