#!/usr/bin/env python
"""Side-by-side run of mtpp against EasyTPP (THP, SAHP, RMTPP, log-normal mixture) on the Taxi data.

Optional, not part of the test suite, and mtpp does not depend on EasyTPP. Run it with a Python that has both
packages, e.g. a venv with system site-packages and ``pip install easy-tpp``::

    /tmp/etpp-venv/bin/python scripts/compare_easytpp.py --out benchmarks/easytpp_taxi.json
    /tmp/etpp-venv/bin/python scripts/compare_easytpp.py --models thp --profile      # + profiler tables

What is compared (see ``scripts/README.md`` for the hyper-parameter mapping and conventions):

* **Models** at equal sizes (``--hidden-size``, 1 layer, 2 heads, ``--nodes`` integration nodes, ``--components``
  mixture components): EasyTPP ``THP`` vs mtpp ``thp`` encoder + ``thp`` decoder (base); ``SAHP`` vs
  ``sahp`` + ``sahp``; ``RMTPP`` vs ``gru`` + ``rmtpp`` (``rmtpp``) and ``rnn`` + ``rmtpp`` (``rmtpp_rnn``, the
  same recurrent cell as EasyTPP's); ``IntensityFree`` vs ``gru`` + ``lnm``.
* **Data**: the same Taxi JSON files (``train/valid/test.json``, gunzipped into a temporary folder outside the
  repository when only ``.json.gz`` is staged). EasyTPP batches come from its own ``TPPDataset`` +
  ``EventTokenizer`` / ``TPPDataCollator`` (right padding, ``[B, L, L]`` attention masks), mtpp batches from
  ``mtpp.data.catalog.load_dataset`` + ``mtpp.data.batch.collate``. Both libraries get **the same sequences in
  the same batches, in the same order** (seeded permutation per epoch, ``--batch-size``).
* **Training events per second**: collation is done up front and not timed for either library (as in
  ``mtpp bench``). One step is, for EasyTPP, exactly ``ModelWrapper.run_batch`` in the TRAIN phase
  (``loss, n = model.loglike_loss(**batch)``, ``zero_grad``, ``(loss / n).backward()``, ``opt.step()``,
  ``loss.item()``); for mtpp, ``mtpp.bench.train_step`` (the trainer's plain step: ``nll``, ``L_T``/``L_M``
  batch means, ``backward_step`` with the ``sum`` aggregator, gradient norm, non-finite guard,
  ``optimizer.step()``). Adam, ``--lr``, float32, ``torch.set_num_threads(--threads)`` (several values: one
  measurement per value, the first is the headline). After ``--warmup``
  untimed steps per library, ``--rounds`` rounds alternate ``--steps`` timed steps of mtpp and of EasyTPP over
  the same cycled list of batches (alternating spreads a shared machine's load over both); the figure is the
  median over rounds of ``real events / seconds``, where real events = every non-padded event of the batch (the
  first event of each sequence included, the same count for both libraries). The speed-up is the median over
  rounds of the per-round ratio (robust to the machine's speed drifting during the run). Both libraries run in
  this process under the same allocator settings: mtpp's glibc ``malloc`` tuning (``mtpp.allocator``) unless
  ``--no-malloc-tuning``.
* **Test log-likelihood per event**: fresh models (``torch.manual_seed(--seed)``), ``--epochs`` epochs over the
  same batches for both (``--ll-threads`` threads: wall time only), no early stopping, then the test split.
  Convention (identical for both): the sum over test sequences of
  ``log lambda_{k_i}(t_i) - int_{t_{i-1}}^{t_i} lambda(s) ds`` over events ``i >= 2`` (the
  first event of each sequence is conditioned on, not scored; its time is 0 on Taxi), no survival term after the
  last event (the window ends at the last event), divided by the number of scored events. Reported twice for
  EasyTPP: ``native`` (its own 20-node rule, ``linspace(0, 1, N)`` nodes with equal weights 1/N, both ends
  included: deterministic and biased) and ``accurate`` (trapezoid on ``--eval-nodes`` nodes); for mtpp
  ``native`` (its training rule: Monte Carlo with fresh uniform nodes) and ``accurate`` (Gauss-Legendre on
  ``--eval-nodes`` nodes). RMTPP (mtpp) and both LNMs have closed-form likelihoods (native = accurate).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
try:  # a venv without the editable install: use the checkout
    import mtpp  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(ROOT))
    import mtpp  # noqa: F401

import numpy as np
import torch

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "easytpp_taxi"
SPLITS = ("train", "valid", "test")

#: our name -> (EasyTPP model_id, mtpp encoder, mtpp decoder)
MODELS: dict[str, tuple[str, str, str]] = {
    "thp": ("THP", "thp", "thp"),
    "sahp": ("SAHP", "sahp", "sahp"),
    "rmtpp": ("RMTPP", "gru", "rmtpp"),
    "rmtpp_rnn": ("RMTPP", "rnn", "rmtpp"),  # like for like: EasyTPP's RMTPP runs a vanilla tanh RNN
    "lnm": ("IntensityFree", "gru", "lnm"),
}
#: models whose compensator is a numerical integral in each library
QUADRATURE = {"mtpp": {"thp", "sahp"}, "easytpp": {"thp", "sahp", "rmtpp", "rmtpp_rnn"}}


# ============================================================================================== data


def stage_json(data_dir: Path, tmp: Path) -> Path:
    """A folder with plain ``train/valid/test.json``: ``data_dir`` itself, or gunzipped copies under ``tmp``."""
    if all((data_dir / f"{s}.json").is_file() for s in SPLITS):
        return data_dir
    out = tmp / "easytpp_taxi_json"
    out.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        src = data_dir / f"{s}.json.gz"
        if not src.is_file():
            raise SystemExit(f"{data_dir}: neither {s}.json nor {s}.json.gz")
        with gzip.open(src, "rb") as f, open(out / f"{s}.json", "wb") as g:
            shutil.copyfileobj(f, g)
    return out


def easytpp_inputs(json_path: Path) -> dict[str, list]:
    """The dict ``TPPDataLoader._build_input_from_json`` builds (same keys, same fields of the records)."""
    records = json.loads(json_path.read_text())
    return {
        "time_seqs": [r["time_since_start"] for r in records],
        "type_seqs": [r["type_event"] for r in records],
        "time_delta_seqs": [r["time_since_last_event"] for r in records],
    }


class Data:
    """Both libraries' view of the same three files, index-aligned."""

    def __init__(self, json_dir: Path) -> None:
        from easy_tpp.config_factory.data_config import DataSpecConfig
        from easy_tpp.preprocess.data_collator import TPPDataCollator
        from easy_tpp.preprocess.dataset import TPPDataset
        from easy_tpp.preprocess.event_tokenizer import EventTokenizer
        from mtpp.data.catalog import load_dataset

        ds = load_dataset(str(json_dir))
        self.num_marks = int(ds.num_marks)
        self.mtpp = {"train": ds.train, "valid": ds.val, "test": ds.test}
        self.easytpp = {}
        for s in SPLITS:
            inputs = easytpp_inputs(json_dir / f"{s}.json")
            # the two readers must agree sequence by sequence, or the batches would differ
            seqs = self.mtpp[s]
            if len(seqs) != len(inputs["time_seqs"]) or not all(
                np.allclose(q.times, t) and np.array_equal(q.marks, k)
                for q, t, k in zip(seqs, inputs["time_seqs"], inputs["type_seqs"])
            ):
                raise SystemExit(f"{s}: mtpp and EasyTPP read different sequences")
            self.easytpp[s] = TPPDataset(inputs)
        spec = DataSpecConfig(num_event_types=self.num_marks, pad_token_id=self.num_marks, padding_side="right",
                              truncation_side="right", padding_strategy="longest", max_len=None)
        self.collator = TPPDataCollator(tokenizer=EventTokenizer(spec), return_tensors="pt", padding=True,
                                        truncation=False)
        self.train_events = sum(len(q) for q in self.mtpp["train"])
        self.dt_stats = self.easytpp["train"].get_dt_stats()  # EasyTPP's runner feeds these to IntensityFree

    def batches(self, split: str, index_lists: list[np.ndarray]) -> tuple[list, list, list[int]]:
        """``(mtpp batches, EasyTPP batches, real events per batch)`` of the same sequences."""
        from mtpp.data.batch import collate

        seqs, eds = self.mtpp[split], self.easytpp[split]
        m = [collate([seqs[i] for i in idx]) for idx in index_lists]
        e = [dict(self.collator([eds[int(i)] for i in idx])) for idx in index_lists]
        n = [int(b.lengths.sum()) for b in m]
        for b, eb, k in zip(m, e, n):
            assert int(eb["seq_non_pad_mask"].sum()) == k
        return m, e, n


