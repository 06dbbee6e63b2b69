"""Building a run from its configuration: device, data, model, optimiser, LR schedule, determinism.

Shared by ``fit`` and ``evaluate`` (which rebuilds a trained run from its ``config.yaml``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from mtpp.config import DataConfig, RunConfig, TrainConfig
from mtpp.errors import ConfigError
from mtpp.models import compiled

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str, tf32: bool = False, source: str = "train.device", fix: str | None = None
                   ) -> torch.device:  # fmt: skip
    """``auto`` -> cuda when available, else cpu; ``cuda[:n]`` must exist. ``ConfigError`` for any other name
    (``train.device`` and every command's ``--device`` are resolved here), naming ``source`` (where the value
    came from: ``train.device``, ``--device``, a run's ``config.yaml``) and ``fix`` (what to pass instead) when
    the device is not here.

    On CUDA this also sets the float32 precision of matrix products and cuDNN (``set_float32_precision``): full
    IEEE float32 unless ``tf32`` (``train.tf32``).
    """
    from mtpp.config import DEVICE_NAMES, valid_device

    if not valid_device(name):  # torch.device('bogus') fails deep inside torch with every backend it knows
        raise ConfigError(f"device {name!r}: invalid value; valid: {DEVICE_NAMES}")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    then = f" ({fix})" if fix else ""
    if dev.type == "cuda" and name != "auto":
        if not torch.cuda.is_available():
            raise ConfigError(f"{source}: {name!r} requested but CUDA is not available; valid here: auto, cpu{then}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ConfigError(f"{source}: {name!r} but only {count} CUDA device(s) (cuda:0 .. cuda:{count - 1}){then}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{source}: 'mps' requested but MPS is not available; valid here: auto, cpu{then}")
    if dev.type == "cuda":
        set_float32_precision(tf32)
    return dev


def model_device(model: nn.Module, device: str | None, what: str) -> torch.device:
    """The device a model is computed on by ``evaluate`` / ``predict`` / ``generate(model, ...)``: its own; a
    ``device`` given is checked (:func:`resolve_device`) and must be that one. The model is never moved behind the
    caller's back (a batch sent to another device than the model's failed inside torch, and ``predict`` /
    ``generate`` ignored the argument): ``ConfigError`` naming both, with the fix (``model.to(device)``)."""
    own = next(model.parameters()).device
    if device is None or device == "auto":
        return own
    try:
        dev = resolve_device(device)
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
    if dev.type != own.type or (dev.index is not None and dev.index != (own.index or 0)):
        raise ConfigError(f"{what}: device {device!r} but the model is on {own}; move it first "
                          f"(model.to({str(dev)!r})) or leave device out (it is computed where the model is)")
    return own


def run_device(device: str | None, cfg: Any, run_dir: str | Path, tf32: bool = False) -> torch.device:
    """The device a command computes with on a run: ``device`` (its ``--device``), else the run's own
    ``train.device``. A run trained on ``cuda`` and evaluated on a machine without it is refused naming the run's
    ``config.yaml`` and ``--device cpu``, not as a ``train.device`` the user never set in this command."""
    if device:
        return resolve_device(device, tf32, source="--device")
    return resolve_device(cfg.train.device, tf32, source=f"{Path(run_dir) / 'config.yaml'}: train.device (the device "
                          "the run was trained with)", fix="pass --device cpu or --device auto")


def set_float32_precision(tf32: bool) -> None:
    """Full float32 (``"ieee"``) or TensorFloat-32 (``"tf32"``) for CUDA matrix products, cuDNN RNNs and convolutions.

    PyTorch's default runs cuDNN (hence ``nn.GRU`` on CUDA) in TF32, a 10-bit mantissa: on an H200 the CUDA
    gradients of GRU models then failed a 1e-3 relative comparison with the CPU's, and with TF32 on the worst
    difference was 2.2e-3 against 6e-6 in full float32 (BENCHMARKS.md, "CUDA"). Likelihoods and their gradients are what mtpp is for, so full precision is the default
    and TF32 an explicit choice (``train.tf32: true``). Process-wide, as PyTorch's flags are.
    """
    mode = "tf32" if tf32 else "ieee"
    if hasattr(torch.backends, "fp32_precision"):  # PyTorch >= 2.9
        torch.backends.fp32_precision = mode
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.fp32_precision = mode
        torch.backends.cudnn.rnn.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:  # older PyTorch: the legacy flags
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


@dataclass
class RunData:
    train: list
    val: list
    test: list
    num_marks: int
    name: str
    notes: Any = None
    source: str | None = None  # the folder or file the sequences were read from (``Dataset.source``)
    split_index: int = 0  # which of the dataset's splits
    # data handed to fit(model, data) that its run's configuration cannot reload (a Dataset built by hand, not by
    # load_dataset): why, in words, recorded so that evaluate / predict / --resume of the run say so; None: reloadable
    given: str | None = None
    mark_ids: list | None = None  # the source's id of each mark where they were remapped (``Dataset.mark_ids``)

    def split(self, name: str) -> list:
        if name not in ("train", "val", "test"):
            raise ConfigError(f"split {name!r}: valid: train, val, test")
        return getattr(self, name)


def load_data(cfg: DataConfig, data_dir: str | None = None, name: str | None = None,
              progress: bool = False) -> RunData:  # fmt: skip
    """The configured dataset (``--data-dir`` beats ``data.data_dir``), cut to ``max_sequences`` per split.
    ``progress``: a bar counting the sequences read (on a terminal; ``load_dataset``).

    ``name``: the label to give it (default: the dataset's own; ``mtpp.runs`` loads a run's recorded folder
    under the run's dataset name)."""
    from mtpp.data.catalog import load_dataset

    ds = load_dataset(cfg.name, split=cfg.split, data_dir=data_dir or cfg.data_dir, sort=cfg.sort,
                      use_window=cfg.use_window, remap_marks=cfg.remap_marks, progress=progress)
    check_data(ds, cfg.dtype)
    n = cfg.max_sequences

    def cut(seqs: Any) -> list:
        seqs = list(seqs)
        return seqs[:n] if n is not None else seqs

    return RunData(
        cut(ds.train), cut(ds.val), cut(ds.test), int(ds.num_marks), name or str(ds.name), getattr(ds, "notes", None),
        str(getattr(ds, "source", "")) or None, int(getattr(ds, "split", cfg.split)),
        mark_ids=getattr(ds, "mark_ids", None),
    )


def check_data(data: Any, dtype: str, num_marks: int | None = None) -> None:
    """Refuse (``DataError``, one line) data a run cannot train on: an empty train / val / test part, a sequence
    that is not a valid ``EventSequence`` (times finite, ``>= 0``, sorted), a mark outside ``[0, num_marks)``
    (default: the data's ``num_marks``) or a time beyond ``dtype``'s range (``"float32"``: it would become ``inf``
    in every batch). :func:`mtpp.data.checks.check_parts` on ``data.train`` / ``val`` / ``test``; the
    configuration route (:func:`load_data`) and ``fit(model, data)`` (``mtpp.training.api``) both call it, before
    the run folder is touched."""
    from mtpp.data.checks import check_parts

    k = int(data.num_marks if num_marks is None else num_marks)
    name, source = getattr(data, "name", "data"), getattr(data, "source", None)
    split = getattr(data, "split", getattr(data, "split_index", None))
    split = split if isinstance(split, int) else getattr(data, "split_index", "?")
    label = f"{name} ({source}, split {split})" if source else f"{name} (split {split})"
    check_parts({"train": data.train, "val": data.val, "test": data.test}, k, dtype, source=label)


def build_run_model(cfg: RunConfig, num_marks: int, device: torch.device) -> nn.Module:
    from mtpp.models import build_model

    model = build_model(cfg.model, num_marks)
    return model.to(device=device, dtype=DTYPES[cfg.data.dtype])


def training_nll(model: nn.Module, cfg: TrainConfig) -> Any:
    """The loss function the trainer calls, ``batch -> nll terms``: ``model.nll``, ``torch.compile``-d as a whole
    with ``train.compile``; with ``train.compile_integrand`` the THP / SAHP compensator integrands of ``model``
    are compiled (``mtpp.models.compiled``; raises ``ConfigError`` where torch cannot compile)."""
    compiled.enable(model, cfg.compile_integrand)  # on or off: a model trained before may have it on
    return torch.compile(model.nll, dynamic=True) if cfg.compile else model.nll


def unique_parameters(params: Any) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in unique_parameters(model.parameters()))


