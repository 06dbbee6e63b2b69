"""Large inputs, scaled down to what a test can show: no batch is padded past its bound of padded events (training,
validation, final evaluation, ``evaluate``, ``predict``, ``log_likelihood``), evaluation batches shrink with the
number of marks, and the results do not depend on how the sequences were batched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_config

import mtpp.data.sampler as sampler_module
from mtpp.config import EVALUATION_MARK_ELEMENTS, TrainConfig
from mtpp.data.catalog import Dataset
from mtpp.data.sequence import EventSequence
from mtpp.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _sequences(lengths, num_marks: int, seed: int = 0) -> list[EventSequence]:
    rng = np.random.default_rng(seed)
    return [EventSequence(np.cumsum(rng.exponential(1.0, n)), rng.integers(0, num_marks, n)) for n in lengths]


def _with_outlier(n: int, long: int, seed: int = 0) -> list[int]:
    lengths = np.random.default_rng(seed).integers(3, 8, size=n).tolist()
    lengths[n // 2] = long
    return lengths


@pytest.fixture
def batch_shapes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """``[(B, L), ...]`` of every batch a loader of ``mtpp.data.sampler.make_loader`` collates (and in
    ``batch_shapes.training`` whether gradients were on: a training batch, not an evaluation one)."""
    shapes = _Shapes()
    collate = sampler_module.collate

    def spy(sequences, dtype=torch.float32):
        batch = collate(sequences, dtype=dtype)
        shapes.append((batch.batch_size, batch.max_length))
        shapes.training.append(torch.is_grad_enabled())
        return batch

    monkeypatch.setattr(sampler_module, "collate", spy)
    return shapes


class _Shapes(list):
    def __init__(self) -> None:
        super().__init__()
        self.training: list[bool] = []


def test_evaluation_batches_shrink_with_the_number_of_marks() -> None:
    t = TrainConfig()
    assert t.evaluation_events(50) == 4 * t.max_batch_events  # the usual benchmarks: the plain bound
    # 20,000 marks: a [B, L, K] block of float32 within EVALUATION_MARK_ELEMENTS (128 MiB), was 256 x 80 x 20,000
    # x 8 bytes (3.3 GB, one float64 copy of the accumulator) per batch
    assert t.evaluation_events(20_000) * 20_000 <= EVALUATION_MARK_ELEMENTS
    assert t.evaluation_events(10**6) == 33  # at least one sequence per batch whatever K
    assert TrainConfig(max_batch_events=None).evaluation_events(20_000) is None


def test_training_validation_and_final_evaluation_keep_every_batch_within_its_bound(tmp_path, batch_shapes) -> None:
    # one sequence of 400 events among 60 of 3..7: batches of 16 were padded to 16 x 400 (the outlier's batch) in
    # training and in evaluation; with max_batch_events 200 the outlier rides alone
    from mtpp import fit

    k = 3
    ds = Dataset(_sequences(_with_outlier(60, 400), k), _sequences(_with_outlier(20, 400, 1), k, 1),
                 _sequences(_with_outlier(20, 400, 2), k, 2), k, "outliers", "")
    torch.manual_seed(0)
    model = build_model(tiny_config(encoder="gru", decoder="lnm"), k)
    fit(model, ds, tmp_path / "run", config={"train": {"max_epochs": 1, "batch_size": 16, "max_batch_events": 200},
                                             "logging": {"quiet": True}})
    train = [s for s, grad in zip(batch_shapes, batch_shapes.training) if grad]
    evaluation = [s for s, grad in zip(batch_shapes, batch_shapes.training) if not grad]
    assert sum(b for b, _ in train) == 60 and sum(b for b, _ in evaluation) == 20 + 20 + 20  # val x 2, test
    assert all(b * length <= 200 or b == 1 for b, length in train), train
    assert all(b * length <= 4 * 200 or b == 1 for b, length in evaluation), evaluation  # 4 x the bound
    assert (1, 400) in train and (1, 400) in evaluation  # the outliers ride alone


def test_evaluate_predict_and_log_likelihood_do_not_depend_on_the_bound(batch_shapes) -> None:
    from mtpp import evaluate, log_likelihood
    from mtpp.forecast.predict import predict_frame

    k = 4
    seqs = _sequences(_with_outlier(30, 120), k, 3)
    torch.manual_seed(1)
    model = build_model(tiny_config(encoder="gru", decoder="lnm", parametrisation="plus"), k).double().eval()
    free = evaluate(model, data=seqs, batch_size=64, max_events=None)
    assert max(b * length for b, length in batch_shapes) == 30 * 120  # one batch, padded to the outlier
    batch_shapes.clear()
    bounded = evaluate(model, data=seqs, batch_size=64, max_events=100)
    assert all(b * length <= 100 or b == 1 for b, length in batch_shapes)
    for key, value in free.items():
        if isinstance(value, float):
            assert bounded[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key

    a = log_likelihood(model, seqs, max_events=None)
    b = log_likelihood(model, seqs, max_events=50)
    np.testing.assert_allclose(a["log_lik"], b["log_lik"], rtol=1e-10)

    whole = predict_frame(model, seqs, batch_size=1, max_events=None)  # one sequence per batch, in order
    cut = predict_frame(model, seqs, batch_size=64, max_events=60)  # sorted by length, put back in order
    assert whole["sequence"].tolist() == cut["sequence"].tolist() == sorted(whole["sequence"])
    assert whole["index"].tolist() == cut["index"].tolist()
    np.testing.assert_allclose(whole["log_prob_mark"], cut["log_prob_mark"], rtol=1e-9)
    np.testing.assert_allclose(whole["median_gap"], cut["median_gap"], rtol=1e-9)


def test_the_mark_forecast_of_one_long_sequence_is_computed_in_chunks_of_positions(monkeypatch) -> None:
    # a "+" model's forecast integrates p(k | tau, H) over a grid of gaps: GRID_POINTS x width values per position;
    # chunks were of whole sequences, so one sequence of 1,000,000 events asked for 64 GB in one call
    from mtpp.models.marginal import GRID_NODES, GRID_POINTS

    k = 4
    torch.manual_seed(2)
    model = build_model(tiny_config(encoder="gru", decoder="lnm", parametrisation="plus"), k).double().eval()
    seqs = _sequences([50, 7], k, 5)
    from mtpp.data.batch import collate

    batch = collate(seqs, dtype=torch.float64)
    with torch.no_grad():
        h_time, h_mark = model.histories(batch)
        whole = model.mark_forecast_log_probs(h_time, h_mark)
        width = max(k, model.cfg.num_components, model.cfg.decoder_hidden_size)
        monkeypatch.setattr(type(model), "FORECAST_CHUNK_ELEMENTS", 8 * GRID_POINTS * GRID_NODES * width)
        calls = []
        rows = model._forecast_rows

        def spy(h_t, h_m, elapsed=None):
            calls.append(h_t.shape[0] * h_t.shape[1])
            return rows(h_t, h_m, elapsed)

        monkeypatch.setattr(model, "_forecast_rows", spy)
        chunked = model.mark_forecast_log_probs(h_time, h_mark)
    assert max(calls) <= 8 and len(calls) > 2 * 51 // 8  # at most 8 positions per call, every position covered
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------- the largest batch, said up front


def test_bytes_per_event_grows_with_the_marks_and_leaves_the_random_stream_alone() -> None:
    from mtpp.training.memory import bytes_per_event

    costs = {}
    for k in (5, 2000):
        torch.manual_seed(0)
        model = build_model(tiny_config(encoder="gru", decoder="lnm"), k)
        state = torch.random.get_rng_state()
        costs[k] = bytes_per_event(model, model.nll, k, torch.float32, torch.device("cpu"))
        assert torch.equal(torch.random.get_rng_state(), state)
        assert all(p.grad is None for p in model.parameters())
    assert 100 < costs[5] < 20_000
    # the [B, L, K] mark log-probabilities and what the backward keeps of them: at least 4 bytes x K per event
    assert costs[2000] - costs[5] > 4 * 2000


def test_batch_warnings_name_the_estimate_and_what_helps() -> None:
    from mtpp.training.memory import ATTENTION_LENGTH, batch_warnings

    lengths = [20] * 100 + [1_000_000]
    lines = batch_warnings(lengths=lengths, batch_size=64, max_events=131072, per_event=8192.0, encoder="gru",
                           available=3 << 30)
    assert lines[0].startswith("memory  largest training batch 1 x 1,000,000 padded events: about 7.6 GiB")
    assert lines[1].startswith("warning: the largest training batch (1 x 1,000,000 padded events) needs about 7.6 GiB, "
                               "more than the 3.0 GiB available")
    assert "mtpp data prepare --max-length" in lines[1] and "max_batch_events" not in lines[1]  # alone already
    # 64 sequences of 30,000 without a bound: the bound helps too
    lines = batch_warnings(lengths=[30_000] * 64, batch_size=64, max_events=None, per_event=8192.0,
                           encoder="thp", available=3 << 30)
    assert "64 x 30,000 padded events" in lines[0] and "set train.max_batch_events" in lines[1]
    assert lines[2].startswith("warning: the longest training sequence has 30,000 events: the thp encoder's "
                               "attention takes time in L^2")
    # the usual benchmark sizes: nothing to say
    assert batch_warnings(lengths=[1000] * 8, batch_size=8, max_events=131072, per_event=12_000.0,
                          encoder="thp", available=16 << 30) == []
    assert batch_warnings(lengths=[ATTENTION_LENGTH] * 8, batch_size=1, max_events=131072, per_event=12_000.0,
                          encoder="thp", available=16 << 30) == []  # 190 MB, and attention at its bound


def test_training_says_the_largest_batch_before_the_first_step(tmp_path, monkeypatch, capsys) -> None:
    # one sequence of 1,000,000 events: 19.7 GB of resident memory in its first step, not a word before
    from mtpp import fit
    from mtpp.training import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 200_000)  # a machine of 200 kB free
    monkeypatch.setattr(memory, "ATTENTION_LENGTH", 50)
    k = 3
    ds = Dataset(_sequences([5] * 6 + [120], k), _sequences([5] * 3, k, 1), _sequences([5] * 3, k, 2), k, "long", "")
    torch.manual_seed(0)
    model = build_model(tiny_config(encoder="thp", decoder="lnm", num_heads=2), k)
    fit(model, ds, tmp_path / "run", config={"train": {"max_epochs": 1, "batch_size": 4}})
    err = capsys.readouterr().err
    log = (tmp_path / "run" / "train.log").read_text()
    for text in (err, log):
        # a pool of 4 may hold the long sequence and 3 short ones: 4 x 120
        assert "memory  largest training batch 4 x 120 padded events: about" in text
        assert "warning: the largest training batch (4 x 120 padded events) needs about" in text
        assert "more than the 195 KiB available: the run will likely be killed; lower train.max_batch_events" in text
        assert "warning: the longest training sequence has 120 events: the thp encoder's attention" in text


# ---------------------------------------------------------------------------------------------- plot


def test_the_plot_of_a_long_sequence_draws_its_last_history_events_only() -> None:
    # a sequence of 200,000 events asked for [200,001 x 64] intensity points (past 3 GB) and drew them all
    import matplotlib.pyplot as plt

    from mtpp.forecast.plot import GRID, SHOWN_EVENTS, default_horizon, plot_forecast

    k = 3
    seq = _sequences([2000], k, 7)[0]
    short = _sequences([40], k, 8)[0]
    assert default_horizon(short) == pytest.approx(0.25 * (short.times[-1] - short.times[0]))  # as before
    horizon = default_horizon(seq)
    assert horizon == pytest.approx(0.25 * (seq.times[-1] - seq.times[2000 - SHOWN_EVENTS]))
    torch.manual_seed(3)
    model = build_model(tiny_config(encoder="gru", decoder="lnm"), k).eval()
    fig = plot_forecast(model, seq, horizon=horizon, cut=1500, samples=4)
    try:
        history = fig.axes[0].collections[0].get_offsets()  # the filled markers of the history
        assert len(history) == SHOWN_EVENTS and history[0][0] == pytest.approx(seq.times[1500 - SHOWN_EVENTS])
        lines = [ln.get_xdata() for ln in fig.axes[1].get_lines() if ln.get_label().startswith(("model", "after"))]
        points = sum(len(x) for x in lines)
        future = int(np.sum((seq.times > seq.times[1499]) & (seq.times <= seq.times[1499] + horizon)))
        assert points <= (SHOWN_EVENTS + future + 1) * GRID and min(x.min() for x in lines) > seq.times[1100]
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert any(f"the last {SHOWN_EVENTS} of 1,500 shown" in t for t in legend)
    finally:
        plt.close(fig)


def test_samples_of_one_history_encode_it_once(monkeypatch) -> None:
    # generate's rows are histories x samples: each of 50 samples embedded the same history of 150,000 events again
    from mtpp.forecast.process import RecurrentModelProcess

    k = 3
    h, g = _sequences([300, 20], k, 9)
    torch.manual_seed(4)
    model = build_model(tiny_config(encoder="gru", decoder="lnm", parametrisation="plusplus"), k).eval()
    widths = []
    pack = torch.nn.utils.rnn.pack_padded_sequence

    def spy(x, lengths, **kwargs):
        widths.append(tuple(x.shape[:2]))
        return pack(x, lengths, **kwargs)

    monkeypatch.setattr(torch.nn.utils.rnn, "pack_padded_sequence", spy)
    with torch.no_grad():
        many = RecurrentModelProcess(model, [h] * 5 + [g] * 3, capacity=4)
        once = RecurrentModelProcess(model, [h, g], capacity=4)
    assert widths[:2] == [(2, 300), (2, 300)]  # two encoders ("++"), each over the 2 distinct histories
    for a, b in zip(many.states, once.states):
        torch.testing.assert_close(a, b[:, [0] * 5 + [1] * 3], rtol=0, atol=0)


def test_mark_statistics_of_a_forecast_that_is_the_given_time_distribution_are_computed_once(monkeypatch) -> None:
    # base LNM / RMTPP: p(k | H) is p(k | tau, H); the [B, L, K] ranks, exponentials and bins were computed twice,
    # most of an evaluation's time with 20,000 marks
    import mtpp.evaluation.metrics as metrics
    from mtpp.data.batch import collate

    k = 50
    torch.manual_seed(5)
    model = build_model(tiny_config(encoder="gru", decoder="lnm"), k).double().eval()
    batch = collate(_sequences([30, 12, 20], k, 11), dtype=torch.float64)
    scores = model.score(batch)
    assert scores.forecast_mark_log_probs is scores.mark_log_probs
    calls = []
    rank_stats = metrics._rank_stats
    monkeypatch.setattr(metrics, "_rank_stats", lambda lp, y: calls.append(1) or rank_stats(lp, y))
    once = metrics.MetricAccumulator()
    once.update(scores, batch)
    assert len(calls) == 1
    copy = type(scores)(**{**scores.__dict__, "forecast_mark_log_probs": scores.mark_log_probs.clone()})
    twice = metrics.MetricAccumulator()
    twice.update(copy, batch)
    assert len(calls) == 3
    a, b = once.compute(), twice.compute()
    assert a.keys() == b.keys() and any(key.endswith("_forecast") for key in a)
    for key in a:
        assert a[key] == b[key] or (a[key] != a[key] and b[key] != b[key]), key  # equal, or both NaN
