"""Synthetic Hawkes / Poisson processes: simulation matches theory, the exact likelihood matches brute force,
the built-in dataset is deterministic, and ``mtpp simulate`` writes a loadable folder."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, stats

from mtpp.cli import main
from mtpp.data.sequence import EventSequence, make_sequence
from mtpp.data.synthetic import (
    SYNTHETIC_DIRNAME,
    SYNTHETIC_NUM_SEQUENCES,
    SYNTHETIC_PARAMS,
    SYNTHETIC_WINDOW,
    HawkesParams,
    ensure_synthetic_dataset,
    hawkes_compensator,
    hawkes_compensator_increments,
    hawkes_ground_intensity,
    hawkes_intensity,
    hawkes_log_intensities,
    hawkes_log_likelihood,
    load_synthetic_split,
    poisson_log_likelihood,
    random_hawkes_params,
    simulate_hawkes,
    simulate_hawkes_many,
    simulate_poisson,
    simulate_poisson_many,
)


def _read_part(folder: Path, k: int, part: str, window: bool = False) -> list:
    from mtpp.data.formats import ReadOptions, read_split

    return read_split(folder, k, options=ReadOptions(use_window=window)).parts[f"split_{k}/{part}"]


def _matrix_beta_params() -> HawkesParams:
    rng = np.random.default_rng(11)
    return HawkesParams(mu=[0.4, 0.2, 0.3], alpha=0.25 * rng.random((3, 3)), beta=rng.uniform(0.3, 4.0, (3, 3)))


PARAMS = {
    "scalar_beta": lambda: random_hawkes_params(3, np.random.default_rng(5), branching=0.6, beta=2.0),
    "matrix_beta": _matrix_beta_params,
    "synthetic": lambda: SYNTHETIC_PARAMS,
}


# ----------------------------------------------------------------------------------------------- parameters


def test_params_validation() -> None:
    with pytest.raises(ValueError, match="not stationary"):
        HawkesParams(mu=[1.0, 1.0], alpha=[[0.6, 0.5], [0.5, 0.6]])  # spectral radius 1.1
    with pytest.raises(ValueError, match="alpha must be"):
        HawkesParams(mu=[1.0, 1.0], alpha=[[0.1]])
    with pytest.raises(ValueError, match="beta must be"):
        HawkesParams(mu=[1.0], alpha=[[0.1]], beta=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="beta must be > 0"):
        HawkesParams(mu=[1.0], alpha=[[0.1]], beta=0.0)
    with pytest.raises(ValueError, match="mu must be >= 0"):
        HawkesParams(mu=[-1.0], alpha=[[0.1]])
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        HawkesParams(mu=[1.0], alpha=[[-0.1]])
    p = random_hawkes_params(4, np.random.default_rng(0), branching=0.7)
    assert p.spectral_radius == pytest.approx(0.7)
    assert HawkesParams.from_dict(json.loads(json.dumps(p.to_dict()))).to_dict() == p.to_dict()
    assert SYNTHETIC_PARAMS.spectral_radius < 1


# ----------------------------------------------------------------------------------------------- simulation


@pytest.mark.parametrize("name", ["scalar_beta", "matrix_beta"])
def test_empirical_rates_match_stationary_rates(name: str) -> None:
    params = PARAMS[name]()
    num, window, burn = 40, 1000.0, 50.0
    seqs = simulate_hawkes_many(params, num, window, np.random.default_rng(1))
    counts = np.zeros(params.num_marks)
    for s in seqs:
        assert np.all(np.diff(s.times) > 0) and s.times[-1] <= window and s.window_end == window
        keep = s.times >= burn  # skip the transient from an empty history
        counts += np.bincount(s.marks[keep], minlength=params.num_marks)
    duration = num * (window - burn)
    rate = counts / duration
    expected = params.stationary_rate()
    # Var N_k(T) ~ T [(I - A)^-1 diag(Lambda) (I - A)^-T]_kk for a stationary Hawkes process.
    sd = np.sqrt(np.diag(params.stationary_count_covariance()) / duration)
    z = (rate - expected) / sd
    assert np.all(np.abs(z) < 4.0), (rate, expected, z)


@pytest.mark.parametrize("name", ["scalar_beta", "matrix_beta", "synthetic"])
def test_expected_counts_from_rest_match_the_simulator(name: str) -> None:
    """The simulated counts on a short window (the process starts at rest) have the mean ``expected_counts``
    (z-test over 3000 sequences, per mark), below ``window x stationary rate``."""
    params = PARAMS[name]()
    window, num = 3.0, 3000
    seqs = simulate_hawkes_many(params, num, window, np.random.default_rng(4))
    counts = np.array([np.bincount(s.marks, minlength=params.num_marks) for s in seqs])
    expected = params.expected_counts(window)
    z = (counts.mean(0) - expected) / (counts.std(0, ddof=1) / np.sqrt(num))
    assert np.all(np.abs(z) < 4.0), (counts.mean(0), expected, z)
    assert np.all(expected < window * params.stationary_rate())  # the transient from rest


def test_expected_counts_identities() -> None:
    """No excitation: ``mu T``; a ``[K, K]`` beta of one value: the scalar closed form; a long window: slope
    ``Lambda``; an empty window: 0."""
    p = SYNTHETIC_PARAMS
    flat = HawkesParams(mu=p.mu, alpha=p.alpha, beta=np.full((5, 5), p.beta))
    for t in (0.3, 4.0, 32.0, 300.0):
        np.testing.assert_allclose(flat.expected_counts(t), p.expected_counts(t), rtol=1e-10, atol=1e-12)
    poisson = HawkesParams(mu=[0.5, 2.0], alpha=np.zeros((2, 2)), beta=[[1.0, 3.0], [2.0, 0.5]])
    np.testing.assert_allclose(poisson.expected_counts(7.0), [3.5, 14.0], rtol=1e-12)
    for q in (p, _matrix_beta_params()):
        slope = q.expected_counts(2000.0) - q.expected_counts(1999.0)
        np.testing.assert_allclose(slope, q.stationary_rate(), rtol=1e-9)
        assert np.all(q.expected_counts(0.0) == 0.0)
    assert p.expected_counts(SYNTHETIC_WINDOW).sum() == pytest.approx(72.9025, abs=1e-4)
    with pytest.raises(ValueError, match="window"):
        p.expected_counts(-1.0)


def test_time_rescaling_gives_unit_exponentials() -> None:
    params = PARAMS["matrix_beta"]()
    seqs = simulate_hawkes_many(params, 30, 200.0, np.random.default_rng(2))
    gaps = np.concatenate([hawkes_compensator_increments(s, params) for s in seqs])
    assert gaps.size > 1000
    assert stats.kstest(gaps, "expon").pvalue > 1e-3


def test_simulate_hawkes_is_seeded_and_max_events_stops() -> None:
    p = SYNTHETIC_PARAMS
    a = simulate_hawkes(p, 50.0, np.random.default_rng(3))
    b = simulate_hawkes(p, 50.0, np.random.default_rng(3))
    assert np.array_equal(a.times, b.times) and np.array_equal(a.marks, b.marks)
    assert a.window_end == 50.0
    c = simulate_hawkes(p, 1e6, np.random.default_rng(3), max_events=25)
    assert len(c) == 25 and c.window_end == c.times[-1]
    assert len(simulate_hawkes(p, 0.0, np.random.default_rng(0))) == 0


def test_poisson_simulation_rates() -> None:
    rates = np.array([0.5, 1.5, 2.0])
    seqs = simulate_poisson_many(rates, 50, 100.0, np.random.default_rng(0))
    counts = np.bincount(np.concatenate([s.marks for s in seqs]), minlength=3)
    duration = 50 * 100.0
    z = (counts / duration - rates) / np.sqrt(rates / duration)  # Poisson counts: Var = rate T
    assert np.all(np.abs(z) < 4.0)
    s = simulate_poisson(rates, 10.0, np.random.default_rng(1))
    assert s.window_end == 10.0 and np.all(np.diff(s.times) >= 0)


# ----------------------------------------------------------------------------------------------- likelihood


def _brute_log_intensities(seq: EventSequence, p: HawkesParams) -> np.ndarray:
    """O(n^2) double sum, straight from the definition."""
    beta = p.beta_matrix
    out = []
    for i in range(len(seq)):
        k = seq.marks[i]
        lam = p.mu[k]
        for j in range(i):
            l, dt = seq.marks[j], seq.times[i] - seq.times[j]
            lam += p.alpha[k, l] * beta[k, l] * np.exp(-beta[k, l] * dt)
        out.append(np.log(lam))
    return np.array(out)


def _brute_compensator(seq: EventSequence, p: HawkesParams, end: float) -> float:
    """Adaptive quadrature of the ground intensity, piecewise between events (where it is smooth)."""
    knots = np.concatenate([[0.0], seq.times[seq.times < end], [end]])
    f = lambda x: float(hawkes_ground_intensity(seq, p, x)[0])  # noqa: E731
    return sum(integrate.quad(f, a, b, epsabs=0.0, epsrel=1e-12, limit=200)[0] for a, b in zip(knots[:-1], knots[1:]))


@pytest.mark.parametrize("name", ["scalar_beta", "matrix_beta", "synthetic"])
@pytest.mark.parametrize("windowed", [True, False])
def test_exact_log_likelihood_matches_brute_force(name: str, windowed: bool) -> None:
    p = PARAMS[name]()
    seq = simulate_hawkes(p, 25.0, np.random.default_rng(4))
    assert len(seq) > 10
    if not windowed:
        seq = EventSequence(seq.times, seq.marks, None)
    end = seq.window_end if windowed else seq.times[-1]
    brute_li = _brute_log_intensities(seq, p)
    np.testing.assert_allclose(hawkes_log_intensities(seq, p), brute_li, rtol=1e-12)
    brute_comp = _brute_compensator(seq, p, end)
    assert hawkes_compensator(seq, p) == pytest.approx(brute_comp, rel=1e-10)
    brute = brute_li.sum() - brute_comp
    assert hawkes_log_likelihood(seq, p) == pytest.approx(brute, rel=1e-8)
    # The per-interval increments add up to the closed form.
    inc = hawkes_compensator_increments(seq, p)
    assert inc.sum() == pytest.approx(hawkes_compensator(seq, p, seq.times[-1]), rel=1e-12)


def test_intensity_is_left_continuous_and_sums_to_ground() -> None:
    p = PARAMS["matrix_beta"]()
    seq = simulate_hawkes(p, 20.0, np.random.default_rng(6))
    at_events = hawkes_intensity(seq, p, seq.times)  # [n, K]
    np.testing.assert_allclose(np.log(at_events[np.arange(len(seq)), seq.marks]), hawkes_log_intensities(seq, p))
    t = np.linspace(0, 20, 57)
    np.testing.assert_allclose(hawkes_intensity(seq, p, t).sum(-1), hawkes_ground_intensity(seq, p, t))
    assert hawkes_ground_intensity(seq, p, 0.0)[0] == pytest.approx(p.mu.sum())


def test_poisson_log_likelihood_hand_formula() -> None:
    rates = [0.5, 2.0, 1.0]
    seq = make_sequence([0.3, 1.1, 2.5], [1, 0, 1], window_end=4.0)
    hand = np.log(2.0) + np.log(0.5) + np.log(2.0) - 4.0 * 3.5
    assert poisson_log_likelihood(seq, rates) == pytest.approx(hand, rel=1e-15)
    no_window = make_sequence([0.3, 1.1, 2.5], [1, 0, 1])
    assert poisson_log_likelihood(no_window, rates) == pytest.approx(hand + 1.5 * 3.5, rel=1e-15)


@pytest.mark.parametrize("beta", [1.7, [[0.5, 2.0], [3.0, 1.0]]])
def test_hawkes_without_excitation_is_poisson(beta: object) -> None:
    rates = np.array([0.7, 1.3])
    p = HawkesParams(mu=rates, alpha=np.zeros((2, 2)), beta=beta)
    for window in (True, False):
        seq = simulate_poisson(rates, 30.0, np.random.default_rng(8))
        if not window:
            seq = EventSequence(seq.times, seq.marks, None)
        assert hawkes_log_likelihood(seq, p) == pytest.approx(poisson_log_likelihood(seq, rates), rel=1e-13)


def test_likelihood_rejects_marks_out_of_range() -> None:
    with pytest.raises(ValueError, match="marks"):
        hawkes_log_likelihood(make_sequence([1.0], [5]), SYNTHETIC_PARAMS)


# ----------------------------------------------------------------------------------------------- built-in dataset


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_dataset_is_deterministic_and_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    a = ensure_synthetic_dataset(tmp_path / "a")
    elapsed = time.perf_counter() - start
    b = ensure_synthetic_dataset(tmp_path / "b")
    assert a.name == b.name == SYNTHETIC_DIRNAME
    files_a, files_b = _tree_bytes(a), _tree_bytes(b)
    assert sorted(files_a) == [
        "args.json", "split_0/args.json", "split_0/test.json", "split_0/train.json", "split_0/val.json"
    ]
    assert files_a == files_b
    assert elapsed < 2.0
    # A second call reuses the folder; no temporary folders are left behind.
    mtime = (a / "split_0" / "train.json").stat().st_mtime_ns
    assert ensure_synthetic_dataset(tmp_path / "a") == a
    assert (a / "split_0" / "train.json").stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "a").iterdir()] == [SYNTHETIC_DIRNAME]


def test_synthetic_dataset_concurrent_first_use(tmp_path: Path) -> None:
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: ensure_synthetic_dataset(tmp_path), range(4)))
    assert len(set(paths)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [SYNTHETIC_DIRNAME]
    assert _tree_bytes(paths[0]) == _tree_bytes(ensure_synthetic_dataset(tmp_path / "fresh"))


def test_synthetic_dataset_contents_and_true_likelihood() -> None:
    root = ensure_synthetic_dataset()  # MTPP_CACHE_DIR points to a test temp folder
    folder = root / "split_0"
    args = json.loads((folder / "args.json").read_text())
    assert args["window"] == SYNTHETIC_WINDOW and args["marks"] == SYNTHETIC_PARAMS.num_marks
    described = json.loads((root / "args.json").read_text())
    assert HawkesParams.from_dict(described["params"]).to_dict() == SYNTHETIC_PARAMS.to_dict()
    sizes = [args[f"{p}_size"] for p in ("train", "val", "test")]
    assert sizes == [360, 120, 120] and sum(sizes) == SYNTHETIC_NUM_SEQUENCES
    raw = json.loads((folder / "train.json").read_text())
    assert set(raw[0][0]) == {"time", "labels"}
    seqs = load_synthetic_split("train")
    assert len(seqs) == 360 and all(s.window_end == SYNTHETIC_WINDOW for s in seqs)
    lengths = np.array([len(s) for s in seqs])
    assert lengths.min() > 0 and 50 <= lengths.mean() <= 100
    for s in seqs[:5]:  # valid for the strict constructor
        make_sequence(s.times, s.marks, window_end=s.window_end, num_marks=5)
    # Scoring with the true process: the windowed NLL is higher than the benchmark one (survival term).
    nll = -np.mean([hawkes_log_likelihood(s, SYNTHETIC_PARAMS) for s in seqs])
    bench = -np.mean([hawkes_log_likelihood(s, SYNTHETIC_PARAMS) for s in load_synthetic_split("train", window=False)])
    assert np.isfinite(nll) and nll > bench


# ----------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("process", ["hawkes", "poisson"])
def test_simulate_cli_writes_loadable_folder(tmp_path: Path, process: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sim"
    argv = ["simulate", process, "--marks", "3", "--sequences", "40", "--window", "30", "--seed", "1",
            "--splits", "2", "--out", str(out)]
    assert main(argv) == 0
    assert "events" in capsys.readouterr().out
    for s in range(2):
        folder = out / f"split_{s}"
        args = json.loads((folder / "args.json").read_text())
        described = json.loads((out / "args.json").read_text())
        assert described["process"] == process and args["marks"] == 3 and args["window"] == 30
        parts = {p: _read_part(out, s, p, window=True) for p in ("train", "val", "test")}
        assert [len(parts[p]) for p in parts] == [args[f"{p}_size"] for p in parts] == [24, 8, 8]
        for seqs in parts.values():
            for seq in seqs:
                make_sequence(seq.times, seq.marks, window_end=seq.window_end, num_marks=3)
        if process == "hawkes":
            params = HawkesParams.from_dict(described["params"])
            assert np.isfinite(hawkes_log_likelihood(parts["test"][0], params))
    split0 = {seq.key() for p in ("train", "val", "test") for seq in _read_part(out, 0, p)}
    split1 = {seq.key() for p in ("train", "val", "test") for seq in _read_part(out, 1, p)}
    assert split0 == split1  # the same sequences, partitioned differently
    assert main(argv) == 2  # refuses to overwrite without --force
    assert main(argv + ["--force"]) == 0


def test_simulate_cli_compares_the_observed_rate_with_its_windows_expectation(tmp_path: Path, capsys) -> None:
    """The printed "expected" rate is the mean of what was simulated (from rest on the window), not the stationary
    rate, which a short window with strong branching and slow decay is far from (10.5 there, 1.67 simulated)."""
    out = tmp_path / "sim"
    argv = ["simulate", "hawkes", "--marks", "3", "--sequences", "2000", "--window", "5", "--branching", "0.9",
            "--beta", "0.3", "--seed", "0", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.startswith("rate per unit time"))
    expected, observed = (float(v) for v in re.findall(r"expected ([0-9.]+).*observed ([0-9.]+)", line)[0])
    assert abs(observed - expected) < 0.05 * expected, line
    assert "from rest on [0, 5]" in line and "stationary 10.5" in line
    described = json.loads((out / "args.json").read_text())
    params = HawkesParams.from_dict(described["params"])
    np.testing.assert_allclose(described["expected_rate"], params.expected_counts(5.0) / 5.0)
    np.testing.assert_allclose(described["stationary_rate"], params.stationary_rate())


def test_simulate_cli_rejects_explosive_branching(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["simulate", "hawkes", "--marks", "2", "--sequences", "3", "--window", "5", "--branching", "1.0",
            "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "branching" in capsys.readouterr().err


@pytest.mark.parametrize("num_sequences, window", [(2, 12_000.0), (400, 60.0)])
def test_simulation_memory_stays_within_its_estimate(tmp_path, num_sequences: int, window: float) -> None:
    """``mtpp simulate --max-memory`` refuses a simulation whose ``simulation_bytes`` (64 bytes an event) is over
    the budget. With few long sequences the simulation kept every thinning step's small arrays (~250 bytes an
    event) and the writer joined a whole sequence's event strings (~150 more): two sequences on a window of 1e7
    grew past 4 GiB under an estimate of 2.6. Peak traced memory of simulating and writing is now within it."""
    import tracemalloc

    from mtpp.data.formats import write_bosser_json
    from mtpp.data.synthetic import random_hawkes_params, simulate_hawkes_many, simulation_bytes

    params = random_hawkes_params(2, np.random.default_rng(0), branching=0.5, base_rate=1.0)
    tracemalloc.start()
    try:
        seqs = simulate_hawkes_many(params, num_sequences, window, np.random.default_rng(1))
        write_bosser_json(tmp_path / "s.json", seqs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    events = sum(len(s) for s in seqs)
    assert events > 20_000
    assert peak <= simulation_bytes(2, num_sequences, events), (peak / events, "bytes an event")
