"""Length-bucketing batch samplers (deterministic for a seed), their DDP sharding, and the DataLoader factory.

One data-parallel mechanism: ``ShardedBucketSampler`` gives each rank its slice of the batches a single process
would build with the global batch size (``make_loader(..., num_replicas > 1)`` uses it); the plain samplers know
nothing about ranks.

**Padded events.** A batch is a padded ``[B, L]`` block: its memory grows with ``B x L`` (the *padded events*),
``L`` its longest sequence. Cut by a count of sequences alone, one outlier of 300,000 events among sequences of 20
pads a batch of 64 to 19.2 million slots (about 150 GB for a GRU training step). Every sampler therefore also
takes ``max_events``: a batch closes before ``B x L`` would pass it (:func:`cut_batches`; a sequence longer than
``max_events`` is a batch of its own), the fairseq ``--max-tokens`` rule applied to padded slots. While no batch
reaches the bound the batches are exactly the fixed-size ones.
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


def cut_batches(order: np.ndarray, lengths: np.ndarray, batch_size: int, max_events: int | None) -> list[np.ndarray]:
    """``order`` (indices into ``lengths``) cut into consecutive batches of at most ``batch_size`` sequences and,
    with ``max_events``, at most ``max_events`` padded events (sequences x the batch's longest); a sequence longer
    than ``max_events`` is a batch of its own. Greedy, in ``order``: with ``max_events=None`` (or a bound no batch
    reaches) exactly ``order[s : s + batch_size]``. One pass over the sequences (not the events)."""
    n = len(order)
    if max_events is None:
        return [order[s : s + batch_size] for s in range(0, n, batch_size)]
    lens = lengths[order].tolist()
    cuts, start, longest = [0], 0, 0
    for j, length in enumerate(lens):
        longest = max(longest, length)
        if j > start and (j - start >= batch_size or (j - start + 1) * longest > max_events):
            cuts.append(j)
            start, longest = j, length
    cuts.append(n)
    return [order[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


class BucketBatchSampler(Sampler[list[int]]):
    """Yields batches of indices of sequences of similar length.

    Each epoch: shuffle indices (seeded by the pair ``(seed, epoch)``, so runs with different seeds never
    replay each other's epochs shifted by one), cut them into pools of ``pool_batches`` batches,
    sort each pool by length, cut pools into batches (:func:`cut_batches`: at most ``batch_size`` sequences and
    ``max_events`` padded events each), shuffle the batch order. Every index appears exactly once per epoch. With
    ``shuffle=False`` the order is by length and fixed. Under DDP, ``ShardedBucketSampler`` slices these batches
    across the ranks.
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
        max_events: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_events is not None and max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool_batches = pool_batches
        self.drop_last = drop_last
        self.max_events = max_events
        self.epoch = 0
        self._plan: tuple[int, list[np.ndarray]] | None = None  # (epoch, batches): len() and iter() agree

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches (computed once per epoch)."""
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (self.epoch, self._all_batches())
        return self._plan[1]

    def _cut(self, *orders: np.ndarray) -> list[np.ndarray]:
        """Each of ``orders`` (a pool) cut by :func:`cut_batches`, then ``drop_last`` applied to the last batch."""
        batches = [b for order in orders for b in cut_batches(order, self.lengths, self.batch_size, self.max_events)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

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
        else:
            rng = None
            chunks = [np.argsort(self.lengths, kind="stable")]
        batches = self._cut(*chunks)  # pools hold whole batches: cut one by one, as cut together without a bound
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches():
            yield b.tolist()

    def __len__(self) -> int:
        if self.max_events is None:
            n = len(self.lengths)
            return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return len(self.batches())


class RandomBatchSampler(BucketBatchSampler):
    """Plain shuffled batches, no bucketing (the baseline the bucketing sampler is compared with)."""

    def _all_batches(self) -> list[np.ndarray]:
        n = len(self.lengths)
        order = _epoch_rng(self.seed, self.epoch).permutation(n) if self.shuffle else np.arange(n)
        return self._cut(order)


class ShardedBucketSampler(Sampler[list[int]]):
    """Rank ``rank``'s slice of every global batch of a single-process sampler with ``batch_size * world``.

    The inner sampler (``BucketBatchSampler``, or ``RandomBatchSampler`` with ``bucket=False``) builds exactly the
    batches one process would build with the global batch size (same seed, same length bucketing); rank ``r``
    takes the ``r``-th contiguous part of each (``np.array_split``: sizes differ by at most one). So every rank
    takes the same number of steps, and the union of the ranks' step-``k`` batches is the single-process
    step-``k`` batch.

    ``max_events`` bounds each rank's padded events: the global batch is cut at ``world x max_events``.

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
        max_events: int | None = None,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world of size {world}")
        cls = BucketBatchSampler if bucket else RandomBatchSampler
        self.inner = cls(lengths, batch_size * world, shuffle=shuffle, seed=seed,
                         max_events=None if max_events is None else max_events * world)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.world, self.rank = world, rank
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def _slices(self) -> list[tuple[list[int], float]]:
        out = []
        for g in self.inner.batches():
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
        return [int(self.lengths[np.asarray(g)].sum()) for g in self.inner.batches()]


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
    max_events: int | None = None,
) -> DataLoader:
    """A DataLoader of ``Batch`` objects; pinned memory when ``device_type == 'cuda'``.

    ``num_replicas > 1``: rank ``rank``'s loader under DDP (``ShardedBucketSampler``, ``batch_size`` per rank;
    its ``batch_sampler.loss_scales()`` weighs the steps); otherwise the plain sampler. ``max_events``: at most
    that many padded events (sequences x longest) per batch (:func:`cut_batches`); ``None``: no bound.
    """
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    sampler: Sampler[list[int]]
    if num_replicas > 1:
        sampler = ShardedBucketSampler(
            lengths, batch_size, world=num_replicas, rank=rank, shuffle=shuffle, seed=seed, bucket=bucket,
            max_events=max_events,
        )
    else:
        cls = BucketBatchSampler if bucket else RandomBatchSampler
        sampler = cls(lengths, batch_size, shuffle=shuffle, seed=seed, max_events=max_events)
    return DataLoader(
        _SequenceList(sequences),
        batch_sampler=sampler,
        collate_fn=partial(collate, dtype=dtype),
        pin_memory=device_type == "cuda",
        num_workers=num_workers,
    )
