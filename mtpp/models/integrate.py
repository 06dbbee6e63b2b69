"""Compensators ``Lambda(tau) = int_0^tau lambda(s) ds`` for intensities without a closed-form integral.

Two rules, both evaluated with ONE call of the intensity on every node (no loops over nodes, events, marks):

- ``"mc"``: Monte Carlo, ``Lambda(tau) ~= tau * mean_n lambda(u_n * tau)`` with fresh ``u_n ~ U(0, 1)`` on every
  call. Unbiased for every ``tau``; the training default (its noise averages out over steps).
- ``"gauss_legendre"``: fixed Gauss-Legendre nodes and weights mapped from ``[-1, 1]`` onto ``[0, tau]``;
  deterministic, exact for polynomials of degree ``2N - 1``; the natural choice for evaluation.

Shapes: ``tau: [*S]`` (typically ``[B, L]``, or ``[B, L, M]`` for several query points per event) gives nodes
``[*S, N]``; ``intensity_fn(s: [*S, N]) -> [*S, N]``. For joint (marked) decoders the function returns the
*ground* intensity ``sum_k lambda_k``, so the sum over marks happens inside it.

Linear space on the nodes (``integral``): the integrand is a sum of positive terms (``softplus`` plus a floor), so
evaluating it as plain values is exact to rounding and needs no ``log``/``exp`` round trip, no ``logaddexp`` and
no ``logsumexp`` on the ``[*S, N, C]`` node tensor (the hot spot of THP / SAHP training). Log space stays where it
matters: at the event times (``log lambda(tau_i)``, ``log lambda_k(tau_i)``). ``compensator`` is the same rule for a
function given in log space (``exp`` of it on the nodes).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from mtpp.errors import ConfigError

METHODS = ("mc", "gauss_legendre")

LogIntensityFn = Callable[[Tensor], Tensor]
IntensityFn = Callable[[Tensor], Tensor]


@lru_cache(maxsize=64)
def gauss_legendre(num_nodes: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Nodes ``x: [N]`` in ``(0, 1)`` and weights ``w: [N]`` (summing to 1) of the ``N``-point rule on ``[0, 1]``.

    ``int_0^tau g(s) ds ~= tau * sum_n w_n g(x_n tau)``. Cached per ``(N, dtype, device)``; computed in float64 by
    ``numpy.polynomial.legendre.leggauss`` and cast once.
    """
    x, w = np.polynomial.legendre.leggauss(num_nodes)
    nodes = torch.as_tensor((x + 1.0) / 2.0, dtype=dtype, device=device)
    weights = torch.as_tensor(w / 2.0, dtype=dtype, device=device)
    return nodes, weights


def quadrature(
    tau: Tensor,
    method: str = "gauss_legendre",
    num_nodes: int = 50,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Nodes ``s: [*S, N]`` in ``[0, tau]`` and weights ``w: [*S, N]`` with ``Lambda(tau) ~= sum_n w_n lambda(s_n)``.

    Weights are ``tau * (rule weight)`` (not in log space) so that ``tau = 0`` gives weight 0 and finite gradients.
    """
    if num_nodes < 1:
        raise ConfigError(f"integration_nodes must be >= 1, got {num_nodes}")
    if method == "gauss_legendre":
        x, w = gauss_legendre(int(num_nodes), tau.dtype, tau.device)
        t = tau.unsqueeze(-1)
        return t * x, t * w
    if method == "mc":
        shape = (*tau.shape, num_nodes)
        # ``generator=`` only when given: passing the keyword at all (even ``None``) breaks dynamic-shape
        # ``torch.compile`` of the model's ``nll`` (``train.compile: true``).
        if generator is None:
            u = torch.rand(shape, dtype=tau.dtype, device=tau.device)
        else:
            u = torch.rand(shape, dtype=tau.dtype, device=tau.device, generator=generator)
        t = tau.unsqueeze(-1)
        return t * u, (t / num_nodes).expand_as(u)
    valid = ", ".join(METHODS)
    raise ConfigError(f"unknown integration method {method!r}; valid: {valid}")


def integral(
    intensity_fn: IntensityFn,
    tau: Tensor,
    method: str = "gauss_legendre",
    num_nodes: int = 50,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``Lambda(tau) = int_0^tau intensity_fn(s) ds`` with the intensity in LINEAR space: ``tau: [*S]`` -> ``[*S]``.

    ``intensity_fn`` (positive values, not logs) is called once on all nodes ``s: [*S, N]`` and must return
    ``[*S, N]``. ``"mc"`` draws fresh uniforms on every call (pass ``generator`` for reproducibility).
    """
    nodes, weights = quadrature(tau, method, num_nodes, generator)
    return (weights * intensity_fn(nodes)).sum(-1)


def compensator(
    log_intensity_fn: LogIntensityFn,
    tau: Tensor,
    method: str = "gauss_legendre",
    num_nodes: int = 50,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``Lambda(tau) = int_0^tau exp(log_intensity_fn(s)) ds``: ``tau: [*S]`` -> ``[*S]``.

    ``log_intensity_fn`` is called once on all nodes ``s: [*S, N]`` and must return ``[*S, N]``.
    ``"mc"`` draws fresh uniforms on every call (pass ``generator`` for reproducibility).
    """
    return integral(lambda s: log_intensity_fn(s).exp(), tau, method, num_nodes, generator)
