"""The TensorFlow adapter: a shard's batches as a ``tf.data.Dataset``.

TensorFlow is optional and imported only here, when :meth:`Shard.to_tf` is
called; the element spec is worked out from the Arrow schema first, so a
column TensorFlow cannot hold is refused before anything is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from loaderd.errors import InvalidArgumentError, LoaderError

if TYPE_CHECKING:
    from loaderd._client import Transport
    from loaderd.dataset import Shard

STRING = "string"
"""The dtype of text and binary columns (``tf.string``) in a signature."""


def _column_spec(name: str, t: pa.DataType) -> tuple[tuple[int, ...], str]:
    """(dimensions after the batch one, dtype name) of one column's batches,
    as :func:`loaderd._formats.column_to_numpy` makes them."""
    if isinstance(t, pa.FixedShapeTensorType):
        inner, dtype = _column_spec(name, t.value_type)
        return (*t.shape, *inner), dtype
    if pa.types.is_fixed_size_list(t):
        inner, dtype = _column_spec(name, t.value_type)
        return (t.list_size, *inner), dtype
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return (), np.dtype(t.to_pandas_dtype()).name
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        return (), STRING
    if pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return (), STRING
    raise InvalidArgumentError(
        f"to_tf: column {name!r} has type {t}, which has no TensorFlow dtype here; select other "
        "columns (columns=...) or convert it with map_batches"
    )


def signature(schema: pa.Schema) -> dict[str, tuple[tuple[int | None, ...], str]]:
    """Each column's batch shape (``None`` rows first) and dtype name."""
    out: dict[str, tuple[tuple[int | None, ...], str]] = {}
    for f in schema:
        dims, dtype = _column_spec(f.name, f.type)
        out[f.name] = ((None, *dims), dtype)
    return out


def _import_tensorflow() -> Any:
    try:
        return importlib.import_module("tensorflow")
    except ImportError as err:
        raise LoaderError(
            f"Shard.to_tf needs TensorFlow, which cannot be imported here ({err}): pip install tensorflow"
        ) from None


def _schema(shard: Shard, batch_size: int) -> pa.Schema:
    ds = shard.dataset
    if not ds._udfs:
        return ds.schema()
    # Client-side functions make their own columns: the first batch of the
    # whole dataset (not this shard, whose cursor must not move) shows them.
    for t in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        schema: pa.Schema = t.schema
        return schema
    raise InvalidArgumentError("to_tf: the dataset has no rows after map_batches/map/filter")


def dataset(shard: Shard, batch_size: int, epoch: int, drop_last: bool, transport: Transport) -> Any:
    tf = _import_tensorflow()
    spec = {
        name: tf.TensorSpec(
            shape=shape, dtype=tf.string if dtype == STRING else tf.as_dtype(dtype), name=name
        )
        for name, (shape, dtype) in signature(_schema(shard, batch_size)).items()
    }

    def batches() -> Iterator[dict[str, Any]]:
        yield from shard.iter_batches(batch_size, epoch=epoch, drop_last=drop_last, transport=transport)

    return tf.data.Dataset.from_generator(batches, output_signature=spec)
