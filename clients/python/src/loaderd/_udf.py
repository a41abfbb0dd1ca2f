"""Python functions applied in the client, after a batch arrives.

The daemon reads, shuffles, shards and decodes; functions written in Python
cannot run there, so ``map_batches``, ``map`` and ``filter`` run in the
trainer's process, on each batch as it is received. Their output is a new
Arrow batch (a copy): the zero-copy views end where a function begins.

Each function is one stage over the stream of batches. A stage with
``num_threads`` runs its function on that many batches at once in a thread
pool (worth it when the function releases the GIL: NumPy, pandas, Arrow
compute, I/O), holds at most one batch more than it has threads, and hands
the results on in the order the batches arrived.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from loaderd._formats import format_batch
from loaderd.errors import InvalidArgumentError, LoaderError

M = TypeVar("M")

_METHOD = {"batches": "map_batches", "rows": "map", "filter": "filter"}


@dataclass(frozen=True)
class Udf:
    kind: str  # "batches", "rows" (map) or "filter"
    fn: Callable[[Any], Any]
    batch_format: str = "numpy"
    num_threads: int = 0

    @property
    def name(self) -> str:
        fn = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        code = getattr(self.fn, "__code__", None)
        if fn.endswith("<lambda>") and code is not None:
            # Lambdas have no name: say where this one is.
            fn += f" at {os.path.basename(code.co_filename)}:{code.co_firstlineno}"
        return f"{_METHOD[self.kind]}({fn})"

    def __call__(self, rb: pa.RecordBatch) -> pa.RecordBatch:
        """rb after this function; an exception of the function is raised as
        a LoaderError that names it, the original as its cause."""
        if rb.num_rows == 0:
            return rb  # nothing left of the batch (filtered out, or bad samples skipped)
        try:
            if self.kind == "filter":
                mask = [bool(self.fn(row)) for row in rb.to_pylist()]
                return rb.filter(pa.array(mask, pa.bool_()))
            if self.kind == "rows":
                rows = [self.fn(row) for row in rb.to_pylist()]
                return pa.RecordBatch.from_pylist(rows)
            out = self.fn(format_batch(rb, self.batch_format))
        except Exception as err:
            raise LoaderError(
                f"{self.name} raised {type(err).__name__}: {err}", reason="USER_FUNCTION_FAILED"
            ) from err
        return to_record_batch(out, self)


def check_threads(num_threads: int) -> None:
    if not isinstance(num_threads, int) or num_threads < 0:
        raise InvalidArgumentError(f"num_threads must be a non-negative integer, got {num_threads!r}")


def pipeline(
    udfs: tuple[Udf, ...], batches: Iterator[tuple[pa.RecordBatch, M]]
) -> Iterator[tuple[pa.RecordBatch, M]]:
    """The batches through every function in order; each batch keeps its
    metadata (the stream's cursor) beside it."""
    for u in udfs:
        batches = _threaded(u, batches) if u.num_threads > 0 else _serial(u, batches)
    return batches


def _serial(u: Udf, batches: Iterator[tuple[pa.RecordBatch, M]]) -> Iterator[tuple[pa.RecordBatch, M]]:
    try:
        for rb, meta in batches:
            out = u(rb)
            del rb  # a copy goes on: the received batch (a shared-memory slot) may go
            yield out, meta
    finally:
        close(batches)


def _threaded(u: Udf, batches: Iterator[tuple[pa.RecordBatch, M]]) -> Iterator[tuple[pa.RecordBatch, M]]:
    pending: collections.deque[tuple[Future[pa.RecordBatch], M]] = collections.deque()
    pool = ThreadPoolExecutor(max_workers=u.num_threads, thread_name_prefix="loaderd-udf")
    try:
        for rb, meta in batches:
            pending.append((pool.submit(u, rb), meta))
            del rb  # the pool's task holds the batch until the function is done with it
            if len(pending) > u.num_threads:
                fut, m = pending.popleft()
                yield fut.result(), m
        while pending:
            fut, m = pending.popleft()
            yield fut.result(), m
    finally:
        # On an error or an early stop: drop what is queued, wait for the
        # calls under way (they hold batches), then stop the stream.
        pending.clear()
        pool.shutdown(wait=True, cancel_futures=True)
        close(batches)


def close(it: Iterator[Any]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


def to_record_batch(out: Any, u: Udf) -> pa.RecordBatch:
    """A map_batches function's result as a record batch."""
    if isinstance(out, pa.RecordBatch):
        return out
    if isinstance(out, pa.Table):
        return out.combine_chunks().to_batches()[0] if out.num_rows else pa.RecordBatch.from_pylist([])
    if isinstance(out, dict):
        cols = {}
        for k, v in out.items():
            arr = v.numpy() if hasattr(v, "numpy") and not isinstance(v, np.ndarray) else v
            arr = np.asarray(arr)
            cols[k] = pa.FixedShapeTensorArray.from_numpy_ndarray(arr) if arr.ndim > 1 else pa.array(arr)
        return pa.RecordBatch.from_pydict(cols)
    try:
        import pandas as pd

        if isinstance(out, pd.DataFrame):
            return pa.RecordBatch.from_pandas(out, preserve_index=False)
    except ImportError:  # pragma: no cover - pandas ships with the client
        pass
    raise InvalidArgumentError(
        f"{u.name} returned {type(out).__name__}; "
        "return a dict of arrays, a pyarrow Table or RecordBatch, or a pandas DataFrame"
    )
