"""The shared-memory transport end to end: zero-copy views of the ring,
slots held and released, back-pressure, a client killed holding slots, and
the fallbacks. The exactly-once tests of test_parquet.py run over it too."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loaderd
from loaderd._client import Client
from loaderd.testing import Daemon

from .conftest import address_of, in_ring, ring_mappings

ROWS = 400_000
BATCH = 16_384  # 128 KiB of ids: 7 fit a 1 MiB ring


@pytest.fixture(scope="module")
def ids_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ids")
    t = pa.table({"id": np.arange(ROWS, dtype=np.int64)})
    pq.write_table(t, d / "ids.parquet", row_group_size=50_000)
    return d


@pytest.fixture(scope="module")
def small_ring(binary: str, ids_dir: Path) -> Iterator[Daemon]:
    """A daemon whose rings hold 7 batches and which waits for the client
    as long as it takes (no spilling inline within a test's time)."""
    with Daemon(
        [str(ids_dir)],
        binary=binary,
        extra_args=["--log-level", "warn", "--shm-ring-bytes", "1MiB", "--shm-spill-after", "10m"],
    ) as d:
        yield d


def ids_ds(d: Daemon, ids_dir: Path) -> loaderd.Dataset:
    return loaderd.read_parquet(str(ids_dir / "ids.parquet"), socket=d.socket)


def check(batch: dict[str, Any], k: int) -> None:
    """Unshuffled, batch k holds ids k*BATCH onwards."""
    want = np.arange(k * BATCH, min((k + 1) * BATCH, ROWS))
    assert np.array_equal(batch["id"], want), f"batch {k} does not hold its ids (overwritten?)"


def session_status(d: Daemon) -> list[Any]:
    c = Client(d.socket)
    try:
        return list(c.status().sessions)
    finally:
        c.close()


def test_batches_are_read_only_views_of_the_ring(daemon: Daemon, gen_dir: Path) -> None:
    ds = loaderd.read_parquet(str(gen_dir / "part-0.parquet"), columns=["id", "x"], socket=daemon.socket)
    it = ds.iter_batches(batch_size=1000, transport="shm")
    b = next(it)
    assert ring_mappings(), "no ring mapped"
    assert all(perms == "r--s" for _, _, perms in ring_mappings()), ring_mappings()
    for col in ("id", "x"):
        assert in_ring(address_of(b[col])), col
        assert not b[col].flags.writeable
    assert np.array_equal(b["id"], np.arange(1000))
    with pytest.raises(ValueError, match="read-only"):
        b["id"][0] = 7
    t = next(iter(ds.iter_batches(batch_size=1000, batch_format="pyarrow", transport="shm")))
    assert in_ring(address_of(t.column("id")))
    # Over gRPC the batch is a copy in process memory.
    g = next(iter(ds.iter_batches(batch_size=1000, transport="grpc")))
    assert not in_ring(address_of(g["id"]))
    assert np.array_equal(g["id"], b["id"])
    # auto takes shared memory on the daemon's host.
    a = next(iter(ds.iter_batches(batch_size=1000)))
    assert in_ring(address_of(a["id"]))


def test_held_batches_back_pressure_the_daemon_and_stay_intact(small_ring: Daemon, ids_dir: Path) -> None:
    it = iter(ids_ds(small_ring, ids_dir).iter_batches(batch_size=BATCH, transport="shm"))
    held = {k: next(it) for k in range(7)}  # the ring is full
    addr2 = address_of(held[2]["id"])
    got: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: got.append(next(it)))
    reader.start()
    reader.join(1.0)
    assert reader.is_alive(), "the daemon wrote an 8th batch into a ring whose 7 slots are held"
    [st] = session_status(small_ring)
    assert st.shm_slots_held == 7 and st.shm_wait_seconds > 0 and st.shm_inline_batches == 0, st
    for k, b in held.items():
        check(b, k)
    # Releasing one batch, out of order, frees its slot for the next.
    del held[2]
    reader.join(30)
    assert not reader.is_alive()
    check(got[0], 7)
    assert address_of(got[0]["id"]) == addr2, "batch 7 did not reuse the slot batch 2 released"
    held[7] = got.pop()
    # Keep holding five at a time to the end (the ring holds seven: the
    # daemon has room for two); every batch is intact when released,
    # however many were written after it.
    while len(held) > 5:
        oldest = min(held)
        check(held.pop(oldest), oldest)
    for k, b in enumerate(it, start=8):
        held[k] = b
        oldest = min(held)
        if len(held) > 5:
            check(held.pop(oldest), oldest)
    for k, b in held.items():
        check(b, k)
    assert k == (ROWS - 1) // BATCH


