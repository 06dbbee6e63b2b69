"""At initialisation every decoder's time loss is of the order of the data's, even on heavy-tailed gaps.

Times in model units (``time_scale = 1``: one unit is the median gap, ``mtpp.models.scaling``). Real benchmarks
have gaps far into the tail of that unit: MOOC's longest training gap is ~7e4 model units, LastFM's ~5e4 (Reddit
~300, Stack Overflow ~35). A decoder whose hazard grows exponentially in the gap (RMTPP) started at ``w = 0.1`` gave a
compensator of ``exp(79)``: ~1e21 nats per sequence in its first epoch on LastFM, and gradients that drowned
the mark head for hundreds of epochs. The yardstick here is the exponential distribution at the data's rate
(rate 1 in model units), whose NLL of a gap ``tau`` is ``tau``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtpp.data.batch import collate
from mtpp.data.sequence import EventSequence
from mtpp.models import build_model
from mtpp.models.config import PARAMETRISATIONS
from mtpp.models.registry import TIME_DECODERS


def heavy_tailed_batch(max_gap: float = 1e5) -> tuple:
    """8 sequences of 60 events, gaps log-uniform on ``[1e-4, max_gap]`` model units, 5 marks."""
    rng = np.random.default_rng(0)
    seqs = [EventSequence(times=np.cumsum(10 ** rng.uniform(-4, np.log10(max_gap), size=60)),
                          marks=rng.integers(0, 5, 60)) for _ in range(8)]  # fmt: skip
    return collate(seqs)


@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS)
@pytest.mark.parametrize("decoder", [*TIME_DECODERS.names(), "rmtpp-baseline"])  # + model.rmtpp_form: baseline
def test_initial_time_loss_is_of_the_order_of_the_exponential_on_heavy_tailed_gaps(decoder: str,
                                                                                  parametrisation: str) -> None:
    batch = heavy_tailed_batch()
    torch.manual_seed(0)
    name, _, form = decoder.partition("-")
    model = build_model({"encoder": "gru", "decoder": name, "parametrisation": parametrisation,
                         "hidden_size": 16, "rmtpp_form": form or "monotone"}, num_marks=5)  # fmt: skip
    model.time_scale = 1.0
    out = model.nll(batch)
    events = out.scored.sum()
    per_event = (out.time_nll.sum() / events).item()
    exponential = (batch.taus * out.scored).sum().item() / events.item()  # NLL of Exp(1): tau per gap
    assert exponential > 3000  # the data reach far into the tail (mean gap ~5,000 model units, up to 1e5)
    assert per_event < 3 * exponential, f"{decoder} {parametrisation}: {per_event:.3g} nats/event at init"
    (out.time_nll.sum() + out.mark_nll.sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    # no gradient beyond what the exponential's own loss gives its rate (d/d log-rate of sum tau - log-rate: ~sum tau),
    # except the raw slope w of the baseline RMTPP (the reference's parametrisation): dLambda/dw ~ e^c tau^2 / 2 is
    # ~1e11 on these gaps; Adam's steps do not depend on the gradient's scale, a global-norm clip would (left alone)
    bounded = [g for n, g in grads.items() if not (form == "baseline" and n.endswith("time_decoder.w"))]
    assert max(g.abs().max().item() for g in bounded) < 3 * exponential * events.item()


def test_rmtpp_starts_next_to_its_poisson_limit() -> None:
    from mtpp.models.time_decoders import RMTPPDecoder

    torch.manual_seed(0)
    model = build_model({"encoder": "gru", "decoder": "rmtpp", "hidden_size": 16}, num_marks=5)
    w = torch.nn.functional.softplus(model._time_head.w_raw).item()
    assert w == pytest.approx(RMTPPDecoder.INIT_SLOPE, rel=1e-4)
