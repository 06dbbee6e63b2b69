"""The trainer and the run directory contract (DESIGN §5), on tiny models and a handful of synthetic sequences."""

from __future__ import annotations

import re
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from mtpp.cli import main
from mtpp.config import RunConfig, load_config
from mtpp.errors import MtppError
from mtpp.evaluation.evaluate import evaluate
from mtpp.models.mtpp import MarkedTPP
from mtpp.training.aggregators import AGGREGATORS
from mtpp.training.early_stopping import EarlyStopping
from mtpp.training.trainer import Trainer, fit

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"

TINY = [
    "data.max_sequences=12",
    "train.batch_size=4",
    "train.max_epochs=1",
    "model.hidden_size=8",
    "model.mark_embedding_size=4",
    "model.time_embedding_size=4",
    "model.decoder_hidden_size=8",
    "model.num_components=2",
    "model.integration_nodes=4",
    "logging.quiet=true",
    "logging.progress=false",
]
METRIC_KEYS = {
    "nll_time_per_seq", "nll_mark_per_seq", "nll_time_per_event", "nll_mark_per_event", "accuracy_forecast", "accuracy_given_time", "mrr_forecast",
    "pce", "ece_forecast", "conflict_rate", "train_events_per_second", "best_epoch", "num_parameters",
}  # fmt: skip
STEP_KEYS = {
    "epoch", "step", "loss_time", "loss_mark", "cos_tm", "cos_tm/encoder", "cos_tm/decoder", "gms",
    "norm_time", "norm_mark", "skipped",
}  # fmt: skip
TIMING = {"train_events_per_second", "train_seconds", "epoch_seconds", "validation_seconds", "wall_seconds"}


def tiny(*extra: str, decoder: str = "lnm") -> RunConfig:
    return load_config(None, [*TINY, f"model.decoder={decoder}", *extra])


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def without_timing(d: dict) -> dict:
    return {k: (without_timing(v) if isinstance(v, dict) else v) for k, v in d.items() if k not in TIMING}


# ------------------------------------------------------------------------------------------------ end to end


def test_quickstart_trains_both_variants_and_writes_the_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "quickstart"
    args = ["train", str(QUICKSTART), "--out", str(out)]
    for o in [*TINY, "logging.quiet=false", "model.eval_integration_nodes=4"]:
        args += ["--set", o]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "thp_base" in table and "thp_plusplus" in table and "L_M/seq" in table
    assert (out / "comparison.md").exists() and (out / "comparison.json").exists()
    for variant in ("thp_base", "thp_plusplus"):
        run = out / variant
        for name in ("config.yaml", "log.jsonl", "checkpoint.pt", "best.pt", "metrics.json"):
            assert (run / name).is_file(), f"{variant}: {name} missing"
        assert (run / "arrays_val.json").is_file() and (run / "arrays_test.json").is_file()
        resolved = yaml.safe_load((run / "config.yaml").read_text())
        assert resolved["model"]["parametrisation"] == variant.split("_")[1]
        assert {"mtpp_version", "git_revision", "seed", "device", "torch_version"} <= set(resolved["run_info"])
        metrics = json.loads((run / "metrics.json").read_text())
        for split in ("val", "test"):
            assert METRIC_KEYS <= set(metrics[split]), METRIC_KEYS - set(metrics[split])
        assert {"conflict_rate", "conflict_rate/encoder", "conflict_rate/decoder", "skipped_batches", "epochs",
                "best_epoch", "num_parameters", "first_event"} <= set(metrics["train"])  # fmt: skip
        assert metrics["train"]["stopped_by"] == ("max_epochs" if metrics["train"]["epochs"] == resolved["train"][
            "max_epochs"] else "early_stopping")
        log = read_log(run)
        steps = [r for r in log if r["kind"] == "step"]
        epochs = [r for r in log if r["kind"] == "epoch"]
        assert len(steps) == 3 and len(epochs) == 1  # 12 sequences / batch 4, log_every 1
        assert all(STEP_KEYS <= set(r) for r in steps)
        assert "val_nll_per_seq" in epochs[0] and "epoch_seconds" in epochs[0]
    base = json.loads((out / "thp_base" / "metrics.json").read_text())
    plusplus = json.loads((out / "thp_plusplus" / "metrics.json").read_text())
    assert base["test"]["conflict_rate"] is not None  # shared encoder + joint decoder: cos_tm defined
    assert plusplus["test"]["conflict_rate"] is None  # nothing shared: undefined, never 0
    assert all(r["cos_tm"] is None for r in read_log(out / "thp_plusplus") if r["kind"] == "step")

    # mtpp evaluate recomputes exactly what training reported
    again = evaluate(out / "thp_base", "test")
    assert again["nll_time_per_seq"] == base["test"]["nll_time_per_seq"]
    assert again["accuracy_forecast"] == base["test"]["accuracy_forecast"]
    assert json.loads((out / "thp_base" / "metrics.json").read_text())["test"] == again


