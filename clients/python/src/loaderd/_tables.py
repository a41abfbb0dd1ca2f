"""Datasets made in the client: from_items, range, from_pandas, from_arrow.

The table is written once as Parquet and uploaded to the daemon, which keeps
it in memory (its ``--upload-bytes``) under ``mem://<sha256 of the bytes>``
and from then on shards, shuffles and caches it like a file. Every rank that
makes the same table makes the same bytes, so the daemon keeps one copy: the
client sends the header first, and the bytes only when the daemon has not
got them. The client keeps the bytes too,
to upload them again if the daemon restarted or dropped the table for room.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from loaderd._client import Client
from loaderd.dataset import Dataset, _Spec
from loaderd.errors import InvalidArgumentError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["from_arrow", "from_items", "from_pandas", "range"]

# Row groups (the daemon's blocks: the unit of caching and of the block
# shuffle) of about this many bytes, and at most this many rows.
_BLOCK_BYTES = 1 << 20
_MAX_BLOCK_ROWS = 65536


def _block_rows(table: pa.Table, num_blocks: int | None) -> int:
    if num_blocks is not None:
        if num_blocks < 1:
            raise InvalidArgumentError(f"override_num_blocks must be positive, got {num_blocks}")
        return max(1, -(-table.num_rows // num_blocks))
    per_row = max(1, table.nbytes // max(1, table.num_rows))
    return max(1, min(_MAX_BLOCK_ROWS, _BLOCK_BYTES // per_row))


def _parquet(table: pa.Table, num_blocks: int | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    # The same table makes the same bytes (the writer stamps no time), so
    # ranks that make one table share one upload.
    # Dictionary encoding only where values tend to repeat: tried on numbers
    # it falls back after a page, and costs 10× the time and 40% more bytes.
    text = [
        f.name
        for f in table.schema
        if pa.types.is_string(f.type)
        or pa.types.is_large_string(f.type)
        or pa.types.is_binary(f.type)
        or pa.types.is_dictionary(f.type)
    ]
    rows = _block_rows(table, num_blocks)
    # pyarrow takes a list of columns here; its stubs say bool only.
    pq.write_table(table, sink, row_group_size=rows, compression="snappy", use_dictionary=text)  # type: ignore[arg-type]
    return bytes(sink.getvalue().to_pybytes())


def from_arrow(
    table: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch],
    *,
    override_num_blocks: int | None = None,
    socket: str | None = None,
) -> Dataset:
    """A dataset of an Arrow table (or record batches of one schema).

    The table is uploaded to the daemon once, as Parquet, and then sharded,
    shuffled and cached like a file; it must fit in the daemon's
    ``--upload-bytes`` (default: an eighth of its memory budget). For larger
    data, write files (:meth:`Dataset.write_parquet` or pyarrow) and read them.
    Blocks (the unit the shuffle permutes and the cache keeps) are about 1 MiB,
    or ``override_num_blocks`` equal ones.
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    elif not isinstance(table, pa.Table):
        batches = list(table)
        if not batches:
            raise InvalidArgumentError("from_arrow: no record batches given")
        table = pa.Table.from_batches(batches)
    if table.num_columns == 0:
        raise InvalidArgumentError("from_arrow: the table has no columns")
    if table.num_rows == 0:
        raise InvalidArgumentError("from_arrow: the table has no rows")
    client = Client(socket)
    uri = client.upload(_parquet(table, override_num_blocks))
    return Dataset(_Spec(format="parquet", uris=(uri,)), client)


def from_pandas(
    df: pd.DataFrame, *, override_num_blocks: int | None = None, socket: str | None = None
) -> Dataset:
    """A dataset of a pandas DataFrame's columns (its index is left out);
    see :func:`from_arrow`."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    return from_arrow(table, override_num_blocks=override_num_blocks, socket=socket)


def from_items(
    items: Iterable[Any], *, override_num_blocks: int | None = None, socket: str | None = None
) -> Dataset:
    """A dataset of Python values, as Ray Data's ``from_items``: dicts give
    a column per key; other values make one column, ``item``. Types are
    inferred by pyarrow; see :func:`from_arrow`."""
    rows = list(items)
    if not rows:
        raise InvalidArgumentError("from_items: no items given")
    dicts = sum(isinstance(r, Mapping) for r in rows)
    if 0 < dicts < len(rows):
        raise InvalidArgumentError("from_items: a mix of dicts and other values; give all dicts or none")
    try:
        table = pa.Table.from_pylist(rows) if dicts else pa.table({"item": rows})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise InvalidArgumentError(f"from_items: the items do not make one table: {err}") from None
    return from_arrow(table, override_num_blocks=override_num_blocks, socket=socket)


def range(n: int, *, override_num_blocks: int | None = None, socket: str | None = None) -> Dataset:
    """A dataset of the integers ``0 .. n-1`` in one int64 column, ``id``
    (as Ray Data's ``range``); see :func:`from_arrow` for the size bound
    (8 bytes a row before compression)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InvalidArgumentError(f"range: n must be a positive int, got {n!r}")
    table = pa.table({"id": pa.array(np.arange(n, dtype=np.int64))})
    return from_arrow(table, override_num_blocks=override_num_blocks, socket=socket)
