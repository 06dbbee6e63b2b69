"""Gradient aggregators: combine the per-task gradients of the shared parameters into one update.

One interface (DESIGN §4)::

    agg = make_aggregator("pcgrad", seed=0)
    combined = agg([g_T, g_M])        # g_T, g_M: list[Tensor], one tensor per shared parameter
    # combined: list[Tensor], same shapes as g_T; written into ``.grad`` by ``backward_step``

Task order is always ``[time, mark]`` (index 0 = time, 1 = mark). Every aggregator accepts ``T >= 2`` tasks
unless its docstring says otherwise. Everything is computed on the gradients' device from the ``T x T`` Gram matrix
of the flattened task gradients (closed forms for two tasks); tensor-valued decisions use ``torch.where``, never a
Python ``if`` on a tensor, so no aggregator forces a host-device synchronisation.

Scale convention: ``sum``, ``weighted``, ``pcgrad``, ``cograd``, ``gradops``, ``metabalance`` and ``gradvac`` are on
the scale of the *sum* of the task gradients (what ``(L_T + L_M).backward()`` gives). ``mgda``, ``cagrad`` and
``imtl`` follow their papers and return a combination whose weights sum to 1 (the *mean* scale, half the sum's
magnitude for two tasks). With Adam (the default optimizer) this barely matters; with SGD adjust the learning rate.

Scale equivariance: every aggregator except ``cograd`` satisfies ``agg(s * grads) = s * agg(grads)`` for
``s > 0``, so AMP loss scaling (``GradScaler``) commutes with aggregation and ``scaler.unscale_`` afterwards is
exact. ``cograd``'s correction is cubic in the gradients: under a loss scale ``s`` its effective ``gamma`` becomes
``gamma * s^2``; avoid it with fp16 loss scaling (bf16 needs no scaler).

Registered names: see ``AGGREGATORS`` (``sum`` is the default). ``torchjd:NAME`` names any aggregator of the
optional torchjd library (``pip install 'mtpp[torchjd]'``; ``TorchJD``), e.g. ``gradients.aggregator: torchjd:UPGrad``
with ``gradients.options`` passed to its constructor.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor

from mtpp.errors import ConfigError

TaskGrads = Sequence[Sequence[Tensor]]
"""``[g_task_0, g_task_1, ...]``; each ``g_task`` is a list of tensors, one per shared parameter (same shapes)."""

AGGREGATORS: dict[str, type["Aggregator"]] = {}
TASK_NAMES: tuple[str, ...] = ("time", "mark")


def register(name: str) -> Callable[[type["Aggregator"]], type["Aggregator"]]:
    """Class decorator adding an aggregator to ``AGGREGATORS`` under ``name``."""

    def deco(cls: type[Aggregator]) -> type[Aggregator]:
        if name in AGGREGATORS:
            raise RuntimeError(f"aggregator {name!r} registered twice")
        cls.name = name
        AGGREGATORS[name] = cls
        return cls

    return deco


# ----------------------------------------------------------------------------------------------------------------
# Helpers on flattened gradients
# ----------------------------------------------------------------------------------------------------------------


def flatten(grads: Sequence[Tensor]) -> Tensor:
    """One task's list of per-parameter gradients -> ``[P]`` vector."""
    return torch.cat([g.reshape(-1) for g in grads]) if len(grads) else torch.zeros(0)


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """``[P]`` vector -> list of tensors shaped like ``like``."""
    out, i = [], 0
    for t in like:
        n = t.numel()
        out.append(flat[i : i + n].view_as(t))
        i += n
    return out


def stack_tasks(grads: TaskGrads) -> Tensor:
    """``[T, P]`` matrix of flattened task gradients."""
    return torch.stack([flatten(g) for g in grads])


def _safe_div(num: Tensor, den: Tensor, fallback: float = 0.0) -> Tensor:
    """``num / den`` where ``den > 0``, else ``fallback`` (elementwise, no host sync, no NaN gradients)."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.full_like(num, fallback))


# ----------------------------------------------------------------------------------------------------------------
# Base class and factory
# ----------------------------------------------------------------------------------------------------------------


class Aggregator:
    """Combines per-task gradients of the shared parameters into one gradient.

    Subclasses implement ``combine(F: [T, P]) -> [P]`` on flattened gradients, or override ``__call__`` when they
    work per parameter tensor (MetaBalance). Options are the keyword arguments of ``__init__``.
    """

    name: ClassVar[str] = "?"
    is_plain_sum: ClassVar[bool] = False
    """True only for ``sum``: lets ``backward_step`` use a single ``(L_T + L_M).backward()``."""
    min_tasks: ClassVar[int] = 2
    max_tasks: ClassVar[int | None] = None
    unused_with_two_tasks: ClassVar[tuple[str, ...]] = ()
    """Options that change nothing when there are two tasks (``pcgrad`` / ``gradvac``'s ``seed``)."""

    def __call__(self, grads: TaskGrads) -> list[Tensor]:
        """``grads``: ``T`` lists of ``n`` tensors -> combined list of ``n`` tensors (shapes of ``grads[0]``)."""
        self._check(grads)
        if len(grads[0]) == 0:
            return []
        F = stack_tasks(grads)
        return unflatten(self.combine(F), grads[0])

    def combine(self, F: Tensor) -> Tensor:
        """``F: [T, P]`` task gradients -> ``[P]`` combined gradient."""
        raise NotImplementedError

    def _check(self, grads: TaskGrads) -> None:
        T = len(grads)
        if T < self.min_tasks or (self.max_tasks is not None and T > self.max_tasks):
            allowed = f"{self.min_tasks}" if self.max_tasks == self.min_tasks else f">= {self.min_tasks}"
            raise ValueError(f"aggregator {self.name!r} needs {allowed} tasks, got {T}")
        n = len(grads[0])
        if any(len(g) != n for g in grads):
            raise ValueError("every task must give one gradient per shared parameter")

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (moving averages, EMA targets, RNG). Stateless aggregators return ``{}``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        if state:
            raise ValueError(f"aggregator {self.name!r} is stateless but got state keys {sorted(state)}")

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in getattr(self, "_options", {}).items())
        return f"{type(self).__name__}({opts})"


