"""Batch padding (collate, Batch.to) and the length-bucketing sampler (coverage, determinism, padding, DDP)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtpp.data.batch import Batch, collate
from mtpp.data.sampler import (
    BucketBatchSampler,
    RandomBatchSampler,
    ShardedBucketSampler,
    make_loader,
    padding_fraction,
)
from mtpp.data.sequence import EventSequence, make_sequence


def _seq(times: list[float], marks: list[int], window_end: float | None = None) -> EventSequence:
    return make_sequence(times, marks, window_end=window_end)


def _skewed_lengths(n: int = 2000, seed: int = 0) -> np.ndarray:
    """Heavy-tailed lengths (log-normal, 2..~2000), like real benchmark data."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(np.exp(rng.normal(3.5, 1.0, size=n))), 2, None).astype(np.int64)


# ----------------------------------------------------------------------------------------------- collate


def test_collate_pads_times_taus_marks_mask_lengths() -> None:
    seqs = [_seq([0.5, 1.5, 4.0], [1, 0, 2]), _seq([2.0], [3])]
    b = collate(seqs)
    assert b.batch_size == 2 and b.max_length == 3
    # times since the sequence's first event (formed in float64 before the cast)
    torch.testing.assert_close(b.times, torch.tensor([[0.0, 1.0, 3.5], [0.0, 0.0, 0.0]]))
    # t_0 = 0: the first tau is the first time.
    torch.testing.assert_close(b.taus, torch.tensor([[0.5, 1.0, 2.5], [2.0, 0.0, 0.0]]))
    assert b.marks.tolist() == [[1, 0, 2], [3, 0, 0]]
    assert b.marks.dtype == torch.int64
    assert b.mask.tolist() == [[True, True, True], [True, False, False]]
    assert b.lengths.tolist() == [3, 1]
    assert int(b.num_events) == 4
    assert b.times.dtype == b.taus.dtype == b.window_end.dtype == b.survival_gap.dtype == torch.float32


def test_collate_window_end_and_survival_gap() -> None:
    seqs = [_seq([1.0, 2.0], [0, 0], window_end=5.0), _seq([3.0], [1])]
    b = collate(seqs)
    # With a window: T and T - t_n; without one: the window ends at the last event, gap 0.
    assert b.window_end.tolist() == [5.0, 3.0]
    assert b.survival_gap.tolist() == [3.0, 0.0]


def test_collate_keeps_float64_gaps_of_unix_epoch_times() -> None:
    t0 = 1.6e9  # Unix seconds: float32 spacing here is 128 s
    times = [t0 + 0.25, t0 + 1.0, t0 + 3.5]
    b = collate([_seq(times, [0, 1, 0], window_end=t0 + 10.0)], dtype=torch.float32)
    # Gaps are differenced in float64 before the cast, so they are exact.
    assert b.taus[0, 1:].tolist() == [0.75, 2.5]
    assert b.survival_gap.tolist() == [6.5]
    # The naive way (cast first, then difference) would destroy them: the test is meaningful.
    naive = torch.tensor(times, dtype=torch.float32).diff()
    assert naive.tolist() != [0.75, 2.5]


def test_collate_float64_dtype_and_empty_input() -> None:
    b = collate([_seq([0.1, 0.2], [0, 1])], dtype=torch.float64)
    assert b.times.dtype == torch.float64 and b.taus[0, 1].item() == pytest.approx(0.1, abs=1e-15)
    with pytest.raises(ValueError):
        collate([])


def test_batch_to_and_with_dtype_move_every_field() -> None:
    b = collate([_seq([0.5, 1.5], [1, 0], window_end=2.0), _seq([2.0], [3])])
    moved = b.to("meta")
    for name in ("times", "taus", "marks", "mask", "lengths", "window_end", "survival_gap"):
        t = getattr(moved, name)
        assert t.device.type == "meta", name
        assert t.dtype == getattr(b, name).dtype, name
    d = b.with_dtype(torch.float64)
    assert d.times.dtype == d.taus.dtype == d.window_end.dtype == d.survival_gap.dtype == torch.float64
    assert d.marks.dtype == torch.int64 and d.mask.dtype == torch.bool


# ----------------------------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("cls", [BucketBatchSampler, RandomBatchSampler])
@pytest.mark.parametrize("n,bs", [(103, 8), (64, 8), (5, 16)])
def test_sampler_yields_every_index_exactly_once(cls: type, n: int, bs: int) -> None:
    lengths = _skewed_lengths(n)
    sampler = cls(lengths, bs, seed=3, pool_batches=4)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert len(batches) == len(sampler)
        assert all(1 <= len(b) <= bs for b in batches)


