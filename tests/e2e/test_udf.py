"""Client-side Python functions (map_batches, map, filter), take and count,
against the real daemon."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loaderd
from loaderd.testing import Daemon


@pytest.fixture(scope="module")
def served(binary: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Daemon, str]:
    d = tmp_path_factory.mktemp("udf")
    ids = np.arange(5_000, dtype=np.int64)
    pq.write_table(pa.table({"id": ids, "x": ids * 0.5}), d / "a.parquet", row_group_size=700)
    dm = Daemon([str(d)], binary=binary, extra_args=["--log-level", "warn"]).start()
    yield dm, str(d / "*.parquet")
    dm.stop()
    dm.cleanup()


def ids_of(ds: loaderd.Dataset, col: str = "id") -> list[int]:
    return [int(v) for b in ds.iter_batches(batch_size=512) for v in b[col]]


def test_map_batches_map_filter_in_order(served: tuple[Daemon, str]) -> None:
    dm, glob = served
    ds = loaderd.read_parquet(glob, socket=dm.socket).shuffle(seed=4)
    base = ids_of(ds)
    assert sorted(base) == list(range(5_000))

    doubled = ds.map_batches(lambda b: {"id": b["id"], "y": b["id"] * 2})
    for b in doubled.iter_batches(batch_size=512):
        assert set(b) == {"id", "y"} and np.array_equal(b["y"], b["id"] * 2)

    as_pandas = ds.map_batches(lambda df: df.assign(z=df["x"] + 1), batch_format="pandas")
    for b in as_pandas.iter_batches(batch_size=512):
        assert np.allclose(b["z"], b["id"] * 0.5 + 1)

    evens = ds.filter(lambda r: r["id"] % 2 == 0).map(lambda r: {"half": r["id"] // 2})
    assert ids_of(evens, "half") == [i // 2 for i in base if i % 2 == 0]  # same order, odd rows left out
    assert evens.count() == 2_500 and ds.count() == 5_000


def test_take_and_errors(served: tuple[Daemon, str]) -> None:
    dm, glob = served
    ds = loaderd.read_parquet(glob, socket=dm.socket)
    rows = ds.take(3)
    assert rows == [{"id": 0, "x": 0.0}, {"id": 1, "x": 0.5}, {"id": 2, "x": 1.0}]
    with pytest.raises(loaderd.InvalidArgumentError, match="returned int"):
        next(iter(ds.map_batches(lambda b: 7).iter_batches(batch_size=10)))
    with pytest.raises(loaderd.InvalidArgumentError, match="write_parquet runs in the daemon"):
        ds.filter(lambda r: True).write_parquet("/nowhere")
