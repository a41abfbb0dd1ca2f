"""Python functions applied in the client, after a batch arrives.

The daemon reads, shuffles, shards and decodes; functions written in Python
cannot run there, so ``map_batches``, ``map`` and ``filter`` run in the
trainer's process, on each batch as it is received, in order. Their output is
a new Arrow batch (a copy): the zero-copy views end where a function begins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from loaderd._formats import format_batch
from loaderd.errors import InvalidArgumentError


@dataclass(frozen=True)
class Udf:
    kind: str  # "batches", "rows" (map) or "filter"
    fn: Callable[[Any], Any]
    batch_format: str = "numpy"


def apply(udfs: tuple[Udf, ...], rb: pa.RecordBatch) -> pa.RecordBatch:
    """rb after every function in order."""
    for u in udfs:
        if u.kind == "filter":
            mask = [bool(u.fn(row)) for row in rb.to_pylist()]
            rb = rb.filter(pa.array(mask, pa.bool_()))
        elif u.kind == "rows":
            rows = [u.fn(row) for row in rb.to_pylist()]
            rb = pa.RecordBatch.from_pylist(rows) if rows else rb.slice(0, 0)
        else:
            rb = to_record_batch(u.fn(format_batch(rb, u.batch_format)), u)
    return rb


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
        f"map_batches: {getattr(u.fn, '__name__', u.fn)!r} returned {type(out).__name__}; "
        "return a dict of arrays, a pyarrow Table or RecordBatch, or a pandas DataFrame"
    )
