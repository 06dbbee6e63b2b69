"""Length-bucketing batch sampler (deterministic for a seed, DDP-aware) and the DataLoader factory."""

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
    once per epoch. With ``shuffle=False`` the order is by length and fixed.

    Under DDP (``num_replicas > 1``) the batch list is split round-robin across ranks after padding it to a
    multiple of ``num_replicas`` (repeating batches from the start, cyclically), so every rank takes the same
    number of steps.
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
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool_batches = pool_batches
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
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
        batches = self._all_batches()
        if self.num_replicas > 1:
            total = math.ceil(len(batches) / self.num_replicas) * self.num_replicas
            batches = batches + [batches[i % len(batches)] for i in range(total - len(batches))]
            batches = batches[self.rank :: self.num_replicas]
        for b in batches:
            yield b.tolist()

    def __len__(self) -> int:
        n = len(self.lengths)
        nb = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return math.ceil(nb / self.num_replicas)


class RandomBatchSampler(BucketBatchSampler):
    """Plain shuffled batches, no bucketing (the baseline the bucketing sampler is compared with)."""

    def _all_batches(self) -> list[np.ndarray]:
        n, bs = len(self.lengths), self.batch_size
        order = _epoch_rng(self.seed, self.epoch).permutation(n) if self.shuffle else np.arange(n)
        batches = [order[s : s + bs] for s in range(0, n, bs)]
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        return batches


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
    """A DataLoader of ``Batch`` objects; pinned memory when ``device_type == 'cuda'``."""
    lengths = [len(s) for s in sequences]
    cls = BucketBatchSampler if bucket else RandomBatchSampler
    sampler = cls(lengths, batch_size, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)
    return DataLoader(
        _SequenceList(sequences),
        batch_sampler=sampler,
        collate_fn=partial(collate, dtype=dtype),
        pin_memory=device_type == "cuda",
        num_workers=num_workers,
    )