def test_refuses_to_clobber_and_to_resume_nothing(tmp_path: Path) -> None:
    cfg = tiny()
    fit(cfg, tmp_path / "run")
    with pytest.raises(MtppError, match="--resume"):
        fit(cfg, tmp_path / "run")
    with pytest.raises(MtppError, match="nothing to resume"):
        fit(cfg, tmp_path / "other", resume=True)
    tensorboard = load_config(None, [*TINY, "model.decoder=lnm", "logging.tensorboard=true"])
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:  # optional dependency: a WARNING line (test_tracking), and the run goes on with log.jsonl only
        assert fit(tensorboard, tmp_path / "run", overwrite=True)["train"]["epochs"] == 1
    else:
        assert fit(tensorboard, tmp_path / "run", overwrite=True)["train"]["epochs"] == 1
        assert (tmp_path / "run" / "tensorboard").is_dir()


# ------------------------------------------------------------------------------------------------ aggregators


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_every_aggregator_trains_and_changes_parameters(tmp_path: Path, name: str) -> None:
    trainer = Trainer(tiny(f"gradients.aggregator={name}"), tmp_path, resume=False, data_dir=None, overwrite=False)
    try:
        before = params_of(trainer.model)
        trainer._train_epoch(1)
        after = params_of(trainer.model)
        shared = {id(p) for ps in trainer.model.shared_parameters().values() for p in ps}
        names = [n for n, p in trainer.model.named_parameters() if id(p) in shared]
        assert names, "base lnm shares its encoder"
        assert any(not torch.equal(before[n], after[n]) for n in names), f"{name}: shared parameters unchanged"
        assert all(torch.isfinite(v).all() for v in after.values())
        assert int(trainer.guard.skipped) == 0
    finally:
        trainer.close()


# ------------------------------------------------------------------------------------------------ resume


def test_resume_reaches_the_same_final_metrics_exactly(tmp_path: Path) -> None:
    extra = ("train.max_epochs=2", "gradients.aggregator=pcgrad", "model.dropout=0.1")
    full = fit(tiny(*extra, decoder="thp"), tmp_path / "full")

    fit(tiny(*extra, "train.max_epochs=1", decoder="thp"), tmp_path / "cut")  # "interrupted" after epoch 1
    resumed = fit(tiny(*extra, decoder="thp"), tmp_path / "cut", resume=True)

    assert without_timing(resumed) == without_timing(full)
    # the wall time spans both invocations: at least the training and validation of both epochs
    epochs = [r for r in read_log(tmp_path / "cut") if r["kind"] == "epoch"]
    assert len(epochs) == 2
    assert resumed["train"]["wall_seconds"] >= sum(r["epoch_seconds"] + r["validation_seconds"] for r in epochs)
    assert resumed["train"]["wall_seconds"] >= resumed["train"]["train_seconds"] > 0
    log_full = [without_timing(r) for r in read_log(tmp_path / "full")]
    log_cut = [without_timing(r) for r in read_log(tmp_path / "cut")]
    assert log_cut == log_full


