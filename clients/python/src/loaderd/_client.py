"""The connection to the daemon: one gRPC channel per process and socket."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pyarrow as pa

from loaderd._proto import feed_pb2, feed_pb2_grpc
from loaderd._socket import default_socket
from loaderd.errors import LoaderError, from_rpc_error

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

    def describe(self, spec: feed_pb2.DatasetSpec) -> feed_pb2.DescribeResponse:
        try:
            resp: feed_pb2.DescribeResponse = self._api().Describe(feed_pb2.DescribeRequest(dataset=spec))
            return resp
        except grpc.RpcError as err:
            raise self._error(err) from None

    def plan(self, open_req: feed_pb2.OpenStream) -> feed_pb2.PlanResponse:
        try:
            resp: feed_pb2.PlanResponse = self._api().Plan(feed_pb2.PlanRequest(open=open_req), timeout=60)
            return resp
        except grpc.RpcError as err:
            raise self._error(err) from None

    def status(self) -> feed_pb2.StatusResponse:
        try:
            resp: feed_pb2.StatusResponse = self._api().Status(feed_pb2.StatusRequest(), timeout=10)
            return resp
        except grpc.RpcError as err:
            raise self._error(err) from None

    def version(self) -> str:
        try:
            resp: feed_pb2.VersionResponse = self._api().Version(feed_pb2.VersionRequest(), timeout=10)
            return resp.version
        except grpc.RpcError as err:
            raise self._error(err) from None

    def write(self, req: feed_pb2.WriteRequest) -> feed_pb2.WriteResponse:
        try:
            resp: feed_pb2.WriteResponse = self._api().Write(req)
            return resp
        except grpc.RpcError as err:
            raise self._error(err) from None

    def group_by(self, req: feed_pb2.GroupByRequest) -> Iterator[pa.RecordBatch]:
        """The groups the daemon assembled, one record batch each."""
        try:
            for resp in self._api().GroupBy(req):
                yield pa.ipc.open_stream(pa.py_buffer(resp.arrow_ipc)).read_next_batch()
        except grpc.RpcError as err:
            raise self._error(err) from None

    def stream(self, open_req: feed_pb2.OpenStream) -> BatchStream:
        return BatchStream(self, open_req)


_DONE = object()


class BatchStream:
    """One session: the header, then record batches with their metadata.

    The request side of the bidirectional stream is fed from a queue, so the
    client can later send acknowledgements without blocking the reader.
    """

    def __init__(self, client: Client, open_req: feed_pb2.OpenStream) -> None:
        self._client = client
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._requests.put(feed_pb2.StreamRequest(open=open_req))
        try:
            self._call = client._api().Stream(self._request_iter())
            first = next(self._call)
        except grpc.RpcError as err:
            self.close()
            raise client._error(err) from None
        if not first.HasField("header"):
            self.close()
            raise LoaderError("daemon did not start the stream with a header")
        h = first.header
        self.header = StreamHeader(
            session_id=h.session_id,
            schema=pa.ipc.read_schema(pa.py_buffer(h.arrow_schema)),
            num_samples=h.num_samples,
            start_sample=h.start_sample,
            padding_samples=h.padding_samples,
            plan_fingerprint=h.plan_fingerprint,
        )

    def _request_iter(self) -> Iterator[feed_pb2.StreamRequest]:
        while True:
            item = self._requests.get()
            if item is _DONE:
                return
            assert isinstance(item, feed_pb2.StreamRequest)
            yield item

    def __iter__(self) -> Iterator[tuple[pa.RecordBatch, BatchMeta]]:
        schema = self.header.schema
        try:
            for resp in self._call:
                b = resp.batch
                rb = pa.ipc.read_record_batch(pa.py_buffer(b.arrow_ipc), schema)
                yield rb, BatchMeta(b.seq, b.first_sample, b.next_sample, b.padding_rows)
        except grpc.RpcError as err:
            raise self._client._error(err) from None
        finally:
            self.close()

    def close(self) -> None:
        self._requests.put(_DONE)
        call = getattr(self, "_call", None)
        if call is not None:
            call.cancel()
