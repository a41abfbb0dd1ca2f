"""Writing datasets and grouping them: the daemon runs the pipeline, writes
the files or assembles the groups; the client only asks and, for
``map_groups``, applies the function."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loaderd._formats import BATCH_FORMATS, format_batch
from loaderd._proto import feed_pb2
from loaderd.errors import InvalidArgumentError

if TYPE_CHECKING:
    from loaderd.dataset import Dataset


def write(ds: Dataset, fmt: str, path: str, rows_per_file: int | None) -> list[str]:
    if "://" not in path:
        path = os.path.abspath(os.path.expanduser(path))
    if rows_per_file is not None and rows_per_file < 1:
        raise InvalidArgumentError(f"rows_per_file must be positive, got {rows_per_file}")
    req = feed_pb2.WriteRequest(
        dataset=ds._spec.to_proto(),
        format=fmt,
        dir=path,
        rows_per_file=rows_per_file or 0,
        job=os.environ.get("LOADERD_JOB", ""),
    )
    return list(ds._client.write(req).paths)


class GroupedData:
    """A dataset grouped by one key column (from :meth:`Dataset.groupby`).
    The daemon holds the dataset while it groups it, up to its configured
    memory bound; select the columns you need."""

    def __init__(self, ds: Dataset, key: str) -> None:
        if not key:
            raise InvalidArgumentError("groupby needs a key column")
        self._ds = ds
        self.key = key

    def _groups(self, count_only: bool) -> Iterator[pa.RecordBatch]:
        req = feed_pb2.GroupByRequest(dataset=self._ds._spec.to_proto(), key=self.key, count_only=count_only)
        return self._ds._client.group_by(req)

    def count(self) -> pa.Table:
        """One row per key, in key order: the key column and ``count``."""
        return pa.Table.from_batches(list(self._groups(True)))

    def map_groups(self, fn: Callable[[Any], Any], *, batch_format: str = "numpy") -> list[Any]:
        """``fn`` applied to each group, in key order, here in the client;
        each group comes as one batch in ``batch_format``. Returns the results."""
        if batch_format not in BATCH_FORMATS:
            raise InvalidArgumentError(f"batch_format must be one of {BATCH_FORMATS}, got {batch_format!r}")
        return [fn(format_batch(rb, batch_format)) for rb in self._groups(False)]
