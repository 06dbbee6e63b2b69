"""Data-parallel training (``mtpp.training.distributed``): the sharded sampler, and 2 CPU ranks (gloo, loopback)
against one process with the same global batch, including a resumed run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mtpp.config import load_config
from mtpp.data.sampler import ShardedBucketSampler
from mtpp.training.distributed import Dist, rank_seed, shard
from mtpp.training.trainer import fit

# 21 training sequences, global batch 8: steps of 8, 8, 5 -> the last one splits 3 / 2 over two ranks
SETTINGS = [
    "data.max_sequences=21",
    "train.max_epochs=2",
    "train.device=cpu",
    "train.eval_batch_size=64",
    "model.decoder=thp",
    "model.integration=gauss_legendre",  # deterministic compensator: no Monte Carlo noise between the runs
    "model.integration_nodes=4",
    "model.hidden_size=8",
    "model.mark_embedding_size=4",
    "model.time_embedding_size=4",
    "model.decoder_hidden_size=8",
    "gradients.log_every=1",
    "logging.quiet=true",
    "logging.progress=false",
]


# ------------------------------------------------------------------------------------------------ the sampler


@pytest.mark.parametrize("n, bs, world", [(21, 4, 2), (10, 3, 3), (5, 2, 4), (64, 8, 1)])
def test_sharded_sampler_slices_the_single_process_batches(n: int, bs: int, world: int) -> None:
    lengths = np.random.default_rng(0).integers(1, 50, n)
    single = ShardedBucketSampler(lengths, bs * world, world=1, rank=0, seed=3)
    ranks = [ShardedBucketSampler(lengths, bs, world=world, rank=r, seed=3) for r in range(world)]
    for s in (single, *ranks):
        s.set_epoch(2)
    glob = list(single)
    per_rank = [list(s) for s in ranks]
    assert all(len(p) == len(glob) == len(s) for p, s in zip(per_rank, ranks))  # equal step counts
    scales = [s.loss_scales() for s in ranks]
    for k, g in enumerate(glob):
        real = [per_rank[r][k] for r in range(world) if scales[r][k] > 0]
        assert sorted(i for b in real for i in b) == sorted(g)  # the union is the global batch
        # mean over ranks of scale_r * (batch mean on r) weighs every sequence of the global batch by 1 / N
        for r in range(world):
            weight = scales[r][k] / (world * len(per_rank[r][k]))
            assert weight == pytest.approx(1 / len(g) if scales[r][k] > 0 else 0.0)


def test_eval_shards_are_disjoint_and_cover() -> None:
    items = list(range(11))
    parts = [shard(items, Dist(world=3, rank=r)) for r in range(3)]
    assert sorted(i for p in parts for i in p) == items


def test_rank_seeds_differ_and_rank_zero_keeps_the_seed() -> None:
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, r) for r in range(8)}) == 8


# ------------------------------------------------------------------------------------------------ 2 ranks


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(out: Path, cache: Path, *extra: str, resume: bool = False) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "mtpp", "train", "--out", str(out),
    ]  # fmt: skip
    for o in [*SETTINGS, "train.batch_size=4", *extra]:
        cmd += ["--set", o]
    if resume:
        cmd.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MTPP_CACHE_DIR": str(cache)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def final_params(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic-data cache for the single-process run and the torchrun subprocesses (the same sequences)."""
    return tmp_path_factory.mktemp("ddp-cache")


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTPP_CACHE_DIR", str(cache))
        try:
            fit(load_config(None, [*SETTINGS, "train.batch_size=8"]), out)
        finally:
            torch.set_num_threads(threads)
    return out


