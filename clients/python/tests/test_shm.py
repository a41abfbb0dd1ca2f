"""The client's half of the shared-memory transport, on real memfds: the
ring's header checks, slots as zero-copy buffers released with their last
view, and acknowledgements on the hand-off connection."""

from __future__ import annotations

import fcntl
import gc
import os
import socket
import struct
from collections.abc import Iterator

import pyarrow as pa
import pytest

from loaderd import LoaderError
from loaderd._shm import _ACK, _HEADER, MAGIC, VERSION, Ring

SIZE = 4096 + 65536


def make_ring(magic: bytes = MAGIC, version: int = VERSION, seal: bool = True, total: int = SIZE) -> int:
    """A memfd laid out and sealed as the daemon does (feed/internal/shm)."""
    fd = os.memfd_create("loaderd-ring-test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, SIZE)
    os.pwrite(fd, _HEADER.pack(magic, version, 4096, total, 4096, SIZE - 4096, 8, 64), 0)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


@pytest.fixture
def acks() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"magic": b"nope\x00\x00\x00\x00"}, "magic"),
        ({"version": VERSION + 1}, "upgrade the client"),
        ({"total": SIZE * 2}, "inconsistent"),
        ({"seal": False}, "not sealed"),
    ],
)
def test_bad_rings_are_refused(
    acks: tuple[socket.socket, socket.socket], kw: dict[str, object], match: str
) -> None:
    fd = make_ring(**kw)  # type: ignore[arg-type]
    try:
        with pytest.raises(LoaderError, match=match):
            Ring(fd, acks[0])
    finally:
        os.close(fd)


def test_slots_are_views_released_with_their_last_user(acks: tuple[socket.socket, socket.socket]) -> None:
    fd = make_ring()
    rb = pa.record_batch({"x": pa.array(range(100), pa.int64())})
    msg = rb.serialize()
    os.pwrite(fd, msg.to_pybytes(), 4096 + 640)
    ring = Ring(fd, acks[0])
    os.close(fd)
    released: list[int] = []
    buf = ring.slot(4096 + 640, msg.size, lambda: released.append(1))
    got = pa.ipc.read_record_batch(buf, rb.schema)
    del buf
    col = got.column(0).to_numpy()
    del got
    assert col[99] == 99 and not col.flags.writeable and released == []
    del col
    gc.collect()
    assert released == [1]
    with pytest.raises(LoaderError, match="outside the ring"):
        ring.slot(0, 10, lambda: released.append(2))
    with pytest.raises(LoaderError, match="outside the ring"):
        ring.slot(4096, SIZE, lambda: released.append(3))
    assert released == [1, 2, 3], "a refused slot is released at once"


def test_acks_go_over_the_handoff_connection(acks: tuple[socket.socket, socket.socket]) -> None:
    fd = make_ring()
    ring = Ring(fd, acks[0])
    os.close(fd)
    ring.ack(5)
    ring.ack(2**40)
    assert struct.unpack("<QQ", acks[1].recv(16)) == (5, 2**40)
    assert _ACK.size == 8
    ring.close()  # the session is over: later releases are dropped
    ring.ack(6)
    assert acks[1].recv(8) == b""
