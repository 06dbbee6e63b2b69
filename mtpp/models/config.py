"""ModelConfig: the ``model`` section of a run configuration (owned by the models package)."""

from __future__ import annotations

from dataclasses import dataclass

ENCODERS = ("gru", "rnn", "thp", "sahp", "fnn")
TIME_DECODERS = ("lnm", "rmtpp", "fnn", "thp", "sahp")
PARAMETRISATIONS = ("base", "plus", "plusplus")
INTEGRATION = ("mc", "gauss_legendre", "adaptive")
FIRST_EVENT = ("skip", "include")
RMTPP_FORMS = ("monotone", "baseline")


@dataclass
class ModelConfig:
    """One model = encoder x decoder x parametrisation; every variant is a value of these fields."""

    encoder: str = "gru"  # one of ENCODERS
    decoder: str = "thp"  # one of TIME_DECODERS
    parametrisation: str = "base"  # base | plus ("+") | plusplus ("++")
    hidden_size: int = 32  # encoder output D
    mark_embedding_size: int = 16
    time_embedding_size: int = 16
    num_layers: int = 1  # encoder layers: attention layers (thp / sahp), stacked GRU layers (gru)
    num_heads: int = 2
    window: int = 8  # fnn encoder: last m events
    decoder_hidden_size: int = 32  # MLP width inside decoders
    num_components: int = 32  # lnm mixture components; thp / sahp intensity components
    integration: str = "mc"  # compensator of thp / sahp in training: mc | gauss_legendre | adaptive
    integration_nodes: int = 50  # N during training
    eval_integration_nodes: int | None = None  # N during evaluation (None: 24 for adaptive, else integration_nodes)
    eval_integration: str | None = None  # rule during evaluation (None: "adaptive", normalised; see time_decoders)
    # rmtpp: monotone = exp(v.h + b + w tau), w >= 0 (Du et al. 2016); baseline = mu + exp(v.h + b + w tau), mu > 0,
    # w of either sign (Bosser & Ben Taieb's reference code). See time_decoders.RMTPPDecoder.
    rmtpp_form: str = "monotone"
    tie_resolution: float = 1e-6  # gaps below this (decoder units) score log F(delta): the tie policy, time_decoders
    first_event: str = "skip"  # skip | include: is the first event scored?
    dropout: float = 0.0
    # plusplus only: hidden size of each of its two encoders (None: hidden_size). ++ has two encoders, so the
    # reference shrinks them to stay near the base / + parameter budget; this is that knob.
    plusplus_hidden_size: int | None = None
