"""Datasets made in the client (from_items, range, from_pandas, from_arrow):
uploaded once to the real daemon, then sharded like files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import loaderd
from loaderd._tables import _parquet
from loaderd.testing import Daemon


@pytest.fixture(scope="module")
def dm(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with Daemon(
        [str(tmp_path_factory.mktemp("tables"))], binary=binary, extra_args=["--log-level", "warn"]
    ) as d:
        yield d


def ids(ds: loaderd.Dataset | loaderd.Shard) -> list[int]:
    return [i for b in ds.iter_batches(batch_size=97) for i in b["id"].tolist()]


def test_each_source_reads_back(dm: Daemon) -> None:
    items = [{"id": i, "name": f"n{i}", "v": [i, i + 1]} for i in range(300)]
    df = pd.DataFrame({"id": np.arange(300), "x": np.linspace(0, 1, 300, dtype=np.float32)})
    table = pa.table({"id": pa.array(range(300), pa.int32()), "s": [str(i) for i in range(300)]})
    sources = {
        "items": loaderd.from_items(items, socket=dm.socket),
        "range": loaderd.range(300, socket=dm.socket),
        "pandas": loaderd.from_pandas(df, socket=dm.socket),
        "arrow": loaderd.from_arrow(table, socket=dm.socket),
        "batches": loaderd.from_arrow(table.to_batches(max_chunksize=50), socket=dm.socket),
    }
    for name, ds in sources.items():
        assert ds.count() == 300, name
        assert ids(ds) == list(range(300)), name
    assert sources["items"].take(2) == items[:2]
    assert sources["range"].schema() == pa.schema([("id", pa.int64())])
    assert sources["pandas"].schema().field("x").type == pa.float32()
    assert sources["arrow"].schema().field("id").type == pa.int32()
    scalars = loaderd.from_items(["a", "b", "c"], socket=dm.socket)
    assert [r["item"] for r in scalars.take(3)] == ["a", "b", "c"]


def test_sharded_and_shuffled_like_files(dm: Daemon) -> None:
    ds = loaderd.range(10_000, override_num_blocks=37, socket=dm.socket).shuffle(seed=3)
    for world in (1, 3, 8):
        parts = [ids(ds.shard(r, world, mode="exact")) for r in range(world)]
        every = sorted(i for p in parts for i in p)
        assert every == list(range(10_000)), world
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # Shuffled: not in order, and the same order on every run.
    one = ids(ds.shard(0, 1))
    assert one != sorted(one) and one == ids(ds.shard(0, 1))


def test_ranks_share_one_upload(dm: Daemon) -> None:
    before = loaderd._client.Client(dm.socket).status().uploads.uploads
    items = [{"k": i} for i in range(1234)]
    a = loaderd.from_items(items, socket=dm.socket)
    b = loaderd.from_items(items, socket=dm.socket)  # as another rank would
    assert a._spec.uris == b._spec.uris and a._spec.uris[0].startswith("mem://")
    st = loaderd._client.Client(dm.socket).status().uploads
    assert st.uploads == before + 1
    out = subprocess.run(
        [dm.binary, "status", "--socket", dm.socket], check=True, capture_output=True, text=True, timeout=30
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("uploads:"))
    assert f"{st.tables} tables" in line and f"({st.uploads} uploaded" in line, line


def test_errors(dm: Daemon, binary: str, tmp_path: Path) -> None:
    with pytest.raises(loaderd.InvalidArgumentError, match="no items"):
        loaderd.from_items([], socket=dm.socket)
    with pytest.raises(loaderd.InvalidArgumentError, match="mix of dicts"):
        loaderd.from_items([{"a": 1}, 2], socket=dm.socket)
    with pytest.raises(loaderd.InvalidArgumentError, match="positive"):
        loaderd.range(0, socket=dm.socket)
    with pytest.raises(loaderd.InvalidArgumentError, match="no rows"):
        loaderd.from_arrow(pa.table({"a": pa.array([], pa.int64())}), socket=dm.socket)
    # A table larger than the daemon's room for uploads says what to change.
    with Daemon([str(tmp_path)], binary=binary, extra_args=["--upload-bytes", "64KiB"]) as small:
        with pytest.raises(loaderd.ResourceExhaustedError, match="--upload-bytes"):
            loaderd.from_arrow(pa.table({"x": np.random.default_rng(0).random(100_000)}), socket=small.socket)
    with Daemon([str(tmp_path)], binary=binary, extra_args=["--upload-bytes", "0"]) as none:
        with pytest.raises(loaderd.UnsupportedError, match="upload-bytes is 0"):
            loaderd.range(10, socket=none.socket)
    # The daemon is not running: the one-line hint.
    with pytest.raises(loaderd.DaemonUnavailableError, match="loaderd serve --socket"):
        loaderd.range(10, socket=str(tmp_path / "nobody.sock"))


@pytest.mark.parametrize("threads", [0, 3])
def test_dropped_table_is_uploaded_again_mid_epoch(binary: str, tmp_path: Path, threads: int) -> None:
    """The daemon holds room for one table: a second upload drops the first
    while a shard reads it; the reader uploads it again and goes on after
    the last batch it received, every id once (with a threaded function too,
    which holds received batches not yet handed out)."""
    t1 = pa.table({"id": pa.array(np.arange(20_000, dtype=np.int64))})
    t2 = pa.table({"id": pa.array(np.arange(20_000, 40_000, dtype=np.int64))})
    room = int(1.5 * max(len(_parquet(t1, 200)), len(_parquet(t2, 200))))
    # Batches go through a small shared-memory ring, never around it: the
    # daemon cannot read far ahead of the reader.
    args = ["--upload-bytes", str(room), "--cache-bytes", "0", "--log-level", "warn"]
    args += ["--shm-min-batch-bytes", "0", "--shm-spill-after", "1h"]
    with Daemon([str(tmp_path)], binary=binary, extra_args=args) as d:
        first = loaderd.from_arrow(t1, override_num_blocks=200, socket=d.socket)
        reader = first.map_batches(lambda b: b, num_threads=threads) if threads else first
        it = reader.iter_batches(batch_size=10, transport="shm")
        got = next(it)["id"].tolist()
        second = loaderd.from_arrow(t2, override_num_blocks=200, socket=d.socket)
        for b in it:
            got.extend(b["id"].tolist())
        assert got == list(range(20_000))
        # And the other way round, at open: the second table was dropped in
        # turn, and is uploaded again before its stream starts.
        assert ids(second) == list(range(20_000, 40_000))
        st = first._client.status().uploads
        assert st.evictions >= 2 and st.tables == 1


READER = """
import json, sys, loaderd
socket, n = sys.argv[1], int(sys.argv[2])
ds = loaderd.range(n, socket=socket).shuffle(seed=5)
print(json.dumps([int(i) for b in ds.shard(1, 3).iter_batches(batch_size=64) for i in b["id"]]))
"""


def test_restarted_daemon(binary: str, tmp_path: Path) -> None:
    """After a restart the daemon holds no tables: a process that made one
    before uploads it again, and a new process reads the same plan."""
    sock = str(tmp_path / "run" / "d.sock")
    args = ["--log-level", "warn"]
    with Daemon([str(tmp_path)], binary=binary, extra_args=args, socket=sock):
        ds = loaderd.range(5000, socket=sock).shuffle(seed=5)
        shard = ds.shard(1, 3)
        it = shard.iter_batches(batch_size=64, epoch=0)
        head = [i for _, b in zip(range(10), it, strict=False) for i in b["id"].tolist()]
        state = shard.state_dict()
    with Daemon([str(tmp_path)], binary=binary, extra_args=args, socket=sock):
        shard.load_state_dict(state)
        rest = [i for b in shard.iter_batches(batch_size=64, epoch=0) for i in b["id"].tolist()]
        out = subprocess.run(
            [sys.executable, "-c", READER, sock, "5000"], check=True, capture_output=True, text=True
        )
    assert head + rest == json.loads(out.stdout)


def test_whole_dataset_in_this_process(dm: Daemon) -> None:
    df = pd.DataFrame({"id": np.arange(20_000), "x": np.arange(20_000) * 0.5})
    ds = loaderd.from_pandas(df, socket=dm.socket)
    pd.testing.assert_frame_equal(ds.to_pandas(), df)
    assert ds.to_arrow(limit=10_001).num_rows == 10_001
    assert ds.filter(lambda r: r["id"] < 5).to_arrow().column("id").to_pylist() == [0, 1, 2, 3, 4]
    assert ds.take(3) == [{"id": 0, "x": 0.0}, {"id": 1, "x": 0.5}, {"id": 2, "x": 1.0}]
    torch = pytest.importorskip("torch")
    got = torch.cat([b["id"] for b in ds.iter_torch_batches(batch_size=4096)])
    assert got.tolist() == list(range(20_000))