def test_a_client_keeping_everything_gets_the_rest_inline(binary: str, ids_dir: Path) -> None:
    with Daemon(
        [str(ids_dir)],
        binary=binary,
        extra_args=[
            *("--log-level", "warn", "--shm-ring-bytes", "1MiB", "--shm-spill-after", "200ms"),
            *("--shm-min-batch-bytes", "0"),
        ],
    ) as d:
        batches = list(ids_ds(d, ids_dir).iter_batches(batch_size=BATCH, transport="shm"))
        assert len(batches) == -(-ROWS // BATCH)
        where = [in_ring(address_of(b["id"])) for b in batches]
        # Seven fill the ring, the full-size rest go inline; the short last
        # batch fits in the ring's leftover bytes, and goes there.
        assert where[:7] == [True] * 7 and not any(where[7:-1]) and where[-1], where
        for k, b in enumerate(batches):
            check(b, k)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ring_fds(pid: int) -> list[str]:
    """The memfds of rings a process has open."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("/memfd:loaderd-ring-"):
                out.append(target)
    return out


def wait_for(what: str, cond: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


HOLDER = """
import sys, time, loaderd
ds = loaderd.read_parquet(sys.argv[2], socket=sys.argv[1])
it = iter(ds.iter_batches(batch_size=int(sys.argv[3]), transport="shm"))
held = [next(it) for _ in range(5)]
print("holding", flush=True)
time.sleep(600)
"""


def test_kill9_client_holding_slots_frees_its_ring(small_ring: Daemon, ids_dir: Path, binary: str) -> None:
    assert small_ring.proc is not None
    pid = small_ring.proc.pid
    # Another session is under way, and goes on.
    mine = iter(ids_ds(small_ring, ids_dir).iter_batches(batch_size=BATCH, transport="shm"))
    first = next(mine)
    check(first, 0)
    del first
    wait_for("one ring mapped", lambda: len(ring_mappings(pid)) == 1)
    [ours] = [s.session_id for s in session_status(small_ring)]
    before = fd_count(pid)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, small_ring.socket, str(ids_dir / "ids.parquet"), str(BATCH)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "holding"
        assert len(ring_mappings(pid)) == 2 and len(ring_fds(pid)) == 2 and fd_count(pid) > before
        [st] = [s for s in session_status(small_ring) if s.session_id != ours]
        assert st.shm_slots_held >= 5, st
        ring = f"/memfd:loaderd-ring-{st.session_id} (deleted)"
        assert ring in ring_fds(pid), ring_fds(pid)
        out = subprocess.run(
            [binary, "status", "--socket", small_ring.socket], capture_output=True, text=True, timeout=30
        )
        assert "shm" in out.stdout and "held" in out.stdout, out.stdout
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # The daemon drops the session: its ring is unmapped and closed, its
    # connections too: no descriptor left behind. (At most as many as
    # before: connections of earlier tests' clients may close meanwhile.)
    wait_for(
        "the ring to be freed",
        lambda: len(ring_mappings(pid)) == 1 and ring not in ring_fds(pid) and fd_count(pid) <= before,
    )
    assert len(ring_fds(pid)) == 1 and len(session_status(small_ring)) == 1
    for k, b in enumerate(mine, start=1):
        check(b, k)
    assert k == (ROWS - 1) // BATCH
    wait_for("the last ring to be freed", lambda: not ring_mappings(pid) and not ring_fds(pid))


def test_small_batches_go_over_grpc_by_default(binary: str, ids_dir: Path) -> None:
    with Daemon([str(ids_dir)], binary=binary, extra_args=["--log-level", "warn"]) as d:
        ds = ids_ds(d, ids_dir)
        small = next(iter(ds.iter_batches(batch_size=1000)))  # 8 KB, under the 64 KiB default
        assert not in_ring(address_of(small["id"]))
        big = next(iter(ds.iter_batches(batch_size=BATCH)))
        assert in_ring(address_of(big["id"]))
        check(big, 0)


def test_shm_off_and_forced_grpc(binary: str, ids_dir: Path) -> None:
    with Daemon([str(ids_dir)], binary=binary, extra_args=["--shm-ring-bytes", "0"]) as d:
        assert not os.path.exists(d.socket + ".shm")
        ds = ids_ds(d, ids_dir)
        b = next(iter(ds.iter_batches(batch_size=BATCH)))
        assert not in_ring(address_of(b["id"]))
        check(b, 0)
        with pytest.raises(loaderd.UnsupportedError, match="shared-memory transport"):
            next(iter(ds.iter_batches(batch_size=BATCH, transport="shm")))


def test_auto_falls_back_when_the_ring_cannot_be_received(
    binary: str, ids_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Daemon([str(ids_dir)], binary=binary, extra_args=["--log-level", "error"]) as d:
        # A client that cannot reach the hand-off socket (say only the main
        # socket is mounted into its container).
        os.unlink(d.socket + ".shm")
        ds = ids_ds(d, ids_dir)
        with caplog.at_level(logging.WARNING, logger="loaderd"):
            batches = [b["id"].copy() for b in ds.iter_batches(batch_size=BATCH)]
        assert "shared memory unavailable" in caplog.text
        assert np.array_equal(np.concatenate(batches), np.arange(ROWS))
        with pytest.raises(loaderd.LoaderError, match="shared-memory transport: no ring"):
            next(iter(ds.iter_batches(batch_size=BATCH, transport="shm")))
        # The sessions whose rings went unclaimed were canceled and are gone.
        wait_for("the sessions to end", lambda: session_status(d) == [])
