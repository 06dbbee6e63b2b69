"""Monte Carlo compensators in evaluation (``model.eval_integration: mc``): every reported number is a function of
(the evaluation seed, the sequence's history, the query gap) only, never of the batching, and is still an unbiased
estimate of the compensator (``mtpp.models.integrate.counter_uniforms`` / ``history_streams``).

Before the counter-based nodes, the nodes were drawn per batch: ``mtpp evaluate RUN --batch-size 7`` moved the test
``L_T`` of a quickstart THP run from 9.0026 to 8.9982 nats/seq (batch size 1: 8.9840; 3: 8.9464), while
``train.eval_batch_size`` is declared non-semantic (``mtpp.config.NON_SEMANTIC_KEYS``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import K, tiny_config
from scipy import stats

from mtpp.data.batch import collate
from mtpp.data.sequence import EventSequence
from mtpp.evaluation.evaluate import evaluate_model
from mtpp.evaluation.likelihood import log_likelihood
from mtpp.models import build_model, integrate
from mtpp.models.mtpp import evaluation_seed

DT = torch.float64
MODELS = [("thp", "base"), ("thp", "plusplus"), ("sahp", "base"), ("sahp", "plusplus")]


def mc_model(decoder: str, parametrisation: str, rule: str = "mc", nodes: int = 6, encoder: str = "gru"):
    """A seeded tiny model (GRU encoder unless said) in float64, eval mode, evaluating with ``rule`` (``nodes``
    nodes)."""
    torch.manual_seed(0)
    cfg = tiny_config(encoder=encoder, decoder=decoder, parametrisation=parametrisation, integration="mc",
                      integration_nodes=4, eval_integration=rule, eval_integration_nodes=nodes)  # fmt: skip
    return build_model(cfg, K).to(DT).eval()


def sequences(n: int = 13, seed: int = 0, windows: bool = True) -> list[EventSequence]:
    """``n`` sequences of 1..17 events (unit-rate gaps), every third with a window end after its last event (the
    survival term, also computed with the Monte Carlo rule)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(1, 18))
        times = np.cumsum(rng.exponential(1.0, length))
        end = times[-1] + 0.7 if windows and i % 3 == 0 else None
        out.append(EventSequence(times, rng.integers(0, K, length), end))
    return out


def per_sequence(model, seqs, **kw) -> np.ndarray:
    frame = log_likelihood(model, seqs, **kw)
    return frame[["log_lik_time", "log_lik_mark", "log_survival"]].to_numpy()


@pytest.mark.parametrize("decoder,parametrisation", MODELS)
def test_per_sequence_nll_does_not_depend_on_the_batching(decoder, parametrisation):
    model = mc_model(decoder, parametrisation)
    seqs = sequences()
    ref = per_sequence(model, seqs)  # the default: one batch of all
    assert np.abs(ref[:, 2]).max() > 0  # the survival term is there
    for kw in (dict(batch_size=1), dict(batch_size=3), dict(batch_size=7), dict(max_events=20, batch_size=5)):
        np.testing.assert_allclose(per_sequence(model, seqs, **kw), ref, rtol=1e-12, atol=1e-12, err_msg=str(kw))
    perm = np.random.default_rng(1).permutation(len(seqs))
    shuffled = per_sequence(model, [seqs[i] for i in perm], batch_size=4)
    np.testing.assert_allclose(shuffled[np.argsort(perm)], ref, rtol=1e-12, atol=1e-12)
    # other sequences in the batch (and a longer padding) change nothing either
    extra = sequences(5, seed=7) + seqs
    np.testing.assert_allclose(per_sequence(model, extra, batch_size=6)[5:], ref, rtol=1e-12, atol=1e-12)
    # two evaluations in a row: the same numbers, exactly
    np.testing.assert_array_equal(per_sequence(model, seqs), ref)