def aggregator_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts, with their defaults."""
    cls = AGGREGATORS[name]
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in list(sig.parameters.values())[1:]
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def options_with_defaults(name: Any, options: Any) -> Any:
    """``options`` of aggregator ``name`` with every option it leaves out at its default (``cagrad``, ``{}`` ->
    ``{"c": 0.5, "rescale": 1}``), numbers in exponent form read as numbers: the settings a run used, so a run that
    gave a default explicitly and one that left it out are the same experiment. Anything this cannot read (an
    unknown or ``torchjd:`` name, options that are not a mapping) is returned unchanged."""
    if not isinstance(name, str) or name not in AGGREGATORS or not isinstance(options, (dict, type(None))):
        return options
    return {**aggregator_options(name), **{k: _yaml_number(v) for k, v in (options or {}).items()}}


def _per_task_options(name: str) -> set[str]:
    """The options of aggregator ``name`` that take one value per task (their annotation admits a list or a
    mapping, e.g. ``weighted``'s ``weights``, ``cograd``'s ``gamma``); every other number option takes one number."""
    sig = inspect.signature(AGGREGATORS[name].__init__)
    return {p.name for p in sig.parameters.values() if re.search(r"\b(Sequence|dict|list)\b", str(p.annotation))}


def _takes_one_number(name: str, key: str) -> bool:
    """Whether per-task option ``key`` of aggregator ``name`` also takes one number for every task (its annotation
    has ``float`` as an alternative of its own: ``cograd``'s ``gamma`` does, ``weighted``'s ``weights`` does not)."""
    annotation = str(inspect.signature(AGGREGATORS[name].__init__).parameters[key].annotation)
    depth, parts, part = 0, [], ""
    for ch in annotation:  # the alternatives of ``A | B[C | D]`` at bracket depth 0
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "|" and depth == 0:
            parts, part = parts + [part], ""
        else:
            part += ch
    return any(p.strip() in ("float", "int") for p in parts + [part])


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_number(value: Any) -> Any:
    """``"1e-1"`` -> ``0.1``: YAML 1.1 (PyYAML) reads a number in exponent form without a dot as a string, which
    typed configuration fields convert but free-form ``gradients.options`` did not (``c: 1e-1`` failed with
    "'<' not supported between 'str' and 'int'"). Lists are converted element-wise; anything else is unchanged."""
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_yaml_number(v) for v in value]
    if isinstance(value, dict):
        return {k: _yaml_number(v) for k, v in value.items()}
    return value


def _finite_numbers(value: Any) -> bool:
    """A finite number (not a bool, not a string), or a list / mapping of them (per-task values)."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_finite_numbers(v) for v in value)
    if isinstance(value, dict):
        return bool(value) and all(_finite_numbers(v) for v in value.values())
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def make_aggregator(name: str = "sum", **options: Any) -> Aggregator:
    """Build an aggregator by name. Unknown names or options raise ``ConfigError`` listing the valid ones.

    ``"torchjd:NAME"``: torchjd's aggregator ``NAME`` behind the same interface (``TorchJD``)."""
    options = {k: _yaml_number(v) for k, v in options.items()}
    if name.startswith(TORCHJD_PREFIX):
        return TorchJD.build(name[len(TORCHJD_PREFIX) :], **options)
    if name not in AGGREGATORS:
        raise ConfigError(f"gradients.aggregator: unknown aggregator {name!r}; valid: {', '.join(sorted(AGGREGATORS))}")
    valid = aggregator_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listing = ", ".join(sorted(valid)) if valid else "(none)"
        raise ConfigError(f"gradients.options: unknown option(s) {', '.join(unknown)} for aggregator {name!r}; "
                          f"valid: {listing}")
    per_task = _per_task_options(name)
    for key, value in options.items():  # a number option (by its default) holds finite numbers (one, or per task)
        default = valid[key]
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if key in per_task or numeric:
            each = f"[{key}_time, {key}_mark] or {{{', '.join(f'{t}: ...' for t in TASK_NAMES)}}}"
            scalar = key in per_task and _takes_one_number(name, key)
            what = ("one finite number" if key not in per_task
                    else f"a finite number or one per task {each}" if scalar else f"one finite number per task {each}")
            if (not _finite_numbers(value) or (isinstance(value, (list, tuple, dict)) and key not in per_task)
                    or (key in per_task and not scalar and not isinstance(value, (list, tuple, dict)))):  # fmt: skip
                raise ConfigError(f"gradients.options.{key}: must be {what} for aggregator {name!r}, got {value!r}")
            if isinstance(value, (list, tuple)) and len(value) != len(TASK_NAMES):
                raise ConfigError(f"gradients.options.{key}: {len(value)} values for the {len(TASK_NAMES)} tasks "
                                  f"({', '.join(TASK_NAMES)}) of aggregator {name!r}; give "
                                  + ("one number or " if scalar else "") + f"[{key}_time, {key}_mark]")
        if key == "seed" and value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                                    or not 0 <= value < 2**63):  # fmt: skip
            raise ConfigError(f"gradients.options.seed: must be an integer in [0, 2^63) or null for aggregator "
                              f"{name!r}, got {value!r}")
    try:
        agg = AGGREGATORS[name](**options)
    except ConfigError as e:  # "relax: must be in [0, 1], got 2": said as the key it came from, with the aggregator
        text = str(e)
        raise ConfigError(text if text.startswith("gradients.") else f"gradients.options.{text} (aggregator {name!r})"
                          ) from None  # fmt: skip
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"gradients.options: aggregator {name!r}: {e}") from e
    agg._options = {**valid, **options}  # type: ignore[attr-defined]
    return agg


