"""The connection to the daemon: one gRPC channel per process and socket."""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import grpc
import pyarrow as pa

from loaderd import _shm
from loaderd._proto import feed_pb2, feed_pb2_grpc
from loaderd._socket import default_socket
from loaderd.errors import LoaderError, NotFoundError, from_rpc_error

_log = logging.getLogger("loaderd")
_T = TypeVar("_T")

Transport = Literal["auto", "shm", "grpc"]
TRANSPORTS: tuple[str, ...] = ("auto", "shm", "grpc")
_TRANSPORT_PROTO = {
    "auto": feed_pb2.TRANSPORT_UNSPECIFIED,
    "shm": feed_pb2.TRANSPORT_SHM,
    "grpc": feed_pb2.TRANSPORT_GRPC,
}

# An upload's messages: well under the daemon's request bound.
_UPLOAD_CHUNK = 1 << 20

# Batches can be large (a batch of images is tens of MB); requests are small.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 1 << 30),
    ("grpc.max_send_message_length", 16 << 20),
]


@dataclass(frozen=True)
class BatchMeta:
    seq: int
    first_sample: int
    next_sample: int
    padding_rows: int


@dataclass(frozen=True)
class StreamHeader:
    session_id: str
    schema: pa.Schema
    num_samples: int
    start_sample: int
    padding_samples: int
    plan_fingerprint: str


class Client:
    """A channel to one daemon. Safe to share between threads; a forked child
    makes its own channel (gRPC channels do not survive fork)."""

    def __init__(self, socket: str | None = None) -> None:
        self.socket = os.path.abspath(socket or default_socket())
        self._lock = threading.Lock()
        self._pid = -1
        self._channel: grpc.Channel | None = None
        self._stub: Any = None
        # Tables this process uploaded, by URI: kept to upload them again
        # when the daemon restarted or dropped them for room.
        self._tables: dict[str, bytes] = {}

    def _api(self) -> Any:
        with self._lock:
            if self._pid != os.getpid() or self._stub is None:
                self._channel = grpc.insecure_channel("unix://" + self.socket, options=_CHANNEL_OPTIONS)
                self._stub = feed_pb2_grpc.FeedStub(self._channel)
                self._pid = os.getpid()
            return self._stub

    def close(self) -> None:
        with self._lock:
            if self._channel is not None and self._pid == os.getpid():
                self._channel.close()
            self._channel = None
            self._stub = None

    def _error(self, err: grpc.RpcError) -> LoaderError:
        return from_rpc_error(err, self.socket)

    def upload(self, table: bytes) -> str:
        """Keep ``table`` (Parquet bytes) in the daemon, unless it holds it
        already, and return its URI, ``mem://<sha256>``."""
        digest = hashlib.sha256(table).hexdigest()
        self._send_table(digest, table)
        uri = "mem://" + digest
        self._tables[uri] = table
        return uri

    def _send_table(self, digest: str, table: bytes) -> None:
        header = feed_pb2.UploadRequest(header=feed_pb2.UploadHeader(sha256=digest, size=len(table)))

        def parts() -> Iterator[feed_pb2.UploadRequest]:
            yield header
            view = memoryview(table)
            for at in range(0, len(table), _UPLOAD_CHUNK):
                yield feed_pb2.UploadRequest(chunk=bytes(view[at : at + _UPLOAD_CHUNK]))

        try:
            # The header alone first: a table the daemon holds (another rank
            # uploaded it) costs no bytes.
            try:
                self._api().Upload(iter([header]))
                return
            except grpc.RpcError as err:
                if not isinstance(err, grpc.Call) or err.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            self._api().Upload(parts())
        except grpc.RpcError as err:
            raise self._error(err) from None

    def reupload(self, spec: feed_pb2.DatasetSpec) -> bool:
        """Upload again the tables of ``spec`` this process uploaded before;
        False when it names none."""
        tables = [(uri, self._tables[uri]) for uri in spec.uris if uri in self._tables]
        for uri, table in tables:
            _log.info("loaderd: the daemon no longer holds %s; uploading it again", uri)
            self._send_table(uri.removeprefix("mem://"), table)
        return bool(tables)

    def _retrying(self, spec: feed_pb2.DatasetSpec, call: Callable[[], _T]) -> _T:
        """``call()``, once more after uploading the spec's tables again when
        the daemon no longer had them."""
        try:
            return call()
        except NotFoundError:
            if not self.reupload(spec):
                raise
        return call()

    def _rpc(self, method: str, request: Any, **kwargs: Any) -> Any:
        """One unary call; its gRPC error as a LoaderError."""
        try:
            return getattr(self._api(), method)(request, **kwargs)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def describe(self, spec: feed_pb2.DatasetSpec) -> feed_pb2.DescribeResponse:
        req = feed_pb2.DescribeRequest(dataset=spec)
        resp: feed_pb2.DescribeResponse = self._retrying(spec, lambda: self._rpc("Describe", req))
        return resp

    def plan(self, open_req: feed_pb2.OpenStream) -> feed_pb2.PlanResponse:
        req = feed_pb2.PlanRequest(open=open_req)
        call = functools.partial(self._rpc, "Plan", req, timeout=60)
        resp: feed_pb2.PlanResponse = self._retrying(open_req.dataset, call)
        return resp

    def status(self) -> feed_pb2.StatusResponse:
        resp: feed_pb2.StatusResponse = self._rpc("Status", feed_pb2.StatusRequest(), timeout=10)
        return resp

    def version(self) -> str:
        resp: feed_pb2.VersionResponse = self._rpc("Version", feed_pb2.VersionRequest(), timeout=10)
        return resp.version

    def write(self, req: feed_pb2.WriteRequest) -> feed_pb2.WriteResponse:
        resp: feed_pb2.WriteResponse = self._retrying(req.dataset, lambda: self._rpc("Write", req))
        return resp

    def group_by(self, req: feed_pb2.GroupByRequest) -> Iterator[pa.RecordBatch]:
        """The groups the daemon assembled, one record batch each."""
        # The first group shows whether the daemon still has the tables.
        responses = self._retrying(req.dataset, lambda: self._group_by_call(req))
        try:
            for resp in responses:
                yield pa.ipc.open_stream(pa.py_buffer(resp.arrow_ipc)).read_next_batch()
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _group_by_call(self, req: feed_pb2.GroupByRequest) -> Iterator[feed_pb2.GroupByResponse]:
        """The GroupBy call with its first response received."""
        try:
            call = self._api().GroupBy(req)
            first = next(call, None)
        except grpc.RpcError as err:
            raise self._error(err) from None
        return itertools.chain([] if first is None else [first], call)

    def stream(self, open_req: feed_pb2.OpenStream, transport: Transport = "auto") -> BatchStream:
        return self._retrying(open_req.dataset, lambda: BatchStream(self, open_req, transport))


