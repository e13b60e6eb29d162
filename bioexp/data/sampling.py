"""Epoch-seeded sampling: data randomness that depends on (seed, epoch) alone.

Lightning builds the first iterator of a resumed fit before any epoch hook runs, so reseeding the
global RNG cannot make a resumed run replay the uninterrupted one. This sampler instead derives the
order and a per-item seed (for crops, augmentations) from ``(seed, epoch)``; the epoch comes from
the trainer when the loader is built and from Lightning's ``set_epoch`` afterwards. Results are
also independent of the number of dataloader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, item_seed)``; shuffles unless ``shuffle=False``.

    ``start`` skips that many items of the first pass only: a fit resumed from a mid-epoch checkpoint
    continues with the next batch of the same order (later epochs, or another epoch, start at 0).
    """

    def __init__(self, size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True, start: int = 0) -> None:
        self.size, self.seed, self.epoch, self.shuffle, self.start = size, seed, epoch, shuffle, start

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        item_seeds = rng.integers(0, 2**62, self.size)
        start, self.start = self.start, 0
        return iter(zip(order[start:].tolist(), item_seeds[start:].tolist(), strict=True))


def item_rng(item_seed: int | None) -> np.random.Generator:
    """The generator for one item's randomness: from its ``EpochSampler`` seed (reproducible, resumable),
    or, for plain integer keys, seeded from torch's global RNG (so ``seed_everything`` still governs it)."""
    return np.random.default_rng(item_seed if item_seed is not None else int(torch.randint(0, 2**62, ()).item()))
