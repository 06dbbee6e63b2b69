"""The Python API composes: ``load_dataset`` -> ``build_model`` (ModelConfig or dict) -> ``fit(model, ds)``, the
configuration route ``fit(config, out_dir)``, the exported config types, and the README's Python section, which
is extracted from README.md and executed here."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import yaml

import mtpp
from mtpp.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = {"encoder": "gru", "decoder": "lnm", "hidden_size": 8, "mark_embedding_size": 4,
              "time_embedding_size": 4, "decoder_hidden_size": 8, "num_components": 3}
QUICK = {"train": {"max_epochs": 2, "batch_size": 16}, "data": {"max_sequences": 24}, "logging": {"quiet": True}}


@pytest.fixture(scope="module")
def ds():
    return mtpp.load_dataset("synthetic_hawkes")


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Python\n.*?```python\n(.*?)^```", text, re.S | re.M)
    assert m, "README.md has no '## Python' section with a ```python block"
    return m.group(1)


def test_readme_python_section_runs(tmp_path, monkeypatch, capsys):
    code = readme_python_block()
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md#python", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out.split("\n")
    # the two fits wrote complete run directories where the README says
    for run in ("runs/python", "runs/python_config"):
        assert (tmp_path / run / "metrics.json").is_file() and (tmp_path / run / "best.pt").is_file()
    t, m = (float(x) for x in out[0].split())
    assert t > 0 and m > 0  # NLL per sequence of a 5-mark process with ~10 events a sequence
    assert float(out[1]) > 0


def test_exports():
    from mtpp.config import RunConfig, load_config
    from mtpp.models import ModelConfig

    assert mtpp.RunConfig is RunConfig and mtpp.load_config is load_config and mtpp.ModelConfig is ModelConfig
    for name in ("DataConfig", "TrainConfig", "GradientsConfig", "LoggingConfig", "config_from_dict"):
        assert name in mtpp.__all__ and getattr(mtpp, name) is not None
    assert set(mtpp.__all__) <= set(dir(mtpp))


def test_build_model_accepts_dicts_and_configs():
    a = mtpp.build_model(TINY_MODEL, 5)
    b = mtpp.build_model(mtpp.ModelConfig(**TINY_MODEL), 5)
    c = mtpp.build_model({"model": TINY_MODEL, "train": {"lr": 0.1}}, 5)  # a whole run dict
    d = mtpp.build_model(mtpp.config_from_dict({"model": TINY_MODEL}), 5)  # a RunConfig
    assert a.cfg == b.cfg == c.cfg == d.cfg
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    import numpy as np

    assert mtpp.build_model(TINY_MODEL, np.int64(3)).num_marks == 3


@pytest.mark.parametrize(
    "cfg, num_marks, message",
    [
        ({"decodr": "lnm"}, 5, "did you mean 'decoder'"),
        ({"decoder": "xx"}, 5, "model.decoder: invalid value 'xx'"),
        ({"hidden_size": "big"}, 5, "model.hidden_size: expected int"),
        (TINY_MODEL, None, "num_marks must be a positive integer"),
        (TINY_MODEL, 0, "num_marks must be >= 1"),
        ("lnm", 5, "must be a ModelConfig, a dict or None"),
    ],
)
def test_build_model_errors_are_one_line(cfg, num_marks, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        mtpp.build_model(cfg, num_marks)


def test_fit_model_and_dataset_composes(ds, tmp_path):
    torch.manual_seed(0)
    model = mtpp.build_model(TINY_MODEL, ds.num_marks)
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    out = tmp_path / "run"
    result = mtpp.fit(model, ds, out, config=QUICK)
    assert result["run_dir"] == str(out)
    assert set(result) >= {"val", "test", "train"} and result["train"]["epochs"] == 2
    # trained in place, ending with the best state that best.pt holds
    best = torch.load(out / "best.pt", weights_only=False)["model"]
    state = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}
    assert any(not torch.equal(before[k], state[k]) for k in state)
    assert all(torch.equal(state[k].cpu(), best[k].cpu()) for k in state)
    # config.yaml describes what was trained: the model's cfg and the dataset, QUICK's training settings
    stored = yaml.safe_load((out / "config.yaml").read_text())
    assert stored["model"] == mtpp.config_from_dict({"model": TINY_MODEL}).to_dict()["model"]
    assert stored["data"]["name"] == "synthetic_hawkes" and stored["data"]["max_sequences"] == 24
    assert stored["train"]["max_epochs"] == 2
    # ... so the run directory evaluates again and reproduces the returned metrics
    again = mtpp.evaluate(out, "test", write=False)
    assert again["nll_time_per_seq"] == pytest.approx(result["test"]["nll_time_per_seq"], rel=1e-5)
    # and evaluate(model, data=...) works on the same object
    direct = mtpp.evaluate(model, data=ds.test[:24], split="test")
    assert direct["nll_mark_per_seq"] == pytest.approx(result["test"]["nll_mark_per_seq"], rel=1e-5)


def test_fit_without_folder_uses_a_new_temporary_one(ds, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    model = mtpp.build_model(TINY_MODEL, ds.num_marks)
    result = mtpp.fit(model, ds, config={**QUICK, "train": {"max_epochs": 1}})
    run = Path(result["run_dir"])
    assert run.parent == tmp_path and run.name.startswith("mtpp-fit-") and (run / "metrics.json").is_file()


def test_fit_config_route_takes_dicts(tmp_path):
    result = mtpp.fit({"model": TINY_MODEL, **QUICK, "train": {"max_epochs": 1}}, tmp_path / "c")
    assert result["train"]["epochs"] == 1 and (tmp_path / "c" / "metrics.json").is_file()


def test_fit_refuses_mismatched_inputs(ds, tmp_path):
    wrong = mtpp.build_model(TINY_MODEL, ds.num_marks + 2)
    with pytest.raises(ConfigError, match="built for 7 marks, the data has 5"):
        mtpp.fit(wrong, ds, tmp_path / "x", config=QUICK)
    assert not (tmp_path / "x").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="data needs train, val, test and num_marks"):
        mtpp.fit(mtpp.build_model(TINY_MODEL, 5), [1, 2, 3], tmp_path / "y")
    with pytest.raises(ConfigError, match="a ModelConfig .cfg"):
        mtpp.fit(torch.nn.Linear(2, 2), ds, tmp_path / "z")
    with pytest.raises(ConfigError, match="unknown key 'train.epochs'"):
        mtpp.fit(mtpp.build_model(TINY_MODEL, 5), ds, tmp_path / "w", config={"train": {"epochs": 3}})
    with pytest.raises(ConfigError, match="pass resume=True by keyword"):
        mtpp.fit({"model": TINY_MODEL}, tmp_path / "v", True)
