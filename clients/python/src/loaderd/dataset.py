"""Datasets, shards and batch iteration: a thin, typed front to the daemon.

A :class:`Dataset` is an immutable description (format, paths, columns,
shuffle); nothing is read until it is iterated, counted or described. All
reading, splitting and shuffling happens in the daemon.
"""

from __future__ import annotations

import base64
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from loaderd import _io, _udf
from loaderd._client import TRANSPORTS, BatchMeta, BatchStream, Client, Transport
from loaderd._formats import BATCH_FORMATS, format_batch
from loaderd._proto import feed_pb2
from loaderd.errors import DaemonUnavailableError, InvalidArgumentError, NotFoundError

__all__ = [
    "Dataset",
    "Shard",
    "ShardPlan",
    "get_dataset_shard",
    "read_csv",
    "read_images",
    "read_json",
    "read_numpy",
    "read_parquet",
    "read_webdataset",
]

ShardMode = Literal["even", "exact"]
OnError = Literal["raise", "skip"]
Size = int | tuple[int, int]

_log = logging.getLogger("loaderd")

# torchvision's ImageNet statistics, for normalize().
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _absolute(path: str) -> str:
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def _size(name: str, size: Size) -> tuple[int, int]:
    """(height, width) from torchvision's int-or-pair size."""
    if isinstance(size, int):
        h, w = size, size
    else:
        if len(size) != 2:
            raise InvalidArgumentError(f"{name}: size must be an int or (height, width), got {size!r}")
        h, w = size
    if not (isinstance(h, int) and isinstance(w, int)) or h < 1 or w < 1:
        raise InvalidArgumentError(f"{name}: size must be positive integers, got {size!r}")
    return h, w


