"""No public call lets a bare grpc.RpcError out: without a daemon each says,
on one line, which socket it tried and how to start one; a daemon that dies
mid-epoch ends the iteration with a LoaderError."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loaderd
from loaderd.testing import Daemon

CALLS: dict[str, Callable[[loaderd.Dataset], Any]] = {
    "count": lambda ds: ds.count(),
    "schema": lambda ds: ds.schema(),
    "take": lambda ds: ds.take(1),
    "iter_batches": lambda ds: next(iter(ds.iter_batches(batch_size=10))),
    "shard.iter_batches": lambda ds: next(iter(ds.shard(0, 2).iter_batches(batch_size=10))),
    "plan": lambda ds: ds.shard(1, 2).plan(),
    "map_batches with threads": lambda ds: list(ds.map_batches(lambda b: b, num_threads=2).iter_batches()),
    "filter.count": lambda ds: ds.filter(lambda r: True).count(),
    "groupby.count": lambda ds: ds.groupby("id").count(),
    "write_parquet": lambda ds: ds.write_parquet("/tmp/nowhere"),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_without_a_daemon_every_call_gives_the_hint(tmp_path: Path, call: Callable[..., Any]) -> None:
    sock = str(tmp_path / "none.sock")
    ds = loaderd.read_parquet(str(tmp_path / "*.parquet"), socket=sock)
    with pytest.raises(loaderd.DaemonUnavailableError) as ei:
        call(ds)
    assert not isinstance(ei.value, grpc.RpcError) and ei.value.__cause__ is None
    assert ei.value.__suppress_context__  # the gRPC traceback is not chained in
    hint = str(ei.value).split(" [")[0]
    assert hint == (
        f"no loaderd daemon answers on {sock}: start one with `loaderd serve --socket {sock}` "
        "(or set LOADERD_SOCKET)"
    )
    assert ei.value.code == "UNAVAILABLE"


MAKERS: dict[str, Callable[[str], Any]] = {
    "from_items": lambda sock: loaderd.from_items([{"a": 1}], socket=sock),
    "range": lambda sock: loaderd.range(3, socket=sock),
    "from_pandas": lambda sock: loaderd.from_pandas(pa.table({"a": [1]}).to_pandas(), socket=sock),
    "from_arrow": lambda sock: loaderd.from_arrow(pa.table({"a": [1]}), socket=sock),
}


@pytest.mark.parametrize("make", MAKERS.values(), ids=MAKERS.keys())
def test_without_a_daemon_uploads_give_the_hint(tmp_path: Path, make: Callable[[str], Any]) -> None:
    sock = str(tmp_path / "none.sock")
    with pytest.raises(loaderd.DaemonUnavailableError) as ei:
        make(sock)
    assert ei.value.__cause__ is None and str(ei.value).startswith(
        f"no loaderd daemon answers on {sock}: start one with `loaderd serve --socket {sock}`"
    )


def test_without_a_daemon_torch_batches_give_the_hint(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    sock = str(tmp_path / "none.sock")
    shard = loaderd.read_parquet(str(tmp_path / "*.parquet"), socket=sock).shard(0, 1)
    with pytest.raises(loaderd.DaemonUnavailableError, match=f"no loaderd daemon answers on {sock}"):
        next(iter(shard.iter_torch_batches()))
    with pytest.raises(loaderd.DaemonUnavailableError, match=f"no loaderd daemon answers on {sock}"):
        next(iter(shard.to_torch()))


@pytest.mark.parametrize("transport", ["shm", "grpc"])
def test_a_daemon_that_dies_mid_epoch_raises_a_loader_error(
    binary: str, tmp_path: Path, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOADERD_RECONNECT_TIMEOUT", "0")  # no waiting for it to come back
    ids = np.arange(1_000_000, dtype=np.int64)
    pq.write_table(pa.table({"id": ids}), tmp_path / "a.parquet", row_group_size=10_000)
    dm = Daemon([str(tmp_path)], binary=binary, extra_args=["--log-level", "warn"]).start()
    try:
        ds = loaderd.read_parquet(str(tmp_path / "a.parquet"), socket=dm.socket)
        it = ds.iter_batches(batch_size=100, transport=transport)
        next(it)
        assert dm.proc is not None
        dm.proc.kill()
        dm.proc.wait()
        with pytest.raises(loaderd.LoaderError) as ei:
            for _ in it:  # what was already sent may still arrive
                pass
        assert not isinstance(ei.value, grpc.RpcError)
        assert isinstance(ei.value, loaderd.DaemonUnavailableError), repr(ei.value)
    finally:
        dm.stop()
        dm.cleanup()


@pytest.mark.parametrize("transport", ["shm", "grpc"])
def test_a_daemon_that_comes_back_mid_epoch_is_waited_for(
    binary: str, tmp_path: Path, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon is killed mid-epoch and started again on its socket: the
    iteration waits, reconnects and goes on after the last batch received,
    every id once, in the order of an uninterrupted epoch."""
    monkeypatch.setenv("LOADERD_RECONNECT_TIMEOUT", "20")
    ids = np.arange(200_000, dtype=np.int64)
    pq.write_table(pa.table({"id": ids}), tmp_path / "a.parquet", row_group_size=10_000)
    sock = str(tmp_path / "run" / "d.sock")
    args = ["--log-level", "warn"]
    with Daemon([str(tmp_path)], binary=binary, extra_args=args, socket=sock) as dm:
        ds = loaderd.read_parquet(str(tmp_path / "a.parquet"), socket=sock).shuffle(seed=9)
        whole = [i for b in ds.shard(1, 2).iter_batches(batch_size=1000) for i in b["id"].tolist()]
        it = ds.shard(1, 2).iter_batches(batch_size=1000, transport=transport)
        got = next(it)["id"].tolist()
        assert dm.proc is not None
        dm.proc.kill()
        dm.proc.wait()
    again = Daemon([str(tmp_path)], binary=binary, extra_args=args, socket=sock)
    timer = threading.Timer(1.0, again.start)
    timer.start()
    try:
        for b in it:
            got.extend(b["id"].tolist())
    finally:
        timer.join()
        again.stop()
        again.cleanup()
    assert got == whole


def test_a_daemon_that_does_not_come_back_says_how_to_go_on(
    binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOADERD_RECONNECT_TIMEOUT", "1")
    pq.write_table(pa.table({"id": np.arange(200_000)}), tmp_path / "a.parquet", row_group_size=10_000)
    with Daemon([str(tmp_path)], binary=binary, extra_args=["--log-level", "warn"]) as dm:
        it = loaderd.read_parquet(str(tmp_path / "a.parquet"), socket=dm.socket).iter_batches(batch_size=100)
        next(it)
        assert dm.proc is not None
        dm.proc.kill()
        dm.proc.wait()
        with pytest.raises(loaderd.DaemonUnavailableError, match=r"did not come back within 1s.*state_dict"):
            for _ in it:
                pass
