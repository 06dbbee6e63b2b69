"""Compiled compensator integrands (``train.compile_integrand``): fused kernels for the node tensor of THP / SAHP.

A Monte Carlo or quadrature compensator evaluates ``sum_j lambda_j(tau_n)`` at ``N`` nodes per event, on a
``[B, L, N, J]`` tensor (``J`` components, or marks for the joint base decoders). In eager PyTorch the few
elementwise operations of the integrand (``addcmul``, ``exp``, ``softplus``, the sum over ``j``) each read and
write that tensor, forward and backward; ``torch.compile`` (inductor) fuses them into one loop per direction.
Only the integrand is compiled: the fused CPU recurrence of ``mtpp.models.recurrence`` and the boundary path of
the gradient diagnostics stay as they are, which compiling the whole ``nll`` (``train.compile``) gives up.

The compiled function computes the same formula with another order of floating-point operations: values and
gradients agree with eager to rounding (``tests/test_compiled.py``), so a run with it is the same experiment
(``train.compile_integrand`` is a non-semantic key, like ``train.threads``) but not bit-identical to one without.
It is used only where gradients are recorded (training steps); validation, evaluation and forecasting run eagerly,
so they never trigger a recompilation for another dtype or grad mode. Measured: ``BENCHMARKS.md``, "Compiled
integrand".
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mtpp.errors import ConfigError

_COMPILED: dict[Callable, Callable] = {}


def integrand(fn: Callable, enabled: bool) -> Callable:
    """``fn`` compiled (``torch.compile(fn, dynamic=True)``, one compiled function per ``fn`` for the process) when
    ``enabled`` and gradients are recorded; ``fn`` itself otherwise."""
    if not enabled or not torch.is_grad_enabled():
        return fn
    hit = _COMPILED.get(fn)
    if hit is None:
        hit = _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return hit


def enable(model: nn.Module, enabled: bool = True) -> int:
    """Switch the compiled integrand on (or off) in every intensity module of ``model`` that has one (their
    ``compile_integrand`` attribute); returns how many modules have one (0: the model has no numerical
    compensator, the setting changes nothing). With ``enabled``, first checks that ``torch.compile`` works here.

    Raises:
        ConfigError: ``enabled`` and torch's inductor backend cannot compile on this machine (e.g. no C++
            compiler), naming the fix.
    """
    modules = [m for m in model.modules() if hasattr(m, "compile_integrand")]
    if enabled and modules:
        check_backend()
    for m in modules:
        m.compile_integrand = enabled
    return len(modules)


def check_backend() -> None:
    """Compile and run a two-element function once (cached after the first success).

    Raises:
        ConfigError: naming the backend's error and the fix (``train.compile_integrand: false``).
    """
    if _COMPILED.get(check_backend) is not None:
        return
    try:
        x = torch.ones(2, requires_grad=True)
        torch.compile(lambda t: torch.nn.functional.softplus(t).sum(), dynamic=False)(x).backward()
    except Exception as err:  # the backend's errors have no common type (missing compiler, lock, import)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(
            f"train.compile_integrand: torch.compile cannot compile on this machine ({type(err).__name__}: "
            f"{first}); it needs torch's inductor backend and a C++ compiler, or set train.compile_integrand: false"
        ) from None
    _COMPILED[check_backend] = check_backend