def epoch_indices(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[np.ndarray]:
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


# ============================================================================================== models


def easytpp_model(name: str, args: argparse.Namespace, data: Data) -> torch.nn.Module:
    from easy_tpp.config_factory.model_config import ModelConfig as EModelConfig
    from easy_tpp.model.basemodel import BaseModel

    model_id = MODELS[name][0]
    cfg = EModelConfig(
        model_id=model_id,
        hidden_size=args.hidden_size,
        time_emb_size=16,  # stored by THP / SAHP, not used by their layers
        num_layers=args.layers,
        num_heads=args.heads,
        loss_integral_num_sample_per_step=args.nodes,
        use_mc_samples=True,  # EasyTPP's default: mean over linspace(0, 1, N) nodes
        dropout_rate=0.0,
        use_ln=False,
        thinning=None,  # no event sampler: prediction is not benchmarked
        num_event_types=data.num_marks,
        num_event_types_pad=data.num_marks + 1,
        event_pad_index=data.num_marks,
        gpu=-1,
        model_specs={"num_mix_components": args.components},
        training=True,
    )
    if model_id == "IntensityFree":  # as easy_tpp.runner.base_runner does before building the model
        # Checked against easy-tpp 0.3.0 (issue 10 of mtpp; EasyTPP issue 84 reported raw inter-event-time
        # statistics here in older releases): TPPDataset.get_dt_stats() now returns the mean and std of
        # log(clip(dt, 1e-5)) over the training gaps (first gap and padding excluded), i.e. LOG-gap statistics,
        # exactly what IntensityFree's AffineTransform(loc=mean_log, scale=std_log) expects. So the baseline is
        # fed what its own runner feeds it, and it is the fair one.
        mean_log, std_log = data.dt_stats[0], data.dt_stats[1]
        cfg.set("mean_log_inter_time", float(mean_log))
        cfg.set("std_log_inter_time", float(std_log))
    return BaseModel.generate_model_from_config(cfg)


def mtpp_run_config(name: str, args: argparse.Namespace) -> Any:
    from mtpp.config import load_config

    _, enc, dec = MODELS[name]
    over = [
        f"model.encoder={enc}",
        f"model.decoder={dec}",
        "model.parametrisation=base",
        f"model.hidden_size={args.hidden_size}",
        f"model.num_layers={args.layers}",
        f"model.num_heads={args.heads}",
        f"model.num_components={args.components}",
        f"model.decoder_hidden_size={args.hidden_size}",
        f"model.mark_embedding_size={args.hidden_size // 2}",
        f"model.time_embedding_size={args.hidden_size // 2}",
        "model.integration=mc",
        f"model.integration_nodes={args.nodes}",
        "model.eval_integration=gauss_legendre",
        f"model.eval_integration_nodes={args.eval_nodes}",
        "model.first_event=skip",
        "model.dropout=0.0",
        "train.optimizer=adam",
        f"train.lr={args.lr}",
        f"train.batch_size={args.batch_size}",
        "data.dtype=float32",
    ]
    return load_config(None, over)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


class MtppSide:
    def __init__(self, name: str, args: argparse.Namespace, data: Data) -> None:
        from mtpp.bench import make_step_context

        torch.manual_seed(args.seed)
        self.ctx = make_step_context(mtpp_run_config(name, args), data.num_marks, torch.device("cpu"), False,
                                     bool(getattr(args, "compile", False)))
        self.model = self.ctx.model
        self.model.train()

    def step(self, batch: Any) -> None:
        from mtpp.bench import train_step

        train_step(self.ctx, batch, False)

    @torch.no_grad()
    def loglik(self, batches: list, accurate: bool) -> tuple[float, int, dict[str, float]]:
        """``(sum of log-likelihood, scored events, parts)`` over ``batches``; eval rule when ``accurate``."""
        self.model.train(not accurate)  # train mode = the training rule (MC); no dropout in these models
        total, events, lt, lm = 0.0, 0, 0.0, 0.0
        for b in batches:
            out = self.model.nll(b)
            lt -= float(out.time_nll.sum())
            lm -= float(out.mark_nll.sum())
            events += int(out.scored.sum())
        self.model.train()
        total = lt + lm
        return total, events, {"time": lt / events, "mark": lm / events}


class EasyTPPSide:
    def __init__(self, name: str, args: argparse.Namespace, data: Data) -> None:
        from easy_tpp.utils import set_optimizer

        torch.manual_seed(args.seed)
        self.model = easytpp_model(name, args, data)
        self.opt = set_optimizer("adam", self.model.parameters(), args.lr)
        self.nodes = args.nodes
        self.eval_nodes = args.eval_nodes
        self.model.train()

    def step(self, batch: dict) -> None:
        # easy_tpp.model_wrapper.ModelWrapper.run_batch, phase TRAIN (the batch is already on the device)
        self.model.train(True)
        with torch.set_grad_enabled(True):
            loss, num_event = self.model.loglike_loss(**batch)
        self.opt.zero_grad()
        (loss / num_event).backward()
        self.opt.step()
        loss.item()

    @torch.no_grad()
    def loglik(self, batches: list, accurate: bool) -> tuple[float, int, dict[str, float]]:
        m = self.model
        m.eval()
        if accurate:  # trapezoid rule on many nodes (EasyTPP's own use_mc_samples=False branch)
            m.loss_integral_num_sample_per_step, m.use_mc_samples = self.eval_nodes, False
        total, events = 0.0, 0
        for b in batches:
            loss, n = m.loglike_loss(**b)
            total -= float(loss)
            events += int(n)
        m.loss_integral_num_sample_per_step, m.use_mc_samples = self.nodes, True
        m.train()
        return total, events, {}


# ============================================================================================== measurements


def timed(step: Callable[[Any], None], batches: list, events: list[int], start: int, steps: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for i in range(start, start + steps):
        step(batches[i % len(batches)])
        n += events[i % len(batches)]
    return time.perf_counter() - t0, n


def speedup(mtpp_rates: list[float], easytpp_rates: list[float]) -> float:
    """Median over rounds of the per-round ratio mtpp / EasyTPP. Both timings of a round are adjacent in time, so
    a drift of the shared machine's speed over the run (we saw 1.8x within one run) cancels in each ratio; it does
    not cancel in the ratio of the two medians (kept as ``speedup_of_medians``)."""
    return statistics.median(m / e for m, e in zip(mtpp_rates, easytpp_rates))


def throughput(name: str, args: argparse.Namespace, data: Data) -> dict[str, Any]:
    idx = epoch_indices(len(data.mtpp["train"]), args.batch_size, args.seed, 0)
    mb, eb, ev = data.batches("train", idx)
    sides = {"mtpp": MtppSide(name, args, data), "easytpp": EasyTPPSide(name, args, data)}
    batches = {"mtpp": mb, "easytpp": eb}
    for lib, side in sides.items():
        timed(side.step, batches[lib], ev, 0, args.warmup)
    rates: dict[str, list[float]] = {"mtpp": [], "easytpp": []}
    pos = args.warmup
    for r in range(args.rounds):
        order = ("mtpp", "easytpp") if r % 2 == 0 else ("easytpp", "mtpp")
        for lib in order:
            sec, n = timed(sides[lib].step, batches[lib], ev, pos, args.steps)
            rates[lib].append(n / sec)
        pos += args.steps
    slots = sum(b.mask.numel() for b in mb)
    row = {
        "mtpp_params": n_params(sides["mtpp"].model),
        "easytpp_params": n_params(sides["easytpp"].model),
        "mtpp_train_events_per_second": statistics.median(rates["mtpp"]),
        "easytpp_train_events_per_second": statistics.median(rates["easytpp"]),
        "mtpp_train_events_per_second_rounds": rates["mtpp"],
        "easytpp_train_events_per_second_rounds": rates["easytpp"],
        "events_per_batch": sum(ev) / len(ev),
        "padding_fraction": 1.0 - sum(ev) / slots,
    }
    row["speedup"] = speedup(rates["mtpp"], rates["easytpp"])
    row["speedup_of_medians"] = row["mtpp_train_events_per_second"] / row["easytpp_train_events_per_second"]
    if args.profile and torch.get_num_threads() == args.threads[0]:
        profile(name, sides, batches, ev, args)
    return row


def profile(name: str, sides: dict, batches: dict, ev: list[int], args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity, profile as tprofile

    for lib in ("mtpp", "easytpp"):
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            timed(sides[lib].step, batches[lib], ev, 0, args.profile_steps)
        print(f"\n### profile: {lib} {name}, {args.profile_steps} training steps (self CPU time)\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            timed(sides[lib].step, batches[lib], ev, 0, args.profile_steps)
        print(f"\n### profile: {lib} {name} (total CPU time incl. children)\n")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.profile_rows))


def loglikelihood(name: str, args: argparse.Namespace, data: Data) -> dict[str, Any]:
    sides = {"mtpp": MtppSide(name, args, data), "easytpp": EasyTPPSide(name, args, data)}
    n_train = len(data.mtpp["train"])
    wall = {"mtpp": 0.0, "easytpp": 0.0}
    for epoch in range(args.epochs):
        mb, eb, _ = data.batches("train", epoch_indices(n_train, args.batch_size, args.seed, epoch))
        for lib, bs in (("mtpp", mb), ("easytpp", eb)):
            t0 = time.perf_counter()
            for b in bs:
                sides[lib].step(b)
            wall[lib] += time.perf_counter() - t0
    test_idx = epoch_indices(len(data.mtpp["test"]), args.eval_batch_size, args.seed, 0, shuffle=False)
    mt, et, ev = data.batches("test", test_idx)
    n_all = sum(ev)
    out: dict[str, Any] = {"epochs": args.epochs, "train_steps": args.epochs * math.ceil(n_train / args.batch_size),
                           "test_events_all": n_all}
    for lib, bs in (("mtpp", mt), ("easytpp", et)):
        torch.manual_seed(args.seed + 1)
        native, n_native, parts = sides[lib].loglik(bs, accurate=False)
        accurate, n_acc, parts_acc = sides[lib].loglik(bs, accurate=True)
        assert n_native == n_acc
        out[f"{lib}_test_scored_events"] = n_acc
        out[f"{lib}_test_ll_per_event"] = accurate / n_acc
        out[f"{lib}_test_ll_per_event_native"] = native / n_native
        out[f"{lib}_test_ll_per_event_incl_first"] = accurate / n_all
        if parts_acc:
            out[f"{lib}_test_ll_per_event_time"] = parts_acc["time"]
            out[f"{lib}_test_ll_per_event_mark"] = parts_acc["mark"]
        out[f"{lib}_train_seconds"] = wall[lib]
    return out


# ============================================================================================== output


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def git_state() -> dict[str, Any]:
    """Commit of the checkout and the mtpp package files modified in the working tree (shared checkouts)."""
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True,
                                  check=False).stdout
        except OSError:
            return ""

    return {"commit": run("rev-parse", "HEAD").strip(),
            "modified_mtpp_files": [ln[3:] for ln in run("status", "--porcelain", "mtpp").splitlines()]}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def fmt(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def markdown(rows: list[dict[str, Any]], threads: list[int]) -> str:
    t0 = threads[0]
    head = (f"| model (EasyTPP / mtpp) | params EasyTPP | params mtpp | train ev/s EasyTPP ({t0} thr) | "
            f"train ev/s mtpp ({t0} thr) | speed-up |")
    extra = [t for t in threads[1:]]
    for t in extra:
        head += f" train ev/s EasyTPP ({t} thr) | train ev/s mtpp ({t} thr) | speed-up ({t} thr) |"
    head += " test LL/event EasyTPP (native) | test LL/event EasyTPP | test LL/event mtpp |"
    lines = [head, "|" + "---|" * (9 + 3 * len(extra))]
    for r in rows:
        line = (
            f"| {r['easytpp_model']} / {r['mtpp_model']} | {r['easytpp_params']:,} | {r['mtpp_params']:,} | "
            f"{fmt(r.get('easytpp_train_events_per_second'), ',.0f')} | "
            f"{fmt(r.get('mtpp_train_events_per_second'), ',.0f')} | {fmt(r.get('speedup'), '.2f')}x |"
        )
        for t in extra:
            x = r.get(f"threads_{t}", {})
            line += (f" {fmt(x.get('easytpp_train_events_per_second'), ',.0f')} | "
                     f"{fmt(x.get('mtpp_train_events_per_second'), ',.0f')} | {fmt(x.get('speedup'), '.2f')}x |")
        line += (f" {fmt(r.get('easytpp_test_ll_per_event_native'), '.3f')} | "
                 f"{fmt(r.get('easytpp_test_ll_per_event'), '.3f')} | {fmt(r.get('mtpp_test_ll_per_event'), '.3f')} |")
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                   help="folder with train/valid/test.json[.gz] (default: ../shared/data/easytpp_taxi)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--hidden-size", type=int, default=32)
    p.add_argument("--layers", type=int, default=1, help="attention layers (THP, SAHP)")
    p.add_argument("--heads", type=int, default=2, help="attention heads (THP, SAHP)")
    p.add_argument("--components", type=int, default=32, help="log-normal mixture components (LNM)")
    p.add_argument("--nodes", type=int, default=20, help="integration nodes per interval during training")
    p.add_argument("--eval-nodes", type=int, default=200, help="integration nodes for the accurate test LL")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, nargs="+", default=[2],
                   help="torch.set_num_threads; the first value is the headline (and trains for the test LL), "
                        "further values repeat the throughput measurement")
    p.add_argument("--compile", action="store_true",
                   help="mtpp side: torch.compile(model.nll) as train.compile does (EasyTPP has no such option)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="timed steps per round and library")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30, help="training epochs before the test log-likelihood")
    p.add_argument("--ll-threads", type=int, default=1,
                   help="torch threads while training for the test LL (changes wall time only, not the result; "
                        "1 is fastest on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-ll", action="store_true")
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables of both training steps")
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="leave glibc's dynamic mmap threshold on (mtpp's CLI fixes it: mtpp.allocator); "
                   "either way both libraries share this process's allocator")
    args = p.parse_args(argv)

    from mtpp.allocator import tune_allocator

    malloc_tuned = False if args.no_malloc_tuning else tune_allocator()
    torch.set_num_threads(args.threads[0])
    import easy_tpp

    etpp_version = getattr(easy_tpp, "__version__", None)
    if etpp_version is None:
        from importlib.metadata import version

        etpp_version = version("easy-tpp")
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": str(args.data_dir),
        "torch_version": torch.__version__,
        "easytpp_version": etpp_version,
        "mtpp_version": getattr(mtpp, "__version__", None),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "num_threads": torch.get_num_threads(),
        "git": git_state(),
        "uptime_before": uptime(),
        "loadavg_before": loadavg(),
        "malloc_tuned": malloc_tuned,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    print(f"# {meta['uptime_before']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mtpp_easytpp_") as tmp:
        data = Data(stage_json(args.data_dir, Path(tmp)))
    rows = []
    for name in args.models:
        etpp_id, enc, dec = MODELS[name]
        row: dict[str, Any] = {"model": name, "easytpp_model": etpp_id, "mtpp_model": f"{enc}-{dec}-base"}
        t0 = time.perf_counter()
        if not args.skip_throughput:
            for i, threads in enumerate(args.threads):
                torch.set_num_threads(threads)
                res = throughput(name, args, data)
                print(f"{name}: {threads} threads: train ev/s mtpp {res['mtpp_train_events_per_second']:,.0f} "
                      f"EasyTPP {res['easytpp_train_events_per_second']:,.0f} ({res['speedup']:.2f}x)  "
                      f"[{uptime()}]", flush=True)
                if i == 0:
                    row.update(res)
                else:
                    row[f"threads_{threads}"] = {k: v for k, v in res.items() if "second" in k or k == "speedup"}
            torch.set_num_threads(args.threads[0])
        if not args.skip_ll:
            torch.set_num_threads(args.ll_threads)
            row.update(loglikelihood(name, args, data))
            row["ll_threads"] = args.ll_threads
            torch.set_num_threads(args.threads[0])
            print(f"{name}: test LL/event mtpp {row['mtpp_test_ll_per_event']:.4f} "
                  f"EasyTPP {row['easytpp_test_ll_per_event']:.4f} "
                  f"(native {row['easytpp_test_ll_per_event_native']:.4f})  [{uptime()}]", flush=True)
        if "mtpp_params" not in row:
            row["mtpp_params"] = n_params(MtppSide(name, args, data).model)
            row["easytpp_params"] = n_params(EasyTPPSide(name, args, data).model)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    meta["uptime_after"] = uptime()
    meta["loadavg_after"] = loadavg()
    print(f"# {meta['uptime_after']}\n")
    print(markdown(rows, args.threads))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
