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

Registered names: see ``AGGREGATORS`` (``sum`` is the default).
"""

from __future__ import annotations

import inspect
import math
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


def make_aggregator(name: str = "sum", **options: Any) -> Aggregator:
    """Build an aggregator by name. Unknown names or options raise ``ConfigError`` listing the valid ones."""
    if name not in AGGREGATORS:
        raise ConfigError(f"unknown aggregator {name!r}; valid: {', '.join(sorted(AGGREGATORS))}")
    valid = aggregator_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listing = ", ".join(sorted(valid)) if valid else "(none)"
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for aggregator {name!r}; valid: {listing}")
    try:
        agg = AGGREGATORS[name](**options)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"aggregator {name!r}: {e}") from e
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
        self.weights = [float(w) for w in weights]
        if not all(math.isfinite(w) for w in self.weights):
            raise ConfigError(f"weights: must be finite numbers, got {self.weights}")

    def combine(self, F: Tensor) -> Tensor:
        if F.shape[0] != len(self.weights):
            raise ValueError(f"weighted: {len(self.weights)} weights for {F.shape[0]} tasks")
        w = torch.tensor(self.weights, dtype=F.dtype, device=F.device)
        return w @ F
