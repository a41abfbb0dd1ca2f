"""The client half of the shared-memory transport.

The daemon writes each batch's Arrow IPC message into a slot of the
session's ring (a sealed memfd) and sends only where it lies. The client
claims the ring's descriptor once, over the daemon's hand-off socket, maps it
read-only, and wraps each slot as an Arrow buffer whose owner acknowledges
the batch when the last view of it (pyarrow or numpy arrays) is gone: only
then may the daemon reuse the slot.

Acknowledgements go over the claim's connection, kept open: 8 bytes written
by whichever thread drops the batch. Sent on the gRPC stream instead, each
would cost several thread hand-offs under the GIL (the request iterator's
thread, the channel's), capping a session at a few thousand batches a second
and delaying the batches themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import socket
import struct
import weakref
from collections.abc import Callable

import pyarrow as pa

from loaderd.errors import LoaderError

# The ring's header (feed/internal/shm/header.go): magic, version, header
# bytes, total bytes, data offset, data bytes, slots, alignment.
MAGIC = b"loaderd\x00"
VERSION = 1
_HEADER = struct.Struct("<8sIIQQQII")
_ACK = struct.Struct("<Q")
_CLAIM_TIMEOUT = 10.0


def claim(path: str, session_id: str, token: bytes) -> tuple[int, socket.socket]:
    """Ask the hand-off socket for a session's ring; returns its descriptor
    and the connection, which stays open for acknowledgements."""
    data = b""
    fds: list[int] = []
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(_CLAIM_TIMEOUT)
        s.connect(path)
        s.sendall(f"claim {session_id} {token.hex()}\n".encode())
        while b"\n" not in data and len(data) < 512:
            msg, got, _, _ = socket.recv_fds(s, 512, 1, socket.MSG_CMSG_CLOEXEC)
            fds.extend(got)
            if not msg:
                break
            data += msg
        line = data.split(b"\n", 1)[0].decode("utf-8", "replace")
        if line.startswith("ok ") and len(fds) == 1:
            s.settimeout(None)
            return fds[0], s
        if line.startswith("error "):
            reason = line.removeprefix("error ")
            raise LoaderError(f"the daemon refused the shared-memory ring: {reason}", code="REFUSED")
        raise LoaderError(f"unexpected answer from the hand-off socket {path}: {line!r}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        s.close()
        raise


class _SlotOwner:
    """Owns one slot's memory on the Arrow side. It lives as long as any
    buffer, array or numpy view of the batch does; then it acknowledges."""

    __slots__ = ("_mapping", "_release")

    def __init__(self, mapping: pa.Buffer, release: Callable[[], None]) -> None:
        self._mapping = mapping  # keeps the ring mapped while the batch lives
        self._release = release

    def __del__(self) -> None:
        # Never raise from a finalizer (at interpreter exit, say): a lost
        # acknowledgement only keeps a slot of a session that is ending.
        with contextlib.suppress(Exception):
            self._release()


class Ring:
    """A session's ring, mapped read-only, and its acknowledgement channel.
    The mapping outlives the ring object and the session as long as a batch
    in it is alive."""

    def __init__(self, fd: int, acks: socket.socket) -> None:
        """Map the ring behind ``fd`` (the caller closes ``fd``); ``acks`` is
        the claim's connection, which the ring now owns."""
        if not fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK:
            raise LoaderError("the shared-memory ring is not sealed against shrinking")
        size = os.fstat(fd).st_size
        if size < 4096:
            raise LoaderError(f"shared-memory ring of {size} bytes is too small")
        # Not MAP_POPULATE: read faults on a memfd would allocate every page of
        # the ring, including those the daemon never writes.
        m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        magic, version, header, total, data_off, data_bytes, slots, _align = _HEADER.unpack_from(m)
        if magic != MAGIC or version != VERSION:
            m.close()
            raise LoaderError(
                f"shared-memory ring has magic {magic!r} version {version}; "
                f"this client reads {MAGIC!r} version {VERSION}: upgrade the client"
            )
        if header != 4096 or data_off != 4096 or total != size or data_off + data_bytes != size:
            m.close()
            raise LoaderError(f"shared-memory ring header is inconsistent: {total} bytes, data at {data_off}")
        self.size = size
        self.data_offset = data_off
        self.slots = slots
        self._mapping = pa.py_buffer(m)
        self._acks: socket.socket | None = acks
        weakref.finalize(self, acks.close)

    def ack(self, seq: int) -> None:
        """Release batch ``seq``'s slot. Called from ``__del__`` of whatever
        thread drops the batch: one write of 8 bytes, which a blocking Unix
        stream socket never splits or interleaves with another's."""
        acks = self._acks
        if acks is None:
            return
        try:
            acks.sendall(_ACK.pack(seq))
        except OSError:
            pass  # the session is over: the daemon has closed the channel

    def close(self) -> None:
        """Stop acknowledging: the session is over. Batches stay readable."""
        acks, self._acks = self._acks, None
        if acks is not None:
            acks.close()

    def slot(self, offset: int, length: int, release: Callable[[], None]) -> pa.Buffer:
        """The bytes of one batch, zero-copy; ``release`` runs once they are
        no longer referenced."""
        if offset < self.data_offset or length < 0 or offset + length > self.size:
            release()
            raise LoaderError(
                f"daemon sent a slot [{offset}, +{length}) outside the ring's data "
                f"[{self.data_offset}, {self.size})"
            )
        owner = _SlotOwner(self._mapping, release)
        return pa.foreign_buffer(self._mapping.address + offset, length, base=owner)
