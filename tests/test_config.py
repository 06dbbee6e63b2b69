"""The run configuration: typed sections, YAML + --set overrides, one-line errors naming the key, variants."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtpp.cli import main
from mtpp.config import (
    RunConfig,
    config_from_dict,
    flatten,
    load_config,
    parse_override,
    variant_configs,
    variant_name,
)
from mtpp.errors import ConfigError

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def _error(overrides: list[str] | None = None, raw: dict | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        if raw is not None:
            config_from_dict(raw)
        else:
            load_config(None, overrides or [])
    msg = str(e.value)
    assert "\n" not in msg, "config errors are one line"
    return msg


def test_defaults() -> None:
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig)
    assert cfg.data.name == "synthetic_hawkes" and cfg.data.split == 0 and cfg.data.dtype == "float32"
    assert cfg.train.lr == 1e-3 and cfg.train.optimizer == "adam" and cfg.train.max_consecutive_skips == 20
    assert cfg.gradients.aggregator == "sum" and cfg.gradients.log_every == 1
    assert cfg.model.parametrisation == "base"


def test_unknown_key_names_it_and_lists_valid_keys() -> None:
    msg = _error(["train.learning_rate=0.1"])
    assert "train.learning_rate" in msg
    assert "max_epochs" in msg and "lr" in msg and "batch_size" in msg


def test_unknown_key_in_yaml_and_unknown_section() -> None:
    msg = _error(raw={"model": {"hiden_size": 3}})
    assert "model.hiden_size" in msg and "hidden_size" in msg
    msg = _error(raw={"trian": {}})
    assert "trian" in msg and "train" in msg and "model" in msg


def test_wrong_type_names_the_key() -> None:
    msg = _error(["train.max_epochs=many"])
    assert "train.max_epochs" in msg and "int" in msg
    msg = _error(raw={"train": {"amp": "yes please"}})
    assert "train.amp" in msg and "bool" in msg
    assert "train.batch_size" in _error(["train.batch_size=2.5"])


def test_choices_and_bounds() -> None:
    msg = _error(["model.parametrisation=plusplusplus"])
    assert "model.parametrisation" in msg and "base, plus, plusplus" in msg
    assert "train.lr_schedule" in _error(["train.lr_schedule=linear"])
    assert "train.device" in _error(["train.device=gpu"])
    assert "train.lr" in _error(["train.lr=0"])
    assert "train.max_epochs" in _error(["train.max_epochs=0"])
    # model sizes: zero is refused before a model is built (it used to end in a torch error or an infinite loss)
    for key in ("hidden_size", "num_components", "decoder_hidden_size", "num_heads", "integration_nodes",
                "eval_integration_nodes", "plusplus_hidden_size", "window"):
        assert f"model.{key}: must be >= 1, got 0" in _error([f"model.{key}=0"])
    msg = _error(["train.separate_early_stopping=true"])
    assert "separate_early_stopping" in msg and "plusplus" in msg


def test_overrides_parse_yaml_scalars() -> None:
    cfg = load_config(
        None,
        [
            "model.decoder=lnm",
            "train.max_epochs=3",
            "train.lr=1e-3",  # YAML 1.1 reads this as a string: accepted for float fields
            "train.grad_clip=5",  # int -> float
            "train.amp=true",
            "train.eval_batch_size=null",
            "gradients.aggregator=pcgrad",
            "gradients.options.seed=7",
            "data.data_dir=/tmp/x",
        ],
    )
    assert cfg.model.decoder == "lnm"
    assert cfg.train.max_epochs == 3 and isinstance(cfg.train.max_epochs, int)
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.train.grad_clip == 5.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.train.amp is True and cfg.train.eval_batch_size is None
    assert cfg.gradients.options == {"seed": 7}
    assert cfg.data.data_dir == "/tmp/x"
    assert parse_override("train.seed=3") == ("train.seed", 3)
    with pytest.raises(ConfigError):
        parse_override("train.seed")


def test_yaml_file_overrides_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_epochs: 7\n  lr: 3.0e-4\nmodel:\n  decoder: rmtpp\n")
    cfg = load_config(path, ["train.max_epochs=2"])
    assert cfg.train.max_epochs == 2 and cfg.train.lr == pytest.approx(3e-4) and cfg.model.decoder == "rmtpp"
    # to_dict -> YAML (+ the trainer's run_info) -> load_config gives the same configuration
    raw = cfg.to_dict()
    raw["run_info"] = {"mtpp_version": "0.1.0"}
    (tmp_path / "resolved.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(tmp_path / "resolved.yaml") == cfg
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_variants() -> None:
    cfg = load_config(QUICKSTART)
    configs = variant_configs(cfg)
    assert list(configs) == ["thp_base", "thp_plusplus"]
    assert configs["thp_plusplus"].model.parametrisation == "plusplus"
    assert configs["thp_base"].model.parametrisation == "base"
    assert all(not c.variants for c in configs.values())
    assert variant_name({"model.parametrisation": "plus"}) == "plus"
    msg = _error(raw={"variants": [{"model.parametrisation": "plusplus", "train.bogus": 1}]})
    assert "plusplus" in msg and "train.bogus" in msg
    assert "duplicate" in _error(raw={"variants": [{"model.decoder": "lnm"}, {"model.decoder": "lnm"}]})


def test_set_applies_to_every_variant_after_its_own_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """--set is the more specific: it replaces a variant's own value for the same key (said on stderr), the
    variant keeps its name, and keys the variant does not set are applied to every variant."""
    from mtpp.config import variants_with_overrides

    cfg = load_config(QUICKSTART)
    variants, notes = variants_with_overrides(cfg.variants, ["model.parametrisation=plus", "train.lr=0.01"])
    configs = variant_configs(cfg, variants)
    assert list(configs) == ["thp_base", "thp_plusplus"]
    assert {c.model.parametrisation for c in configs.values()} == {"plus"}
    assert {c.train.lr for c in configs.values()} == {0.01}
    assert notes == [
        "variant 'thp_base': model.parametrisation='base' replaced by --set model.parametrisation='plus'",
        "variant 'thp_plusplus': model.parametrisation='plusplus' replaced by --set model.parametrisation='plus'",
    ]
    # a whole section set on the command line replaces a variant's key inside it too
    _, notes = variants_with_overrides(cfg.variants, ["model={decoder: lnm}"])
    assert len(notes) == 2 and all("replaced by --set model=" in n for n in notes)
    assert variants_with_overrides(cfg.variants, ["train.lr=0.01"])[1] == []
    # the command: what it trains and what it says
    import mtpp.training.trainer as trainer

    seen = {}
    monkeypatch.setattr(trainer, "run_variants", lambda c, v, out, **kw: seen.update(v=variant_configs(c, v), stored=c.variants))
    args = ["train", str(QUICKSTART), "--out", str(tmp_path / "r"), "--variant", "thp_plusplus",
            "--set", "model.parametrisation=base"]  # fmt: skip
    assert main(args) == 0
    assert list(seen["v"]) == ["thp_plusplus"] and seen["v"]["thp_plusplus"].model.parametrisation == "base"
    assert "variant 'thp_plusplus': model.parametrisation='plusplus' replaced by --set" in capsys.readouterr().err
    # what variants.yaml keeps for a later --resume: the variants asked for, as trained
    assert [(v["name"], v["model.parametrisation"]) for v in seen["stored"]] == [("thp_plusplus", "base")]


def _float_fields() -> list[str]:
    """Every ``section.key`` whose type admits a float, read from the dataclasses (new fields are covered too)."""
    import dataclasses
    import typing

    from mtpp.config import SECTIONS

    out = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        out += [f"{section}.{f.name}" for f in dataclasses.fields(cls) if "float" in str(hints[f.name])]
    return out


@pytest.mark.parametrize("key", _float_fields())
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "1" + "0" * 400])
def test_every_number_field_refuses_nan_and_infinity(key: str, value: str) -> None:
    """nan passes every bound check (``nan < 0`` is false): train.lr=.nan used to crash in torch's Adam,
    train.min_delta=.nan silently froze the best epoch at 1, train.weight_decay=.inf trained to nan."""
    msg = _error([f"{key}={value}"])
    assert msg.startswith(f"{key}: ") and ("finite" in msg or "expected" in msg), msg


def test_dropout_is_a_probability_below_one() -> None:
    for value in ("1.5", "1"):  # 1.5 crashed in torch's nn.Dropout (THP encoder), GRU accepted it silently
        assert f"model.dropout: must be < 1, got {float(value)}" in _error([f"model.dropout={value}"])
    assert "model.dropout: must be >= 0" in _error(["model.dropout=-0.1"])
    assert load_config(None, ["model.dropout=0.5"]).model.dropout == 0.5


def test_aggregator_number_options_refuse_what_is_not_a_finite_number() -> None:
    from mtpp.training.aggregators import AGGREGATORS, aggregator_options, make_aggregator

    checked = 0
    for name in sorted(AGGREGATORS):
        for key, default in aggregator_options(name).items():
            if isinstance(default, bool) or not isinstance(default, (int, float)):
                continue
            for bad in (float("nan"), float("inf"), "nan", True, [1.0, float("nan")]):
                with pytest.raises(ConfigError, match=f"gradients.options.{key}: must be (one|a) finite number"):
                    make_aggregator(name, **{key: bad})
            make_aggregator(name, **{key: default})  # the default itself is fine
            checked += 1
    assert checked >= 5  # cagrad c / rescale, cograd gamma, gradops alpha, gradvac beta / target, metabalance ...
    for name in ("pcgrad", "gradvac"):  # seeds: an integer or null (inf crashed in torch's manual_seed)
        for bad in (float("inf"), 1.5, -1, 2**64, True, "1"):
            with pytest.raises(ConfigError, match="gradients.options.seed: must be an integer"):
                make_aggregator(name, seed=bad)
        make_aggregator(name, seed=3)
        make_aggregator(name, seed=None)


def test_cli_config_error_is_exit_2_and_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["train", str(QUICKSTART), "--out", str(tmp_path / "run"), "--set", "train.max_epoch=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "train.max_epoch" in err and "max_epochs" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("text, set_, said", [
    # YAML keeps the last of two equal keys without a word: a second model: section trained alone
    ("model:\n  hidden_size: 8\nmodel:\n  hidden_size: 16\n", [],
     "key 'model' is given twice in one mapping (lines 1 and 3); YAML would keep only the last"),
    ("train:\n  lr: 0.1\n  max_epochs: 2\n  lr: 0.01\n", [], "key 'lr' is given twice in one mapping (lines 2 and 4)"),
    ("model: {decoder: lnm, decoder: thp}\n", [], "key 'decoder' is given twice in one mapping (line 1)"),
    ("", [], "the file is empty (no setting)"),  # an empty file trained every default silently
    # a scalar section under --set was a TypeError traceback
    ("train: 5\n", ["--set", "train.max_epochs=1"], "train: expected a mapping of keys to values, got int"),
])
def test_a_config_file_that_says_something_twice_or_nothing_is_one_line(tmp_path: Path, capsys, text, set_, said):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code = main(["train", str(path), "--out", str(tmp_path / "run"), *set_])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and said in err and "Traceback" not in err, err
    assert f"{path}: " in err  # the file's mistake names the file
    assert not (tmp_path / "run").exists()


def test_a_config_files_mistake_names_the_file_and_a_set_override_names_its_key(tmp_path: Path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_epoch: 3\n")
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.startswith(f"mtpp train: error: {path}: unknown key 'train.max_epoch'")
    path.write_text("train:\n  max_epochs: 3\n")
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--set", "train.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and str(path) not in err  # the override's mistake, not the file's


def test_experiment_and_space_files_refuse_a_key_given_twice(tmp_path: Path) -> None:
    from mtpp.experiments import load_experiment
    from mtpp.tuning import load_space

    (tmp_path / "e.yaml").write_text("grid:\n  splits: [0]\ngrid:\n  splits: [1]\n")
    with pytest.raises(ConfigError, match="key 'grid' is given twice"):
        load_experiment(tmp_path / "e.yaml")
    (tmp_path / "e.yaml").write_text("grid:\n  models: [{name: thp, decoder: thp, decoder: lnm}]\n")
    with pytest.raises(ConfigError, match="key 'decoder' is given twice in one mapping \\(line 2\\)"):
        load_experiment(tmp_path / "e.yaml")
    (tmp_path / "e.yaml").write_text("")  # an empty experiment: the default model, trained without a word
    with pytest.raises(ConfigError, match="the file is empty"):
        load_experiment(tmp_path / "e.yaml")
    (tmp_path / "s.yaml").write_text("train.lr: {low: 1e-4, high: 1e-2}\ntrain.lr: [0.1]\n")
    with pytest.raises(ConfigError, match="key 'train.lr' is given twice"):
        load_space(tmp_path / "s.yaml")


def test_flatten_keeps_the_mappings_a_leaf_rule_names_whole() -> None:
    """One flatten for every caller: dotted keys, lists as leaves, empty mappings dropped unless a leaf rule keeps
    them (as the grid's stale check keeps free-form ``gradients.options`` and ``{}`` whole)."""
    cfg = {"model": {"hidden_size": 8, "sizes": [1, 2], "extra": {}}, "gradients": {"options": {"c": 0.5}}}
    assert flatten(cfg) == {"model.hidden_size": 8, "model.sizes": [1, 2], "gradients.options.c": 0.5}
    whole = flatten(cfg, leaf=lambda key, value: not value or key.endswith(".options"))
    assert whole == {"model.hidden_size": 8, "model.sizes": [1, 2], "model.extra": {}, "gradients.options": {"c": 0.5}}
    assert flatten({}) == {} and flatten(3, "x") == {"x": 3}


def test_a_truncated_json_record_is_named_as_json_not_yaml(tmp_path: Path) -> None:
    """A result record is JSON (read as YAML, its superset): a copy cut short said "not valid YAML (while scanning a
    quoted scalar ...)"; it now says what JSON finds wrong and that the file looks cut short. Other invalid YAML
    keeps its YAML message."""
    from mtpp.config import load_config
    from mtpp.errors import ConfigError

    whole = '{"record_version": 1, "config": {"train": {"lr": 0.01}}, "metrics": {}}'
    cut = tmp_path / "split0-seed0.json"
    cut.write_text(whole[:40])
    with pytest.raises(ConfigError, match=r"split0-seed0\.json: not valid JSON \(.*line 1.*\) \(cut short: a copy or "
                                          r"a write that did not finish\?\)$"):
        load_config(cut)
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": {"lr": 0.01,, "x": 1}}')
    with pytest.raises(ConfigError, match=r"bad\.json: not valid JSON \(") as e:
        load_config(bad)
    assert "cut short" not in str(e.value)
    renamed = tmp_path / "record.yaml"  # a record is one by its content, whatever its name
    renamed.write_text(whole[:40])
    with pytest.raises(ConfigError, match=r"record\.yaml: not valid JSON \(.*\(cut short"):
        load_config(renamed)
    latin = tmp_path / "latin.yaml"  # not UTF-8: a UnicodeDecodeError traceback before
    latin.write_bytes("train:\n  lr: 0.01  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml: not UTF-8 text \(invalid continuation byte at byte 24\)"):
        load_config(latin)
    yml = tmp_path / "bad.yaml"
    yml.write_text('train: {lr: "0.01}\n')
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML \("):
        load_config(yml)
