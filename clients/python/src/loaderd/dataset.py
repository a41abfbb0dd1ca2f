"""Datasets, shards and batch iteration: a thin, typed front to the daemon.

A :class:`Dataset` is an immutable description (format, paths, columns,
shuffle); nothing is read until it is iterated, counted or described. All
reading, splitting and shuffling happens in the daemon.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from loaderd import _io
from loaderd._client import Client
from loaderd._formats import BATCH_FORMATS, format_batch
from loaderd._proto import feed_pb2
from loaderd.errors import InvalidArgumentError

__all__ = [
    "Dataset",
    "Shard",
    "ShardPlan",
    "get_dataset_shard",
    "read_csv",
    "read_json",
    "read_numpy",
    "read_parquet",
]

ShardMode = Literal["even", "exact"]
OnError = Literal["raise", "skip"]


def _absolute(path: str) -> str:
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class _Spec:
    format: str
    uris: tuple[str, ...]
    columns: tuple[str, ...] = ()
    seed: int | None = None
    window_rows: int = 0
    on_error: OnError = "raise"
    options: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    partitions: int = 0

    def to_proto(self) -> feed_pb2.DatasetSpec:
        spec = feed_pb2.DatasetSpec(
            format=self.format,
            uris=list(self.uris),
            columns=list(self.columns),
            on_error=feed_pb2.ON_ERROR_SKIP if self.on_error == "skip" else feed_pb2.ON_ERROR_RAISE,
            options=dict(self.options),
            partitions=self.partitions,
        )
        if self.seed is not None:
            spec.shuffle.seed = self.seed
            spec.shuffle.window_rows = self.window_rows
        return spec


class Dataset:
    """A dataset served by the loaderd daemon.

    Make one with :func:`read_parquet`; derive others with :meth:`shuffle`;
    split it with :meth:`shard`. Iterating the whole dataset
    (:meth:`iter_batches`) is the same as iterating shard 0 of 1.
    """

    def __init__(self, spec: _Spec, client: Client) -> None:
        self._spec = spec
        self._client = client

    def __repr__(self) -> str:
        shuffle = f", shuffle(seed={self._spec.seed})" if self._spec.seed is not None else ""
        return f"Dataset({self._spec.format}: {', '.join(self._spec.uris)}{shuffle})"

    @property
    def socket(self) -> str:
        """The daemon socket this dataset talks to."""
        return self._client.socket

    def shuffle(self, seed: int, *, window_rows: int | None = None) -> Dataset:
        """A seeded shuffle: blocks are permuted, then rows within windows of
        ``window_rows`` consecutive samples of each rank. Each epoch gets its
        own order; the same seed gives the same order on any machine."""
        if not 0 <= seed < 2**64:
            raise InvalidArgumentError(f"seed must be in [0, 2**64), got {seed}")
        if window_rows is not None and window_rows < 1:
            raise InvalidArgumentError(f"window_rows must be positive, got {window_rows}")
        return Dataset(replace(self._spec, seed=seed, window_rows=window_rows or 0), self._client)

    def shard(self, rank: int, world_size: int, mode: ShardMode = "even") -> Shard:
        """Rank ``rank``'s share of each epoch, out of ``world_size`` ranks.

        ``even``: every rank gets the same count, the shortfall padded by
        repeating samples (so collective ops line up); ``exact``: every sample
        exactly once, counts differ by at most one.
        """
        return Shard(self, rank, world_size, mode)

    def repartition(self, num_partitions: int) -> Dataset:
        """The rows regrouped into ``num_partitions`` equal partitions: a
        write then makes that many files. Reading is unaffected (the daemon
        splits rows across ranks whatever the partitioning)."""
        if num_partitions < 1:
            raise InvalidArgumentError(f"num_partitions must be positive, got {num_partitions}")
        return Dataset(replace(self._spec, partitions=num_partitions), self._client)

    def write_parquet(self, path: str, *, rows_per_file: int | None = None) -> list[str]:
        """Run the whole pipeline in the daemon and write Parquet files
        ``part-NNNNN.parquet`` under ``path`` (inside a data root). Each file
        appears whole, when complete. Returns the files written."""
        return _io.write(self, "parquet", path, rows_per_file)

    def write_csv(self, path: str, *, rows_per_file: int | None = None) -> list[str]:
        """As :meth:`write_parquet`, as CSV with a header (flat columns only)."""
        return _io.write(self, "csv", path, rows_per_file)

    def write_json(self, path: str, *, rows_per_file: int | None = None) -> list[str]:
        """As :meth:`write_parquet`, as JSON Lines (``part-NNNNN.jsonl``)."""
        return _io.write(self, "json", path, rows_per_file)

    def groupby(self, key: str) -> _io.GroupedData:
        """Rows grouped by the values of column ``key``, assembled in the daemon."""
        return _io.GroupedData(self, key)

    def count(self) -> int:
        """Rows in the dataset (one epoch, unpadded)."""
        return int(self._client.describe(self._spec.to_proto()).num_rows)

    def schema(self) -> pa.Schema:
        """The Arrow schema of the batches."""
        resp = self._client.describe(self._spec.to_proto())
        return pa.ipc.read_schema(pa.py_buffer(resp.arrow_schema))

    def iter_batches(
        self,
        batch_size: int = 256,
        *,
        epoch: int = 0,
        batch_format: str = "numpy",
        drop_last: bool = False,
    ) -> Iterator[Any]:
        """Every row of the dataset, in batches (the shard of rank 0 of 1)."""
        return self.shard(0, 1, "exact").iter_batches(
            batch_size, epoch=epoch, batch_format=batch_format, drop_last=drop_last
        )


@dataclass(frozen=True)
class ShardPlan:
    """One rank's share of an epoch, as its daemon plans it."""

    fingerprint: str
    """Identifies the epoch's global plan (files, block order, world size,
    mode, shuffle, epoch): equal on every node that serves the same plan, so
    the ranks of a multi-node job can compare it (e.g. with an all-gather)."""
    num_samples: int
    """Samples this rank gets, padding included."""
    padding_samples: int
    """Trailing samples that repeat earlier ones (``even`` mode)."""
    total_samples: int
    """Distinct samples in the epoch, all ranks together."""