def test_a_kill_while_saving_a_checkpoint_loses_no_epoch_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while epoch 2's checkpoint is written: the log has epoch 2's line (written first), the resume drops
    it with the epoch it retrains, and the finished run's log has every epoch's line once, as the uninterrupted
    run's (the result record reads the validation NLL of the best epoch and after it from these lines)."""
    from mtpp.training import checkpoint

    extra = ("train.max_epochs=3", "train.patience=10")
    full = fit(tiny(*extra), tmp_path / "full")
    real = checkpoint.save_atomic

    def killed_at_epoch_2(state, path):
        if Path(path).name == checkpoint.CHECKPOINT and state.get("epoch") == 2:  # not best.pt
            raise KeyboardInterrupt
        return real(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(*extra), tmp_path / "cut")
    assert [r["epoch"] for r in read_log(tmp_path / "cut") if r["kind"] == "epoch"] == [1, 2]
    monkeypatch.setattr(checkpoint, "save_atomic", real)
    resumed = fit(tiny(*extra), tmp_path / "cut", resume=True)
    assert [r["epoch"] for r in read_log(tmp_path / "cut") if r["kind"] == "epoch"] == [1, 2, 3]
    assert without_timing(resumed) == without_timing(full)


def test_resume_refuses_a_checkpoint_trained_in_another_time_scale(tmp_path: Path) -> None:
    """The checkpoint restores its own unit of time with its weights: when ``data.time_scale`` resolves to another
    one now (the rule for ``auto`` changed, as it did from the mean to the median gap), continuing it would finish
    the run in a unit its config no longer gives. One refusal naming both scales, before anything is rewritten."""
    run = tmp_path / "run"
    fit(tiny(), run)
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    scale = state["model"]["_extra_state"]["time_scale"]
    state["model"]["_extra_state"]["time_scale"] = 580.0 * scale
    torch.save(state, run / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "train.log"}
    with pytest.raises(MtppError, match=rf"checkpoint.pt was trained in model units of {580 * scale:.6g} data units, "
                                        rf"but data.time_scale=auto resolves to {scale:.6g} now .*afresh"):
        fit(tiny("train.max_epochs=2"), run, resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "train.log"} == before
    state["model"]["_extra_state"]["time_scale"] = scale  # the same unit resumes
    torch.save(state, run / "checkpoint.pt")
    assert fit(tiny("train.max_epochs=2"), run, resume=True)["train"]["epochs"] == 2


def test_resume_rejects_a_different_model(tmp_path: Path) -> None:
    fit(tiny(), tmp_path / "run")
    with pytest.raises(MtppError, match="model.hidden_size"):
        fit(tiny("model.hidden_size=16", "train.max_epochs=2"), tmp_path / "run", resume=True)


def test_resume_applies_a_new_rate_and_refuses_what_the_checkpoint_cannot_follow(tmp_path: Path, capsys) -> None:
    """A new train.lr trains at the new rate (the restored Adam state used to keep the old one while config.yaml
    said otherwise); another optimiser, schedule or aggregator is one clear refusal before anything is written."""
    run = tmp_path / "run"
    fit(tiny(), run)
    stored = (run / "config.yaml").read_text()
    for change, named in (("train.optimizer=sgd", "train.optimizer: 'adam' -> 'sgd'"),
                          ("train.lr_schedule=cosine", "train.lr_schedule"),
                          ("gradients.aggregator=pcgrad", "gradients.aggregator")):  # fmt: skip
        with pytest.raises(MtppError, match=re.escape(named)):
            fit(tiny(change, "train.max_epochs=2"), run, resume=True)
        assert (run / "config.yaml").read_text() == stored
    fit(tiny("train.lr=0.05", "train.max_epochs=2"), run, resume=True)
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert {g["lr"] for g in state["optimizer"]["param_groups"]} == {0.05}
    # config.yaml now says the new values: the earlier epochs' settings stay on record, with the epoch of the change
    info = yaml.safe_load((run / "config.yaml").read_text())
    lr0 = yaml.safe_load(stored)["train"]["lr"]
    assert info["train"]["lr"] == 0.05
    assert info["run_info"]["resumed"] == [{"epoch": 1, "changed": {"train.lr": [lr0, 0.05],
                                                                    "train.max_epochs": [1, 2]}}]
    fit(tiny("train.lr=0.05", "train.max_epochs=3", "logging.quiet=false"), run, resume=True)
    assert capsys.readouterr().err.count("--resume from epoch 2: train.max_epochs 2 -> 3") == 1
    resumed = yaml.safe_load((run / "config.yaml").read_text())["run_info"]["resumed"]
    assert resumed[1:] == [{"epoch": 2, "changed": {"train.max_epochs": [2, 3]}}] and len(resumed) == 2
    # a finished run with nothing left to train: a changed setting is said to be unapplied, nothing is rewritten
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    fit(tiny("train.lr=0.01", "train.max_epochs=3", "logging.quiet=false"), run, resume=True)
    err = capsys.readouterr().err
    assert "already finished (epoch 3, train.max_epochs 3)" in err
    assert "not applied, nothing trained with them (config.yaml unchanged): train.lr 0.05 -> 0.01" in err
    assert "--resume from epoch" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "train.log"} == {
        k: v for k, v in before.items() if k != "train.log"}