def test_the_nodes_are_those_of_the_seed_and_the_history():
    model = mc_model("thp", "base")
    seqs = sequences()
    a, b = per_sequence(model, seqs, seed=0), per_sequence(model, seqs, seed=1)
    assert not np.allclose(a[:, 0], b[:, 0])  # another seed: other nodes
    # the deterministic rule is seed-free; its marks agree with the Monte Carlo model's (the rule is time-only)
    np.testing.assert_allclose(a[:, 1], b[:, 1], rtol=1e-12)
    # causal keys: the key of H_i depends on events 0..i-1 only
    batch = collate(seqs[:4], dtype=DT)
    keys = integrate.history_streams(batch.taus, batch.marks, batch.mask, 0)
    changed = batch.taus.clone()
    changed[:, 3] += 0.5
    later = integrate.history_streams(changed, batch.marks, batch.mask, 0)
    assert torch.equal(keys[:, :4], later[:, :4]) and not torch.equal(keys[:, 4:], later[:, 4:])


def test_metrics_are_the_same_for_every_batch_size_and_twice():
    model = mc_model("sahp", "base")
    seqs = sequences(20)
    state = torch.random.get_rng_state()
    ref, _ = evaluate_model(model, seqs, batch_size=256)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG untouched
    again, _ = evaluate_model(model, seqs, batch_size=256)
    assert again == ref
    for bs in (1, 7):
        got, _ = evaluate_model(model, seqs, batch_size=bs)
        for key in ("nll_time_per_seq", "nll_mark_per_seq", "pce"):
            assert got[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12), (bs, key)


def test_predicted_log_density_does_not_depend_on_the_batching():
    from mtpp.forecast.predict import predict_frame

    model = mc_model("thp", "plusplus")
    seqs = sequences(9)
    ref = predict_frame(model, seqs, batch_size=256, include_next=True)
    got = predict_frame(model, seqs, batch_size=2, include_next=True)
    for col in ("log_density_gap", "median_gap"):
        np.testing.assert_allclose(got[col].to_numpy(), ref[col].to_numpy(), rtol=1e-12, atol=1e-12)


