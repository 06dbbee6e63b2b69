"""Golden values and properties of the gradient aggregators (DESIGN §4).

Expected values are computed here by hand or with plain numpy from the papers' formulas, never by calling the
implementation under test.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mtpp.errors import ConfigError
from mtpp.training.aggregators import AGGREGATORS, make_aggregator

CONFLICT_2D = (np.array([1.0, 0.0]), np.array([-1.0, 1.0]))  # cos = -1/sqrt(2)
AGREE_2D = (np.array([1.0, 0.0]), np.array([1.0, 1.0]))  # cos = +1/sqrt(2)
CONFLICT_3D = (np.array([1.0, 2.0, 0.0]), np.array([-1.0, 0.0, 1.0]))  # dot = -1
AGREE_3D = (np.array([2.0, 1.0, -1.0]), np.array([1.0, 3.0, 0.5]))  # dot = 4.5
PAIRS = [CONFLICT_2D, AGREE_2D, CONFLICT_3D, AGREE_3D]


def run(name: str, gs, split: bool = False, **opts) -> np.ndarray:
    """Apply aggregator ``name`` to numpy task gradients; optionally split each vector into two 'parameters'."""
    agg = make_aggregator(name, **opts)
    return apply(agg, gs, split)


def apply(agg, gs, split: bool = False) -> np.ndarray:
    tasks = []
    for g in gs:
        t = torch.tensor(g, dtype=torch.float64)
        tasks.append([t[:1], t[1:].reshape(-1, 1)] if split else [t])
    out = agg(tasks)
    return torch.cat([o.reshape(-1) for o in out]).numpy()


def random_pairs(n: int, dim: int, conflicting: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        a, b = rng.normal(size=dim), rng.normal(size=dim) * rng.uniform(0.1, 10)
        if (a @ b < 0) == conflicting:
            out.append((a, b))
    return out


# ---------------------------------------------------------------------------------------------- factory & interface


def test_unknown_name_lists_valid() -> None:
    with pytest.raises(ConfigError, match="unknown aggregator 'nope'.*pcgrad"):
        make_aggregator("nope")


def test_unknown_option_names_it_and_lists_valid() -> None:
    with pytest.raises(ConfigError, match=r"gamma.*'pcgrad'.*valid: seed"):
        make_aggregator("pcgrad", gamma=1.0)
    with pytest.raises(ConfigError, match="valid: beta, relax, strategy, target"):
        make_aggregator("metabalance", rate=0.1)
    with pytest.raises(ConfigError, match="valid: \\(none\\)"):
        make_aggregator("sum", x=1)


@pytest.mark.parametrize(
    "name, opts",
    [("metabalance", {"target": "both"}), ("metabalance", {"relax": 2}), ("cagrad", {"c": -1}), ("gradvac", {"beta": 3}),
     ("weighted", {"weights": [1.0]}), ("weighted", {"weights": [0, 0]}), ("weighted", {"weights": "ab"}),
     ("cagrad", {"c": "-1e-1"})],
)
def test_bad_option_values(name: str, opts: dict) -> None:
    with pytest.raises(ConfigError):
        make_aggregator(name, **opts)


@pytest.mark.parametrize("name, opts, fragment", [
    # a list where one number is taken: Python's own "float() argument must be ..." / "'<' not supported" leaked
    ("gradops", {"alpha": [1, 2]}, "gradients.options.alpha: must be one finite number for aggregator 'gradops'"),
    ("cagrad", {"c": [0.1, 0.2, 0.3]}, "gradients.options.c: must be one finite number"),
    ("gradvac", {"beta": [0.1, 0.2]}, "gradients.options.beta: must be one finite number"),
    ("metabalance", {"beta": {"time": 0.5}}, "gradients.options.beta: must be one finite number"),
    # per-task options: as many values as tasks, checked when the aggregator is built, not at the first step
    ("cograd", {"gamma": [1e-3, 2e-3, 3]}, "gradients.options.gamma: 3 values for the 2 tasks (time, mark)"),
    ("weighted", {"weights": [1, 1, 1]}, "gradients.options.weights: 3 values for the 2 tasks"),
    # signs that turn the method into something else: ascending an NLL, negative virtual learning rates
    ("weighted", {"weights": [-1, 1]}, "weights: must be finite, >= 0 and not all 0"),
    ("cograd", {"gamma": -1}, "gamma: must be finite numbers >= 0"),
    ("cograd", {"gamma": {"time": -1e-3}}, "gamma: must be finite numbers >= 0"),
])  # fmt: skip
def test_option_shapes_and_signs_are_one_line_config_errors(name: str, opts: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_aggregator(name, **opts)
    assert fragment in str(err.value), str(err.value)


@pytest.mark.parametrize("name, opts, message", [
    # a value refused by the aggregator itself said only "beta: must be in [0, 1], got 2": which beta (gradvac and
    # metabalance both have one), of which section?
    ("gradvac", {"beta": 2}, "gradients.options.beta: must be in [0, 1], got 2 (aggregator 'gradvac')"),
    ("cagrad", {"rescale": 1.5}, "gradients.options.rescale: 1.5; valid: 0, 1, 2 (aggregator 'cagrad')"),
    ("metabalance", {"target": "both"}, "gradients.options.target: 'both' is not a task; valid: time, mark "
                                        "(aggregator 'metabalance')"),
    ("weighted", {"weights": 2}, "gradients.options.weights: must be one finite number per task [weights_time, "
                                 "weights_mark] or {time: ..., mark: ...} for aggregator 'weighted', got 2"),
    # weighted takes no single number: its messages offered "one number" and then refused it
    ("weighted", {"weights": [1, 1, 1]}, "gradients.options.weights: 3 values for the 2 tasks (time, mark) of "
                                         "aggregator 'weighted'; give [weights_time, weights_mark]"),
    ("cograd", {"gamma": [1e-3]}, "gradients.options.gamma: 1 values for the 2 tasks (time, mark) of aggregator "
                                  "'cograd'; give one number or [gamma_time, gamma_mark]"),
    ("pcgrad", {"gamma": 1.0}, "gradients.options: unknown option(s) gamma for aggregator 'pcgrad'; valid: seed"),
    ("nope", {}, "gradients.aggregator: unknown aggregator 'nope'; valid: "),
])  # fmt: skip
def test_option_errors_name_their_key_and_aggregator(name: str, opts: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_aggregator(name, **opts)
    assert str(err.value).startswith(message), str(err.value)


def test_weighted_takes_no_single_number_and_cograd_does() -> None:
    with pytest.raises(ConfigError, match="one finite number per task"):
        make_aggregator("weighted", weights=0.5)
    assert make_aggregator("cograd", gamma=1e-6).gamma == 1e-6
    assert make_aggregator("weighted", weights={"time": 2}).weights == [2.0, 1.0]


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_structure_and_empty(name: str) -> None:
    agg = make_aggregator(name)
    gT = [torch.randn(3, 2), torch.randn(4)]
    gM = [torch.randn(3, 2), torch.randn(4)]
    out = agg([gT, gM])
    assert [o.shape for o in out] == [g.shape for g in gT]
    assert all(torch.isfinite(o).all() for o in out)
    assert make_aggregator(name)([[], []]) == []


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_zero_gradient_is_finite(name: str) -> None:
    out = run(name, (np.zeros(3), np.array([1.0, -2.0, 0.5])))
    assert np.all(np.isfinite(out))
    out = run(name, (np.zeros(3), np.zeros(3)))
    assert np.allclose(out, 0.0)


@pytest.mark.parametrize("name", ["sum", "weighted", "pcgrad", "gradops", "cograd", "mgda", "cagrad", "imtl", "gradvac"])
@pytest.mark.parametrize("pair", PAIRS)
def test_parameter_split_does_not_matter(name: str, pair) -> None:
    """Flat-vector aggregators see all shared parameters concatenated: splitting into tensors changes nothing."""
    assert np.allclose(run(name, pair, split=False), run(name, pair, split=True), atol=1e-12)


# ---------------------------------------------------------------------------------------------- sum / weighted


@pytest.mark.parametrize("pair", PAIRS)
def test_sum(pair) -> None:
    assert np.allclose(run("sum", pair), pair[0] + pair[1])


def test_exponent_numbers_in_options_are_numbers() -> None:
    """PyYAML reads ``1e-1`` (no dot) as a string; aggregator options take it as the number it is."""
    assert make_aggregator("cagrad", c="1e-1")._options["c"] == pytest.approx(0.1)
    assert make_aggregator("weighted", weights=["2e0", 1])._options["weights"] == [2.0, 1]


def test_weighted() -> None:
    a, b = CONFLICT_3D
    assert np.allclose(run("weighted", (a, b), weights=[0.5, 2.0]), 0.5 * a + 2.0 * b)
    assert np.allclose(run("weighted", (a, b), weights={"mark": 3.0}), a + 3.0 * b)
    with pytest.raises(ConfigError, match="unknown task"):
        make_aggregator("weighted", weights={"space": 1.0})


# ---------------------------------------------------------------------------------------------- PCGrad


def test_pcgrad_golden() -> None:
    # g_T = (1, 0), g_M = (-1, 1), g_T.g_M = -1: g_T' = g_T + g_M / 2 = (.5, .5), g_M' = g_M + g_T = (0, 1)
    assert np.allclose(run("pcgrad", CONFLICT_2D), [0.5, 1.5])
    # 3-D: dot = -1, |g_M|^2 = 2, |g_T|^2 = 5
    a, b = CONFLICT_3D
    expected = (a + 0.5 * b) + (b + 0.2 * a)
    assert np.allclose(run("pcgrad", CONFLICT_3D), expected)
    assert np.allclose(expected, [-0.3, 2.4, 1.5])


@pytest.mark.parametrize("pair", [AGREE_2D, AGREE_3D])
def test_pcgrad_no_conflict_is_sum(pair) -> None:
    assert np.allclose(run("pcgrad", pair), pair[0] + pair[1])


def test_pcgrad_output_does_not_conflict() -> None:
    for a, b in random_pairs(50, 5, conflicting=True):
        out = run("pcgrad", (a, b))
        assert out @ a >= -1e-9 and out @ b >= -1e-9


def test_pcgrad_three_tasks() -> None:
    rng = np.random.default_rng(3)
    gs = [rng.normal(size=4) for _ in range(3)]
    out = run("pcgrad", gs, seed=0)
    # hand reference: PCGrad with every task order, output must be one of them
    candidates = []
    for orders in itertools.product(itertools.permutations(range(3)), repeat=3):
        total = np.zeros(4)
        for i in range(3):
            gi = gs[i].copy()
            for j in orders[i]:
                if j != i and gi @ gs[j] < 0:
                    gi = gi - gi @ gs[j] / (gs[j] @ gs[j]) * gs[j]
            total += gi
        candidates.append(total)
    assert any(np.allclose(out, c) for c in candidates)
    no_conflict = [np.array([1.0, 0, 0]), np.array([1.0, 1, 0]), np.array([0.0, 1, 1])]
    assert np.allclose(run("pcgrad", no_conflict), sum(no_conflict))


# ---------------------------------------------------------------------------------------------- GradOPS


def _proj_out(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a - (a @ b) / (b @ b) * b


def test_gradops_golden() -> None:
    assert np.allclose(run("gradops", CONFLICT_2D), [0.5, 1.5])
    a, b = CONFLICT_3D
    pa, pb = np.array([0.5, 2.0, 0.5]), np.array([-0.8, 0.4, 1.0])  # by hand
    assert np.allclose(run("gradops", CONFLICT_3D), pa + pb)
    # projection is applied to agreeing gradients too: only the parts orthogonal to the other task survive
    a, b = AGREE_2D
    assert np.allclose(run("gradops", AGREE_2D), _proj_out(a, b) + _proj_out(b, a))
    assert np.allclose(run("gradops", AGREE_2D), [0.5 + 0.0, -0.5 + 1.0])


def test_gradops_projected_are_orthogonal_to_other_tasks() -> None:
    agg = make_aggregator("gradops")
    for a, b in random_pairs(20, 6, conflicting=True) + random_pairs(20, 6, conflicting=False):
        F = torch.tensor(np.stack([a, b]))
        P = agg.projected(F).numpy()
        assert abs(P[0] @ b) < 1e-9 and abs(P[1] @ a) < 1e-9
        G = P.sum(0)
        assert G @ a >= -1e-9 and G @ b >= -1e-9
    rng = np.random.default_rng(1)
    F3 = rng.normal(size=(3, 7))
    P3 = agg.projected(torch.tensor(F3)).numpy()
    for i, j in itertools.permutations(range(3), 2):
        assert abs(P3[i] @ F3[j]) < 1e-9


@pytest.mark.parametrize("alpha", [-3.0, 1.0, 2.0])
def test_gradops_alpha_reweighting(alpha: float) -> None:
    a, b = CONFLICT_3D
    pa, pb = _proj_out(a, b), _proj_out(b, a)
    G = pa + pb
    R = np.array([a @ G, b @ G]) / (G @ G)
    w = 2 * R**alpha / (R**alpha).sum()
    assert np.allclose(run("gradops", CONFLICT_3D, alpha=alpha), w[0] * pa + w[1] * pb)
    # R_i = |g_i'|^2 / |G'|^2
    assert np.allclose(R, [pa @ pa / (G @ G), pb @ pb / (G @ G)])


# ---------------------------------------------------------------------------------------------- CoGrad


@pytest.mark.parametrize("pair", PAIRS)
def test_cograd_golden(pair) -> None:
    a, b = pair
    gamma = 0.3
    expected = (a - gamma * a * a * b) + (b - gamma * b * b * a)
    assert np.allclose(run("cograd", pair, gamma=gamma), expected)
    assert np.allclose(run("cograd", pair, gamma=0.0), a + b)


# ---------------------------------------------------------------------------------------------- MGDA


@pytest.mark.parametrize("pair", PAIRS + random_pairs(10, 4, True) + random_pairs(10, 4, False))
def test_mgda_is_min_norm_point_of_hull(pair) -> None:
    a, b = pair
    grid = np.linspace(0.0, 1.0, 20001)
    pts = grid[:, None] * a + (1 - grid[:, None]) * b
    best = pts[np.argmin((pts**2).sum(1))]
    out = run("mgda", pair)
    assert np.linalg.norm(out) <= np.linalg.norm(best) + 1e-6
    assert np.allclose(out, best, atol=1e-3)


def test_mgda_golden() -> None:
    # (1,0),(−1,1): w = (g_M - g_T).g_M / |g_T - g_M|^2 = 3/5 -> 0.6 (1,0) + 0.4 (−1,1) = (0.2, 0.4)
    assert np.allclose(run("mgda", CONFLICT_2D), [0.2, 0.4])
    # agreeing and one dominates: (1,0),(1,1): w = ((0,1).(1,1)) / 1 = 1 -> (1, 0)
    assert np.allclose(run("mgda", AGREE_2D), [1.0, 0.0])


def test_mgda_three_tasks_frank_wolfe() -> None:
    rng = np.random.default_rng(2)
    F = rng.normal(size=(3, 5))
    out = run("mgda", list(F))
    best = np.inf
    n = 200
    for i in range(n + 1):
        for j in range(n + 1 - i):
            w = np.array([i, j, n - i - j]) / n
            best = min(best, np.linalg.norm(w @ F))
    assert np.linalg.norm(out) <= best + 1e-3


# ---------------------------------------------------------------------------------------------- CAGrad


def _cagrad_numpy(a: np.ndarray, b: np.ndarray, c: float) -> np.ndarray:
    g0 = (a + b) / 2
    grid = np.linspace(0.0, 1.0, 200001)
    gw = grid[:, None] * a + (1 - grid[:, None]) * b
    obj = gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw, axis=1)
    w = grid[np.argmin(obj)]
    gw = w * a + (1 - w) * b
    d = g0 + c * np.linalg.norm(g0) / np.linalg.norm(gw) * gw
    return d / (1 + c**2)


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("pair", PAIRS + random_pairs(5, 4, True, seed=5) + random_pairs(5, 4, False, seed=6))
def test_cagrad_matches_grid_search(pair, c: float) -> None:
    assert np.allclose(run("cagrad", pair, c=c), _cagrad_numpy(*pair, c), atol=1e-4)


def test_cagrad_c0_is_mean_and_rescale() -> None:
    a, b = CONFLICT_3D
    assert np.allclose(run("cagrad", (a, b), c=0.0), (a + b) / 2)
    d1 = run("cagrad", (a, b), c=0.5, rescale=1)
    assert np.allclose(run("cagrad", (a, b), c=0.5, rescale=0), d1 * 1.25)
    assert np.allclose(run("cagrad", (a, b), c=0.5, rescale=2), d1 * 1.25 / 1.5)


def test_cagrad_two_tasks_only() -> None:
    with pytest.raises(ValueError, match="tasks"):
        make_aggregator("cagrad")([[torch.ones(2)]] * 3)


# ---------------------------------------------------------------------------------------------- IMTL-G / Nash-MTL


@pytest.mark.parametrize("pair", PAIRS + random_pairs(5, 4, True, seed=7))
def test_imtl_equal_projections_and_nash_direction(pair) -> None:
    a, b = pair
    out = run("imtl", pair)
    ua, ub = a / np.linalg.norm(a), b / np.linalg.norm(b)
    assert out @ ua == pytest.approx(out @ ub, abs=1e-9)
    # golden: alpha_T = |g_M| / (|g_T| + |g_M|)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    assert np.allclose(out, (nb * a + na * b) / (na + nb))
    # Nash-MTL, two tasks: alpha solving G alpha = 1/alpha is alpha_i = 1 / (|g_i| sqrt(1 + cos))
    cos = a @ b / (na * nb)
    alpha = np.array([1 / (na * np.sqrt(1 + cos)), 1 / (nb * np.sqrt(1 + cos))])
    G = np.stack([a, b]) @ np.stack([a, b]).T
    assert np.allclose(G @ alpha, 1 / alpha)
    nash = alpha[0] * a + alpha[1] * b
    assert np.allclose(out / np.linalg.norm(out), nash / np.linalg.norm(nash))


def test_imtl_three_tasks_equal_projections() -> None:
    rng = np.random.default_rng(4)
    F = rng.normal(size=(3, 6))
    out = run("imtl", list(F))
    proj = [out @ (g / np.linalg.norm(g)) for g in F]
    assert np.allclose(proj, proj[0])


# ---------------------------------------------------------------------------------------------- MetaBalance


def _two_param(a, b):
    return [torch.tensor(a[:2], dtype=torch.float64), torch.tensor(a[2:], dtype=torch.float64)], [
        torch.tensor(b[:2], dtype=torch.float64),
        torch.tensor(b[2:], dtype=torch.float64),
    ]


@pytest.mark.parametrize("target", ["time", "mark"])
def test_metabalance_relax1_matches_target_norm_per_tensor(target: str) -> None:
    agg = make_aggregator("metabalance", target=target, relax=1.0, beta=0.0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        a, b = rng.normal(size=5), rng.normal(size=5) * 50
        gT, gM = _two_param(a, b)
        out = agg([gT, gM])
        tgt, aux = (gT, gM) if target == "time" else (gM, gT)
        for p in range(2):
            scaled_aux = out[p] - tgt[p]
            assert scaled_aux.norm().item() == pytest.approx(tgt[p].norm().item(), rel=1e-9)
            # direction of the auxiliary gradient is kept
            cos = (scaled_aux @ aux[p]) / scaled_aux.norm() / aux[p].norm()
            assert cos.item() == pytest.approx(1.0)


def test_metabalance_moving_average_golden_and_state_roundtrip() -> None:
    beta, r = 0.9, 0.7
    rng = np.random.default_rng(1)
    steps = [(rng.normal(size=5), rng.normal(size=5) * 10) for _ in range(4)]
    # numpy reference, per tensor: m <- beta m + (1-beta) |g|, zero init; g_aux' = g_aux (r m_T / m_M + 1 - r)
    mT, mM = np.zeros(2), np.zeros(2)
    expected = []
    for a, b in steps:
        pa, pb = [a[:2], a[2:]], [b[:2], b[2:]]
        mT = beta * mT + (1 - beta) * np.array([np.linalg.norm(x) for x in pa])
        mM = beta * mM + (1 - beta) * np.array([np.linalg.norm(x) for x in pb])
        expected.append(np.concatenate([pa[p] + pb[p] * (r * mT[p] / mM[p] + 1 - r) for p in range(2)]))

    agg = make_aggregator("metabalance", target="time", relax=r, beta=beta)
    for k in range(2):
        out = agg(list(_two_param(*steps[k])))
        assert np.allclose(torch.cat(out).numpy(), expected[k])
    state = agg.state_dict()
    fresh = make_aggregator("metabalance", target="time", relax=r, beta=beta)
    fresh.load_state_dict(state)
    for k in range(2, 4):
        out_a = torch.cat(agg(list(_two_param(*steps[k])))).numpy()
        out_b = torch.cat(fresh(list(_two_param(*steps[k])))).numpy()
        assert np.allclose(out_a, expected[k]) and np.allclose(out_b, expected[k])


def test_metabalance_strategies() -> None:
    a, b = np.array([1.0, 0, 0, 0, 0]), np.array([0, 4.0, 0, 0, 0])  # aux larger on tensor 0
    small = np.array([0, 0.5, 0, 0, 0])
    dec = make_aggregator("metabalance", relax=1.0, beta=0.0, strategy="decrease")
    inc = make_aggregator("metabalance", relax=1.0, beta=0.0, strategy="increase")
    assert np.allclose(torch.cat(dec(list(_two_param(a, b)))).numpy(), a + b / 4)
    assert np.allclose(torch.cat(dec(list(_two_param(a, small)))).numpy(), a + small)
    assert np.allclose(torch.cat(inc(list(_two_param(a, b)))).numpy(), a + b)
    assert np.allclose(torch.cat(inc(list(_two_param(a, small)))).numpy(), a + small * 2)


# ---------------------------------------------------------------------------------------------- GradVac


def test_gradvac_golden_conflict() -> None:
    # target 0: phi = -1/sqrt2 < 0 -> g_T' = g_T + 0.5 g_M = (.5,.5); g_M' = g_M + 1 g_T = (0, 1)
    agg = make_aggregator("gradvac", beta=0.01, target=0.0)
    assert np.allclose(apply(agg, CONFLICT_2D), [0.5, 1.5])
    phi = -1 / math.sqrt(2)
    assert np.allclose(agg.state_dict()["phi_hat"].numpy(), [[0.0, 0.01 * phi], [0.01 * phi, 0.0]])


def test_gradvac_sets_cosine_to_target_and_state_roundtrip() -> None:
    a, b = AGREE_3D  # cos ~ 0.43
    target = 0.8
    agg = make_aggregator("gradvac", beta=0.5, target=target)
    out = apply(agg, (a, b))
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    k = lambda n_i, n_j: n_i * (target * np.sqrt(1 - cos**2) - cos * np.sqrt(1 - target**2)) / (  # noqa: E731
        n_j * np.sqrt(1 - target**2)
    )
    ga, gb = a + k(na, nb) * b, b + k(nb, na) * a
    assert ga @ b / np.linalg.norm(ga) / nb == pytest.approx(target)
    assert np.allclose(out, ga + gb)
    state = agg.state_dict()
    assert np.allclose(state["phi_hat"].numpy(), [[target, 0.5 * target + 0.5 * cos]] * 1 + [[0.5 * target + 0.5 * cos, target]])
    fresh = make_aggregator("gradvac", beta=0.5, target=target)
    fresh.load_state_dict(state)
    assert np.allclose(apply(fresh, (a, b)), apply(agg, (a, b)))
    # above the target: untouched
    assert np.allclose(run("gradvac", (a, b), target=-0.5), a + b)


def test_stateless_state_dict_roundtrip() -> None:
    for name in ["sum", "weighted", "gradops", "cograd", "mgda", "cagrad", "imtl"]:
        agg = make_aggregator(name)
        agg.load_state_dict(agg.state_dict())
    p = make_aggregator("pcgrad", seed=1)
    p.load_state_dict(make_aggregator("pcgrad", seed=2).state_dict())


@pytest.mark.parametrize("name", sorted(set(AGGREGATORS) - {"cograd"}))
def test_scale_equivariance(name: str) -> None:
    """agg(s * g) = s * agg(g) for s > 0: AMP loss scaling commutes with aggregation (cograd excepted, documented)."""
    a, b = CONFLICT_3D
    s = 1024.0
    out1 = run(name, (a, b), split=True)
    out2 = run(name, (s * a, s * b), split=True)
    assert np.allclose(out2, s * out1, rtol=1e-9)


def test_cograd_per_task_gamma_is_algorithm_1_line_9() -> None:
    """Yang et al. 2023, Alg. 1 line 9: ``g^_i = g_i - sum_{j != i} gamma_j g_i * g_i * g_j``; the per-task values
    of the paper's experiments (``{0.01, 0.005}``), as a list and as a mapping."""
    for a, b in PAIRS:
        g_t, g_m = 0.01, 0.005
        expected = (a - g_m * a * a * b) + (b - g_t * b * b * a)
        assert np.allclose(run("cograd", (a, b), gamma=[g_t, g_m]), expected)
        assert np.allclose(run("cograd", (a, b), gamma={"time": g_t, "mark": g_m}), expected)
    with pytest.raises(ConfigError, match="gamma"):
        make_aggregator("cograd", gamma={"speed": 1.0})
    with pytest.raises(ConfigError, match="gamma"):
        make_aggregator("cograd", gamma=float("nan"))


def test_bad_aggregator_options_stop_train_before_a_run_folder_exists(tmp_path, capsys) -> None:
    """``cograd`` with three gammas failed at the first step with a traceback and left a partial run folder: now
    one line before anything is written; the header names the options a run trains with, defaults included."""
    from mtpp.cli import main

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--set", "data.max_sequences=20", "--set", "train.max_epochs=1",
            "--set", "model.hidden_size=4", "--set", "gradients.aggregator=cograd", "-q"]  # fmt: skip
    assert main([*args, "--set", "gradients.options={gamma: [1.0e-3, 2.0e-3, 3]}"]) == 2
    err = capsys.readouterr().err
    assert "gradients.options.gamma: 3 values for the 2 tasks" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*args[:-1]]) == 0
    assert "aggregator cograd (gamma=4e-07)" in (out / "train.log").read_text()