@pytest.mark.parametrize("cls", [BucketBatchSampler, RandomBatchSampler])
def test_sampler_drop_last_matches_len(cls: type) -> None:
    sampler = cls(_skewed_lengths(103), 8, seed=0, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 103 // 8
    assert all(len(b) == 8 for b in batches)


def test_bucket_sampler_deterministic_and_epoch_dependent() -> None:
    lengths = _skewed_lengths(500)
    a = BucketBatchSampler(lengths, 16, seed=7)
    b = BucketBatchSampler(lengths, 16, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    # Different seeds are independent streams, not the same epochs shifted by one.
    c = BucketBatchSampler(lengths, 16, seed=8)
    assert list(c) != list(a)


def test_bucket_sampler_without_shuffle_is_sorted_by_length() -> None:
    lengths = _skewed_lengths(100)
    batches = list(BucketBatchSampler(lengths, 10, shuffle=False))
    flat = np.concatenate(batches)
    assert np.all(np.diff(lengths[flat]) >= 0)


def test_bucketing_reduces_padding() -> None:
    lengths = _skewed_lengths(4000)
    bucketed = padding_fraction(lengths, list(BucketBatchSampler(lengths, 32, seed=0)))
    random = padding_fraction(lengths, list(RandomBatchSampler(lengths, 32, seed=0)))
    assert random > 0.5  # skewed: random batches are mostly padding
    assert bucketed < 0.5 * random


def test_padding_fraction_by_hand() -> None:
    assert padding_fraction([1, 3, 2, 2], [[0, 1], [2, 3]]) == pytest.approx(1 - 8 / 10)
    assert padding_fraction([], []) == 0.0


@pytest.mark.parametrize("cls", [BucketBatchSampler, RandomBatchSampler])
@pytest.mark.parametrize("n,bs,replicas", [(103, 8, 2), (100, 10, 2), (30, 8, 3), (5, 8, 4), (3, 1, 4)])
def test_ddp_ranks_slice_the_global_batches(cls: type, n: int, bs: int, replicas: int) -> None:
    lengths = _skewed_lengths(n)
    bucket = cls is BucketBatchSampler
    ranks = [ShardedBucketSampler(lengths, bs, world=replicas, rank=r, seed=1, bucket=bucket) for r in range(replicas)]
    glob = cls(lengths, bs * replicas, seed=1)  # the single-process sampler with the global batch size
    for epoch in (0, 2):
        glob.set_epoch(epoch)
        for s in ranks:
            s.set_epoch(epoch)
        global_batches = list(glob)
        per_rank = [list(s) for s in ranks]
        scales = [s.loss_scales() for s in ranks]
        # same number of steps on every rank: the number of global batches
        assert all(len(p) == len(s) == len(global_batches) for p, s in zip(per_rank, ranks))
        # together the ranks cover every index exactly once per epoch (weight-0 copies aside)
        real = [i for r in range(replicas) for b, w in zip(per_rank[r], scales[r]) if w > 0 for i in b]
        assert sorted(real) == list(range(n))
        for k, g in enumerate(global_batches):
            parts = np.array_split(np.asarray(g), replicas)
            for r in range(replicas):
                if len(parts[r]):  # rank r's contiguous slice of global batch k, scaled by world * n_r / N
                    assert per_rank[r][k] == parts[r].tolist()
                    assert scales[r][k] == pytest.approx(replicas * len(parts[r]) / len(g))
                else:  # fewer sequences than ranks: one real index, weight 0
                    assert len(per_rank[r][k]) == 1 and per_rank[r][k][0] in g
                    assert scales[r][k] == 0.0
            assert sum(scales[r][k] for r in range(replicas)) == pytest.approx(replicas)
        # events/s under DDP: every rank knows the global batch's events (it counted its own x world before, wrong
        # whenever the slices' events differ)
        want = [int(np.asarray(lengths)[np.asarray(g)].sum()) for g in global_batches]
        assert all(s.global_events() == want for s in ranks)


def test_sharded_sampler_rejects_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError):
        ShardedBucketSampler([3, 4], 2, world=2, rank=2)


def test_make_loader_yields_batches() -> None:
    rng = np.random.default_rng(0)
    seqs = [_seq(np.sort(rng.uniform(0, 10, size=k)).tolist(), rng.integers(0, 3, size=k).tolist()) for k in
            rng.integers(1, 30, size=37)]
    loader = make_loader(seqs, 8, seed=0)
    batches = list(loader)
    assert all(isinstance(b, Batch) for b in batches)
    assert sum(int(b.num_events) for b in batches) == sum(len(s) for s in seqs)
    assert sum(b.batch_size for b in batches) == len(seqs)
    assert len(batches) == len(loader)
    plain = make_loader(seqs, 8, bucket=False, shuffle=False, dtype=torch.float64)
    first = next(iter(plain))
    assert first.times.dtype == torch.float64
    assert first.lengths.tolist() == [len(s) for s in seqs[:8]]
    assert type(loader.batch_sampler) is BucketBatchSampler and type(plain.batch_sampler) is RandomBatchSampler


def test_make_loader_with_replicas_shards_the_global_batches() -> None:
    rng = np.random.default_rng(0)
    seqs = [_seq(np.sort(rng.uniform(0, 10, size=k)).tolist(), rng.integers(0, 3, size=k).tolist()) for k in
            rng.integers(1, 30, size=37)]
    loaders = [make_loader(seqs, 4, seed=5, num_replicas=2, rank=r) for r in range(2)]
    assert all(isinstance(loader.batch_sampler, ShardedBucketSampler) for loader in loaders)
    single = make_loader(seqs, 8, seed=5)
    for epoch in (0, 1):
        for loader in (*loaders, single):
            loader.batch_sampler.set_epoch(epoch)
        steps = list(zip(*loaders))
        assert len(steps) == len(single) == math.ceil(37 / 8)
        for (a, b), g in zip(steps, single):  # the two ranks' step-k batches are the single-process batch k
            torch.testing.assert_close(torch.cat([a.lengths, b.lengths]), g.lengths)


# ------------------------------------------------------------------------------------- padded-event bound


def _outliers(n: int = 300, seed: int = 0) -> np.ndarray:
    """Short sequences (5..30 events) and three outliers of 1,500 / 2,000 / 3,000 events: the batch that meets an
    outlier is padded to it (64 x 3,000 slots where 94 % are padding)."""
    lengths = np.random.default_rng(seed).integers(5, 31, size=n)
    lengths[[17, n // 2, n - 1]] = [1500, 2000, 3000]
    return lengths


@pytest.mark.parametrize("cls", [BucketBatchSampler, RandomBatchSampler])
@pytest.mark.parametrize("shuffle", [True, False])
def test_a_batch_never_holds_more_padded_events_than_max_events(cls: type, shuffle: bool) -> None:
    # one outlier among short sequences padded its whole batch: 64 x 300,000 slots (19.2 M) for 300,000 events,
    # about 150 GB in a GRU training step; now a batch closes before sequences x longest passes max_events
    lengths = _outliers()
    sampler = cls(lengths, 64, seed=2, pool_batches=2, shuffle=shuffle, max_events=1000)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each sequence once
        assert len(batches) == len(sampler)
        for b in batches:
            padded = len(b) * int(lengths[b].max())
            assert padded <= 1000 or len(b) == 1, (len(b), lengths[b].max())  # an outlier rides alone
            assert len(b) <= 64
    unbounded = cls(lengths, 64, seed=2, pool_batches=2, shuffle=shuffle)
    assert max(len(b) * int(lengths[b].max()) for b in unbounded) > 10 * 1000  # the test is meaningful


@pytest.mark.parametrize("cls", [BucketBatchSampler, RandomBatchSampler])
def test_a_bound_no_batch_reaches_changes_no_batch(cls: type) -> None:
    lengths = _skewed_lengths(500)
    for epoch in (0, 1):
        plain, bounded = cls(lengths, 16, seed=4), cls(lengths, 16, seed=4, max_events=10**9)
        plain.set_epoch(epoch)
        bounded.set_epoch(epoch)
        assert list(plain) == list(bounded)


def test_cut_batches_by_hand() -> None:
    from mtpp.data.sampler import cut_batches

    lengths = np.array([2, 2, 3, 10, 4, 1])
    order = np.arange(6)
    assert [b.tolist() for b in cut_batches(order, lengths, 3, None)] == [[0, 1, 2], [3, 4, 5]]
    # 3 x 3 = 9 <= 9; adding 10 would make 4 x 10; 10 alone (longer than the bound); then 4 and 1: 2 x 4 = 8
    assert [b.tolist() for b in cut_batches(order, lengths, 5, 9)] == [[0, 1, 2], [3], [4, 5]]


def test_sharded_sampler_bounds_each_rank_and_make_loader_passes_the_bound() -> None:
    lengths = _outliers(200)
    ranks = [ShardedBucketSampler(lengths, 16, world=2, rank=r, seed=0, max_events=500) for r in range(2)]
    for s in ranks:
        for b in s:
            assert len(b) * int(lengths[b].max()) <= 2 * 500 or len(b) == 1
    seqs = [_seq(np.arange(1, n + 1, dtype=float).tolist(), [0] * n) for n in lengths]
    loader = make_loader(seqs, 64, seed=0, max_events=1000)
    batches = list(loader)
    assert len(batches) == len(loader)
    assert sum(b.batch_size for b in batches) == len(seqs)
    assert all(b.batch_size * b.max_length <= 1000 or b.batch_size == 1 for b in batches)
