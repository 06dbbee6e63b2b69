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
It is used only while a run trains (the trainer switches it on, and off when the run ends) and only where gradients
are recorded; validation, evaluation and forecasting run eagerly, so they never trigger a recompilation for
another dtype or grad mode. ``model.integration: adaptive`` never evaluates the integrand in training, so there the
setting does nothing. Measured: ``BENCHMARKS.md``, "Compiled integrand".
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mtpp.errors import ConfigError

_COMPILED: dict[Callable, Callable] = {}

#: Time decoders whose training compensator evaluates an integrand on nodes (``model.integration`` not
#: ``adaptive``): the runs ``train.compile_integrand`` changes (tested against the modules ``enable`` finds).
NODE_INTEGRAND_DECODERS = ("thp", "sahp")


def applies(decoder: str | None, integration: str | None) -> bool:
    """Whether ``train.compile_integrand`` changes a run of this decoder and training rule."""
    return decoder in NODE_INTEGRAND_DECODERS and integration != "adaptive"


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
    ``compile_integrand`` attribute, not part of the state dict); returns how many modules now use it (0: the model
    has no numerical compensator, or trains with ``model.integration: adaptive``, whose closed-form / per-component
    rule never evaluates the integrand: the setting changes nothing). With ``enabled``, first checks that
    ``torch.compile`` works for the model's device. The trainer switches it on for a run and off again when the run
    ends, so a trained model is handed back eager.

    Raises:
        ConfigError: ``enabled`` and torch's backend cannot compile on this machine (e.g. no C++ compiler on CPU,
            no Triton on CUDA), naming the fix.
    """
    modules = [m for m in model.modules() if hasattr(m, "compile_integrand")]
    if getattr(getattr(model, "cfg", None), "integration", None) == "adaptive":
        enabled = False
    if enabled and modules:
        check_backend(next(model.parameters()).device)
    for m in modules:
        m.compile_integrand = enabled
    return len(modules) if enabled else 0


_WORKS: set[str] = set()


def check_backend(device: torch.device | str = "cpu") -> None:
    """Compile and run (forward and backward) a two-element function on ``device`` once per device type.

    Raises:
        ConfigError: naming the backend's error and the fix (``train.compile_integrand: false``).
    """
    kind = torch.device(device).type
    if kind in _WORKS:
        return
    try:
        x = torch.ones(2, device=device, requires_grad=True)
        torch.compile(lambda t: torch.nn.functional.softplus(t).sum(), dynamic=False)(x).backward()
    except Exception as err:  # the backend's errors have no common type (missing compiler, Triton, lock, import)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        needs = "a C++ compiler" if kind == "cpu" else "Triton" if kind == "cuda" else f"support for {kind}"
        raise ConfigError(
            f"train.compile_integrand: torch.compile cannot compile on this machine ({type(err).__name__}: "
            f"{first}); it needs torch's inductor backend with {needs}, or set train.compile_integrand: false "
            "(on the command line: --set train.compile_integrand=false)"
        ) from None
    _WORKS.add(kind)
