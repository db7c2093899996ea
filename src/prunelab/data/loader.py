"""An in-memory batch loader for data sets that fit in memory (digits, MNIST, Fashion-MNIST, CIFAR).

Small image sets are held as one normalized tensor: batching by indexing is many times faster than a
per-sample ``Dataset`` with PIL transforms, and it makes the order of every epoch a pure function of
(seed, epoch), which is what lets a resumed run reproduce an uninterrupted one bit for bit.
Augmentation (random crop with padding, horizontal flip) runs on whole batches with the same generator.
"""
from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import Tensor


class TensorLoader:
    """Iterates (x, y) batches; ``set_epoch(e)`` fixes the shuffle and augmentation of epoch ``e``.

    ``shard=(rank, world)`` gives every process a disjoint, equally sized share of each epoch's order, taken
    batch by batch: step ``i``'s batches of all ranks together are the one-process batch ``i`` of
    ``batch_size * world`` samples (rank ``r`` its ``r``-th slice), so ranks that average their gradients train
    on the same batches as one process (equal up to float rounding where nothing depends on the split, such as
    BatchNorm statistics).
    """

    yields_targets = True  # its batches are (inputs, targets): calibration reads it instead of guessing

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                 crop_pad: int = 0, flip: bool = False, shard: tuple[int, int] = (0, 1)) -> None:
        if len(x) != len(y):
            raise ValueError("x and y differ in length")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle, self.seed = shuffle, seed
        self.crop_pad, self.flip = crop_pad, flip
        self.rank, self.world = shard
        self.epoch = 0
        self.pin_memory = False  # yield batches in page-locked memory (for asynchronous copies to a GPU)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(zlib.crc32(f"loader/{self.seed}/{self.epoch}".encode()))

    def _order(self, gen: torch.Generator) -> Tensor:
        n = len(self.x)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if self.world > 1:  # this rank's slice of every global batch (the last one's as cut by world)
            per, b = n // self.world, self.batch_size
            parts = []
            for start in range(0, per, b):
                k = min(b, per - start)
                g = start * self.world
                parts.append(order[g + self.rank * k:g + (self.rank + 1) * k])
            order = torch.cat(parts) if parts else order[:0]
        return order

    def __len__(self) -> int:
        n = len(self.x) // self.world if self.world > 1 else len(self.x)
        return (n + self.batch_size - 1) // self.batch_size

    @property
    def num_samples(self) -> int:
        return len(self.x) // self.world if self.world > 1 else len(self.x)

    def __iter__(self):
        gen = self._generator()
        order = self._order(gen)
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            xb = self.x[idx]
            if self.crop_pad or self.flip:
                xb = self._augment(xb, gen)
            yb = self.y[idx]
            yield (xb.pin_memory(), yb.pin_memory()) if self.pin_memory else (xb, yb)

    def _augment(self, xb: Tensor, gen: torch.Generator) -> Tensor:
        n, _, h, w = xb.shape
        if self.crop_pad:
            p = self.crop_pad
            padded = F.pad(xb, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
            cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
            xb = padded[torch.arange(n)[:, None, None, None], torch.arange(xb.shape[1])[None, :, None, None],
                        rows[:, None, :, None], cols[:, None, None, :]]
        if self.flip:
            flip = torch.rand(n, generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
        return xb
