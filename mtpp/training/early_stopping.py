"""Early stopping on validation NLL per sequence, joint or separate per task (plusplus only).

Joint (default): one tracker on ``L_T + L_M``; the best state is the whole model.

Separate (``train.separate_early_stopping``, plusplus): a ``time`` tracker on ``L_T`` owning the time
parameters and a ``mark`` tracker on ``L_M`` owning the mark parameters (``model.task_parameters()``). Each keeps
its own best copy of its parameters and its own patience; a group whose patience runs out is reported as
``frozen`` (the trainer sets ``requires_grad=False``, so the optimiser skips it). Training ends when every
tracker is done; the final model is the time-best time parameters plus the mark-best mark parameters.

An improvement is ``value < best - min_delta * |best|`` (relative tolerance); a non-finite value never improves.
"""

from __future__ import annotations

import copy

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class Tracker:
    name: str
    best: float = math.inf
    best_epoch: int = 0  # 1-based; 0 = never improved
    bad_epochs: int = 0
    done: bool = False

    def update(self, value: float, epoch: int, patience: int, min_delta: float) -> bool:
        """Record the validation ``value`` of ``epoch``; True when it improves on the best."""
        if self.done:
            return False
        threshold = self.best - min_delta * abs(self.best) if math.isfinite(self.best) else math.inf
        if math.isfinite(value) and value < threshold:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        if self.bad_epochs >= patience:
            self.done = True
        return False


class EarlyStopping:
    """Tracks validation losses and the best parameters; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        patience: int,
        min_delta: float,
        separate: bool = False,
        groups: dict[str, list[nn.Parameter]] | None = None,
    ) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.separate = separate
        names = {id(p): n for n, p in model.named_parameters()}
        if separate:
            if groups is None:
                raise ValueError("separate early stopping needs the time / mark parameter groups")
            self.group_names = {g: [names[id(p)] for p in ps] for g, ps in groups.items()}
            self.trackers = {g: Tracker(g) for g in groups}
        else:
            self.group_names = {"total": list(names.values())}
            self.trackers = {"total": Tracker("total")}
        self.best_states: dict[str, dict[str, Tensor]] = {}

    # ------------------------------------------------------------------ updates

    def step(self, epoch: int, val_time: float, val_mark: float, model: nn.Module) -> tuple[list[str], list[str]]:
        """Update with an epoch's validation losses. Returns (improved groups, groups that just ran out)."""
        values = {"total": val_time + val_mark, "time": val_time, "mark": val_mark}
        improved, frozen = [], []
        params = dict(model.named_parameters())
        for g, tr in self.trackers.items():
            was_done = tr.done
            if tr.update(values[g], epoch, self.patience, self.min_delta):
                improved.append(g)
                self.best_states[g] = {n: params[n].detach().clone() for n in self.group_names[g]}
            if tr.done and not was_done:
                frozen.append(g)
        if not self.separate and improved:  # also keep buffers with the whole-model best
            self.best_states["total"] = _copy_state(model.state_dict())
        return improved, frozen

    @property
    def done(self) -> bool:
        return all(t.done for t in self.trackers.values())

    def done_groups(self) -> list[str]:
        return [g for g, t in self.trackers.items() if t.done]

    @property
    def best_epoch(self) -> int:
        return max(t.best_epoch for t in self.trackers.values())

    def best_epochs(self) -> dict[str, int]:
        return {g: t.best_epoch for g, t in self.trackers.items()}

    def best_model_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The model's state dict with every group's best parameters put in (current values where none yet)."""
        state = _copy_state(model.state_dict())
        for best in self.best_states.values():
            state.update(_copy_state(best))
        return state

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        return {
            "trackers": {g: asdict(t) for g, t in self.trackers.items()},
            "best_states": self.best_states,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        self.trackers = {g: Tracker(**t) for g, t in state["trackers"].items()}
        self.best_states = {
            g: {k: (v.to(device) if device is not None and isinstance(v, Tensor) else v) for k, v in s.items()}
            for g, s in state["best_states"].items()
        }


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    """A detached copy of a state dict; non-tensor entries (a module's extra state, e.g. the time scale) copied."""
    return {k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in state.items()}