def test_resume_and_overwrite_together_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit(tiny(), run)
    stored = (run / "metrics.json").read_text()
    with pytest.raises(MtppError, match="--resume and --overwrite contradict each other"):
        fit(tiny("train.max_epochs=2"), run, resume=True, overwrite=True)
    assert main(["train", "--out", str(run), "--resume", "--overwrite"]) == 2
    assert (run / "metrics.json").read_text() == stored


# ------------------------------------------------------------------------------------------------ guard


def _optimizer_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v.clone() for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]


def _tensor_state(state: object) -> str:
    """The tensors of a (nested) state dict as JSON; python scalars left out."""

    def tensors(x: object) -> object:
        if isinstance(x, torch.Tensor):
            return x.tolist()
        if isinstance(x, dict):
            return {k: tensors(v) for k, v in x.items() if not isinstance(v, (int, float))}
        if isinstance(x, (list, tuple)):
            return [tensors(v) for v in x]
        return None

    out = json.dumps(tensors(state))
    assert "[" in out, "metabalance keeps moving averages of gradient norms"
    return out


@pytest.mark.parametrize("mode", ["sync", "masked"])
@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_non_finite_batch_is_skipped_and_changes_nothing(tmp_path: Path, mode: str, poison: str) -> None:
    trainer = Trainer(tiny("gradients.aggregator=metabalance"), tmp_path, resume=False, data_dir=None,
                      overwrite=False)  # fmt: skip
    trainer.guard.mode = mode
    try:
        batches = list(trainer.loader)
        trainer._train_step(1, batches[0])  # a normal step first: Adam state exists
        params, state = params_of(trainer.model), _optimizer_tensors(trainer.optimizer)
        agg_state = _tensor_state(trainer.aggregator.state_dict())

        if poison == "loss":
            nll = trainer._nll
            trainer._nll = lambda b: dataclasses.replace(nll(b), time_nll=nll(b).time_nll * math.nan)
            trainer._train_step(1, batches[1])
            trainer._nll = nll
        else:  # finite loss, infinite gradient in one parameter
            p = next(trainer.model.parameters())
            handle = p.register_hook(lambda g: g * math.inf)
            trainer._train_step(1, batches[1])
            handle.remove()

        assert int(trainer.guard.skipped) == 1
        after = params_of(trainer.model)
        assert all(torch.equal(params[k], after[k]) for k in params), "a skipped step changed parameters"
        assert all(torch.equal(a, b) for a, b in zip(state, _optimizer_tensors(trainer.optimizer)))
        # (in masked mode only tensor state can be restored without a host sync: python counters advance)
        assert _tensor_state(trainer.aggregator.state_dict()) == agg_state

        trainer._train_step(1, batches[2])  # training goes on
        assert int(trainer.guard.skipped) == 1 and int(trainer.guard.consecutive) == 0
        assert all(torch.isfinite(v).all() for v in params_of(trainer.model).values())
        records = trainer.records.flush()
        assert [r["skipped"] for r in records] == [0.0, 1.0, 0.0]
    finally:
        trainer.close()


