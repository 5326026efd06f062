"""A shuffling train loader that resumes mid-epoch: a run killed after batch k of an epoch and resumed
from its checkpoint sees batch k+1 next, exactly as an uninterrupted run would.

Each epoch's order is a permutation drawn from a generator seeded with ``seed + epoch`` (as PyTorch's
``DistributedSampler`` does), so it is a function of the seed and the epoch alone. Lightning stores the
state of a loader that has ``state_dict``/``load_state_dict`` in its checkpoints, gives it back before
iterating, and tells the sampler the epoch (``set_epoch``); the state here is the number of batches
already delivered in the current epoch, which the next pass leaves out.

Under data parallelism every rank computes the same permutation and takes its own slice of each global
batch (``batch_size × world`` records); the sampler is a ``DistributedSampler`` so that Lightning does
not replace it.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler


class EpochSampler(DistributedSampler):
    """Record indices of one epoch: whole global batches of a seeded permutation, this rank's slice of
    each, after the first ``skip`` batches when resuming. ``len`` is a full epoch's count for this rank.

    The epoch is what ``set_epoch`` last said (Lightning calls it before every epoch), and otherwise
    one more than the last pass's, so plain loops get a new order per epoch too.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        # DistributedSampler.__init__ would ask torch.distributed for the world: set what it sets instead
        self.dataset, self.num_replicas, self.rank, self.shuffle, self.drop_last = range(size), world, rank, True, True
        self.seed, self.epoch = seed, 0
        self.size, self.batch_size = size, batch_size
        self.batches = size // (batch_size * world)
        self.num_samples = self.total_size = self.batches * batch_size
        self.skip = 0

    def order(self, epoch: int) -> list[int]:
        """The permutation of all records in ``epoch``."""
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def __iter__(self):
        epoch, skip = self.epoch, self.skip
        self.epoch, self.skip = epoch + 1, 0
        order = self.order(epoch)
        step = self.batch_size * self.num_replicas
        for b in range(skip, self.batches):
            start = b * step + self.rank * self.batch_size
            yield from order[start : start + self.batch_size]

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class ResumableLoader(DataLoader):
    """``DataLoader`` over ``dataset`` in shuffled whole batches that saves and restores its position.

    Args:
        dataset: the records (a list).
        batch_size: records per batch on this rank.
        seed: the shuffling seed.
        rank, world: this process's place in data parallelism.
        collate_fn, num_workers: as ``DataLoader``'s.
    """

    def __init__(self, dataset, batch_size: int, seed: int, collate_fn=None, num_workers: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        self.epoch_sampler = EpochSampler(len(dataset), batch_size, seed, rank, world)
        super().__init__(dataset, batch_size=batch_size, sampler=self.epoch_sampler, drop_last=True,
                         collate_fn=collate_fn, num_workers=num_workers, persistent_workers=num_workers > 0)
        self.delivered = 0  # batches of the current epoch handed to training

    def __iter__(self):
        self.delivered = self.epoch_sampler.skip
        for batch in super().__iter__():
            self.delivered += 1
            yield batch

    def _shape(self) -> dict:
        sampler = self.epoch_sampler
        return {"size": sampler.size, "batch_size": self.batch_size, "world": sampler.num_replicas}

    def state_dict(self) -> dict:
        return {"delivered": self.delivered, **self._shape()}

    def load_state_dict(self, state: dict) -> None:
        theirs = {k: state.get(k) for k in self._shape()}
        if theirs != self._shape():
            raise ValueError(f"ckpt_path: the checkpoint's train loader had {theirs}, this run's has {self._shape()}; "
                             "resume with the same data, data.batch_size and number of devices")
        # a finished epoch (saved after its last batch) resumes as an empty pass, then the next epoch
        self.epoch_sampler.skip = min(int(state["delivered"]), self.epoch_sampler.batches)