# ----------------------------------------------------------------------------------------------------------------
# sum / weighted
# ----------------------------------------------------------------------------------------------------------------


@register("sum")
class Sum(Aggregator):
    """``g = sum_i g_i``: exactly what ``(L_T + L_M).backward()`` gives (the default)."""

    is_plain_sum = True

    def __call__(self, grads: TaskGrads) -> list[Tensor]:
        self._check(grads)
        return [torch.stack(list(gs)).sum(0) for gs in zip(*grads)]

    def combine(self, F: Tensor) -> Tensor:
        return F.sum(0)


@register("weighted")
class Weighted(Aggregator):
    """``g = sum_i w_i g_i`` with fixed task weights.

    Options: ``weights``: a list ``[w_time, w_mark]`` or a mapping ``{"time": w, "mark": w}`` (default ``[1, 1]``).
    """

    def __init__(self, weights: Sequence[float] | dict[str, float] = (1.0, 1.0)) -> None:
        if isinstance(weights, dict):
            bad = sorted(set(weights) - set(TASK_NAMES))
            if bad:
                raise ConfigError(f"weights: unknown task(s) {bad}; valid: {', '.join(TASK_NAMES)}")
            weights = [float(weights.get(t, 1.0)) for t in TASK_NAMES]
        try:
            self.weights = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise ConfigError(f"weights: expected [w_time, w_mark] numbers, got {weights!r}") from None
        if len(self.weights) != len(TASK_NAMES):  # checked here, not at the first step deep inside training
            raise ConfigError(f"weights: {len(self.weights)} given for {len(TASK_NAMES)} tasks "
                              f"({', '.join(TASK_NAMES)}): give [w_time, w_mark]")
        if not all(math.isfinite(w) and w >= 0 for w in self.weights) or not any(self.weights):
            raise ConfigError(f"weights: must be finite, >= 0 and not all 0 (a negative weight ascends that task's "
                              f"NLL, which has no upper bound; all 0 never updates the shared parameters), got "
                              f"{self.weights}")

    def combine(self, F: Tensor) -> Tensor:
        if F.shape[0] != len(self.weights):
            raise ValueError(f"weighted: {len(self.weights)} weights for {F.shape[0]} tasks")
        out = self.weights[0] * F[0]  # Python-float weights: no host-to-device copy per step
        for w, g in zip(self.weights[1:], F[1:]):
            out = out + w * g
        return out


# ----------------------------------------------------------------------------------------------------------------
# Gradient surgery: PCGrad, GradOPS, CoGrad, GradVac
# ----------------------------------------------------------------------------------------------------------------


class _Seeded:
    """Mixin: a CPU ``torch.Generator`` for random task orders (``T > 2``), saved by ``state_dict``."""

    unused_with_two_tasks: ClassVar[tuple[str, ...]] = ("seed",)
    """Two tasks (mtpp's time and mark) have no random order: the seed changes nothing (the run header says so)."""

    def _init_rng(self, seed: int | None) -> None:
        self._gen = torch.Generator()
        self._gen.manual_seed(int(seed) if seed is not None else int(torch.initial_seed()) % (2**63))

    def _perm(self, n: int) -> list[int]:
        return torch.randperm(n, generator=self._gen).tolist()  # CPU generator: no device sync


@register("pcgrad")
class PCGrad(_Seeded, Aggregator):
    """PCGrad (Yu et al., NeurIPS 2020, "Gradient Surgery for Multi-Task Learning", Algorithm 1).

    For each task ``i``: ``g_i' = g_i``; for each other task ``j`` in a random order, if ``g_i' . g_j < 0``:
    ``g_i' -= (g_i' . g_j / |g_j|^2) g_j`` (projection against the ORIGINAL ``g_j``). Output ``sum_i g_i'``.
    Two tasks, closed form (no order dependence): with ``d = g_T . g_M``,
    ``g_T' = g_T - min(d, 0) / |g_M|^2 g_M`` and ``g_M' = g_M - min(d, 0) / |g_T|^2 g_T``.
    A zero gradient is never projected against. Options: ``seed`` for the random order (``T > 2`` only).
    """

    def __init__(self, seed: int | None = None) -> None:
        self._init_rng(seed)

    def combine(self, F: Tensor) -> Tensor:
        T = F.shape[0]
        G = F @ F.T
        if T == 2:
            d = torch.clamp(G[0, 1], max=0.0)
            c_T = _safe_div(d, G[1, 1])
            c_M = _safe_div(d, G[0, 0])
            return (F[0] - c_T * F[1]) + (F[1] - c_M * F[0])
        out = torch.zeros_like(F[0])
        for i in range(T):
            gi = F[i].clone()
            for j in self._perm(T):
                if j == i:
                    continue
                dot = torch.clamp(gi @ F[j], max=0.0)
                gi = gi - _safe_div(dot, G[j, j]) * F[j]
            out = out + gi
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._gen.set_state(state["rng"])


