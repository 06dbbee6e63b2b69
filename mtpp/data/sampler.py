"""Length-bucketing batch samplers (deterministic for a seed), their DDP sharding, and the DataLoader factory.

One data-parallel mechanism: ``ShardedBucketSampler`` gives each rank its slice of the batches a single process
would build with the global batch size (``make_loader(..., num_replicas > 1)`` uses it); the plain samplers know
nothing about ranks.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from mtpp.data.batch import collate
from mtpp.data.sequence import EventSequence


class BucketBatchSampler(Sampler[list[int]]):
    """Yields batches of indices of sequences of similar length.

    Each epoch: shuffle indices (seeded by the pair ``(seed, epoch)``, so runs with different seeds never
    replay each other's epochs shifted by one), cut them into pools of ``pool_batches`` batches,
    sort each pool by length, cut pools into batches, shuffle the batch order. Every index appears exactly
    once per epoch. With ``shuffle=False`` the order is by length and fixed. Under DDP, ``ShardedBucketSampler``
    slices these batches across the ranks.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        pool_batches: int = 50,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool_batches = pool_batches
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[np.ndarray]:
        n, bs = len(self.lengths), self.batch_size
        if self.shuffle:
            rng = _epoch_rng(self.seed, self.epoch)
            order = rng.permutation(n)
            pool = bs * self.pool_batches
            chunks = []
            for s in range(0, n, pool):
                p = order[s : s + pool]
                chunks.append(p[np.argsort(self.lengths[p], kind="stable")])
            order = np.concatenate(chunks) if chunks else order
        else:
            rng = None
            order = np.argsort(self.lengths, kind="stable")
        batches = [order[s : s + bs] for s in range(0, n, bs)]
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in self._all_batches():
            yield b.tolist()

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


class RandomBatchSampler(BucketBatchSampler):
    """Plain shuffled batches, no bucketing (the baseline the bucketing sampler is compared with)."""

    def _all_batches(self) -> list[np.ndarray]:
        n, bs = len(self.lengths), self.batch_size
        order = _epoch_rng(self.seed, self.epoch).permutation(n) if self.shuffle else np.arange(n)
        batches = [order[s : s + bs] for s in range(0, n, bs)]
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        return batches


class ShardedBucketSampler(Sampler[list[int]]):
    """Rank ``rank``'s slice of every global batch of a single-process sampler with ``batch_size * world``.

    The inner sampler (``BucketBatchSampler``, or ``RandomBatchSampler`` with ``bucket=False``) builds exactly the
    batches one process would build with the global batch size (same seed, same length bucketing); rank ``r``
    takes the ``r``-th contiguous part of each (``np.array_split``: sizes differ by at most one). So every rank
    takes the same number of steps, and the union of the ranks' step-``k`` batches is the single-process
    step-``k`` batch.

    ``loss_scales()`` gives, per step of the current epoch, the factor ``world * n_r / N`` (``n_r`` this rank's
    sequences, ``N`` the global batch's) that turns this rank's batch-mean losses into its share of the global
    batch mean: the mean over ranks of the scaled losses -- and of their gradients -- is exactly the global batch
    mean, also for the last, smaller global batch whose slices are unequal. A global batch with fewer sequences
    than ranks gives the ranks without a sequence a copy of one with weight 0 (they contribute nothing, but keep
    the collectives in step).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        world: int,
        rank: int,
        shuffle: bool = True,
        seed: int = 0,
        bucket: bool = True,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world of size {world}")
        cls = BucketBatchSampler if bucket else RandomBatchSampler
        self.inner = cls(lengths, batch_size * world, shuffle=shuffle, seed=seed)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.world, self.rank = world, rank
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def _slices(self) -> list[tuple[list[int], float]]:
        out = []
        for g in self.inner._all_batches():
            mine = np.array_split(np.asarray(g), self.world)[self.rank]
            if len(mine):
                out.append((mine.tolist(), self.world * len(mine) / len(g)))
            else:  # fewer sequences than ranks: a weight-0 copy keeps the collectives in step
                out.append(([int(g[0])], 0.0))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter([idx for idx, _ in self._slices()])

    def __len__(self) -> int:
        return len(self.inner)

    def loss_scales(self) -> list[float]:
        """Per step of the current epoch: ``world * n_r / N`` (0 for a weight-0 copy)."""
        return [w for _, w in self._slices()]

    def global_events(self) -> list[int]:
        """Per step of the current epoch: the events of the whole global batch (every rank's slice), the same on
        every rank without a collective: the trainer's events/s count all ranks' events exactly."""
        return [int(self.lengths[np.asarray(g)].sum()) for g in self.inner._all_batches()]


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The shuffling generator of one epoch: independent streams for every ``(seed, epoch)`` pair."""
    return np.random.default_rng((seed, epoch))


class _SequenceList(torch.utils.data.Dataset):
    def __init__(self, sequences: Sequence[EventSequence]) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> EventSequence:
        return self.sequences[i]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of padded slots over all ``[B, L]`` slots of ``batches``."""
    lengths = np.asarray(lengths)
    slots = real = 0
    for b in batches:
        lb = lengths[np.asarray(b)]
        slots += len(lb) * int(lb.max())
        real += int(lb.sum())
    return 1.0 - real / slots if slots else 0.0


def make_loader(
    sequences: Sequence[EventSequence],
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    bucket: bool = True,
    dtype: torch.dtype = torch.float32,
    device_type: str = "cpu",
    num_replicas: int = 1,
    rank: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader of ``Batch`` objects; pinned memory when ``device_type == 'cuda'``.

    ``num_replicas > 1``: rank ``rank``'s loader under DDP (``ShardedBucketSampler``, ``batch_size`` per rank;
    its ``batch_sampler.loss_scales()`` weighs the steps); otherwise the plain sampler.
    """
    lengths = [len(s) for s in sequences]
    sampler: Sampler[list[int]]
    if num_replicas > 1:
        sampler = ShardedBucketSampler(
            lengths, batch_size, world=num_replicas, rank=rank, shuffle=shuffle, seed=seed, bucket=bucket
        )
    else:
        cls = BucketBatchSampler if bucket else RandomBatchSampler
        sampler = cls(lengths, batch_size, shuffle=shuffle, seed=seed)
    return DataLoader(
        _SequenceList(sequences),
        batch_sampler=sampler,
        collate_fn=partial(collate, dtype=dtype),
        pin_memory=device_type == "cuda",
        num_workers=num_workers,
    )
