"""Encoders and embeddings: causality (exact), start state, padding, windows, extreme gaps, long sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import K, make_batch, perturb, tiny_config

from mtpp.data.batch import collate
from mtpp.data.sequence import EventSequence
from mtpp.errors import ConfigError, MtppError
from mtpp.models import ENCODERS, ModelConfig
from mtpp.models.embeddings import (
    TAU_FLOOR,
    GapEncoding,
    SinusoidalTimeEncoding,
    TimeShiftedPositionalEncoding,
    log_gap,
)

ENCODER_NAMES = ("gru", "rnn", "thp", "sahp", "fnn")


# tiny models: one intra-op thread (the ``one_thread`` fixture of conftest.py) for every test of this file
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(encoder: str, **kw) -> ModelConfig:
    return tiny_config(encoder=encoder, **{"num_layers": 2, "num_heads": 2, **kw})


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_shapes_and_forward_is_histories_without_last(name: str) -> None:
    enc = ENCODERS.build(name, K, tiny_cfg(name)).eval()
    batch = make_batch()
    hist = enc.histories(batch)
    h = enc(batch)
    assert hist.shape == (2, batch.max_length + 1, enc.output_size)
    assert torch.equal(h, hist[:, :-1])


@pytest.mark.parametrize("time", [True, False], ids=["time", "mark"])
@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_causality_exact(name: str, time: bool) -> None:
    """Changing event j leaves h_0..h_j bit-identical and changes h_{j+1} (the encoder reads event j)."""
    enc = ENCODERS.build(name, K, tiny_cfg(name)).eval()
    batch = make_batch()
    j = 4
    with torch.no_grad():
        before = enc.histories(batch)
        after = enc.histories(perturb(batch, j, time=time))
    assert torch.equal(before[:, : j + 1], after[:, : j + 1])
    assert not torch.allclose(before[:, j + 1], after[:, j + 1])


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_start_state_is_shared_by_all_sequences(name: str) -> None:
    enc = ENCODERS.build(name, K, tiny_cfg(name)).eval()
    with torch.no_grad():
        a = enc.histories(make_batch(seed=1))
        b = enc.histories(make_batch(lengths=(3, 12, 1), seed=2))
    assert torch.allclose(a[:, 0], b[0, 0].expand_as(a[:, 0]), atol=1e-6)


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_padding_never_changes_real_positions(name: str) -> None:
    """A sequence alone and padded next to a longer one has the same histories 0..n (incl. after-last)."""
    enc = ENCODERS.build(name, K, tiny_cfg(name)).eval()
    rng = np.random.default_rng(3)
    short = EventSequence(np.cumsum(rng.exponential(1.0, 4)), rng.integers(0, K, 4))
    long = EventSequence(np.cumsum(rng.exponential(1.0, 11)), rng.integers(0, K, 11))
    with torch.no_grad():
        alone = enc.histories(collate([short]))[0]
        padded = enc.histories(collate([long, short]))[1, :5]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_fnn_sees_only_its_window() -> None:
    """h_i of the fnn encoder is a function of events i-m..i-1 only: older events change nothing (exact)."""
    m = 3
    enc = ENCODERS.build("fnn", K, tiny_cfg("fnn", window=m)).eval()
    batch = make_batch(lengths=(10,))
    j = 2
    with torch.no_grad():
        before = enc.histories(batch)
        after = enc.histories(perturb(batch, j, time=False))
    changed = (before != after).any(-1)[0]
    assert changed.nonzero().flatten().tolist() == list(range(j + 1, j + m + 1))


@pytest.mark.parametrize("name", ENCODER_NAMES)
@pytest.mark.parametrize("tau", [0.0, 1e-12, 1e6])
def test_extreme_gaps_finite_values_and_gradients(name: str, tau: float) -> None:
    enc = ENCODERS.build(name, K, tiny_cfg(name))
    n = 6
    times = np.cumsum(np.full(n, tau)) + 1.0  # all gaps tau after the first (t_1 = 1 + tau)
    batch = collate([EventSequence(times, np.arange(n) % K)])
    hist = enc.histories(batch)
    assert torch.isfinite(hist).all()
    hist.square().sum().backward()
    for p in enc.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", ENCODER_NAMES)
@pytest.mark.parametrize("num_marks", [1, 500])
def test_mark_vocabulary_sizes(name: str, num_marks: int) -> None:
    enc = ENCODERS.build(name, num_marks, tiny_cfg(name))
    batch = make_batch(num_marks=num_marks)
    assert torch.isfinite(enc.histories(batch)).all()


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_long_sequence(name: str) -> None:
    """A 5,000-event sequence: finite histories and gradients (memory linear in L for gru / fnn)."""
    enc = ENCODERS.build(name, K, tiny_cfg(name, num_layers=1))
    batch = make_batch(lengths=(5000,))
    hist = enc.histories(batch)
    assert hist.shape == (1, 5001, enc.output_size)
    hist[:, -1].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


def test_float64_batch_and_model() -> None:
    enc = ENCODERS.build("thp", K, tiny_cfg("thp")).double()
    hist = enc.histories(make_batch(dtype=torch.float64))
    assert hist.dtype == torch.float64


def test_bad_sizes_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="num_heads"):
        ENCODERS.build("thp", K, tiny_cfg("thp", hidden_size=9, num_heads=2))
    with pytest.raises(ConfigError, match="even"):
        ENCODERS.build("sahp", K, tiny_cfg("sahp", hidden_size=9, num_heads=1))
    with pytest.raises(ConfigError, match="window"):
        ENCODERS.build("fnn", K, tiny_cfg("fnn", window=0))
    with pytest.raises(ConfigError, match="valid: fnn, gru, rnn, sahp, thp"):
        ENCODERS.build("lstm", K, tiny_cfg("gru"))


# ---------------------------------------------------------------- embeddings


def test_log_gap_tie_rule() -> None:
    tau = torch.tensor([0.0, 1e-12, 1.0, 1e6])
    out = log_gap(tau)
    assert torch.isfinite(out).all()
    assert out[0] == out[1] == pytest.approx(math.log(TAU_FLOOR))
    assert out[2] == 0.0 and out[3] == pytest.approx(math.log(1e6))


def test_gap_encoding_is_time2vec_of_log_gap() -> None:
    enc = GapEncoding(4)
    tau = torch.tensor([[0.5, 2.0]])
    z = enc.linear(torch.log(tau).unsqueeze(-1))
    expected = torch.cat([z[..., :1], torch.sin(z[..., 1:])], -1)
    assert torch.allclose(enc(tau), expected)


def test_sinusoidal_time_encoding_formula_and_float64_precision() -> None:
    enc = SinusoidalTimeEncoding(6)
    t = torch.tensor([[0.0, 1.0, 123.5]], dtype=torch.float64)
    z = enc(t, torch.float64)
    for j in range(3):
        w = 10000.0 ** (-2 * j / 6)
        assert torch.allclose(z[..., 2 * j], torch.sin(t * w))
        assert torch.allclose(z[..., 2 * j + 1], torch.cos(t * w))
    # Unix-second times: a float64 batch keeps a 1-second difference visible
    big = torch.tensor([[1.7e9, 1.7e9 + 1.0]], dtype=torch.float64)
    zb = enc(big, torch.float32)
    assert not torch.equal(zb[0, 0], zb[0, 1])


def test_time_shifted_positional_encoding() -> None:
    enc = TimeShiftedPositionalEncoding(4)
    pos = torch.tensor([[0, 1]])
    tau = torch.tensor([[0.0, 2.0]])
    arc = pos.unsqueeze(-1) * enc.omega + enc.time_weight(tau.unsqueeze(-1))
    assert torch.allclose(enc(pos, tau), torch.cat([torch.sin(arc), torch.cos(arc)], -1))
    assert torch.allclose(enc(pos, tau)[0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize("name", ("thp", "sahp"))
def test_key_value_cache_appends_equal_the_full_re_encoding(name: str) -> None:
    """Appending events one at a time through the key/value cache (only the new token's row of each layer) gives
    the encodings of re-encoding the extended sequences, to float64 rounding: padded histories of unequal
    lengths, rows of one history sharing its encoding, some rows skipping a step, several events appended."""
    torch.manual_seed(0)
    enc = ENCODERS.build(name, K, tiny_cfg(name)).double().eval()
    rng = np.random.default_rng(1)
    seqs = [EventSequence(np.cumsum(rng.exponential(1.0, n)) + 1e3, rng.integers(0, K, n)) for n in (7, 2, 4)]
    row_of = torch.tensor([0, 1, 1, 2])  # rows 1 and 2 continue the same history
    cache = enc.start_cache(collate(seqs, dtype=torch.float64), row_of, capacity=5)
    rows_seqs = [[seqs[i].times.copy(), seqs[i].marks.copy()] for i in row_of.tolist()]
    steps = [torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2]), None, torch.tensor([3, 1]), torch.tensor([1])]
    for rows in steps:
        which = torch.arange(4) if rows is None else rows
        taus = torch.as_tensor(rng.exponential(1.0, len(which)))
        taus[0] = 0.0  # a tie among them
        marks = torch.as_tensor(rng.integers(0, K, len(which)))
        times = torch.tensor([rows_seqs[r][0][-1] for r in which.tolist()], dtype=torch.float64) + taus
        first = torch.tensor([rows_seqs[r][0][0] for r in which.tolist()], dtype=torch.float64)
        h = enc.extend_cache(cache, rows, marks, times - first, taus)  # a batch's times: from the first event
        for j, r in enumerate(which.tolist()):
            rows_seqs[r][0] = np.append(rows_seqs[r][0], float(times[j]))
            rows_seqs[r][1] = np.append(rows_seqs[r][1], int(marks[j]))
        full = collate([EventSequence(t, k) for t, k in rows_seqs], dtype=torch.float64)
        want = enc.histories(full)  # [N, L + 1, D]
        last = want[torch.arange(4), full.lengths]  # the history after each row's last event
        torch.testing.assert_close(h, last[which], rtol=0, atol=1e-12)
        torch.testing.assert_close(cache.last, last, rtol=0, atol=1e-12)
        assert torch.equal(cache.filled, full.lengths + 1)


def test_key_value_cache_needs_eval_mode() -> None:
    enc = ENCODERS.build("thp", K, tiny_cfg("thp")).train()
    with pytest.raises(MtppError, match="eval mode"):
        enc.start_cache(make_batch(), torch.tensor([0, 1]), capacity=2)