def compare(ddp: Path, single: Path) -> None:
    a, b = final_params(ddp), final_params(single)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=2e-4, atol=2e-5, msg=k)
    la = [r for r in read_log(ddp) if r["kind"] == "step"]
    lb = [r for r in read_log(single) if r["kind"] == "step"]
    assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, 7))  # one record per step: rank 0 only
    for ra, rb in zip(la, lb):
        for key in ("loss_time", "loss_mark", "cos_tm", "cos_tm/encoder", "cos_tm/decoder", "gms", "grad_norm"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-3, abs=1e-5), (ra["step"], key)
    ma, mb = json.loads((ddp / "metrics.json").read_text()), json.loads((single / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in ("nll_time_per_seq", "nll_mark_per_seq", "accuracy_forecast", "num_events", "num_sequences"):
            assert ma[split][key] == pytest.approx(mb[split][key], rel=1e-4), (split, key)
    ea = [r for r in read_log(ddp) if r["kind"] == "epoch"]
    eb = [r for r in read_log(single) if r["kind"] == "epoch"]
    assert [r["val_nll_per_seq"] for r in ea] == pytest.approx([r["val_nll_per_seq"] for r in eb], rel=1e-4)
    assert ma["train"]["best_epoch"] == mb["train"]["best_epoch"]


def test_two_cpu_ranks_match_one_process_with_the_global_batch(tmp_path: Path, single_run: Path, cache: Path) -> None:
    out = tmp_path / "ddp"
    proc = torchrun(out, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = {p.name for p in out.iterdir()}
    assert {"config.yaml", "log.jsonl", "checkpoint.pt", "best.pt", "metrics.json"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    info = yaml.safe_load((out / "config.yaml").read_text())["run_info"]
    assert info["world_size"] == 2 and info["device"] == "cpu"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert "2 ranks x batch 4 (global batch 8)" in (out / "train.log").read_text()  # the header says the ranks
    # events/s count every rank's events exactly: the events trained on are the single process's (rank 0's events
    # x 2 before, off whenever the two slices of a batch differ in events)
    single = torch.load(single_run / "checkpoint.pt", weights_only=True)
    assert state["counters"]["events"] == single["counters"]["events"] > 0
    compare(out, single_run)


def test_resume_under_ddp_ends_where_the_uninterrupted_run_ends(tmp_path: Path, single_run: Path, cache: Path) -> None:
    out = tmp_path / "ddp_resumed"
    first = torchrun(out, cache, "train.max_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(out, cache, resume=True)
    assert second.returncode == 0, second.stderr[-3000:]
    compare(out, single_run)


def test_an_error_on_rank_zero_stops_every_rank(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "metrics.json").write_text('{"train": {}, "test": {}}')  # a finished run: refused without --overwrite, on rank 0
    proc = torchrun(out, cache, "train.max_epochs=1")
    assert proc.returncode != 0
    assert "already holds a run" in proc.stderr


SESSION_SCRIPT = """
import os, sys, torch
from mtpp.training import distributed

def threads():
    return sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))

with distributed.session("cpu") as ddp:
    torch.optim.Adam(torch.nn.Linear(2, 2).parameters())  # the first optimiser imports torch._dynamo
    ddp.sum_(torch.ones(3))
left = [t for t in threads() if "gloo" in t]
print("gloo threads after the session:", left)
sys.exit(1 if left else 0)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to list threads")
def test_session_end_leaves_no_gloo_threads(tmp_path: Path) -> None:
    """Gloo worker threads alive at interpreter shutdown aborted ~5 % of runs after their last collective."""
    script = tmp_path / "session.py"
    script.write_text(SESSION_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script)]  # fmt: skip
    root = str(Path(__file__).resolve().parents[1])  # the script imports mtpp: this checkout, installed or not
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_resume_hint_of_a_torchrun_run_keeps_its_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.batch_size`` is per rank: the hint after an interruption must relaunch under torchrun with the same
    ranks (a plain ``mtpp train --resume`` would go on with half the global batch); outside torchrun it stays
    ``mtpp train``."""
    from mtpp.training import checkpoint
    from mtpp.training.trainer import resume_hint

    (tmp_path / checkpoint.CHECKPOINT).write_bytes(b"")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert resume_hint(tmp_path) == f"interrupted; continue with: mtpp train --out {tmp_path} --resume"
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    assert resume_hint(tmp_path) == (
        f"interrupted; continue with: torchrun --nproc_per_node=2 -m mtpp train --out {tmp_path} --resume")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert "torchrun --nnodes=2 --nproc_per_node=8 ... -m mtpp train --out" in resume_hint(tmp_path)