_DONE = object()


class BatchStream:
    """One session: the header, then record batches with their metadata.

    The request side of the bidirectional stream is fed from a queue, so that
    later requests never block the reader.

    Over shared memory (``transport`` ``"auto"`` when the daemon offers it,
    or ``"shm"``) each batch is a zero-copy view of a slot in the session's
    ring, acknowledged when the last view of it is released; a batch that did
    not fit the ring arrives inline. ``"auto"`` falls back to gRPC when the
    ring cannot be received; ``"shm"`` raises instead.
    """

    def __init__(self, client: Client, open_req: feed_pb2.OpenStream, transport: Transport = "auto") -> None:
        self._client = client
        self._ring: _shm.Ring | None = None
        open_req.transport = _TRANSPORT_PROTO[transport]
        h = self._start(open_req)
        if h.transport == feed_pb2.TRANSPORT_SHM:
            path = os.path.join(os.path.dirname(client.socket), os.path.basename(h.shm.socket_name))
            try:
                fd, acks = _shm.claim(path, h.session_id, h.shm.token)
                try:
                    self._ring = _shm.Ring(fd, acks)
                except BaseException:
                    acks.close()
                    raise
                finally:
                    os.close(fd)
            except (OSError, LoaderError) as err:
                self.close()
                if transport == "shm":
                    raise LoaderError(f"shared-memory transport: no ring from {path}: {err}") from None
                _log.warning("loaderd: shared memory unavailable (%s); batches come over gRPC", err)
                open_req.transport = feed_pb2.TRANSPORT_GRPC
                h = self._start(open_req)
        self.transport: Transport = "shm" if self._ring is not None else "grpc"
        self.header = StreamHeader(
            session_id=h.session_id,
            schema=pa.ipc.read_schema(pa.py_buffer(h.arrow_schema)),
            num_samples=h.num_samples,
            start_sample=h.start_sample,
            padding_samples=h.padding_samples,
            plan_fingerprint=h.plan_fingerprint,
        )

    def _start(self, open_req: feed_pb2.OpenStream) -> feed_pb2.StreamHeader:
        """Open the session and return its header."""
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._requests.put(feed_pb2.StreamRequest(open=open_req))
        try:
            self._call = self._client._api().Stream(self._request_iter(self._requests))
            first = next(self._call)
        except grpc.RpcError as err:
            self.close()
            raise self._client._error(err) from None
        if not first.HasField("header"):
            self.close()
            raise LoaderError("daemon did not start the stream with a header")
        header: feed_pb2.StreamHeader = first.header
        return header

    @staticmethod
    def _request_iter(requests: queue.SimpleQueue[object]) -> Iterator[feed_pb2.StreamRequest]:
        while True:
            item = requests.get()
            if item is _DONE:
                return
            assert isinstance(item, feed_pb2.StreamRequest)
            yield item

    def __iter__(self) -> Iterator[tuple[pa.RecordBatch, BatchMeta]]:
        schema = self.header.schema
        ring = self._ring
        try:
            for resp in self._call:
                b = resp.batch
                if b.HasField("shm"):
                    if ring is None:
                        raise LoaderError("daemon sent a shared-memory batch on a stream without a ring")
                    buf = ring.slot(b.shm.offset, b.shm.length, functools.partial(ring.ack, b.seq))
                else:
                    buf = pa.py_buffer(b.arrow_ipc)
                rb = pa.ipc.read_record_batch(buf, schema)
                meta = BatchMeta(b.seq, b.first_sample, b.next_sample, b.padding_rows)
                # Hold nothing of this batch while waiting for the next: the
                # caller's references alone decide when its slot is freed.
                del resp, b, buf
                yield rb, meta
                del rb
        except grpc.RpcError as err:
            raise self._client._error(err) from None
        finally:
            self.close()

    def close(self) -> None:
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.close()
        requests = getattr(self, "_requests", None)
        if requests is not None:
            requests.put(_DONE)
        call = getattr(self, "_call", None)
        if call is not None:
            call.cancel()