def test_validation_does_not_depend_on_the_eval_batch_size(tmp_path):
    """Early stopping reads the validation NLL: with eval_integration mc it must not move with the (non-semantic)
    train.eval_batch_size."""
    from mtpp.config import load_config
    from mtpp.training.api import fit

    def run(name: str, *extra: str) -> list[float]:
        cfg = load_config(None, [
            "data.max_sequences=24", "train.batch_size=4", "train.max_epochs=2", "model.hidden_size=8",
            "model.mark_embedding_size=4", "model.time_embedding_size=4", "model.decoder_hidden_size=8",
            "model.num_components=2", "model.integration_nodes=4", "model.decoder=thp",
            "model.eval_integration=mc", "model.eval_integration_nodes=4", "logging.quiet=true",
            "logging.progress=false", *extra,
        ])  # fmt: skip
        fit(cfg, tmp_path / name)
        import json

        lines = [json.loads(x) for x in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        return [r["val_nll_time_per_seq"] for r in lines if "val_nll_time_per_seq" in r]

    a = run("a")
    b = run("b", "train.eval_batch_size=3")
    assert len(a) == 2
    np.testing.assert_allclose(b, a, rtol=1e-5)  # float32 run: rounding of other batch shapes only


# ------------------------------------------------------------------------------------------ still Monte Carlo


def test_counter_uniforms_are_uniform_and_independent():
    keys = torch.randint(0, 2**32, (400, 50), generator=torch.Generator().manual_seed(0))
    tau = torch.rand(400, 50, dtype=DT, generator=torch.Generator().manual_seed(1))
    u = integrate.counter_uniforms(keys, tau, 16)  # [400, 50, 16]
    assert u.shape == (400, 50, 16) and float(u.min()) > 0 and float(u.max()) < 1
    assert stats.kstest(u.flatten().numpy(), "uniform").pvalue > 1e-3
    assert abs(float(u.mean()) - 0.5) < 3e-3 and abs(float(u.var()) - 1 / 12) < 2e-3
    corr = np.corrcoef(u[..., 0].flatten().numpy(), u[..., 1].flatten().numpy())[0, 1]
    assert abs(corr) < 0.02  # nodes of one element
    seq = integrate.counter_uniforms(torch.arange(20000).unsqueeze(-1), torch.ones(20000, 1, dtype=DT), 2)
    for node in (0, 1):  # consecutive keys
        assert abs(np.corrcoef(seq[:-1, 0, node].numpy(), seq[1:, 0, node].numpy())[0, 1]) < 0.03
    # a function of its inputs: the same element in a bigger tensor gets the same nodes
    torch.testing.assert_close(integrate.counter_uniforms(keys[:3, :2], tau[:3, :2], 16), u[:3, :2], rtol=0, atol=0)


def test_counter_based_compensator_is_unbiased_over_seeds():
    """Mean over 2000 seeds of the Monte Carlo compensator of a softplus intensity against its closed form
    (``integrate.softplus_mean``), within 4 standard errors; the standard error itself as the rule's
    ``sqrt(Var / N)`` (independent nodes)."""
    a = torch.tensor([[-3.0, 0.5, 2.0]], dtype=DT)
    b = torch.tensor([[1.0, -2.0, 0.3]], dtype=DT)
    tau = torch.tensor([[0.2, 1.5, 4.0]], dtype=DT)
    exact = tau * integrate.softplus_mean(b, b + a * tau)
    seeds = 2000
    empty = (torch.zeros(1, 0, dtype=DT), torch.zeros(1, 0, dtype=torch.int64), torch.zeros(1, 0, dtype=torch.bool))
    keys = torch.stack([integrate.history_streams(*empty, seed=s)[0, 0] for s in range(seeds)])  # the empty history
    assert keys.unique().numel() == seeds
    fn = lambda s: torch.nn.functional.softplus(b.unsqueeze(-1) + a.unsqueeze(-1) * s)  # noqa: E731
    est = integrate.integral(fn, tau.expand(seeds, 3), "mc", 8, stream=keys.unsqueeze(-1))  # [seeds, 3]
    se = est.std(0) / seeds**0.5
    assert ((est.mean(0) - exact[0]).abs() < 4 * se).all(), (est.mean(0), exact, se)
    assert (est.std(0) > 0).all()


def test_counter_based_nodes_have_the_variance_of_independent_nodes():
    """The Weyl nodes of one element are pairwise independent: over 4000 keys, the variance of the N-node estimate of
    ``int_0^1 g`` is ``Var g(U) / N`` (as for i.i.d. nodes; a stratified or lattice rule would be far below it, a
    degenerate one above), within 15 % (the sampling error of a variance over 4000 draws is ~3 %)."""
    reps, n = 4000, 8
    keys = torch.arange(reps, dtype=torch.int64) * 7919  # distinct histories
    u = integrate.counter_uniforms(keys, torch.ones(reps, dtype=DT), n)  # [reps, N]
    for g in (lambda x: x, lambda x: torch.exp(3 * x), lambda x: (x > 0.3).to(DT)):
        est = g(u).mean(-1)
        ref_var = float(g(torch.rand(200000, dtype=DT, generator=torch.Generator().manual_seed(2))).var()) / n
        assert float(est.var()) == pytest.approx(ref_var, rel=0.15)
    pairs = torch.corrcoef(u.T)  # [N, N]: nodes of one element uncorrelated
    assert (pairs - torch.eye(n, dtype=DT)).abs().max() < 0.06


def test_model_time_nll_is_unbiased_over_evaluation_seeds():
    """``L_T`` per sequence (``log lambda - Lambda``, and ``-log S = Lambda``: linear in ``Lambda``) under the
    counter-based Monte Carlo rule, averaged over 300 evaluation seeds, against the same model's ``"adaptive"``
    rule (closed form for THP), within 4 standard errors per sequence (and the estimates do vary)."""
    mc = mc_model("thp", "base", nodes=4)
    exact = mc_model("thp", "base", rule="adaptive")
    seqs = sequences(6, seed=3)
    batch = collate(seqs, dtype=DT)
    with torch.no_grad():
        ref = exact.nll(batch).time_nll
        draws = []
        for seed in range(300):
            with evaluation_seed(mc, seed):
                draws.append(mc.nll(batch).time_nll)
    draws = torch.stack(draws)  # [300, B]
    se = draws.std(0) / draws.shape[0] ** 0.5
    assert (se > 0).all()
    assert ((draws.mean(0) - ref).abs() < 4 * se).all(), (draws.mean(0), ref, se)
    assert mc.mc_seed == 0  # restored


def test_training_still_draws_fresh_nodes():
    model = mc_model("thp", "base").train()
    batch = collate(sequences(4), dtype=DT)
    assert not torch.equal(model.nll(batch).time_nll, model.nll(batch).time_nll)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.nll(batch).time_nll, model.nll(batch).time_nll)