@register("gradops")
class GradOPS(Aggregator):
    """GradOPS (Zhu et al., WSDM 2025, "Gradient Deconfliction via Orthogonal Projections onto Subspaces for
    Multi-task Learning", arXiv:2503.03438; earlier ICLR 2023 submission).

    1. Each task gradient is projected onto the orthogonal complement of the span of the OTHER tasks' gradients:
       ``g_i' = g_i - P_{S_-i} g_i`` with ``S_-i = span{g_j, j != i}``. Then ``g_i' . g_j = 0`` for ``j != i``, so
       ``G' = sum_i g_i'`` satisfies ``G' . g_i = |g_i'|^2 >= 0``: no conflict with any original gradient.
       Two tasks: ``g_T' = g_T - (g_T . g_M / |g_M|^2) g_M`` and symmetrically.
    2. Trade-off reweighting with the single hyper-parameter ``alpha``: ``R_i = g_i . G' / |G'|^2`` (how much of
       ``G'`` serves task ``i``; equals ``|g_i'|^2 / |G'|^2 >= 0``), ``w_i = T R_i^alpha / sum_j R_j^alpha``, output
       ``sum_i w_i g_i'``. ``alpha = 0`` (default) is the plain sum of the projected gradients; ``alpha > 0`` favours
       tasks already served more, ``alpha < 0`` the others.

    Checked against the text available (``../shared/seeds/gradops_2025_summary.txt``: the arXiv summary and abstract,
    not the paper body): step 1 is what it states (each gradient projected onto the orthogonal complement of the
    span of the other tasks' gradients, so neither ``g_i'`` nor ``G'`` conflicts with any ``g_j``; one
    hyper-parameter ``alpha`` that rescales the modified gradients for trade-offs). STILL UNVERIFIED: the exact
    form of step 2 (``R_i`` and ``w_i = T R_i^alpha / sum_j R_j^alpha``) is reconstructed from secondary
    descriptions; the summary confirms only that one ``alpha`` reweights the ``g_i'``. ``alpha = 0`` (the default,
    the plain sum of the projected gradients) does not depend on it. Choices of ours: the projection is applied
    whether or not the gradients conflict; a task whose projected gradient vanishes gets ``R_i = 0`` and weight 0
    (also for ``alpha < 0``, where ``0^alpha`` would be infinite); when every ``g_i'`` vanishes (all gradients
    collinear) the update is zero; the span projection for ``T > 2`` uses the pseudo-inverse of the others' Gram
    matrix.
    """

    def __init__(self, alpha: float = 0.0) -> None:
        self.alpha = float(alpha)

    def projected(self, F: Tensor) -> Tensor:
        """``[T, P]`` -> ``[T, P]`` projected task gradients ``g_i'``."""
        T = F.shape[0]
        G = F @ F.T
        if T == 2:
            p0 = F[0] - _safe_div(G[0, 1], G[1, 1]) * F[1]
            p1 = F[1] - _safe_div(G[0, 1], G[0, 0]) * F[0]
            return torch.stack([p0, p1])
        rows = []
        for i in range(T):
            others = [j for j in range(T) if j != i]
            Go = G[others][:, others]
            coef = torch.linalg.pinv(Go) @ G[others, i]
            rows.append(F[i] - coef @ F[others])
        return torch.stack(rows)

    def combine(self, F: Tensor) -> Tensor:
        Fp = self.projected(F)
        T = F.shape[0]
        Gp = Fp.sum(0)
        if self.alpha == 0.0:
            return Gp
        R = _safe_div(F @ Gp, (Gp @ Gp).expand(T))
        R = torch.clamp(R, min=0.0)
        Ra = torch.where(R > 0, torch.where(R > 0, R, torch.ones_like(R)) ** self.alpha, torch.zeros_like(R))
        w = _safe_div(T * Ra, Ra.sum().expand(T))
        return w @ Fp


#: CoGrad's default ``gamma`` (see ``CoGrad``): its paper's 0.001 for a per-event mean loss, on mtpp's per-sequence
#: loss of about 50 scored events per sequence (0.001 / 50**2).
COGRAD_GAMMA = 4.0e-7


