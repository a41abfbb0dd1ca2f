"""The torch adapter: a shard as an IterableDataset (imports torch)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch.utils.data

from loaderd.errors import InvalidArgumentError

if TYPE_CHECKING:
    from loaderd.dataset import Shard


class ShardIterable(torch.utils.data.IterableDataset[dict[str, Any]]):
    """One shard's batches of the current epoch, as dicts of tensors.

    The daemon already reads, shuffles and batches in parallel, so the
    DataLoader needs no workers. Each DataLoader worker gets its own copy of
    an IterableDataset and iterates all of it: with two or more workers,
    every sample would arrive once per worker. That is refused rather than
    split among the workers, because the shard's cursor (``state_dict``) must
    live in the training process to checkpoint it.
    """

    def __init__(self, shard: Shard, batch_size: int, kwargs: dict[str, Any]) -> None:
        self.shard = shard
        self.batch_size = batch_size
        self.kwargs = kwargs
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        return self.shard.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shard.load_state_dict(state)
        self.epoch = int(state["epoch"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise InvalidArgumentError(
                f"loaderd's to_torch() dataset is in a DataLoader with num_workers={info.num_workers}: "
                "each worker would read the whole shard, every sample once per worker. Use "
                "DataLoader(ds, batch_size=None, num_workers=0): the daemon already reads, shuffles "
                "and batches in parallel"
            )
        return self.shard.iter_torch_batches(self.batch_size, epoch=self.epoch, **self.kwargs)