def test_too_many_consecutive_skips_stop_with_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nll = MarkedTPP.nll

    def poisoned(self, batch):  # type: ignore[no-untyped-def]
        out = nll(self, batch)
        return dataclasses.replace(out, mark_nll=out.mark_nll + math.inf)

    monkeypatch.setattr(MarkedTPP, "nll", poisoned)
    with pytest.raises(MtppError, match="consecutive"):
        fit(tiny("train.max_consecutive_skips=2"), tmp_path / "run")


# ------------------------------------------------------------------------------------------------ early stopping


def test_separate_early_stopping_freezes_each_group_and_combines_best_states() -> None:
    model = torch.nn.ModuleDict({"time": torch.nn.Linear(2, 2), "mark": torch.nn.Linear(2, 2)})
    groups = {"time": list(model["time"].parameters()), "mark": list(model["mark"].parameters())}
    es = EarlyStopping(model, patience=1, min_delta=0.0, separate=True, groups=groups)
    assert es.step(1, 10.0, 10.0, model) == (["time", "mark"], [])
    mark_best = model["mark"].weight.detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    improved, frozen = es.step(2, 9.0, 11.0, model)  # time improves, mark does not
    assert improved == ["time"] and frozen == ["mark"] and not es.done
    time_best = model["time"].weight.detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert es.step(3, 9.5, 12.0, model) == ([], ["time"]) and es.done
    best = es.best_model_state(model)
    assert torch.equal(best["time.weight"], time_best) and torch.equal(best["mark.weight"], mark_best)
    assert es.best_epochs() == {"time": 2, "mark": 1}


def test_separate_early_stopping_in_training(tmp_path: Path) -> None:
    # a relative tolerance of 90%: epoch 1 improves on infinity, epoch 2 cannot -> both groups freeze
    cfg = tiny("model.parametrisation=plusplus", "train.separate_early_stopping=true", "train.patience=1",
               "train.min_delta=0.9", "train.max_epochs=5")  # fmt: skip
    trainer = Trainer(cfg, tmp_path, resume=False, data_dir=None, overwrite=False)
    try:
        metrics = trainer.run()
        task = trainer.model.task_parameters()
        assert all(not p.requires_grad for ps in task.values() for p in ps)
    finally:
        trainer.close()
    assert metrics["train"]["epochs"] == 2 and metrics["train"]["stopped_by"] == "early_stopping"
    assert metrics["train"]["best_epoch/time"] == 1 and metrics["train"]["best_epoch/mark"] == 1
    assert metrics["test"]["conflict_rate"] is None
    epochs = [r for r in read_log(tmp_path) if r["kind"] == "epoch"]
    assert epochs[-1]["frozen"] == ["time", "mark"]
    best = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert best.keys() == ckpt["model"].keys()
    for k, v in ckpt["model"].items():  # frozen groups hold their best; the extra state (time scale) is a dict
        assert torch.equal(best[k], v) if isinstance(v, torch.Tensor) else best[k] == v, k


