"""The torch adapter: a shard as an IterableDataset (imports torch)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch.utils.data

if TYPE_CHECKING:
    from loaderd.dataset import Shard


class ShardIterable(torch.utils.data.IterableDataset[dict[str, Any]]):
    """One shard's batches of the current epoch, as dicts of tensors."""

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
        return self.shard.iter_torch_batches(self.batch_size, epoch=self.epoch, **self.kwargs)