@register("cograd")
class CoGrad(Aggregator):
    """CoGrad (Yang et al., SIGIR 2023, "Gradient Coordination for Quantifying and Maximizing Knowledge
    Transference in Multi-Task Learning", arXiv:2303.05847), Algorithm 1, checked against the paper's text.

    Transference ``i -> j`` is the loss reduction of task ``j`` by a step ``gamma_i g_i`` (Eq. 4-6,
    ``~ gamma_i g_i . g_j``); its gradient is ``gamma_i H_j g_i`` (Eq. 7-8), added to each task's gradient
    (Eq. 9-10: ``g^_i = g_i - sum_{j != i} gamma_j H_i g_j``), with the Hessian-vector product approximated
    element-wise (Eq. 11, Zheng et al. 2017, ``lambda^k = 1``: ``H_i g_j ~ g_i * g_i * g_j``). Algorithm 1,
    line 9 and 11::

        g^_i = g_i - sum_{j != i} gamma_j g_i * g_i * g_j          output sum_i w_i g^_i   (w_i = 1 here)

    Option ``gamma``: one number for every task, or per task (``[gamma_time, gamma_mark]`` or ``{"time": ..,
    "mark": ..}``) as in the paper, where ``gamma_j`` (the virtual learning rate of task ``j``) weighs the terms
    that involve ``g_j``. The paper's loss weights ``w_i`` are mtpp's unit weights (use ``weighted`` for others).

    **Scale.** ``g^_i = g_i (1 - g_i sum_{j != i} gamma_j g_j)`` elementwise: where ``g_i`` and ``g_j`` agree in
    sign the factor shrinks the element and flips its sign once ``gamma_j g_i g_j > 1``; where they disagree it
    amplifies it; either way the term is cubic in the gradients' scale. The paper's losses are means over examples
    and its experiments use ``gamma`` in ``{0.003, 0.001}`` and ``{0.01, 0.005}`` ("a reasonably tiny value
    suffices", §3.4.2). mtpp's losses are per sequence (sums over the ``N`` scored events of a sequence, averaged
    over the batch), so a batch's gradients are ``N_batch`` times a per-event mean's and the paper's ``gamma``
    becomes ``gamma / N_batch^2`` here. Default ``COGRAD_GAMMA = 4e-7``: 0.001 per event for ``N = 50`` (MOOC's
    mean is 49; use ``0.001 / N^2`` for your data's mean). Batches are bucketed by length (``train.bucket``), so
    against the paper's per-event value the effective ``gamma`` of a batch is ``(N_batch / N)^2`` times it: on MOOC
    about 0.5x for median-length batches, 5.5x at the 90th percentile (115 events), 70x for the longest (416).
    Measured on THP base, MOOC (RESULTS.md, remedies): ``gamma = 0.1`` diverged in epoch 1, ``0.001`` in epoch 5
    (split 1: validation NLL from -3.5 to 7e5 nats per event; early stopping kept epoch 4; split 0 alike); at
    4.2e-7 the aggregate's norm stayed within 5e-4 of the sum's over 1000 steps, and the grid's cells trained like
    ``sum`` (same epochs, test ``L_T`` within 5e-4 nats per sequence): in the paper's regime, at this loss scale,
    CoGrad is the plain sum.
    """

    def __init__(self, gamma: float | Sequence[float] | dict[str, float] = COGRAD_GAMMA) -> None:
        if isinstance(gamma, dict):
            bad = sorted(set(gamma) - set(TASK_NAMES))
            if bad:
                raise ConfigError(f"gamma: unknown task(s) {bad}; valid: {', '.join(TASK_NAMES)}")
            gamma = [float(gamma.get(t, COGRAD_GAMMA)) for t in TASK_NAMES]
        self.gamma: float | list[float] = (
            float(gamma) if isinstance(gamma, (int, float)) else [float(g) for g in gamma]
        )
        values = [self.gamma] if isinstance(self.gamma, float) else self.gamma
        if not all(math.isfinite(g) and g >= 0 for g in values):  # gamma_j: task j's virtual learning rate
            raise ConfigError(f"gamma: must be finite numbers >= 0 (a virtual learning rate), got {gamma!r}")
        if isinstance(self.gamma, list) and len(self.gamma) != len(TASK_NAMES):
            raise ConfigError(f"gamma: {len(self.gamma)} values for {len(TASK_NAMES)} tasks ({', '.join(TASK_NAMES)})")

    def combine(self, F: Tensor) -> Tensor:
        T = F.shape[0]
        if isinstance(self.gamma, float):
            gam = F.new_full((T, 1), self.gamma)
        else:
            if len(self.gamma) != T:
                raise ValueError(f"cograd: {len(self.gamma)} values of gamma for {T} tasks")
            gam = torch.tensor(self.gamma, dtype=F.dtype, device=F.device).unsqueeze(-1)
        scaled = gam * F  # gamma_j g_j
        others = scaled.sum(0, keepdim=True) - scaled  # sum_{j != i} gamma_j g_j, row i
        return F.sum(0) - (F * F * others).sum(0)


@register("gradvac")
class GradVac(_Seeded, Aggregator):
    """Gradient Vaccine (Wang et al., ICLR 2021, "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models").

    For each task ``i`` and each other task ``j`` (random order for ``T > 2``): ``phi = cos(g_i', g_j)``; if
    ``phi < phi_hat_ij`` (the EMA target similarity):
    ``g_i' += |g_i'| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (|g_j| sqrt(1 - phi_hat^2)) g_j``,
    which sets ``cos(g_i', g_j)`` exactly to ``phi_hat``. Then ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi``.
    Output ``sum_i g_i'``. Granularity: all shared parameters together (the paper also has per-layer variants).
    Options: ``beta`` (EMA rate, default 0.01 as in the paper), ``target`` (initial target similarity, default 0),
    ``seed``. State: the ``[T, T]`` EMA targets (created at the first call).
    """

    def __init__(self, beta: float = 0.01, target: float = 0.0, seed: int | None = None) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"beta: must be in [0, 1], got {beta}")
        if not -1.0 < target < 1.0:
            raise ConfigError(f"target: must be in (-1, 1), got {target}")
        self.beta, self.target = float(beta), float(target)
        self.phi_hat: Tensor | None = None
        self._init_rng(seed)

    def combine(self, F: Tensor) -> Tensor:
        T = F.shape[0]
        if self.phi_hat is None:
            self.phi_hat = torch.full((T, T), self.target, dtype=F.dtype, device=F.device)
        ph = self.phi_hat.to(device=F.device, dtype=F.dtype)
        norms = torch.linalg.vector_norm(F, dim=1)
        new_ph = ph.clone()
        out = torch.zeros_like(F[0])
        for i in range(T):
            gi = F[i].clone()
            order = [0, 1] if T == 2 else self._perm(T)
            for j in order:
                if j == i:
                    continue
                ni = torch.linalg.vector_norm(gi)
                den = ni * norms[j]
                phi = _safe_div(gi @ F[j], den)
                t = ph[i, j]
                coef = _safe_div(
                    ni * (t * torch.sqrt(torch.clamp(1 - phi**2, min=0)) - phi * torch.sqrt(1 - t**2)),
                    norms[j] * torch.sqrt(1 - t**2),
                )
                apply = (phi < t) & (den > 0)
                gi = gi + torch.where(apply, coef, torch.zeros_like(coef)) * F[j]
                new_ph[i, j] = torch.where(den > 0, (1 - self.beta) * t + self.beta * phi, t)
            out = out + gi
        self.phi_hat = new_ph
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"phi_hat": None if self.phi_hat is None else self.phi_hat.detach().cpu(), "rng": self._gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phi_hat = None if state.get("phi_hat") is None else state["phi_hat"].clone()
        if "rng" in state:
            self._gen.set_state(state["rng"])