def test_every_command_on_a_run_computes_with_its_train_threads(tmp_path: Path, monkeypatch) -> None:
    """evaluate / predict / generate / plot / horizon compute with the run's train.threads, not one thread per core
    (a second process on a busy core collapses otherwise), and leave the caller's count as it was (an API user's
    process is not changed by loading a run)."""
    from mtpp.evaluation import evaluate as ev
    from mtpp.forecast import predict as pr
    from mtpp.forecast.runs import load_run

    run = tmp_path / "run"
    fit(tiny("train.threads=1"), run)
    seen = []
    real = ev._evaluate_run
    monkeypatch.setattr(ev, "_evaluate_run", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        evaluate(run, "val", write=False)
        assert seen == [1] and torch.get_num_threads() == 2
        loaded = load_run(run)
        assert torch.get_num_threads() == 2  # loading does not change the caller's count
        with loaded.threads():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        real_frame = pr.predict_frame
        monkeypatch.setattr(pr, "predict_frame", lambda *a, **k: seen.append(torch.get_num_threads()) or
                            real_frame(*a, **k))
        pr.predict(run, "val")
        assert seen == [1, 1] and torch.get_num_threads() == 2
        from mtpp.forecast import generate as gen, plot as fplot

        for module, name in ((gen, "generate"), (fplot, "plot_forecast")):
            real_fn = getattr(module, name)
            monkeypatch.setattr(module, name, lambda *a, _f=real_fn, **k: seen.append(torch.get_num_threads()) or
                                _f(*a, **k))
        assert main(["generate", str(run), "--events", "2", "--out", str(tmp_path / "g.csv")]) == 0
        assert main(["plot", str(run), "--sequence", "0", "--samples", "2", "--out", str(tmp_path / "p.png")]) == 0
        assert len(seen) >= 4 and set(seen) == {1} and torch.get_num_threads() == 2  # plot samples via generate
        from mtpp.forecast import horizon as hz

        real_h = hz.evaluate_horizon
        monkeypatch.setattr(hz, "evaluate_horizon", lambda *a, **k: seen.append(torch.get_num_threads()) or
                            real_h(*a, **k))
        n = len(seen)
        hz.evaluate_run_horizon(run, "val", 0.5, samples=2, max_points=2, write=False, baselines=False)
        assert len(seen) > n and set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_progress_bar_names_the_units_of_its_losses(tmp_path: Path, capsys, monkeypatch) -> None:
    """On a terminal the bar shows the losses with their units; on a redirected stderr (a log file, a pipe) there
    is no bar, so no carriage-return redraws."""
    import mtpp.training.logging as run_logging

    fit(tiny("logging.progress=true", "logging.quiet=false"), tmp_path / "piped")  # capsys: not a terminal
    err = capsys.readouterr().err
    assert "\r" not in err and "nats/seq=" not in err and "epoch   1/" in err
    monkeypatch.setattr(run_logging, "bar_disable", lambda: False)  # as on a terminal
    fit(tiny("logging.progress=true", "logging.quiet=false"), tmp_path / "run")
    err = capsys.readouterr().err
    assert "L_T nats/seq=" in err and "L_M nats/seq=" in err and "L_T=" not in err


@pytest.mark.parametrize("rule", ["gauss_legendre", "adaptive"])
def test_the_run_warns_when_it_validates_with_a_non_normalised_compensator(
    tmp_path: Path, capsys: pytest.CaptureFixture, rule: str
) -> None:
    """A THP run that validates (chooses best.pt) and reports with fixed Gauss-Legendre nodes says so before it
    trains, with the fix, and ``mtpp evaluate`` of the run says it again; the normalised default says nothing
    (mtpp.models.time_decoders.evaluation_rule_warning)."""
    fit(tiny(f"model.eval_integration={rule}", "model.eval_integration_nodes=5", decoder="thp"), tmp_path / "run")
    err = capsys.readouterr().err
    named = "warning: model.eval_integration=gauss_legendre (5 nodes) is not normalised"
    assert (named in err) == (rule == "gauss_legendre"), err
    assert ("model.eval_integration=adaptive" in err) == (rule == "gauss_legendre")
    assert main(["evaluate", str(tmp_path / "run")]) == 0  # re-evaluating the run says it again
    assert (named in capsys.readouterr().err) == (rule == "gauss_legendre")


def test_a_null_conflict_rate_says_why_and_a_rate_says_what_it_is_over(tmp_path: Path) -> None:
    """``gradients.log_every`` larger than the steps trained left a "+" run (its encoder is shared) with
    ``conflict rate n/a``, the same words as "++"; with ``log_every: 3`` the rate is over every third step. The
    summary now counts the measured steps and the shared parameters, and the last lines say which case it is."""
    from mtpp.training.trainer import conflict_text

    rare = fit(tiny("model.parametrisation=plus", "gradients.log_every=100000"), tmp_path / "rare")["train"]
    assert rare["conflict_rate"] is None and rare["conflict_rate_steps"] == 0 and rare["shared_parameters"] > 0
    assert conflict_text(rare).startswith("n/a (no step measured of ")
    assert "n/a (no step measured" in (tmp_path / "rare" / "train.log").read_text()
    pp = fit(tiny("model.parametrisation=plusplus"), tmp_path / "pp")["train"]
    assert pp["shared_parameters"] == 0 and conflict_text(pp) == "n/a (nothing shared: no parameter gets both gradients)"
    every3 = fit(tiny("model.parametrisation=plus", "gradients.log_every=3"), tmp_path / "every3")["train"]
    measured = [r for r in read_log(tmp_path / "every3") if r.get("kind") == "step" and r.get("cos_tm") is not None]
    assert every3["conflict_rate_steps"] == len(measured) == every3["steps"] // 3
    assert every3["conflict_rate"] == pytest.approx(sum(r["cos_tm"] < 0 for r in measured) / len(measured))
    n = len(measured)
    assert conflict_text(every3) == (f"{every3['conflict_rate']:.4g} (over {n} measured step{'s' * (n != 1)} of "
                                     f"{every3['steps']} steps)")
    assert conflict_text({"conflict_rate": 0.25}) == "0.25"  # metrics.json of runs before the count existed


def test_comparison_table_caption_gives_units_calibration_and_the_scored_events() -> None:
    """The variants table (``comparison.md``) says what a reader needs to read it: NLL in nats and the data's time
    unit, what the mark columns condition on, what PCE and ECE score (unitless), and the first-event rule."""
    from mtpp.training.trainer import comparison_table, final_summary

    run = {"test": {"nll_time_per_seq": 9.0, "nll_mark_per_seq": 100.0, "pce": 0.02, "ece_forecast": 0.01,
                    "first_event": "skip"},
           "val": {}, "train": {"conflict_rate": 0.5, "best_epoch": 2, "epochs": 2, "num_parameters": 10}}
    caption = comparison_table({"a": run, "b": run}, "hour").splitlines()[-1]
    for words in ("nats", "times in hours", "p(k | tau_obs, H)", "p(k | H)",
                  "PCE: calibration of the time distribution (its PIT)", "ECE forecast: of p(k | H), both unitless",
                  "first event of each sequence not scored"):
        assert words in caption, words
    other = {**run, "test": {**run["test"], "first_event": "include"}}
    assert "as each run's model.first_event says" in comparison_table({"a": run, "b": other}).splitlines()[-1]
    assert "times in data units" in comparison_table({"a": run}).splitlines()[-1]
    assert "PCE: calibration of the time distribution (its PIT)" in final_summary(Path("run"), run).splitlines()[-1]


def test_resume_records_the_environment_that_trained_the_epochs_before_it(tmp_path: Path, monkeypatch, capsys) -> None:
    """config.yaml's run_info is rewritten by every --resume: a run trained at one git revision (or torch, numpy,
    Python version, CPU instruction set, device, world size) and resumed at another said only the second, so a
    result could not be traced to the code that computed its first epochs. The record now names every library and
    platform that changes results, and a resume that finds one changed keeps the old and new value with the epoch,
    beside the settings it changed (run_info.resumed)."""
    from mtpp.training import trainer

    run = tmp_path / "run"
    fit(tiny(), run)
    first = yaml.safe_load((run / "config.yaml").read_text())["run_info"]

    monkeypatch.setattr(trainer, "git_revision", lambda: "0123456789ab-dirty")
    fit(tiny("train.max_epochs=2", "logging.quiet=false"), run, resume=True)
    assert "--resume from epoch 1: train.max_epochs 1 -> 2, git_revision" in capsys.readouterr().err
    info = yaml.safe_load((run / "config.yaml").read_text())["run_info"]
    assert info["git_revision"] == "0123456789ab-dirty"
    assert info["resumed"] == [{"epoch": 1, "changed": {"train.max_epochs": [1, 2]},
                                "environment": {"git_revision": [first["git_revision"], "0123456789ab-dirty"]}}]
    # an environment change alone (no setting changed) is its own entry: a run killed in epoch 2, resumed elsewhere
    from mtpp.training import checkpoint

    real = checkpoint.save_atomic

    def killed_at_epoch_2(state, path):
        if Path(path).name == checkpoint.CHECKPOINT and state.get("epoch") == 2:
            raise KeyboardInterrupt
        return real(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny("train.max_epochs=2"), tmp_path / "cut")
    monkeypatch.setattr(checkpoint, "save_atomic", real)
    monkeypatch.setattr(trainer, "git_revision", lambda: "fedcba987654")
    fit(tiny("train.max_epochs=2"), tmp_path / "cut", resume=True)
    info = yaml.safe_load((tmp_path / "cut" / "config.yaml").read_text())["run_info"]
    assert info["resumed"] == [{"epoch": 1, "environment": {"git_revision": ["0123456789ab-dirty", "fedcba987654"]}}]
    assert {"numpy_version", "python_version", "cpu_capability"} <= set(first) and first["cpu_capability"]
    assert set(trainer.ENVIRONMENT_KEYS) <= set(first)
    from mtpp.training.tracking import resume_tags  # what an MLflow run is tagged with

    assert resume_tags({"run_info": info})["resume_1/run_info.git_revision"] == "fedcba987654"


def test_training_a_record_whose_settings_a_resume_changed_says_it_is_another_run(tmp_path: Path, capsys) -> None:
    """config.yaml keeps the settings of a run's last --resume (train.lr 0.05 after epoch 1) and lists the earlier
    ones under run_info.resumed; ``mtpp train RUN/config.yaml`` trained with the last ones from the first epoch,
    silently another run. It now says so; a run only extended (a longer train.max_epochs) is one it reproduces, and
    stays quiet."""
    run = tmp_path / "run"
    fit(tiny(), run)
    fit(tiny("train.max_epochs=2"), run, resume=True)  # extended only
    capsys.readouterr()
    assert main(["train", str(run / "config.yaml"), "--out", str(tmp_path / "again"), "-q"]) == 0
    assert "warning" not in capsys.readouterr().err
    fit(tiny("train.max_epochs=3", "train.lr=0.05"), run, resume=True)
    lr0 = tiny().train.lr
    capsys.readouterr()
    assert main(["train", str(run / "config.yaml"), "--out", str(tmp_path / "other"), "-q",
                 "--set", "train.max_epochs=1"]) == 0
    err = capsys.readouterr().err
    assert "is the record of a run that training it again does not reproduce" in err
    assert f"train.lr {lr0!r} -> 0.05 after epoch 2" in err and "train.max_epochs" not in err


def test_runs_record_the_hardware_model_they_ran_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys) -> None:  # fmt: skip
    """``run_info.device_name`` says what a run's timings were measured on: the CPU's model name from
    ``/proc/cpuinfo`` (not ``platform.processor()``, empty on Linux), shown in the run header too; where no model
    name can be read, the architecture, never an empty string."""
    import builtins
    import platform

    from mtpp.training import trainer

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n")
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if str(path) == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    assert trainer.device_name("cpu") == "AMD EPYC 7B13 64-Core Processor"
    run = tmp_path / "run"
    fit(tiny("logging.quiet=false"), run)
    assert "device  cpu (AMD EPYC 7B13 64-Core Processor), 1 thread(s)" in capsys.readouterr().err
    info = yaml.safe_load((run / "config.yaml").read_text())["run_info"]
    assert info["device_name"] == "AMD EPYC 7B13 64-Core Processor"

    def no_cpuinfo(path, *args, **kwargs):
        if str(path) == "/proc/cpuinfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    monkeypatch.setattr(trainer.sys, "platform", "linux")
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert trainer.device_name("cpu") == platform.machine() != ""
