"""The Python API composes: ``load_dataset`` -> ``build_model`` (ModelConfig or dict) -> ``fit(model, ds)``, the
configuration route ``fit(config, out_dir)``, the exported config types, and the README's Python section, which
is extracted from README.md and executed here."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
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
    per_sequence = [float(x) for x in out[2].strip("[]").split(",")]
    assert len(per_sequence) == 3 and all(math.isfinite(x) for x in per_sequence)


def test_exports():
    from mtpp.config import RunConfig, load_config
    from mtpp.models import ModelConfig

    assert mtpp.RunConfig is RunConfig and mtpp.load_config is load_config and mtpp.ModelConfig is ModelConfig
    for name in ("DataConfig", "TrainConfig", "GradientsConfig", "LoggingConfig", "config_from_dict"):
        assert name in mtpp.__all__ and getattr(mtpp, name) is not None
    assert set(mtpp.__all__) <= set(dir(mtpp))
    from mtpp.forecast.runs import load_run

    assert mtpp.load_run is load_run  # a trained run's model for log_likelihood / predict from Python


def test_build_model_accepts_dicts_and_configs():
    a = mtpp.build_model(TINY_MODEL, 5)
    b = mtpp.build_model(mtpp.ModelConfig(**TINY_MODEL), 5)
    c = mtpp.build_model({"model": TINY_MODEL, "train": {"lr": 0.1}}, 5)  # a whole run dict
    d = mtpp.build_model(mtpp.config_from_dict({"model": TINY_MODEL}), 5)  # a RunConfig
    assert a.cfg == b.cfg == c.cfg == d.cfg
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    import numpy as np

    assert mtpp.build_model(TINY_MODEL, np.int64(3)).num_marks == 3


def test_build_model_refuses_variants_it_would_drop():
    """A run configuration whose variants change the model (the quick start's base and "++" twin) is not one model:
    building its base section would silently drop the "++" variant, so every route says so in one line."""
    from mtpp.config import variant_configs

    quick = ROOT / "configs" / "quickstart.yaml"
    message = "one model cannot be all of them ('thp_base' sets model.parametrisation; 'thp_plusplus' sets"
    for cfg in (mtpp.load_config(quick), yaml.safe_load(quick.read_text())):  # a RunConfig, a whole run dict
        with pytest.raises(ConfigError, match=re.escape(message)):
            mtpp.build_model(cfg, 5)
    twin = mtpp.build_model(variant_configs(mtpp.load_config(quick))["thp_plusplus"], 5)  # the way the error names
    assert twin.cfg.parametrisation == "plusplus" and twin.cfg.decoder == "thp"
    # variants of other sections build the same model: nothing is dropped
    same = mtpp.build_model({"model": TINY_MODEL, "variants": [{"train.lr": 0.1}, {"train.lr": 0.01}]}, 5)
    assert same.cfg == mtpp.build_model(TINY_MODEL, 5).cfg


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


# ------------------------------------------------------------------ every entry point checks what it is handed


def _seq(times, marks, window=None):
    import numpy as np

    from mtpp.data.sequence import EventSequence

    return EventSequence(np.asarray(times, float), np.asarray(marks), window)


def _folder(path, parts, num_marks=2, window=None):
    from mtpp.data.formats import write_split_folder

    return write_split_folder(path, [parts], num_marks=num_marks,
                              split_args=None if window is None else [{"window": window}])


GOOD = [_seq([0.5, 1.5, 2.5], [1, 0, 1]), _seq([0.2, 0.9], [0, 1]), _seq([1.0, 1.1, 3.0, 4.0], [1, 1, 0, 0])] * 2
Q1 = {"train": {"max_epochs": 1, "batch_size": 8}, "logging": {"quiet": True}}


@pytest.fixture(scope="module")
def run(ds, tmp_path_factory):
    """A tiny trained run of synthetic_hawkes (5 marks) and its model."""
    out = tmp_path_factory.mktemp("api") / "run"
    model = mtpp.build_model(TINY_MODEL, ds.num_marks)
    mtpp.fit(model, ds, out, config={**QUICK, "train": {"max_epochs": 1, "batch_size": 16}})
    return out, model


def test_fit_of_a_dataset_makes_the_data_checks_of_mtpp_train(tmp_path):
    from mtpp.data.catalog import Dataset
    from mtpp.errors import DataError

    huge = [_seq([1.0, 2.0], [0, 1]), _seq([1e300, 1e301], [0, 1]), *GOOD]
    bad = mtpp.load_dataset(str(_folder(tmp_path / "hugetime", {"train": huge, "val": huge, "test": huge})))
    model = mtpp.build_model(TINY_MODEL, 2)
    # the message mtpp train gives, before any file is written; float64 trains
    with pytest.raises(DataError, match=r"3 sequence\(s\) have times beyond float32's range.*data.dtype: float64"):
        mtpp.fit(model, bad, tmp_path / "p7", config=Q1)
    assert not (tmp_path / "p7").exists()
    # a Dataset edited or built by hand: an empty part, a mark beyond num_marks, unsorted times
    ok = mtpp.load_dataset(str(_folder(tmp_path / "ok", {"train": GOOD, "val": GOOD, "test": GOOD})))
    cases = [(Dataset(GOOD, [], GOOD, 2, "h", ""), "the val part is empty"),
             (Dataset(GOOD, GOOD, [*GOOD, _seq([0.1, 0.2], [0, 4])], 2, "h", ""),
              "test: sequence 6: mark 4 at event 1 is out of range for the 2 marks"),
             (Dataset([_seq([2.0, 1.0], [0, 1])], GOOD, GOOD, 2, "h", ""), "times out of order at event 1")]
    for data, message in cases:
        with pytest.raises(DataError, match=re.escape(message)):
            mtpp.fit(model, data, tmp_path / "q", config=Q1)
        assert not (tmp_path / "q").exists()
    # the taxi case: a dataset that declares fewer marks than it holds
    ok.num_marks = 2
    ok.test = [*ok.test, _seq([0.5], [9])]
    with pytest.raises(DataError, match="mark 9 at event 0 is out of range for the 2 marks"):
        mtpp.fit(model, ok, tmp_path / "r", config=Q1)
    assert not (tmp_path / "r").exists()


def test_fit_records_how_the_dataset_was_loaded(tmp_path):
    from mtpp.data.catalog import Dataset
    from mtpp.errors import MtppError

    windowed = [_seq(s.times, s.marks) for s in GOOD]
    folder = _folder(tmp_path / "sim", {"train": windowed, "val": windowed, "test": windowed}, window=10.0)
    ds = mtpp.load_dataset(str(folder), use_window=True, sort=True)
    assert ds.test[0].window_end == 10.0 and ds.options["use_window"] and ds.options["sort"]
    out = tmp_path / "run"
    result = mtpp.fit(mtpp.build_model(TINY_MODEL, 2), ds, out, config=Q1)
    stored = yaml.safe_load((out / "config.yaml").read_text())
    assert stored["data"]["use_window"] is True and stored["data"]["sort"] is True
    assert stored["data"]["remap_marks"] is False and stored["run_info"]["data"]["options"]["use_window"] is True
    # so the run evaluates again on the same data, to the same numbers
    again = mtpp.evaluate(out, "test", write=False)
    assert again["nll_per_seq"] == pytest.approx(result["test"]["nll_per_seq"], rel=1e-5)
    assert again["nll_survival_per_seq"] > 0  # the window end is scored
    # a config.yaml that says otherwise: the refusal names what differs, not two identical-looking summaries
    stored["data"]["use_window"] = False
    (out / "config.yaml").write_text(yaml.safe_dump(stored))
    with pytest.raises(MtppError, match=r"data.use_window True \(recorded\) vs False \(now\).*windows 6 vs 0"):
        mtpp.evaluate(out, "test", write=False)
    # a Dataset built by hand trains, and its run says why it cannot be reloaded
    hand = Dataset(GOOD, GOOD, GOOD, 2, "mine", "")
    mtpp.fit(mtpp.build_model(TINY_MODEL, 2), hand, tmp_path / "hand", config=Q1)
    with pytest.raises(MtppError, match=r"handed to fit\(model, data\) that its configuration cannot reload"):
        mtpp.evaluate(tmp_path / "hand", "test", write=False)


def test_every_entry_point_checks_marks_against_the_model(ds, run):
    from mtpp.errors import DataError

    run_dir, _ = run
    m3 = mtpp.build_model(TINY_MODEL, 3)
    message = r"mark \d at event \d+ is out of range for the 3 marks of the model"
    for call in (lambda: mtpp.evaluate(m3, data=ds), lambda: mtpp.predict(m3, sequences=ds.test[:3]),
                 lambda: mtpp.generate(m3, ds.test[:2], horizon=1.0)):
        with pytest.raises(DataError, match=message):
            call()
    seven = [_seq([0.5, 1.0], [0, 6])]  # mark 6 of a 7-mark dataset, shown to the 5-mark run
    for call in (lambda: mtpp.predict(run_dir, sequences=seven), lambda: mtpp.generate(run_dir, seven, horizon=1.0)):
        with pytest.raises(DataError, match=r"mark 6 at event 1 is out of range for the 5 marks of the run"):
            call()
    with pytest.raises(DataError, match="time inf at event 1 is not a finite number"):
        mtpp.evaluate(mtpp.build_model(TINY_MODEL, 5), data=[_seq([0.5, float("inf")], [0, 1])])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: mtpp.build_model(mtpp.ModelConfig(hidden_size="x"), 5), "model.hidden_size: expected int, got str"),
        (lambda: mtpp.build_model(mtpp.ModelConfig(hidden_size=-4), 5), "model.hidden_size: must be >= 1, got -4"),
        (lambda: mtpp.build_model(mtpp.ModelConfig(num_components=0, decoder="lnm"), 5),
         "model.num_components: must be >= 1, got 0"),
        (lambda: mtpp.build_model({"decoder": "lnm", "num_components": 0}, 5), "model.num_components: must be >= 1"),
        (lambda: mtpp.build_model(mtpp.ModelConfig(parametrisation="pp"), 5), "model.parametrisation: invalid value"),
        (lambda: mtpp.fit(mtpp.RunConfig(train=mtpp.TrainConfig(lr=-1.0, max_epochs=1)), "unused"),
         "train.lr: must be > 0, got -1.0"),
        (lambda: mtpp.fit(mtpp.RunConfig(data=mtpp.DataConfig(dtype="float16")), "unused"),
         "data.dtype: invalid value 'float16'; valid: float32, float64"),
        (lambda: mtpp.fit(mtpp.RunConfig(train={"lr": 0.1}), "unused"), "train: expected a TrainConfig"),
    ],
)
def test_config_dataclasses_are_validated_like_dicts(call, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        call()
    assert not (tmp_path / "unused").exists()


def test_fit_of_a_model_refuses_config_it_would_ignore(ds, tmp_path):
    model = mtpp.build_model(TINY_MODEL, ds.num_marks)
    cases = [({"model": {"decoder": "thp"}}, "model.decoder: 'thp' (the model's: 'lnm')"),
             ({"data": {"name": "taxi"}}, "data.name: 'taxi' is not how the data passed were loaded"),
             ({"data": {"split": 2}}, "data.split: 2 is not how the data passed were loaded (0)"),
             ({"variants": [{"model.parametrisation": "plusplus"}]}, "its 1 variants are not trained"),
             (mtpp.RunConfig(model=mtpp.ModelConfig(decoder="rmtpp")), "model.decoder: 'rmtpp'"),
             (str(ROOT / "configs" / "quickstart.yaml"), "its model section")]
    for config, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            mtpp.fit(model, ds, tmp_path / "x", config=config)
        assert not (tmp_path / "x").exists()
    # settings that agree with the model and data are fine
    same = {**QUICK, "model": {"decoder": "lnm"}, "data": {"name": "synthetic_hawkes", "max_sequences": 16}}
    assert mtpp.fit(model, ds, tmp_path / "ok", config={**same, "train": {"max_epochs": 1}})["train"]["epochs"] == 1


def test_api_entry_points_agree(ds, run, tmp_path):
    from mtpp.errors import DataError, MtppError
    from mtpp.forecast.runs import load_run

    run_dir, _ = run
    model = load_run(run_dir).model
    # generate takes a run folder, with the numbers of its model
    a = mtpp.generate(str(run_dir), ds.test[:2], horizon=1.0, seed=3)
    b = mtpp.generate(model, ds.test[:2], horizon=1.0, seed=3)
    assert a.time.tolist() == b.time.tolist() and a.mark.tolist() == b.mark.tolist()
    # a Dataset stands for its part, as evaluate(model, data=ds) takes it
    p = mtpp.predict(model, sequences=ds, split="val")
    assert p.equals(mtpp.predict(model, sequences=ds.val))
    assert mtpp.generate(model, ds, events=1).rows == len(ds.test)
    with pytest.raises(DataError, match=re.escape("pass load_dataset('synthetic_hawkes')")):
        mtpp.evaluate(model, data="synthetic_hawkes")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(MtppError, match="batch_size must be a positive integer"):
            mtpp.evaluate(model, data=ds, batch_size=bad)
        with pytest.raises(MtppError, match="batch_size must be a positive integer"):
            mtpp.predict(model, sequences=ds.test[:2], batch_size=bad)
    both = mtpp.evaluate(run_dir, split="all", write=False)
    assert set(both) == {"val", "test"}
    assert both["test"]["nll_per_seq"] == pytest.approx(mtpp.evaluate(run_dir, "test", write=False)["nll_per_seq"])
    with pytest.raises(DataError, match="split must be a non-negative integer, got True"):
        mtpp.load_dataset("synthetic_hawkes", split=True)
    with pytest.raises(DataError, match="load_dataset needs a dataset name or a path"):
        mtpp.load_dataset(None)


def test_fit_leaves_the_callers_random_streams_where_they_were(ds, tmp_path):
    """fit seeds python / numpy / torch from train.seed for its run; it used to leave them there, so every
    np.random draw after fit was the same (a loop over seeds drew one value again and again)."""
    import random

    import numpy as np

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    def after_fit(seed: int, run: str):
        model = mtpp.build_model(TINY_MODEL, ds.num_marks)  # its initialisation draws from torch's stream
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        draws()
        mtpp.fit(model, ds, tmp_path / run, config={**QUICK, "train": {"max_epochs": 1}})
        return draws()

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    draws()
    expected = draws()  # the second draws of seed 1, with nothing in between
    assert after_fit(1, "a") == expected
    assert after_fit(2, "b") != expected  # another seed, another stream: fit did not pin it


def test_fit_keeps_a_float64_model_in_float64(ds, tmp_path):
    """A model moved to float64 was trained (and left) in float32 unless the config also said data.dtype:
    float64, silently; its own precision is now the default, and an explicit data.dtype still wins."""
    torch.manual_seed(0)
    model = mtpp.build_model(TINY_MODEL, ds.num_marks).double()
    twin = mtpp.build_model(TINY_MODEL, ds.num_marks).double()
    twin.load_state_dict(model.state_dict())
    quick = {**QUICK, "train": {"max_epochs": 1}}
    result = mtpp.fit(model, ds, tmp_path / "own", config=quick)
    assert next(model.parameters()).dtype == torch.float64
    assert yaml.safe_load((tmp_path / "own" / "config.yaml").read_text())["data"]["dtype"] == "float64"
    explicit = mtpp.fit(twin, ds, tmp_path / "explicit", config={**quick, "data": {**quick["data"], "dtype": "float64"}})
    assert result["test"]["nll_per_seq"] == explicit["test"]["nll_per_seq"]
    narrowed = mtpp.build_model(TINY_MODEL, ds.num_marks).double()
    mtpp.fit(narrowed, ds, tmp_path / "f32", config={**quick, "data": {**quick["data"], "dtype": "float32"}})
    assert next(narrowed.parameters()).dtype == torch.float32


def test_a_sequence_of_no_events_is_refused_in_one_line(ds, tmp_path):
    """An EventSequence built by hand with no events passed every check and failed inside collate with numpy's
    'index 0 is out of bounds for axis 0 with size 0' (evaluate, predict and fit alike)."""
    import numpy as np

    from mtpp.data.batch import collate
    from mtpp.data.catalog import Dataset
    from mtpp.data.sequence import EventSequence
    from mtpp.errors import DataError

    empty = EventSequence(np.zeros(0), np.zeros(0, dtype=np.int64))
    model = mtpp.build_model(TINY_MODEL, ds.num_marks)
    hand = Dataset(train=[*ds.train[:8], empty], val=ds.val[:4], test=ds.test[:4], num_marks=ds.num_marks,
                   name="hand", source="python")
    calls = {
        "evaluate(model, data=...): sequence 1": lambda: mtpp.evaluate(model, data=[ds.test[0], empty]),
        "predict(sequences=...): sequence 1": lambda: mtpp.predict(model, sequences=[ds.test[0], empty]),
        "generate(histories): sequence 1": lambda: mtpp.generate(model, [ds.test[0], empty], events=1),
        "train: sequence 8": lambda: mtpp.fit(model, hand, tmp_path / "run", config=QUICK),
        "collate: sequence 1": lambda: collate([ds.test[0], empty]),
    }
    for where, call in calls.items():
        with pytest.raises(DataError, match=re.escape(where) + ": has no events"):
            call()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, h: mtpp.generate(m, h, events=2.5), "events must be an integer >= 1, got 2.5"),
        (lambda m, h: mtpp.generate(m, h, events="2"), "events must be an integer >= 1, got '2'"),
        (lambda m, h: mtpp.generate(m, h, events=True), "events must be an integer >= 1, got True"),
        (lambda m, h: mtpp.generate(m, h, events=2, samples=2.5), "samples must be an integer >= 1, got 2.5"),
        (lambda m, h: mtpp.generate(m, h, horizon=1.0, max_events=2.5), "max_events must be an integer >= 1"),
        (lambda m, h: mtpp.generate(m, h, events=2, seed=None), "seed must be an integer in 0 .. 4294967295, got None"),
        (lambda m, h: mtpp.generate(m, h, events=2, seed=1.5), "seed must be an integer in 0 .. 4294967295, got 1.5"),
        (lambda m, h: mtpp.generate(m, h, events=2, seed=2**70), "seed must be an integer in 0 .. 4294967295"),
        (lambda m, h: mtpp.generate(m, h, horizon="1"), "horizon (a time span after the origin, data units) must be "
                                                       "a finite number > 0, got '1'"),
        (lambda m, h: mtpp.generate(m, h, horizon=float("nan")), "must be a finite number > 0, got nan"),
        (lambda m, h: mtpp.generate(m, h, events=2, incremental="yes"), "incremental must be True or False (or None)"),
        (lambda m, h: mtpp.predict(m, sequences=h, top_k=2.5), "top_k must be an integer >= 1, got 2.5"),
        (lambda m, h: mtpp.predict(m, sequences=h, level="0.9"), "level must be a finite number in (0, 1), got '0.9'"),
        (lambda m, h: mtpp.predict(m, sequences=h, level=1.5), "level must be a finite number in (0, 1), got 1.5"),
        (lambda m, h: mtpp.predict(m, sequences=h, include_next="no"), "include_next must be True or False, got 'no'"),
    ],
)
def test_forecast_arguments_of_the_wrong_kind_are_one_line(ds, call, message):
    """generate(events=2.5) ended in "'float' object cannot be interpreted as an integer" inside range(),
    seed=None / 1.5 in torch's manual_seed, level="0.9" in a comparison, top_k=2.5 in torch.topk; a string
    include_next ("no") was read as True. Each is now an MtppError naming the argument, before any work."""
    from mtpp.errors import MtppError

    model = mtpp.build_model(TINY_MODEL, ds.num_marks)
    with pytest.raises(MtppError, match=re.escape(message)):
        call(model, ds.test[:2])


def test_numpy_integers_are_integers_and_big_values_are_shown_short(ds, tmp_path):
    """load_dataset(split=np.int64(1)) (a loop over np.arange(5)) was refused as not an integer; and a DataFrame
    or an array passed where a name or a count belongs was printed whole into the one-line error."""
    import numpy as np
    import pandas as pd

    from mtpp.errors import MtppError

    rows = [(f"s{i}", 0.5 * j + i / 100, j % 3) for i in range(20) for j in range(1, 5)]
    pd.DataFrame(rows, columns=["seq_id", "time", "mark"]).to_csv(tmp_path / "events.csv", index=False)
    one = mtpp.load_dataset(tmp_path / "events.csv", split=np.int64(1))  # auto-prepared into five splits
    assert one.split == 1 and type(one.split) is int
    g = mtpp.generate(mtpp.build_model(TINY_MODEL, ds.num_marks), ds.test[:2], events=np.int64(2),
                      samples=np.int32(2), seed=np.uint8(3))
    assert g.counts.tolist() == [2, 2, 2, 2]
    frame = pd.DataFrame({"seq_id": range(100), "time": 1.0, "mark": 0})
    calls = {
        "a DataFrame of shape (100, 3) (a table in memory: write it to a file": lambda: mtpp.load_dataset(frame),
        "got a ndarray of shape (1000,)": lambda: mtpp.build_model(TINY_MODEL, np.arange(1000)),
        "batch_size must be a positive integer (or None for the default), got a ndarray of shape (1000,)":
            lambda: mtpp.evaluate(mtpp.build_model(TINY_MODEL, 5), data=ds, batch_size=np.arange(1000)),
        "level must be a finite number in (0, 1), got a ndarray of shape (1000,)":
            lambda: mtpp.predict(mtpp.build_model(TINY_MODEL, 5), sequences=ds.test[:1], level=np.arange(1000)),
    }
    for message, call in calls.items():
        with pytest.raises(MtppError, match=re.escape(message)) as err:
            call()
        assert "\n" not in str(err.value) and len(str(err.value)) < 700


def test_device_of_a_model_is_checked_and_never_silently_ignored(ds, monkeypatch):
    """evaluate(model, device="bogus") failed deep in torch, device="cuda" without CUDA with torch's
    AssertionError, and a valid other device sent the batches away from the model; predict and generate ignored
    the argument. A model is computed where it is; another device is one ConfigError naming both."""
    import torch

    from mtpp.training import setup

    model = mtpp.build_model(TINY_MODEL, ds.num_marks)
    seqs = ds.test[:2]
    calls = {
        "evaluate": lambda d: mtpp.evaluate(model, data=seqs, device=d),
        "predict": lambda d: mtpp.predict(model, sequences=seqs, device=d),
        "generate": lambda d: mtpp.generate(model, seqs, events=1, device=d),
    }
    for name, call in calls.items():
        call("cpu"), call("auto"), call(None)  # where the model is
        with pytest.raises(ConfigError, match=re.escape(f"{name}(model, device=...): device 'bogus': invalid value")):
            call("bogus")
    monkeypatch.setattr(setup, "resolve_device", lambda name, tf32=False: torch.device("cuda", 0))
    for name, call in calls.items():
        with pytest.raises(ConfigError, match=re.escape(f"{name}(model, device=...): device 'cuda' but the model is "
                                                        "on cpu; move it first (model.to('cuda:0'))")):
            call("cuda")


def test_build_model_follows_the_default_dtype_as_documented(ds):
    """build_model's docstring said "float32" whatever torch's default dtype; the model follows the default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = mtpp.build_model(TINY_MODEL, ds.num_marks)
    finally:
        torch.set_default_dtype(previous)
    assert next(model.parameters()).dtype == torch.float64
    assert "torch's default dtype" in mtpp.build_model.__doc__


@pytest.mark.parametrize("decoder", ["lnm", "thp"])
def test_log_likelihood_of_each_sequence(ds, decoder):
    """``mtpp.log_likelihood``: one row per sequence in the order given, equal to the model's own per-sequence
    terms of that sequence alone (batching, sorting by length and padding change nothing), averaging to
    ``evaluate``'s ``nll_*_per_seq``, with the survival term of a window end, and in the data's units: at fixed
    weights, times ``c t`` (model time scale ``c`` times) give ``log_lik_time - |I| log c``."""
    import math

    from mtpp.data.batch import collate

    torch.manual_seed(0)
    model = mtpp.build_model({**TINY_MODEL, "decoder": decoder}, ds.num_marks).double()
    seqs = ds.test[:9] + [_seq([0.2, 0.9, 1.4], [0, 3, 1], window=2.5)]
    frame = mtpp.log_likelihood(model, seqs, batch_size=4)
    assert list(frame.columns) == ["sequence", "events", "scored_events", "log_lik_time", "log_lik_mark",
                                   "log_survival", "log_lik"]  # fmt: skip
    assert frame["sequence"].tolist() == list(range(len(seqs)))  # rows named as predict's, without a seq_id
    assert not np.signbit(frame["log_survival"].iloc[:9]).any()  # no window end: 0.0, not -0.0 in a written table
    assert frame["events"].tolist() == [len(s) for s in seqs]
    model.eval()
    with torch.no_grad():
        for i, s in enumerate(seqs):
            alone = model.nll(collate([s], dtype=torch.float64))
            assert frame.loc[i, "log_lik_time"] == pytest.approx(-alone.time_nll.item(), rel=1e-10, abs=1e-10)
            assert frame.loc[i, "log_lik_mark"] == pytest.approx(-alone.mark_nll.item(), rel=1e-10, abs=1e-10)
            assert frame.loc[i, "scored_events"] == int(alone.scored.sum())
    assert (frame["log_survival"].iloc[:9] == 0).all() and frame["log_survival"].iloc[9] < 0
    assert frame["log_lik"].tolist() == pytest.approx((frame["log_lik_time"] + frame["log_lik_mark"]).tolist())
    metrics = mtpp.evaluate(model, data=seqs[:9])
    assert -frame["log_lik_time"].iloc[:9].mean() == pytest.approx(metrics["nll_time_per_seq"], rel=1e-9)
    assert -frame["log_lik_mark"].iloc[:9].mean() == pytest.approx(metrics["nll_mark_per_seq"], rel=1e-9)
    # the data's units: the same sequences with times x c, under the same weights with the time scale x c
    c = 1e3
    scaled = [_seq(s.times * c, s.marks, None if s.window_end is None else s.window_end * c) for s in seqs]
    base_scale = model.time_scale
    model.time_scale = base_scale * c
    again = mtpp.log_likelihood(model, scaled)
    model.time_scale = base_scale
    shift = frame["scored_events"] * math.log(c)
    assert again["log_lik_time"].tolist() == pytest.approx((frame["log_lik_time"] - shift).tolist(), rel=1e-9)
    assert again["log_lik_mark"].tolist() == pytest.approx(frame["log_lik_mark"].tolist(), rel=1e-9, abs=1e-9)


def test_log_likelihood_refuses_bad_input_in_one_line(ds):
    from mtpp.errors import DataError, MtppError

    model = mtpp.build_model(TINY_MODEL, ds.num_marks)
    from dataclasses import replace

    named = [replace(_seq([0.1, 0.4], [0, 1]), name="user_7")]
    assert mtpp.log_likelihood(model, named)["seq_id"].tolist() == ["user_7"]
    for bad, message in (([_seq([0.5, 0.2], [0, 1])], "sequence 0: times out of order at event 1"),
                         ([_seq([0.5, 0.7], [0, 9])], "mark 9 at event 1 is out of range for the 5 marks"),
                         ([], "no sequence to score")):  # fmt: skip
        with pytest.raises(MtppError, match=message):
            mtpp.log_likelihood(model, bad)
    with pytest.raises(DataError, match="a dataset name or path"):
        mtpp.log_likelihood(model, "synthetic_hawkes")
    with pytest.raises(MtppError, match="expected a model"):
        mtpp.log_likelihood("runs/x", named)
    assert len(mtpp.log_likelihood(model, ds, split="val")) == len(ds.val)


def test_evaluate_of_sequences_that_score_no_event_is_refused(ds):
    """One-event sequences with ``first_event: skip`` score nothing: ``evaluate`` returned NaN metrics without a
    word; it says why in one line (``log_likelihood`` gives such a sequence its row, 0 events scored)."""
    from mtpp.errors import MtppError

    model = mtpp.build_model(TINY_MODEL, ds.num_marks)
    ones = [_seq([0.5], [1]), _seq([0.7], [2])]
    with pytest.raises(MtppError, match="2 sequence.s. of one event each and no scored event"):
        mtpp.evaluate(model, data=ones)
    assert mtpp.log_likelihood(model, ones)["scored_events"].tolist() == [0, 0]
    assert math.isfinite(mtpp.evaluate(model, data=ones + [_seq([0.1, 0.3], [0, 1])])["nll_per_event"])


def test_fit_calls_on_epoch_and_stops_when_it_says_so(ds, tmp_path):
    """``mtpp.fit(..., on_epoch=...)``: the callback gets each epoch's validation NLLs after its checkpoint;
    returning "stop" ends training there, the best state evaluated, ``stopped_by: on_epoch``."""
    seen = []

    def watch(epoch, val):
        seen.append((epoch, val["val_nll_per_seq"]))
        return "stop" if epoch == 2 else None

    model = mtpp.build_model(TINY_MODEL, ds.num_marks)
    config = {**QUICK, "train": {**QUICK["train"], "max_epochs": 5}}
    result = mtpp.fit(model, ds, tmp_path / "run", config=config, on_epoch=watch)
    assert [e for e, _ in seen] == [1, 2] and all(math.isfinite(v) for _, v in seen)
    assert result["train"]["epochs"] == 2 and result["train"]["stopped_by"] == "on_epoch"
    assert math.isfinite(result["test"]["nll_time_per_seq"]) and (tmp_path / "run" / "metrics.json").is_file()
    plain = mtpp.fit(mtpp.build_model(TINY_MODEL, ds.num_marks), ds, tmp_path / "plain", config=QUICK,
                     on_epoch=lambda e, v: None)
    assert plain["train"]["epochs"] == 2 and plain["train"]["stopped_by"] == "max_epochs"


def test_a_given_models_initial_weights_are_kept_and_reproduce_the_run(ds, tmp_path, capsys):
    """fit(model, data) trains weights that train.seed did not draw (the caller's stream built them), yet config.yaml
    said only ``seed: 0``: two runs from differently seeded models had identical config.yaml files and different
    results, and ``mtpp train RUN/config.yaml`` silently trained another model. Now the run keeps the weights it
    started from (``initial.pt``, named by ``run_info.initial_weights``), they reproduce the run exactly, and
    ``mtpp train`` of such a config.yaml says that it draws other weights."""
    from mtpp.cli import main

    runs = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = mtpp.build_model(TINY_MODEL, ds.num_marks)
        start = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        runs[seed] = mtpp.fit(model, ds, tmp_path / f"given{seed}", config=QUICK)
        info = yaml.safe_load((tmp_path / f"given{seed}" / "config.yaml").read_text())["run_info"]
        assert info["initial_weights"] == "initial.pt"
        kept = torch.load(tmp_path / f"given{seed}" / "initial.pt", weights_only=True)["model"]
        assert all(torch.equal(kept[k], v) for k, v in start.items())
    assert runs[0]["test"]["nll_per_seq"] != runs[1]["test"]["nll_per_seq"]  # the record must tell them apart

    again = mtpp.build_model(TINY_MODEL, ds.num_marks)  # from whatever stream: initial.pt decides
    again.load_state_dict(torch.load(tmp_path / "given1" / "initial.pt", weights_only=True)["model"])
    rerun = mtpp.fit(again, ds, tmp_path / "again", config=tmp_path / "given1" / "config.yaml")
    strip = lambda m: {s: {k: v for k, v in m[s].items() if "second" not in k} for s in ("val", "test")}  # noqa: E731
    assert strip(rerun) == strip(runs[1])

    # mtpp train of that config.yaml (the configuration route) draws its weights from train.seed: it says so, and
    # its own record says train.seed, with no initial.pt
    capsys.readouterr()
    assert main(["train", str(tmp_path / "given1" / "config.yaml"), "--out", str(tmp_path / "cli"), "-q",
                 "--set", "train.max_epochs=1"]) == 0
    info = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())["run_info"]
    assert info["initial_weights"] == "train.seed" and not (tmp_path / "cli" / "initial.pt").exists()
    err = capsys.readouterr().err
    assert "its initial weights were the model passed to fit(model, data)" in err and "initial.pt" in err