@dataclass(frozen=True)
class _Image:
    """Which column holds encoded images, and the transforms, in order."""

    column: str
    transforms: tuple[feed_pb2.ImageTransform, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class _Spec:
    format: str
    uris: tuple[str, ...]
    columns: tuple[str, ...] = ()
    seed: int | None = None
    window_rows: int = 0
    on_error: OnError = "raise"
    options: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    image: _Image | None = None
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
        # Images are decoded once a transform gives them one size; until
        # then the column holds the encoded bytes.
        if self.image is not None and self.image.transforms:
            spec.image.column = self.image.column
            spec.image.transforms.extend(self.image.transforms)
            seed = self.image.seed if self.image.seed is not None else self.seed
            spec.image.seed = seed or 0
        return spec


class Dataset:
    """A dataset served by the loaderd daemon.

    Make one with :func:`read_parquet`; derive others with :meth:`shuffle`;
    split it with :meth:`shard`. Iterating the whole dataset
    (:meth:`iter_batches`) is the same as iterating shard 0 of 1.
    """

    def __init__(self, spec: _Spec, client: Client, udfs: tuple[_udf.Udf, ...] = ()) -> None:
        self._spec = spec
        self._client = client
        self._udfs = udfs

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
        return self._replace(seed=seed, window_rows=window_rows or 0)

    def decode_image(self, column: str = "image", *, seed: int | None = None) -> Dataset:
        """Decode the encoded images (JPEG, PNG, WebP, BMP, TIFF) of a binary
        ``column``, with their EXIF orientation applied, as RGB. The
        transforms that follow (:meth:`random_resized_crop`, :meth:`resize`,
        :meth:`center_crop`, :meth:`random_horizontal_flip`,
        :meth:`normalize`) run in the daemon, in order, with torchvision's
        semantics; the column becomes ``uint8`` (H, W, 3), or ``float32``
        (3, H, W) once normalized. Until a transform gives every image one
        size, the column keeps the encoded bytes.

        Random transforms draw from ``(seed, epoch, row)``, the row being the
        sample's place in the dataset: the same seed gives the same pixels
        on every run, whatever the world size or shuffle. ``seed`` defaults
        to the shuffle's seed, or 0 when unshuffled.
        """
        if seed is not None and not 0 <= seed < 2**64:
            raise InvalidArgumentError(f"seed must be in [0, 2**64), got {seed}")
        if self._spec.image is not None and self._spec.image.transforms:
            raise InvalidArgumentError("decode_image: this dataset already decodes images")
        return self._replace(image=_Image(column=column, seed=seed))

    def random_resized_crop(
        self,
        size: Size,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> Dataset:
        """torchvision's RandomResizedCrop: a random area fraction in
        ``scale`` with a random aspect ratio in ``ratio``, resized (bilinear,
        antialiased) to ``size``."""
        h, w = _size("random_resized_crop", size)
        if not (0 <= scale[0] <= scale[1] and scale[1] > 0):
            raise InvalidArgumentError(f"random_resized_crop: scale must be 0 <= min <= max, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise InvalidArgumentError(f"random_resized_crop: ratio must be 0 < min <= max, got {ratio}")
        op = feed_pb2.ImageRandomResizedCrop(height=h, width=w)
        op.scale_min, op.scale_max = scale
        op.ratio_min, op.ratio_max = ratio
        return self._transform(feed_pb2.ImageTransform(random_resized_crop=op))

    def resize(self, size: Size) -> Dataset:
        """torchvision's Resize: an int makes the shorter edge ``size`` and
        keeps the aspect ratio (follow it with a crop for equal sizes);
        ``(height, width)`` resizes to exactly that."""
        if isinstance(size, int):
            h, w = _size("resize", size)[0], 0
        else:
            h, w = _size("resize", size)
        return self._transform(feed_pb2.ImageTransform(resize=feed_pb2.ImageResize(height=h, width=w)))

    def center_crop(self, size: Size) -> Dataset:
        """torchvision's CenterCrop, padding with zeros where the image is
        smaller."""
        h, w = _size("center_crop", size)
        op = feed_pb2.ImageCenterCrop(height=h, width=w)
        return self._transform(feed_pb2.ImageTransform(center_crop=op))

    def random_horizontal_flip(self, p: float = 0.5) -> Dataset:
        """torchvision's RandomHorizontalFlip: mirror with probability ``p``."""
        if not 0 <= p <= 1:
            raise InvalidArgumentError(f"random_horizontal_flip: p must be in [0, 1], got {p}")
        return self._transform(
            feed_pb2.ImageTransform(random_horizontal_flip=feed_pb2.ImageRandomHorizontalFlip(p=p))
        )

    def normalize(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> Dataset:
        """torchvision's ToTensor then Normalize: ``float32`` (3, H, W) of
        ``(x / 255 - mean) / std`` per channel. The last transform."""
        if len(mean) not in (1, 3) or len(std) != len(mean):
            raise InvalidArgumentError("normalize: mean and std need 1 or 3 values each")
        if any(v == 0 for v in std):
            raise InvalidArgumentError("normalize: std must not be 0")
        return self._transform(
            feed_pb2.ImageTransform(normalize=feed_pb2.ImageNormalize(mean=list(mean), std=list(std)))
        )

    def _transform(self, t: feed_pb2.ImageTransform) -> Dataset:
        image = self._spec.image
        if image is None:
            raise InvalidArgumentError(
                "image transforms need images: call decode_image(column) first (read_images and "
                "read_webdataset decode their image column)"
            )
        return self._replace(image=replace(image, transforms=(*image.transforms, t)))

    def _replace(self, **changes: Any) -> Dataset:
        return Dataset(replace(self._spec, **changes), self._client, self._udfs)

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
        return Dataset(replace(self._spec, partitions=num_partitions), self._client, self._udfs)

    def write_parquet(self, path: str, *, rows_per_file: int | None = None) -> list[str]:
        """Run the whole pipeline in the daemon and write Parquet files
        ``part-NNNNN.parquet`` under ``path`` (inside a data root). Each file
        appears whole, when complete. Returns the files written."""
        self._daemon_only("write_parquet")
        return _io.write(self, "parquet", path, rows_per_file)

    def write_csv(self, path: str, *, rows_per_file: int | None = None) -> list[str]:
        """As :meth:`write_parquet`, as CSV with a header (flat columns only)."""
        self._daemon_only("write_csv")
        return _io.write(self, "csv", path, rows_per_file)

    def write_json(self, path: str, *, rows_per_file: int | None = None) -> list[str]:
        """As :meth:`write_parquet`, as JSON Lines (``part-NNNNN.jsonl``)."""
        self._daemon_only("write_json")
        return _io.write(self, "json", path, rows_per_file)

    def groupby(self, key: str) -> _io.GroupedData:
        """Rows grouped by the values of column ``key``, assembled in the daemon."""
        self._daemon_only("groupby")
        return _io.GroupedData(self, key)

    def map_batches(
        self, fn: Callable[[Any], Any], *, batch_format: str = "numpy", num_threads: int = 0
    ) -> Dataset:
        """Apply ``fn`` to every batch, in the client (the trainer's process)
        as batches arrive: Python cannot run in the daemon. ``fn`` gets the
        batch in ``batch_format`` and returns a dict of arrays, a pyarrow
        Table/RecordBatch or a pandas DataFrame. The result is a copy.

        ``num_threads=n`` calls ``fn`` on up to ``n`` batches at once in a
        thread pool (``fn`` must then be thread-safe; it pays when ``fn``
        releases the GIL, as NumPy, pandas and Arrow compute do), with at
        most ``n + 1`` batches in flight; batches still come out in order.
        An exception in ``fn`` is raised as :class:`LoaderError` naming
        ``fn``, with the original as its ``__cause__``."""
        if batch_format not in BATCH_FORMATS:
            raise InvalidArgumentError(f"batch_format must be one of {BATCH_FORMATS}, got {batch_format!r}")
        _udf.check_threads(num_threads)
        return self._with_udf(_udf.Udf("batches", fn, batch_format, num_threads))

    def map(self, fn: Callable[[dict[str, Any]], dict[str, Any]], *, num_threads: int = 0) -> Dataset:
        """Apply ``fn`` to every row (a dict), in the client, after receipt.
        Row by row in Python: prefer :meth:`map_batches` for speed.
        ``num_threads`` as for :meth:`map_batches` (a batch's rows stay on
        one thread)."""
        _udf.check_threads(num_threads)
        return self._with_udf(_udf.Udf("rows", fn, num_threads=num_threads))

    def filter(self, fn: Callable[[dict[str, Any]], bool], *, num_threads: int = 0) -> Dataset:
        """Keep the rows (dicts) for which ``fn`` is true, in the client,
        after receipt: batches may then be smaller than ``batch_size``.
        ``num_threads`` as for :meth:`map_batches`."""
        _udf.check_threads(num_threads)
        return self._with_udf(_udf.Udf("filter", fn, num_threads=num_threads))

    def _with_udf(self, u: _udf.Udf) -> Dataset:
        return Dataset(self._spec, self._client, (*self._udfs, u))

    def _daemon_only(self, what: str) -> None:
        if self._udfs:
            raise InvalidArgumentError(
                f"{what} runs in the daemon, which cannot apply map_batches/map/filter (client-side "
                "Python); iterate the dataset and write the batches yourself"
            )

    def take(self, n: int = 20) -> list[dict[str, Any]]:
        """The first ``n`` rows (epoch 0), as dicts."""
        if n <= 0:
            return []
        rows: list[dict[str, Any]] = self.to_arrow(limit=n).to_pylist()
        return rows

    def count(self) -> int:
        """Rows in the dataset (one epoch, unpadded). With client-side
        functions (:meth:`filter`, :meth:`map`), the rows are read and counted."""
        if self._udfs:
            return sum(t.num_rows for t in self.iter_batches(batch_size=8192, batch_format="pyarrow"))
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
        transport: Transport = "auto",
    ) -> Iterator[Any]:
        """Every row of the dataset, in batches (the shard of rank 0 of 1)."""
        return self.shard(0, 1, "exact").iter_batches(
            batch_size, epoch=epoch, batch_format=batch_format, drop_last=drop_last, transport=transport
        )

    def iter_torch_batches(self, batch_size: int = 256, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Every row of the dataset as dicts of torch tensors (the shard of
        rank 0 of 1); the arguments are :meth:`Shard.iter_torch_batches`'s."""
        return self.shard(0, 1, "exact").iter_torch_batches(batch_size, **kwargs)

    def to_pandas(self, limit: int | None = None) -> Any:
        """The whole dataset (epoch 0, or its first ``limit`` rows) as one
        pandas DataFrame, in this process: for small data."""
        return self.to_arrow(limit).to_pandas()

    def to_arrow(self, limit: int | None = None) -> pa.Table:
        """The whole dataset (epoch 0, or its first ``limit`` rows) as one
        pyarrow Table, in this process: for small data."""
        if limit is not None and limit < 0:
            raise InvalidArgumentError(f"limit must not be negative, got {limit}")
        parts: list[pa.Table] = []
        rows = 0
        size = 8192 if limit is None else max(1, min(limit, 8192))
        for t in self.iter_batches(batch_size=size, batch_format="pyarrow"):
            if limit is not None and rows + t.num_rows >= limit:
                parts.append(t.slice(0, limit - rows))
                break
            parts.append(t)
            rows += t.num_rows
        if not parts:
            return self.schema().empty_table()
        return pa.concat_tables(parts)


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
        # The cursor: where the batches handed out so far end. _resume is a
        # loaded cursor, taken by the next iteration of its epoch.
        self._cursor: dict[str, Any] | None = None
        self._resume: dict[str, Any] | None = None

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
        transport: Transport = "auto",
    ) -> Iterator[Any]:
        """This rank's batches of one epoch.

        ``batch_format``: ``"numpy"`` (dict of column name to ndarray),
        ``"pyarrow"`` (``pyarrow.Table``) or ``"pandas"`` (DataFrame).
        In ``even`` mode the last rows of an epoch may repeat earlier samples;
        ``padding_column="name"`` adds a boolean column that marks them.

        ``transport``: ``"auto"`` takes shared memory when the daemon offers
        it (it does on the same host) and falls back to gRPC; ``"shm"``
        insists on it; ``"grpc"`` copies every batch through the socket.
        Over shared memory, numpy and pyarrow batches are read-only views of
        the daemon's ring, and a batch's slot is reused only once the batch
        (every array of it) is released. Keep fewer batches than the ring
        holds (``loaderd serve --shm-ring-bytes``; about 8 batches) to stay
        on the fast path: past that the daemon waits, then sends the next
        batches over gRPC until you release one.
        """
        _check_iter_args(batch_size, epoch, batch_format, transport)
        req = self._open(epoch, batch_size, drop_last)
        resume, self._resume = self._resume, None
        if resume is not None and resume["epoch"] == epoch:
            req.start_sample = resume["next_sample"]
        else:
            resume = None
        return self._iter(req, batch_format, padding_column, transport, resume)

    def _iter(
        self,
        req: feed_pb2.OpenStream,
        batch_format: str,
        padding_column: str | None,
        transport: Transport,
        resume: dict[str, Any] | None = None,
    ) -> Iterator[Any]:
        udfs = self.dataset._udfs
        stream = self.dataset._client.stream(req, transport)
        fp = stream.header.plan_fingerprint
        if resume is not None and resume["plan_fingerprint"] not in ("", fp):
            stream.close()
            raise InvalidArgumentError(
                f"the saved cursor is for another plan of epoch {req.epoch} (fingerprint "
                f"{resume['plan_fingerprint']}, the daemon plans {fp}): the dataset's files, shuffle, "
                "world size or mode changed"
            )
        self._cursor = self._state(req.epoch, req.start_sample, fp)
        source = self._batches(stream, req, transport)
        if padding_column is not None:
            # Marked before client-side functions, which may drop rows.
            source = _mark_padding(source, padding_column)
        batches = _udf.pipeline(udfs, source) if udfs else source
        try:
            for rb, meta in batches:
                # A batch handed out counts as consumed: a checkpoint taken
                # while the caller holds it resumes after it.
                self._cursor = self._state(req.epoch, meta.next_sample, fp)
                if rb.num_rows == 0:
                    continue  # every sample of it was bad and skipped (or filtered out)
                out = format_batch(rb, batch_format)
                # Keep no reference while suspended: the caller's decide when a
                # shared-memory slot is released.
                del rb
                yield out
                del out
        finally:
            _udf.close(batches)

    def _batches(
        self, stream: BatchStream, req: feed_pb2.OpenStream, transport: Transport
    ) -> Iterator[tuple[pa.RecordBatch, BatchMeta]]:
        """The stream's batches, through what a long epoch may meet, each
        time continuing after the last batch received, as a resume would
        (client-side functions may hold received batches not yet handed
        out): a table of this dataset that the daemon dropped (for room, or
        in a restart) is uploaded again; a daemon that stopped answering is
        waited for, up to ``LOADERD_RECONNECT_TIMEOUT`` seconds (default
        30; 0: not at all), and must plan the epoch as before."""
        client = self.dataset._client
        at, fingerprint = req.start_sample, stream.header.plan_fingerprint
        recoveries = 0
        while True:
            try:
                for rb, meta in stream:
                    at = meta.next_sample
                    yield rb, meta
                    del rb
                return
            except NotFoundError as err:
                recoveries += 1
                if recoveries > _MAX_RECOVERIES:
                    raise NotFoundError(
                        f"{err.message}; uploaded again {recoveries - 1} times this epoch and dropped each "
                        "time: the tables in use on this node do not fit in the daemon's --upload-bytes "
                        "together (raise it, or read files)",
                        code=err.code,
                    ) from None
                if not client.reupload(req.dataset):
                    raise
            except DaemonUnavailableError as err:
                recoveries += 1
                if recoveries > _MAX_RECOVERIES:
                    raise
                _reconnect(client, err)
            req.start_sample = at
            stream = client.stream(req, transport)
            if stream.header.plan_fingerprint != fingerprint:
                stream.close()
                raise InvalidArgumentError(
                    f"the daemon plans epoch {req.epoch} differently since it came back (plan "
                    f"{stream.header.plan_fingerprint}, was {fingerprint}): the dataset's files changed"
                )

    def _state(self, epoch: int, next_sample: int, fingerprint: str) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "epoch": epoch,
            "next_sample": next_sample,
            "rank": self.rank,
            "world_size": self.world_size,
            "mode": self.mode,
            "plan_fingerprint": fingerprint,
        }

    def state_dict(self) -> dict[str, Any]:
        """Where this shard's iteration stands: a small JSON-serializable
        cursor (epoch, next sample, rank, world size, mode, the plan's
        fingerprint). Save it with a checkpoint; :meth:`load_state_dict` in
        a new process (the daemon may have restarted) makes the next
        ``iter_batches(epoch=...)`` of that epoch continue at the next sample,
        nothing skipped or repeated. Batches already handed out count as
        consumed. Before any iteration: epoch 0, sample 0."""
        return dict(self._cursor) if self._cursor is not None else self._state(0, 0, "")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a :meth:`state_dict`: the next iteration of its epoch
        starts at its next sample (iterating another epoch drops it). The
        rank, world size and mode must be this shard's, and the daemon must
        plan the epoch as it did (same files, shuffle, world size)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise InvalidArgumentError(
                f"not a loaderd shard state of version {STATE_VERSION}: {state!r}"[:300]
            )
        mine = {"rank": self.rank, "world_size": self.world_size, "mode": self.mode}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise InvalidArgumentError(f"the saved cursor is for {theirs}, this shard is {mine}")
        try:
            epoch, nxt, fp = int(state["epoch"]), int(state["next_sample"]), str(state["plan_fingerprint"])
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidArgumentError(f"malformed shard state: {err}") from None
        if epoch < 0 or nxt < 0:
            raise InvalidArgumentError(f"malformed shard state: epoch {epoch}, next_sample {nxt}")
        self._resume = self._state(epoch, nxt, fp)
        self._cursor = dict(self._resume)

    def iter_torch_batches(
        self,
        batch_size: int = 256,
        *,
        epoch: int = 0,
        device: Any = None,
        dtypes: dict[str, Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        transport: Transport = "auto",
    ) -> Iterator[dict[str, Any]]:
        """This rank's batches as dicts of torch tensors.

        Tensors are views of the batch's Arrow buffers (shared memory on the
        daemon's host): no copy, and read-only — modify a batch only after
        ``.clone()``. ``dtypes={"x": torch.float32}`` casts (a copy);
        ``pin_memory=True`` copies into pinned memory for fast transfers
        (without CUDA it warns and leaves the tensors unpinned, as torch's
        DataLoader does); ``device="cuda"`` moves the tensors (non-blocking
        when pinned). Columns torch cannot hold (strings, binary) stay NumPy
        arrays.
        """
        import torch

        if pin_memory and not torch.cuda.is_available():
            warnings.warn(
                "loaderd: pin_memory=True but torch finds no CUDA device: the tensors are not pinned",
                stacklevel=2,
            )
            pin_memory = False
        batches = self.iter_batches(
            batch_size, epoch=epoch, batch_format="torch", drop_last=drop_last, transport=transport
        )
        return _torch_batches(batches, device, dtypes or {}, pin_memory)

    def to_torch(self, batch_size: int = 256, **kwargs: Any) -> Any:
        """A ``torch.utils.data.IterableDataset`` over this shard's batches
        (:meth:`iter_torch_batches` arguments), for ``DataLoader(ds,
        batch_size=None)``. Batching, shuffling and decoding happen in the
        daemon: keep ``num_workers=0``. With more workers each would read the
        whole shard (every sample once per worker), so that raises
        :class:`InvalidArgumentError`; one worker works, but its cursor stays
        in the worker process, so :meth:`state_dict` needs ``num_workers=0``.
        Call ``set_epoch(e)`` before each epoch; ``state_dict`` and
        ``load_state_dict`` are the shard's."""
        from loaderd._torch import ShardIterable

        return ShardIterable(self, batch_size, kwargs)

    def to_tf(
        self,
        batch_size: int = 256,
        *,
        epoch: int = 0,
        drop_last: bool = False,
        transport: Transport = "auto",
    ) -> Any:
        """This rank's batches of ``epoch`` as a ``tf.data.Dataset`` of dicts
        of tensors, made with ``tf.data.Dataset.from_generator`` over
        :meth:`iter_batches` (NumPy batches; TensorFlow copies each). The
        element spec comes from the dataset's schema: numbers and booleans,
        fixed-size lists and tensors (extra dimensions), strings and binary
        (``tf.string``); with :meth:`Dataset.map_batches` and the like, from
        the first batch of the dataset through them. Each iteration of the
        result reads the epoch again from the daemon (a loaded
        :meth:`state_dict` applies to the first); make one per epoch. Needs
        ``pip install tensorflow``."""
        from loaderd import _tf

        _check_iter_args(batch_size, epoch, "numpy", transport)
        return _tf.dataset(self, batch_size, epoch, drop_last, transport)


def _check_iter_args(batch_size: int, epoch: int, batch_format: str, transport: str) -> None:
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be positive, got {batch_size}")
    if epoch < 0:
        raise InvalidArgumentError(f"epoch must not be negative, got {epoch}")
    if batch_format not in BATCH_FORMATS:
        raise InvalidArgumentError(f"batch_format must be one of {BATCH_FORMATS}, got {batch_format!r}")
    if transport not in TRANSPORTS:
        raise InvalidArgumentError(f"transport must be one of {TRANSPORTS}, got {transport!r}")


def _torch_batches(
    batches: Iterator[dict[str, Any]], device: Any, dtypes: dict[str, Any], pin_memory: bool
) -> Iterator[dict[str, Any]]:
    import torch

    for batch in batches:
        for name, t in batch.items():
            if not isinstance(t, torch.Tensor):
                continue
            if name in dtypes:
                t = t.to(dtypes[name])
            if pin_memory:
                t = t.pin_memory()
            if device is not None:
                t = t.to(device, non_blocking=pin_memory)
            batch[name] = t
        yield batch


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
    return _open("parquet", paths, columns, on_error, socket, {})


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise InvalidArgumentError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def read_images(
    root: str,
    *,
    on_error: OnError = "raise",
    seed: int | None = None,
    socket: str | None = None,
) -> Dataset:
    """An image folder, as torchvision's ImageFolder reads it: every
    subfolder of ``root`` is a class. Columns: ``image``, ``label`` (int64,
    the index of the class among the sorted folder names; the names are in
    the schema's ``loaderd.classes`` metadata) and ``path``.

    ``image`` is decoded in the daemon once a transform fixes its size, e.g.
    ``read_images(root).random_resized_crop(224).random_horizontal_flip()``;
    see :meth:`Dataset.decode_image` for ``seed``. ``on_error="skip"`` leaves
    out images that do not decode and counts them, instead of raising
    :class:`loaderd.DataError` naming the file.
    """
    _check_on_error(on_error)
    image = _Image("image", seed=seed)
    spec = _Spec(format="images", uris=(_absolute(root),), on_error=on_error, image=image)
    return Dataset(spec, Client(socket))


def read_webdataset(
    paths: str | Sequence[str],
    *,
    columns: Sequence[str] | None = None,
    on_error: OnError = "raise",
    seed: int | None = None,
    socket: str | None = None,
) -> Dataset:
    """WebDataset tar shards: paths, directories or glob patterns
    (``"shards/train-*.tar"``). Members sharing a key form a sample. Columns: ``key``, ``image`` (the
    .jpg/.jpeg/.png/.webp/.bmp/.tif member), ``label`` (from .cls) and
    ``json`` (the .json member's text). ``image`` is decoded as in
    :func:`read_images`. Gzip-compressed shards are read whole; plain .tar
    shards are indexed and read in ranges.
    """
    uris = (paths,) if isinstance(paths, str) else tuple(paths)
    if not uris:
        raise InvalidArgumentError("read_webdataset needs at least one path")
    _check_on_error(on_error)
    spec = _Spec(
        format="webdataset",
        uris=tuple(_absolute(u) for u in uris),
        columns=tuple(columns or ()),
        on_error=on_error,
        image=_Image("image", seed=seed) if not columns or "image" in columns else None,
    )
    return Dataset(spec, Client(socket))


STATE_VERSION = 1
"""Version of :meth:`Shard.state_dict`'s cursor."""

# Recoveries (uploads again, reconnections) one epoch of a shard may need
# before its error is raised: more means something keeps failing.
_MAX_RECOVERIES = 3


def _reconnect(client: Client, err: DaemonUnavailableError) -> None:
    """Wait for a daemon to answer on the client's socket again, up to
    LOADERD_RECONNECT_TIMEOUT seconds; raise when none does."""
    raw = os.environ.get("LOADERD_RECONNECT_TIMEOUT", "30")
    try:
        timeout = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"LOADERD_RECONNECT_TIMEOUT={raw!r} is not a number of seconds") from None
    if timeout <= 0:
        raise err
    _log.warning(
        "loaderd: the daemon on %s stopped answering mid-epoch; waiting up to %gs for it to come back",
        client.socket,
        timeout,
    )
    deadline = time.monotonic() + timeout
    while True:
        # A fresh channel: the old one backs off between attempts.
        client.close()
        try:
            client.version()
            _log.warning("loaderd: the daemon on %s answers again; continuing the epoch", client.socket)
            return
        except DaemonUnavailableError:
            if time.monotonic() > deadline:
                raise DaemonUnavailableError(
                    f"the loaderd daemon on {client.socket} stopped answering mid-epoch and did not come "
                    f"back within {timeout:g}s (LOADERD_RECONNECT_TIMEOUT): the shard's state_dict() holds "
                    "where it got to; load it and iterate again once a daemon serves the socket",
                    code=err.code,
                ) from None
            time.sleep(0.2)


def _mark_padding(
    batches: Iterator[tuple[pa.RecordBatch, BatchMeta]], column: str
) -> Iterator[tuple[pa.RecordBatch, BatchMeta]]:
    """The batches with a boolean ``column`` true on their padding rows (the
    last ``padding_rows``)."""
    for rb, meta in batches:
        n = rb.num_rows
        yield rb.append_column(column, pa.array(np.arange(n) >= n - meta.padding_rows)), meta
        del rb


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
    # torchrun numbers ranks node by node: a LOCAL_RANK that disagrees with
    # RANK means the launcher and the environment do not match.
    if (local2 := ints("LOCAL_RANK", "LOCAL_WORLD_SIZE")) is not None and local2[1] > 0:
        if rank[0] % local2[1] != local2[0]:
            raise InvalidArgumentError(
                f"LOCAL_RANK={local2[0]} does not match RANK={rank[0]} with LOCAL_WORLD_SIZE={local2[1]} "
                "(torchrun sets RANK = node * LOCAL_WORLD_SIZE + LOCAL_RANK)"
            )
    return ds.shard(rank[0], world[0], mode)