def make_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Adam (default), AdamW or SGD over every parameter (frozen ones have no grad and are skipped).

    On CUDA, Adam / AdamW are ``capturable`` so their step counter lives on the device: the non-finite guard then
    masks the whole optimiser state without a host sync. On CPU they use the fused kernel where this torch has
    one (>= 2.4): one kernel for all parameters instead of ~10 per tensor, 4x faster on our model sizes (same
    update up to float rounding).
    """
    params = unique_parameters(model.parameters())
    if cfg.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        kwargs: dict[str, Any] = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
        if device.type == "cuda":
            return cls(params, capturable=True, **kwargs)
        try:
            return cls(params, fused=True, **kwargs)
        except RuntimeError:  # torch < 2.4: no fused CPU kernel
            return cls(params, **kwargs)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    """``cosine``: cosine annealing over ``max_epochs`` (stepped per epoch); ``plateau``: halve the LR after
    ``max(1, patience // 4)`` epochs without validation improvement; ``none``: ``None``."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.max_epochs)
    if cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(1, cfg.patience // 4), threshold=cfg.min_delta
        )
    return None


@contextlib.contextmanager
def determinism(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms and cuDNN flags for the duration of a run, restored afterwards."""
    if not enabled:
        yield
        return
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]
        if prev[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@contextlib.contextmanager
def compile_settings(cfg: TrainConfig) -> Iterator[None]:
    """With ``train.compile``: AOTAutograd's donated buffers off for the run (``backward_step`` runs two
    ``autograd.grad`` calls over one graph, i.e. ``retain_graph=True``, which donated buffers forbid).

    Not for ``train.compile_integrand``: the compiled integrands donate no buffer, so they backpropagate twice
    under the default setting, and a graph compiled inside this context would fail the donated-buffer check of a
    ``retain_graph`` backward outside it (``tests/test_compiled.py``)."""
    if not cfg.compile:
        yield
        return
    import torch._functorch.config as functorch_config

    with functorch_config.patch(donated_buffer=False):
        yield


def autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward pass when ``enabled``, on CUDA or CPU; a no-op elsewhere.

    The trainer enables it only on CUDA (``amp_enabled``); the CPU branch runs the same code path in tests on
    machines without a GPU. The likelihood terms are computed in float32 by the decoders and the losses are cast
    to float32 by ``train_step`` either way.
    """
    if not enabled or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def amp_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the run uses bf16 autocast: ``train.amp`` on a CUDA device. Asked for elsewhere, a WARNING of mtpp's
    logger says it is not used (one line on the console and in ``train.log``; ``warnings.warn`` printed a source
    line of mtpp's code)."""
    if cfg.amp and device.type != "cuda":
        logging.getLogger(__name__).warning("train.amp is only used on CUDA; training in full precision")
    return cfg.amp and device.type == "cuda"


def refuse_unused_data_dir(cfg: RunConfig, data_dir: str) -> None:
    """``ConfigError`` when ``--data-dir`` would be passed over by the run (by every variant of it), for ``train``
    and ``tune``; the reason and the setting that reads the folder: :func:`mtpp.data.catalog.unused_data_dir`."""
    from mtpp.config import variant_configs
    from mtpp.data.catalog import unused_data_dir
    from mtpp.errors import ConfigError

    names = sorted({c.data.name for c in variant_configs(cfg).values()} if cfg.variants else {cfg.data.name})
    reasons = [unused_data_dir(n, data_dir) for n in names]
    if all(reasons):
        raise ConfigError(reasons[0])
