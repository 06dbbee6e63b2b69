"""The non-finite guard: a batch whose loss or gradient is not finite changes nothing.

Per step the trainer computes one on-device flag ``ok = isfinite(L_T) & isfinite(L_M) & isfinite(|g|)`` (``|g|``
is the total gradient norm, which clipping needs anyway). A skipped step must leave the parameters, the
optimiser state (Adam's moments and step count) and the aggregator's state (moving averages) exactly as they
were. Two ways to get there, picked by device:

``sync`` (CPU, the default there): read ``ok`` on the host and simply do not call ``optimizer.step()`` when it
    is false; the aggregator's state is restored from a copy taken before the backward pass (only for stateful
    aggregators). Reading a CPU tensor is not a device synchronisation, so this costs nothing.

``masked`` (CUDA, the default there): never read ``ok`` on the host. Copy the parameters and optimiser state
    tensors, let ``optimizer.step()`` run, then put back ``torch.where(ok, new, old)`` in every tensor (state
    created by this step falls back to zeros, Adam's initial state). Cost per step: one copy and one ``where``
    over parameters + optimiser state (3x the parameter count for Adam) -- small next to a forward / backward,
    and no host sync. Adam / AdamW are built ``capturable`` on CUDA so that their step counter is a device
    tensor that can be masked too.

A skipped step's gradient statistics (``cos_tm``, norms, GMS) are meaningless: ``null_if_skipped`` makes every
one NaN (logged as null) with the same on-device flag, so they never enter the conflict rate.

Either way the skip counters live in tensors (``skipped``, ``consecutive``, ``worst``: the longest run of
consecutive skips). ``check_limit`` (called at logging flushes, where the trainer syncs anyway) raises
``MtppError`` once ``worst`` reaches ``max_consecutive``; in ``masked`` mode the steps after the limit and
before the flush were no-ops, so nothing is lost by noticing late.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from mtpp.errors import MtppError
from mtpp.training.gradients import null_unless


class NonFiniteGuard:
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        aggregator: Any,
        max_consecutive: int,
        device: torch.device,
        mode: str = "auto",
    ) -> None:
        if mode == "auto":
            mode = "sync" if device.type == "cpu" else "masked"
        if mode not in ("sync", "masked"):
            raise ValueError(f"guard mode must be auto, sync or masked, got {mode!r}")
        self.mode = mode
        self.optimizer = optimizer
        self.aggregator = aggregator
        self.max_consecutive = max_consecutive
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self.skipped, self.consecutive, self.worst = zero.clone(), zero.clone(), zero.clone()
        self._agg_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ per step

    @staticmethod
    def finite_flag(loss_time: Tensor, loss_mark: Tensor, grad_norm: Tensor) -> Tensor:
        """0-dim bool on the device: loss and gradient are all finite."""
        return torch.isfinite(loss_time.detach()) & torch.isfinite(loss_mark.detach()) & torch.isfinite(grad_norm)

    @staticmethod
    def null_if_skipped(stats: dict[str, Tensor], ok: Tensor) -> dict[str, Tensor]:
        """``stats`` with every value NaN (JSON null once flushed) where the step is skipped (``ok`` false); on the
        device, no sync. A skipped step never counts in the conflict rate's denominator."""
        return null_unless(stats, ok)

    def before_backward(self) -> None:
        """Copy the aggregator's state (stateful aggregators only) before it sees this step's gradients."""
        state = self.aggregator.state_dict() if self.aggregator is not None else {}
        self._agg_state = _clone(state) if state else None

    def step(self, ok: Tensor) -> None:
        """``optimizer.step()`` if ``ok``, else leave parameters, optimiser and aggregator state as they were."""
        if self.mode == "sync":
            if bool(ok):  # CPU tensor: no device sync
                self.optimizer.step()
            elif self._agg_state is not None:
                self.aggregator.load_state_dict(self._agg_state)
        else:
            self._masked_step(ok)
        self._count(ok)

    def _masked_step(self, ok: Tensor) -> None:
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        old_params = [p.detach().clone() for p in params]
        old_state = {id(p): _clone(self.optimizer.state.get(p, {})) for p in params}
        self.optimizer.step()
        with torch.no_grad():
            for p, old in zip(params, old_params):
                p.copy_(torch.where(ok, p, old))
            for p in params:
                state, before = self.optimizer.state.get(p, {}), old_state[id(p)]
                for k, v in state.items():
                    if isinstance(v, Tensor):
                        prev = before.get(k)
                        fallback = prev if isinstance(prev, Tensor) else torch.zeros_like(v)
                        v.copy_(torch.where(ok.to(v.device), v, fallback.to(v.device)))
        if self._agg_state is not None:
            self.aggregator.load_state_dict(_masked(self.aggregator.state_dict(), self._agg_state, ok))

    def _count(self, ok: Tensor) -> None:
        bad = (~ok).to(torch.int64).to(self.skipped.device)
        self.skipped += bad
        self.consecutive = (self.consecutive + 1) * bad
        self.worst = torch.maximum(self.worst, self.consecutive)
        if self.mode == "sync" and bool(bad):
            self.check_limit()

    # ------------------------------------------------------------------ host side

    def check_limit(self) -> None:
        if int(self.worst) >= self.max_consecutive:
            raise MtppError(
                f"{int(self.worst)} consecutive batches had a non-finite loss or gradient "
                f"(train.max_consecutive_skips={self.max_consecutive}); training stopped. Try a lower train.lr, "
                "train.grad_clip, data.dtype=float64, or check the data for extreme gaps"
            )

    def state_dict(self) -> dict[str, int]:
        return {"skipped": int(self.skipped), "consecutive": int(self.consecutive), "worst": int(self.worst)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for k in ("skipped", "consecutive", "worst"):
            getattr(self, k).fill_(int(state.get(k, 0)))


def _clone(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj


def _masked(new: Any, old: Any, ok: Tensor) -> Any:
    """``where(ok, new, old)`` through nested containers; non-tensor values keep ``new`` (cannot be masked)."""
    if isinstance(new, Tensor) and isinstance(old, Tensor) and new.shape == old.shape:
        return torch.where(ok.to(new.device), new, old.to(new.device))
    if isinstance(new, dict) and isinstance(old, dict):
        return {k: _masked(v, old.get(k), ok) for k, v in new.items()}
    if isinstance(new, (list, tuple)) and isinstance(old, (list, tuple)) and len(new) == len(old):
        return type(new)(_masked(a, b, ok) for a, b in zip(new, old))
    return new


def grad_norm(params: Iterable[Tensor]) -> Tensor:
    """Total 2-norm of the ``.grad`` of ``params`` (0 when none has a gradient), on the device, no sync."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)
