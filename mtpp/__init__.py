"""mtpp: neural marked temporal point processes in PyTorch.

Public API (imported lazily, so ``import mtpp`` stays cheap and has no side effects):
``load_dataset``, ``build_model``, ``fit``, ``evaluate``, ``predict``, ``generate``.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "load_dataset": "mtpp.data.catalog",
    "build_model": "mtpp.models",
    "fit": "mtpp.training.trainer",
    "evaluate": "mtpp.evaluation.evaluate",
    "predict": "mtpp.forecast.predict",
    "generate": "mtpp.forecast.generate",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mtpp' has no attribute {name!r}")