# ------------------------------------------------------------------------------------------ sampled continuations


@pytest.mark.parametrize("encoder", ["gru", "thp"])  # thp: the key/value-cached process
@pytest.mark.parametrize("sampler", ["icdf", "thinning"])
def test_generated_continuations_do_not_depend_on_the_other_histories(sampler, encoder):
    """``generate``'s draws are counter-based per row (history, sample, step): a history's continuations are the same
    alone, with other histories, in another order, and in chunks (a small ``max_memory``); before, one generator was
    drawn in row order, so every one of these changed them (sampling-based horizon metrics with them)."""
    from mtpp.forecast.generate import estimate_bytes, generate

    model = mc_model("thp", "base", encoder=encoder)
    hs = [s for s in sequences(6, seed=5, windows=False) if len(s) > 1][:4]

    def rows_of(g, seq: int) -> np.ndarray:
        frame = g.to_frame()
        return frame[frame["sequence"] == seq][["sample", "index", "time", "mark"]].to_numpy()

    ref = generate(model, hs, events=3, samples=3, seed=4, sampler=sampler)
    alone = generate(model, hs[1:2], events=3, samples=3, seed=4, sampler=sampler)
    np.testing.assert_allclose(rows_of(alone, 0), rows_of(ref, 1), rtol=1e-12)  # rounding of batched encoders
    rev = generate(model, hs[::-1], events=3, samples=3, seed=4, sampler=sampler)
    for i in range(len(hs)):
        np.testing.assert_allclose(rows_of(rev, len(hs) - 1 - i), rows_of(ref, i), rtol=1e-12)
    per_row, out = estimate_bytes(model, len(hs) * 3, max(len(h) for h in hs), 3)
    chunked = generate(model, hs, events=3, samples=3, seed=4, sampler=sampler, max_memory=out + 2 * per_row)
    assert chunked.info["chunk_rows"] < len(hs) * 3
    np.testing.assert_allclose(chunked.to_frame().to_numpy(dtype=float), ref.to_frame().to_numpy(dtype=float),
                               rtol=1e-12)
    other = generate(model, hs, events=3, samples=3, seed=5, sampler=sampler)
    assert not np.array_equal(other.to_frame()["time"].to_numpy(), ref.to_frame()["time"].to_numpy())
    first = ref.to_frame()
    first = first[first["index"] == 0]
    assert len(set(np.round(first["time"], 12))) == len(first)  # samples of a history differ from one another


def test_horizon_metrics_do_not_depend_on_the_order_of_the_sequences():
    """The sampled continuations and the randomised count PIT are keyed by each prediction point's history, so the
    horizon metrics of a split are the same for any order of its sequences (before: one generator and one numpy
    stream drawn in point order)."""
    from mtpp.data.synthetic import HawkesParams, simulate_hawkes_many
    from mtpp.forecast.horizon import evaluate_horizon
    from mtpp.forecast.process import HawkesProcess

    params = HawkesParams(mu=[0.3, 0.2], alpha=[[0.4, 0.1], [0.2, 0.3]], beta=2.0)
    seqs = [s for s in simulate_hawkes_many(params, 12, 20.0, np.random.default_rng(3)) if len(s) > 2]

    def run(order):
        return evaluate_horizon(lambda hs: HawkesProcess(params, hs), order, 3.0, 2, samples=20, max_points=None)

    ref, rev = run(seqs), run(seqs[::-1])
    assert ref["points"] == rev["points"] > 20
    for key in ("count_pce", "count_coverage", "count_mae", "count_mean_pred", "otd"):
        assert rev[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    assert rev["count_pit_hist"] == ref["count_pit_hist"]
    # T-mAP ranks all points' predictions by score (stable sort): equal or rounding-close scores are ranked in the
    # points' order (a tie rule, not a draw; 0.1978944 vs 0.1978960 here), hence only approximately equal
    assert rev["tmap"] == pytest.approx(ref["tmap"], rel=1e-4)
