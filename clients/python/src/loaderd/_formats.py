"""Turning Arrow record batches into the batch formats users ask for."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa

BatchFormat = Literal["numpy", "pyarrow", "pandas", "torch"]
BATCH_FORMATS: tuple[str, ...] = ("numpy", "pyarrow", "pandas", "torch")


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
    if batch_format == "torch":
        return to_torch({name: column_to_numpy(rb.column(i)) for i, name in enumerate(rb.schema.names)})
    raise ValueError(f"batch_format must be one of {BATCH_FORMATS}, got {batch_format!r}")


def to_torch(batch: dict[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
    """NumPy columns as torch tensors over the same memory (no copy).

    The arrays are views of Arrow buffers, read-only (over shared memory the
    pages are mapped read-only): so are the tensors. torch warns about
    non-writable arrays once per process; the views are deliberate, so the
    warning is silenced here and the rule is documented instead: never
    modify a batch in place (``.clone()`` it, or ask for a copy with
    ``dtypes=``, ``device=`` or ``pin_memory=``). Columns torch cannot hold
    (strings, binary, nested) stay NumPy arrays.
    """
    import warnings

    import torch

    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, arr in batch.items():
            if arr.dtype.kind in "biuf":
                out[name] = torch.from_numpy(arr)
            else:
                out[name] = arr
    return out