# ----------------------------------------------------------------------------------------------------------------
# Magnitude balancing: MetaBalance
# ----------------------------------------------------------------------------------------------------------------


@register("metabalance")
class MetaBalance(Aggregator):
    """MetaBalance (He et al., WWW 2022, "MetaBalance: Improving Multi-Task Recommendations via Adapting Gradient
    Magnitudes of Auxiliary Tasks").

    Per shared parameter TENSOR ``p`` and task ``k``: moving average of gradient norms
    ``m_k(p) <- beta m_k(p) + (1 - beta) |g_k(p)|`` (zero-initialised as in the reference code; since every task's
    average has the same ``1 - beta^t`` bias, the ratio below is bias-free). The target task's gradient is kept;
    each auxiliary task's gradient is rescaled toward the target's magnitude::

        g_aux'(p) = g_aux(p) * (r * m_target(p) / m_aux(p) + (1 - r))        output g_target + sum g_aux'

    Options: ``target`` (``"time"`` or ``"mark"``, default ``"time"``: the choice is a modelling decision, not the
    paper's), ``relax`` ``r`` in ``[0, 1]`` (default 0.7, the reference code's default; ``r = 1`` brings the
    auxiliary magnitude to the target's moving-average magnitude), ``beta`` in ``[0, 1)`` (default 0.9; ``beta = 0``
    uses the current norms, so the rescaled auxiliary norm equals the target's exactly with ``r = 1``),
    ``strategy``: ``"both"`` (default; adapt up and down), ``"decrease"`` (only shrink auxiliaries larger than the
    target), ``"increase"`` (only enlarge smaller ones) -- the paper's three strategies.
    State: the ``[T, n_params]`` moving averages and the step count.
    """

    def __init__(self, target: str = "time", relax: float = 0.7, beta: float = 0.9, strategy: str = "both") -> None:
        if target not in TASK_NAMES:
            raise ConfigError(f"target: {target!r} is not a task; valid: {', '.join(TASK_NAMES)}")
        if not 0.0 <= relax <= 1.0:
            raise ConfigError(f"relax: must be in [0, 1], got {relax}")
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"beta: must be in [0, 1), got {beta}")
        if strategy not in ("both", "decrease", "increase"):
            raise ConfigError(f"strategy: {strategy!r}; valid: both, decrease, increase")
        self.target, self.relax, self.beta, self.strategy = target, float(relax), float(beta), strategy
        self.target_index = TASK_NAMES.index(target)
        self.moving_norms: Tensor | None = None
        self.steps = 0

    def __call__(self, grads: TaskGrads) -> list[Tensor]:
        self._check(grads)
        n = len(grads[0])
        if n == 0:
            return []
        T = len(grads)
        dtype = torch.promote_types(grads[0][0].dtype, torch.float32)
        norms = torch.stack(
            [torch.stack([torch.linalg.vector_norm(g).to(dtype) for g in task]) for task in grads]
        )  # [T, n]
        if self.moving_norms is None or self.moving_norms.shape != norms.shape:
            self.moving_norms = torch.zeros_like(norms)
        m = self.beta * self.moving_norms.to(norms.device) + (1 - self.beta) * norms
        self.moving_norms = m
        self.steps += 1
        t = self.target_index
        ratio = _safe_div(m[t].expand(T, n), m, fallback=1.0)  # m_target / m_k, [T, n]
        if self.strategy == "decrease":
            ratio = torch.clamp(ratio, max=1.0)
        elif self.strategy == "increase":
            ratio = torch.clamp(ratio, min=1.0)
        scale = self.relax * ratio + (1 - self.relax)
        scale[t] = 1.0
        return [sum(scale[k, p].to(grads[k][p].dtype) * grads[k][p] for k in range(T)) for p in range(n)]

    def state_dict(self) -> dict[str, Any]:
        mn = None if self.moving_norms is None else self.moving_norms.detach().cpu()
        return {"moving_norms": mn, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mn = state.get("moving_norms")
        self.moving_norms = None if mn is None else mn.clone()
        self.steps = int(state.get("steps", 0))


# ----------------------------------------------------------------------------------------------------------------
# Multi-objective solvers on the Gram matrix: MGDA, CAGrad, IMTL-G
# ----------------------------------------------------------------------------------------------------------------


def min_norm_weights(G: Tensor, iters: int = 100) -> Tensor:
    """Weights ``w`` on the simplex minimising ``|sum_i w_i g_i|^2 = w^T G w`` (``G``: ``[T, T]`` Gram matrix).

    Two tasks: closed form ``w_0 = clip((G11 - G01) / (G00 - 2 G01 + G11), 0, 1)`` (Sener & Koltun 2018, Alg. 1).
    More tasks: Frank-Wolfe with exact line search (their Alg. 2), a fixed number of iterations, on the device.
    """
    T = G.shape[0]
    if T == 2:
        den = G[0, 0] - 2 * G[0, 1] + G[1, 1]
        w0 = torch.clamp(_safe_div(G[1, 1] - G[0, 1], den, fallback=0.5), 0.0, 1.0)
        return torch.stack([w0, 1 - w0])
    w = torch.full((T,), 1.0 / T, dtype=G.dtype, device=G.device)
    eye = torch.eye(T, dtype=G.dtype, device=G.device)
    for _ in range(iters):
        Gw = G @ w
        t = torch.argmin(Gw)
        e = eye[t]
        # line search between w and vertex e: minimise |(1-s) a + s b|^2, a = Fw, b = g_t
        aa, ab, bb = w @ Gw, Gw[t], G[t, t]
        s = torch.clamp(_safe_div(aa - ab, aa - 2 * ab + bb), 0.0, 1.0)
        w = (1 - s) * w + s * e
    return w


@register("mgda")
class MGDA(Aggregator):
    """MGDA (Désidéri 2012; Sener & Koltun, NeurIPS 2018, "Multi-Task Learning as Multi-Objective Optimization").

    Returns the minimum-norm point of the convex hull of the task gradients, ``sum_i w_i g_i`` with ``w`` on the
    simplex (mean scale: weights sum to 1). Two tasks in closed form: ``w_T = clip((g_M - g_T) . g_M /
    |g_T - g_M|^2, 0, 1)``. No gradient normalisation (the paper's optional ``l2``/``loss`` normalisations are not
    applied). Zero output means a Pareto-stationary point for the batch.
    """

    def combine(self, F: Tensor) -> Tensor:
        w = min_norm_weights(F @ F.T)
        return w @ F


@register("cagrad")
class CAGrad(Aggregator):
    """CAGrad (Liu et al., NeurIPS 2021, "Conflict-Averse Gradient Descent for Multi-task Learning").

    ``g0 = mean_i g_i``; ``w = argmin_{w in simplex} g_w . g0 + c |g0| |g_w|`` with ``g_w = sum_i w_i g_i``;
    ``d = g0 + (c |g0| / |g_w|) g_w``; output ``d / (1 + c^2)`` (the official code's default ``rescale = 1``; mean
    scale). ``c = 0`` gives the mean gradient. Option ``c`` (default 0.5), ``rescale`` in ``{0, 1, 2}`` (0: ``d``,
    1: ``d / (1 + c^2)``, 2: ``d / (1 + c)``). Two tasks only; the 1-D convex problem in ``w_T`` is solved in
    closed form on the 2x2 Gram matrix: with ``a = (G00 - G11) / 2``, ``A = |g_T - g_M|^2``, ``B = G01 - G11``,
    ``D = G00 G11 - G01^2``, ``s = c |g0|`` and ``k = -a / s``: if ``k^2 < A``,
    ``w_T = clip((k sqrt(D / (A - k^2)) - B) / A, 0, 1)``, else ``w_T = 0`` if ``a > 0`` else 1.
    """

    max_tasks = 2

    def __init__(self, c: float = 0.5, rescale: int = 1) -> None:
        if c < 0:
            raise ConfigError(f"c: must be >= 0, got {c}")
        if rescale not in (0, 1, 2):
            raise ConfigError(f"rescale: {rescale!r}; valid: 0, 1, 2")
        self.c, self.rescale = float(c), int(rescale)

    def weights(self, G: Tensor) -> Tensor:
        """Simplex weights ``[w_T, w_M]`` from the 2x2 Gram matrix."""
        g0_sq = G.sum() / 4
        s = self.c * torch.sqrt(torch.clamp(g0_sq, min=0.0))
        a = (G[0, 0] - G[1, 1]) / 2
        A = G[0, 0] - 2 * G[0, 1] + G[1, 1]
        B = G[0, 1] - G[1, 1]
        D = torch.clamp(G[0, 0] * G[1, 1] - G[0, 1] ** 2, min=0.0)
        k = _safe_div(-a, s)
        inner = A - k * k
        ok = (s > 0) & (A > 0) & (inner > 0)
        y = k * torch.sqrt(_safe_div(D, torch.where(ok, inner, torch.ones_like(inner))))
        w_interior = torch.clamp(_safe_div(y - B, A, fallback=0.5), 0.0, 1.0)
        # no interior stationary point: the objective is monotone in w_T, sign of a (A = 0: g_T = g_M, any w)
        w_edge = torch.where(a > 0, torch.zeros_like(a), torch.ones_like(a))
        w_edge = torch.where(A > 0, w_edge, torch.full_like(a, 0.5))
        w0 = torch.where(ok, w_interior, w_edge)
        return torch.stack([w0, 1 - w0])

    def combine(self, F: Tensor) -> Tensor:
        G = F @ F.T
        w = self.weights(G)
        g0 = F.mean(0)
        gw = w @ F
        s = self.c * torch.linalg.vector_norm(g0)
        lam = _safe_div(s, torch.linalg.vector_norm(gw))
        d = g0 + lam * gw
        if self.rescale == 1:
            return d / (1 + self.c**2)
        if self.rescale == 2:
            return d / (1 + self.c)
        return d


@register("imtl")
class IMTLG(Aggregator):
    """IMTL-G (Liu et al., ICLR 2021, "Towards Impartial Multi-task Learning"), gradient part only.

    Finds ``g = sum_i alpha_i g_i`` with ``sum_i alpha_i = 1`` whose projections on every unit task gradient
    ``u_i = g_i / |g_i|`` are equal: ``alpha_{2:T} = g_1 U^T (D U^T)^{-1}``, ``D = [g_1 - g_i]``, ``U = [u_1 - u_i]``.
    Two tasks, closed form: ``alpha_T = |g_M| / (|g_T| + |g_M|)``, ``alpha_M = |g_T| / (|g_T| + |g_M|)``, i.e.
    ``g = |g_T||g_M| / (|g_T| + |g_M|) (u_T + u_M)``: the bisector of the two gradients. Nash-MTL (Navon et al.,
    ICML 2022) for two tasks solves ``G alpha = 1 / alpha`` giving ``alpha_i = 1 / (|g_i| sqrt(1 + cos))``, i.e.
    ``(u_T + u_M) / sqrt(1 + cos)``: the SAME direction, different magnitude (verified algebraically; tested).
    Mean scale. The IMTL-L loss scaling is not included. A zero task gradient gives a zero update for ``T = 2``.
    """

    def combine(self, F: Tensor) -> Tensor:
        G = F @ F.T
        n = torch.sqrt(torch.clamp(torch.diagonal(G), min=0.0))
        T = F.shape[0]
        if T == 2:
            s = n[0] + n[1]
            a = torch.stack([_safe_div(n[1], s), _safe_div(n[0], s)])
            return a @ F
        U = F / torch.where(n > 0, n, torch.ones_like(n)).unsqueeze(1)
        Dm = F[0:1] - F[1:]
        Um = U[0:1] - U[1:]
        rest = (F[0] @ Um.T) @ torch.linalg.pinv(Dm @ Um.T)
        a = torch.cat([(1 - rest.sum()).reshape(1), rest])
        return a @ F


# ----------------------------------------------------------------------------------------------------------------
# torchjd adapter (optional extra)
# ----------------------------------------------------------------------------------------------------------------

TORCHJD_PREFIX = "torchjd:"


def _torchjd_aggregation() -> Any:
    try:
        import torchjd.aggregation as aggregation
    except ImportError as e:
        raise ConfigError(
            "gradients.aggregator 'torchjd:...' needs the optional package torchjd: pip install 'mtpp[torchjd]' "
            f"(or pip install torchjd qpsolvers quadprog); import failed: {e}"
        ) from None
    return aggregation


def torchjd_aggregators() -> dict[str, type]:
    """torchjd's aggregator classes by name (``{}`` without torchjd installed is a ``ConfigError`` instead)."""
    aggregation = _torchjd_aggregation()
    base = aggregation.Aggregator
    return {
        n: obj
        for n in dir(aggregation)
        if not n.startswith("_")
        and isinstance(obj := getattr(aggregation, n), type)
        and issubclass(obj, base)
        and not inspect.isabstract(obj)
        and obj is not base
        and n not in ("WeightedAggregator", "GramianWeightedAggregator")
    }


class TorchJD(Aggregator):
    """Any torchjd aggregator (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024;
    https://github.com/TorchJD/torchjd) as an mtpp ``Aggregator``: ``combine(F: [T, P]) = torchjd_agg(F)``, the
    Jacobian matrix with one row per task (time, mark), exactly torchjd's own calling convention.

    Built by ``make_aggregator("torchjd:NAME", **options)``: ``options`` go to ``torchjd.aggregation.NAME(...)``
    unchanged except that lists become tensors (``UPGrad(pref_vector=[1, 1])``). Unknown names and options are
    ``ConfigError`` listing the valid ones; so is a missing torchjd.

    Conventions are torchjd's, not mtpp's: the scale (``UPGrad`` / ``Mean`` / ``MGDA`` give a mean-scale
    combination, ``Sum`` / ``PCGrad`` the sum's), the equivariance under loss scaling, and host synchronisation
    (the dual-cone projections of ``UPGrad`` / ``DualProj`` solve a small quadratic programme on the host: one sync
    per step). Internal state of stateful torchjd aggregators (``GradVac``'s moving average, ``NashMTL``) is not
    checkpointed and not rolled back on a skipped step (``state_dict`` is empty).
    """

    name = "torchjd"

    def __init__(self, inner: Any, label: str) -> None:
        self.inner = inner
        self.label = label

    @classmethod
    def build(cls, name: str, **options: Any) -> "TorchJD":
        available = torchjd_aggregators()
        if name not in available:
            raise ConfigError(
                f"unknown torchjd aggregator {name!r}; valid: "
                + ", ".join(TORCHJD_PREFIX + n for n in sorted(available))
            )
        klass = available[name]
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        valid = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)} for aggregator 'torchjd:{name}'; valid: "
                + (", ".join(valid) if valid else "(none)")
            )
        kwargs = {k: torch.tensor(v) if isinstance(v, (list, tuple)) else v for k, v in options.items()}
        try:
            inner = klass(**kwargs)
        except ImportError as e:  # a torchjd extra (e.g. quadprog for UPGrad's projector)
            raise ConfigError(f"aggregator 'torchjd:{name}' needs more of torchjd: {e}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"aggregator 'torchjd:{name}': {e}") from e
        agg = cls(inner, name)
        agg._options = dict(options)  # type: ignore[attr-defined]
        return agg

    def combine(self, F: Tensor) -> Tensor:
        return self.inner(F)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in getattr(self, "_options", {}).items())
        return f"TorchJD({self.label}{', ' if opts else ''}{opts})"
