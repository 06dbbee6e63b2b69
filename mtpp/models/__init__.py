"""Models: ``build_model(cfg, num_marks)`` and the registries of parts.

Importing this package imports every part module, whose decorators fill ``ENCODERS``, ``TIME_DECODERS``,
``JOINT_DECODERS`` and ``MARK_DECODERS``; ``build_model`` then composes the parts named by the config.
"""

from __future__ import annotations

import operator
from typing import Any

from torch import nn

from mtpp.models import encoders, joint, mark_decoders, time_decoders  # noqa: F401  (fill the registries)
from mtpp.models.base import JointDistribution, NLLOutput, Scores, TimeDistribution
from mtpp.models.config import ModelConfig
from mtpp.models.mtpp import MarkedTPP
from mtpp.models.registry import ENCODERS, JOINT_DECODERS, MARK_DECODERS, TIME_DECODERS

__all__ = [
    "ENCODERS",
    "JOINT_DECODERS",
    "MARK_DECODERS",
    "TIME_DECODERS",
    "JointDistribution",
    "MarkedTPP",
    "ModelConfig",
    "NLLOutput",
    "Scores",
    "TimeDistribution",
    "build_model",
    "count_parameters",
]


def build_model(cfg: ModelConfig | dict | Any = None, num_marks: int | None = None) -> MarkedTPP:
    """The ``MarkedTPP`` described by ``cfg`` for ``num_marks`` marks (``K``; marks are ``0 .. K-1``).

    ``cfg``: a ``ModelConfig``; a dict of ``model`` keys (``{"encoder": "thp", "decoder": "lnm",
    "parametrisation": "plusplus"}``, the YAML ``model:`` section as a dict); a whole run configuration
    (``RunConfig`` or a dict with a ``model`` section); ``None`` for the defaults (``mtpp.config.as_model_config``).
    The model is on the CPU in torch's default dtype (float32 unless ``torch.set_default_dtype`` changed it);
    ``.to(device, dtype)`` moves it (``fit`` keeps a float64 model in float64 unless ``data.dtype`` says otherwise). Its forward contract (``nll(batch)``:
    per-sequence NLL terms of shape ``[B]`` in nats, ``score``, ``predict``, ``sample_next``) is documented in
    ``mtpp.models.mtpp``.

    Raises ``ConfigError`` for an unknown key, a value of the wrong type or an unknown encoder / decoder /
    parametrisation name (listing the valid ones), and for ``num_marks`` missing or < 1.
    """
    from mtpp.config import as_model_config
    from mtpp.data.checks import shown
    from mtpp.errors import ConfigError

    try:
        if isinstance(num_marks, bool):
            raise TypeError
        k = operator.index(num_marks)  # int, numpy integers
    except TypeError:
        raise ConfigError(
            f"build_model: num_marks must be a positive integer (e.g. dataset.num_marks), got {shown(num_marks)}"
        ) from None
    return MarkedTPP(as_model_config(cfg), k)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameter entries, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
