"""Turning Arrow record batches into the batch formats users ask for."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa

BatchFormat = Literal["numpy", "pyarrow", "pandas"]
BATCH_FORMATS: tuple[str, ...] = ("numpy", "pyarrow", "pandas")


def column_to_numpy(col: Any) -> np.ndarray[Any, Any]:
    """A column as a NumPy array, without a copy where Arrow's layout allows.

    Fixed-size lists and fixed-shape tensors become one n-dimensional array
    (rows first) instead of an array of objects.
    """
    t = col.type
    if isinstance(t, pa.FixedShapeTensorType):
        return np.asarray(col.to_numpy_ndarray())
    if pa.types.is_fixed_size_list(t) and col.null_count == 0:
        inner = column_to_numpy(col.flatten())
        return inner.reshape((len(col), t.list_size, *inner.shape[1:]))
    return np.asarray(col.to_numpy(zero_copy_only=False))


def format_batch(rb: pa.RecordBatch, batch_format: str) -> Any:
    if batch_format == "pyarrow":
        return pa.Table.from_batches([rb])
    if batch_format == "numpy":
        return {name: column_to_numpy(rb.column(i)) for i, name in enumerate(rb.schema.names)}
    if batch_format == "pandas":
        return rb.to_pandas()
    raise ValueError(f"batch_format must be one of {BATCH_FORMATS}, got {batch_format!r}")
