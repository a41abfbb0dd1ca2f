"""Client-side Python functions (map_batches, map, filter), take and count,
against the real daemon."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loaderd
from loaderd.testing import Daemon


@pytest.fixture(scope="module")
def served(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
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


def test_threads_keep_the_order_and_bound_the_batches_in_flight(served: tuple[Daemon, str]) -> None:
    dm, glob = served
    ds = loaderd.read_parquet(glob, socket=dm.socket).shuffle(seed=9)
    lock = threading.Lock()
    running: list[int] = [0, 0]  # now, most at once
    threads: set[str] = set()

    def slow_square(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with lock:
            running[0] += 1
            running[1] = max(running)
            threads.add(threading.current_thread().name)
        # Later batches tend to finish first: the order must not follow.
        time.sleep(0.002 * (int(b["id"][0]) % 7))
        with lock:
            running[0] -= 1
        return {"id": b["id"], "sq": b["id"] * b["id"]}

    want = ids_of(ds)
    threaded = ds.map_batches(slow_square, num_threads=4).filter(lambda r: r["id"] % 3 != 0, num_threads=2)
    got = []
    for b in threaded.iter_batches(batch_size=200):
        assert np.array_equal(b["sq"], b["id"] * b["id"])
        got.extend(int(v) for v in b["id"])
    assert got == [i for i in want if i % 3 != 0]
    assert 1 < running[1] <= 4 and all(t.startswith("loaderd-udf") for t in threads)
    assert not [t for t in threading.enumerate() if t.name.startswith("loaderd-udf")]


def test_the_cursor_counts_batches_handed_out_not_those_in_flight(served: tuple[Daemon, str]) -> None:
    dm, glob = served
    shard = loaderd.read_parquet(glob, socket=dm.socket).map_batches(lambda b: b, num_threads=3).shard(0, 1)
    it = shard.iter_batches(batch_size=100)
    first = [int(v) for _ in range(2) for v in next(it)["id"]]
    assert first == list(range(200)) and shard.state_dict()["next_sample"] == 200
    it.close()  # an early stop ends the pool
    assert not [t for t in threading.enumerate() if t.name.startswith("loaderd-udf")]


@pytest.mark.parametrize("num_threads", [0, 3])
def test_an_exception_in_a_function_names_it(served: tuple[Daemon, str], num_threads: int) -> None:
    dm, glob = served
    ds = loaderd.read_parquet(glob, socket=dm.socket)

    def explode_at_1000(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if 1000 in b["id"]:
            raise ValueError("no thousands here")
        return b

    seen = []
    with pytest.raises(loaderd.LoaderError) as ei:
        for b in ds.map_batches(explode_at_1000, num_threads=num_threads).iter_batches(batch_size=100):
            seen.extend(int(v) for v in b["id"])
    assert str(ei.value) == (
        "map_batches(test_an_exception_in_a_function_names_it.<locals>.explode_at_1000) "
        "raised ValueError: no thousands here"
    )
    assert isinstance(ei.value.__cause__, ValueError)
    assert seen == list(range(1000))  # every batch before the bad one, in order
    with pytest.raises(
        loaderd.LoaderError, match=r"^filter\(.*<lambda> at test_udf.py:\d+\) raised ZeroDivisionError"
    ):
        ds.filter(lambda r: 1 / (r["id"] - 42), num_threads=num_threads).count()
    with pytest.raises(loaderd.InvalidArgumentError, match="num_threads must be a non-negative integer"):
        ds.map(lambda r: r, num_threads=-1)


def test_padding_is_marked_before_a_filter(served: tuple[Daemon, str]) -> None:
    """In even mode the padding rows are marked on the batch as it arrives,
    so a filter that drops rows keeps the marks on the right ones."""
    dm, _ = served
    ds = loaderd.range(10, socket=dm.socket)

    def rows(d: loaderd.Dataset) -> list[tuple[int, bool]]:
        out: list[tuple[int, bool]] = []
        for r in range(3):
            for b in d.shard(r, 3, mode="even").iter_batches(batch_size=3, padding_column="pad"):
                out.extend(zip(b["id"].tolist(), b["pad"].tolist(), strict=True))
        return out

    whole = rows(ds)
    assert len(whole) == 12 and sum(p for _, p in whole) == 2
    kept = rows(ds.filter(lambda row: row["id"] % 2 == 0))
    assert kept == [(i, p) for i, p in whole if i % 2 == 0]
