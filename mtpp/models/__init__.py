"""Models: ``build_model(cfg, num_marks)`` and the registries of parts.

Importing this package imports every part module, whose decorators fill ``ENCODERS``, ``TIME_DECODERS``,
``JOINT_DECODERS`` and ``MARK_DECODERS``; ``build_model`` then composes the parts named by the config.
"""

from __future__ import annotations

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


def build_model(cfg: ModelConfig, num_marks: int) -> MarkedTPP:
    """The ``MarkedTPP`` described by ``cfg`` for ``num_marks`` marks.

    Unknown encoder / decoder / parametrisation names raise ``ConfigError`` listing the valid names.
    """
    return MarkedTPP(cfg, num_marks)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameter entries, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