def test_a_given_model_killed_in_its_first_epoch_restarts_from_its_initial_weights(ds, tmp_path, monkeypatch):
    """``--resume`` of a run killed before its first checkpoint starts over; for a fit(model, data) run it started
    over from weights drawn from train.seed, another run than the one interrupted. It now starts from the run's
    initial.pt and ends exactly where the uninterrupted run ends."""
    from mtpp.training import checkpoint

    torch.manual_seed(7)
    thp = {**TINY_MODEL, "decoder": "thp", "integration": "mc", "integration_nodes": 4}  # training draws nodes
    model = mtpp.build_model(thp, ds.num_marks)
    twin = mtpp.build_model(thp, ds.num_marks)
    twin.load_state_dict(model.state_dict())
    full = mtpp.fit(model, ds, tmp_path / "full", config=QUICK)

    real = checkpoint.save_atomic

    def killed_in_epoch_1(state, path):
        if Path(path).name == checkpoint.CHECKPOINT:
            raise KeyboardInterrupt
        return real(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", killed_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        mtpp.fit(twin, ds, tmp_path / "cut", config=QUICK)
    monkeypatch.setattr(checkpoint, "save_atomic", real)
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()
    resumed = mtpp.fit(mtpp.load_config(tmp_path / "cut" / "config.yaml", ["logging.quiet=true"]), tmp_path / "cut",
                       resume=True)
    strip = lambda m: {s: {k: v for k, v in m[s].items() if "second" not in k} for s in ("val", "test")}  # noqa: E731
    assert strip(resumed) == strip(full)
    info = yaml.safe_load((tmp_path / "cut" / "config.yaml").read_text())["run_info"]
    assert info["initial_weights"] == "initial.pt" and (tmp_path / "cut" / "initial.pt").is_file()