class Shard:
    """One rank's view of a dataset. Iterate it once per epoch."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int, mode: ShardMode) -> None:
        if world_size < 1:
            raise InvalidArgumentError(f"world_size must be at least 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise InvalidArgumentError(f"rank {rank} is outside world_size {world_size}")
        if mode not in ("even", "exact"):
            raise InvalidArgumentError(f"mode must be 'even' or 'exact', got {mode!r}")
        self.dataset = dataset
        self.rank = rank
        self.world_size = world_size
        self.mode: ShardMode = mode
        self.job = os.environ.get("LOADERD_JOB", "")

    def __repr__(self) -> str:
        return f"Shard(rank={self.rank}, world_size={self.world_size}, mode={self.mode!r}, {self.dataset!r})"

    def _open(self, epoch: int, batch_size: int = 0, drop_last: bool = False) -> feed_pb2.OpenStream:
        return feed_pb2.OpenStream(
            dataset=self.dataset._spec.to_proto(),
            rank=self.rank,
            world_size=self.world_size,
            mode=feed_pb2.SHARD_MODE_EXACT if self.mode == "exact" else feed_pb2.SHARD_MODE_EVEN,
            epoch=epoch,
            batch_size=batch_size,
            drop_last=drop_last,
            job=self.job,
        )

    def plan(self, epoch: int = 0) -> ShardPlan:
        """This rank's share of ``epoch`` and the fingerprint of the global
        plan, without reading any data."""
        if epoch < 0:
            raise InvalidArgumentError(f"epoch must not be negative, got {epoch}")
        resp = self.dataset._client.plan(self._open(epoch))
        return ShardPlan(resp.plan_fingerprint, resp.num_samples, resp.padding_samples, resp.total_samples)

    def iter_batches(
        self,
        batch_size: int = 256,
        *,
        epoch: int = 0,
        batch_format: str = "numpy",
        drop_last: bool = False,
        padding_column: str | None = None,
    ) -> Iterator[Any]:
        """This rank's batches of one epoch.

        ``batch_format``: ``"numpy"`` (dict of column name to ndarray),
        ``"pyarrow"`` (``pyarrow.Table``) or ``"pandas"`` (DataFrame).
        In ``even`` mode the last rows of an epoch may repeat earlier samples;
        ``padding_column="name"`` adds a boolean column that marks them.
        """
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be positive, got {batch_size}")
        if epoch < 0:
            raise InvalidArgumentError(f"epoch must not be negative, got {epoch}")
        if batch_format not in BATCH_FORMATS:
            raise InvalidArgumentError(f"batch_format must be one of {BATCH_FORMATS}, got {batch_format!r}")
        return self._iter(self._open(epoch, batch_size, drop_last), batch_format, padding_column)

    def _iter(self, req: feed_pb2.OpenStream, batch_format: str, padding_column: str | None) -> Iterator[Any]:
        stream = self.dataset._client.stream(req)
        for rb, meta in stream:
            if padding_column is not None:
                n = rb.num_rows
                mask = np.arange(n) >= n - meta.padding_rows
                rb = rb.append_column(padding_column, pa.array(mask))
            yield format_batch(rb, batch_format)


def read_parquet(
    paths: str | Sequence[str],
    *,
    columns: Sequence[str] | None = None,
    on_error: OnError = "raise",
    socket: str | None = None,
) -> Dataset:
    """A dataset of Parquet files: paths, directories or glob patterns (``**``
    for any depth), read in sorted order; relative paths are taken from the
    current directory. ``columns`` selects and orders top-level columns.
    ``on_error="skip"`` skips unreadable files and blocks instead of raising.
    """
    uris = (paths,) if isinstance(paths, str) else tuple(paths)
    if not uris:
        raise InvalidArgumentError("read_parquet needs at least one path")
    if on_error not in ("raise", "skip"):
        raise InvalidArgumentError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    spec = _Spec(
        format="parquet",
        uris=tuple(_absolute(u) for u in uris),
        columns=tuple(columns or ()),
        on_error=on_error,
    )
    return Dataset(spec, Client(socket))


def _open(
    format: str,
    paths: str | Sequence[str],
    columns: Sequence[str] | None,
    on_error: OnError,
    socket: str | None,
    options: dict[str, str],
) -> Dataset:
    uris = (paths,) if isinstance(paths, str) else tuple(paths)
    if not uris:
        raise InvalidArgumentError(f"read_{format} needs at least one path")
    if on_error not in ("raise", "skip"):
        raise InvalidArgumentError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    spec = _Spec(
        format=format,
        uris=tuple(_absolute(u) for u in uris),
        columns=tuple(columns or ()),
        on_error=on_error,
        options=tuple(sorted(options.items())),
    )
    return Dataset(spec, Client(socket))


def _text_options(schema: pa.Schema | None, block_bytes: int | None) -> dict[str, str]:
    opts: dict[str, str] = {}
    if schema is not None:
        opts["schema"] = base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")
    if block_bytes is not None:
        if block_bytes < 1:
            raise InvalidArgumentError(f"block_bytes must be positive, got {block_bytes}")
        opts["block_bytes"] = str(block_bytes)
    return opts


def read_csv(
    paths: str | Sequence[str],
    *,
    columns: Sequence[str] | None = None,
    schema: pa.Schema | None = None,
    delimiter: str | None = None,
    header: bool = True,
    lazy_quotes: bool = False,
    block_bytes: int | None = None,
    on_error: OnError = "raise",
    socket: str | None = None,
) -> Dataset:
    """A dataset of CSV files (local paths, globs, ``s3://`` or ``gs://``).

    Types are inferred from the start of each file unless ``schema`` gives
    them (then every file must have that many columns). A UTF-8 BOM is
    skipped; quoted fields may hold delimiters and newlines. Files split into
    blocks of about ``block_bytes`` (default 4 MiB) at record boundaries.
    """
    opts = _text_options(schema, block_bytes)
    if delimiter is not None:
        opts["delimiter"] = delimiter
    if not header:
        opts["header"] = "false"
    if lazy_quotes:
        opts["lazy_quotes"] = "true"
    return _open("csv", paths, columns, on_error, socket, opts)


def read_json(
    paths: str | Sequence[str],
    *,
    columns: Sequence[str] | None = None,
    schema: pa.Schema | None = None,
    block_bytes: int | None = None,
    on_error: OnError = "raise",
    socket: str | None = None,
) -> Dataset:
    """A dataset of JSON Lines files: one JSON value per line (an object per
    row; a value may span lines inside brackets). Types are inferred from the
    start of each file unless ``schema`` gives them; a key whose values
    disagree in type holds their JSON text."""
    return _open("json", paths, columns, on_error, socket, _text_options(schema, block_bytes))


def read_numpy(
    paths: str | Sequence[str],
    *,
    columns: Sequence[str] | None = None,
    column: str = "data",
    block_bytes: int | None = None,
    on_error: OnError = "raise",
    socket: str | None = None,
) -> Dataset:
    """A dataset of ``.npy`` arrays (one column, named ``column``) or ``.npz``
    archives (a column per member): a row is an index of the first axis, and
    ``(N, d1, ...)`` arrays give ``(n, d1, ...)`` ndarrays per batch. Object
    (pickled) arrays are refused."""
    opts = _text_options(None, block_bytes)
    opts["column"] = column
    return _open("numpy", paths, columns, on_error, socket, opts)


def get_dataset_shard(ds: Dataset, mode: ShardMode = "even") -> Shard:
    """This process's shard, from the environment that torchrun and most
    launchers set: ``RANK`` and ``WORLD_SIZE``; without ``RANK``, the global
    rank is ``NODE_RANK * LOCAL_WORLD_SIZE + LOCAL_RANK`` (nodes with the same
    number of ranks each, as torchrun makes them).

    On many nodes, each rank talks to its own node's daemon (the socket is
    per node); every daemon computes the same global plan, so the ranks
    together read each sample of an epoch exactly once, with no coordinator.
    """
    env = os.environ

    def ints(*names: str) -> list[int] | None:
        if not all(n in env for n in names):
            return None
        try:
            return [int(env[n]) for n in names]
        except ValueError:
            shown = " and ".join(f"{n}={env[n]!r}" for n in names)
            raise InvalidArgumentError(f"{shown} must be integers") from None

    world = ints("WORLD_SIZE")
    rank = ints("RANK")
    if rank is None and (local := ints("NODE_RANK", "LOCAL_WORLD_SIZE", "LOCAL_RANK")) is not None:
        node, per_node, local_rank = local
        if not 0 <= local_rank < per_node:
            raise InvalidArgumentError(f"LOCAL_RANK={local_rank} is outside LOCAL_WORLD_SIZE={per_node}")
        rank = [node * per_node + local_rank]
    if world is None or rank is None:
        raise InvalidArgumentError(
            "get_dataset_shard needs RANK and WORLD_SIZE in the environment (set by torchrun), or "
            "WORLD_SIZE with NODE_RANK, LOCAL_RANK and LOCAL_WORLD_SIZE; or call ds.shard(rank, world_size)"
        )
    return ds.shard(rank[0], world[0], mode)
