"""Errors raised by the loaderd client: one hierarchy, never a bare grpc error."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "DaemonUnavailableError",
    "DataError",
    "InvalidArgumentError",
    "LoaderError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnsupportedError",
]


class LoaderError(Exception):
    """Base of every error the client raises.

    ``file`` and ``where`` name the input file and the place in it when the
    daemon rejected bad input; ``code`` is the gRPC status code's name.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "UNKNOWN",
        file: str | None = None,
        where: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.file = file
        self.where = where
        self.reason = reason


class DataError(LoaderError):
    """A file or record is malformed (``file`` and ``where`` say which)."""


class InvalidArgumentError(LoaderError, ValueError):
    """The request is wrong: a bad spec, rank or batch size."""


class NotFoundError(LoaderError, FileNotFoundError):
    """A path or pattern matched no files."""


class PermissionDeniedError(LoaderError, PermissionError):
    """A path lies outside the daemon's data roots, or this user may not connect."""


class UnsupportedError(LoaderError):
    """Valid input this daemon cannot read (for example an encrypted Parquet file)."""


class ResourceExhaustedError(LoaderError):
    """A request or batch exceeds the daemon's configured limits."""


class DaemonUnavailableError(LoaderError, ConnectionError):
    """No daemon answers on the socket."""


_BY_CODE: dict[grpc.StatusCode, type[LoaderError]] = {
    grpc.StatusCode.DATA_LOSS: DataError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNIMPLEMENTED: UnsupportedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: DaemonUnavailableError,
}


def from_rpc_error(err: grpc.RpcError, socket: str) -> LoaderError:
    """Translate a gRPC error into the matching LoaderError."""
    call = err if isinstance(err, grpc.Call) else None
    code = call.code() if call is not None else grpc.StatusCode.UNKNOWN
    message = (call.details() if call is not None else None) or str(err)
    file = where = reason = None
    if call is not None:
        status = rpc_status.from_call(call)
        for detail in status.details if status is not None else []:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
                file = info.metadata.get("file") or None
                where = info.metadata.get("where") or None
    cls = _BY_CODE.get(code, LoaderError)
    if cls is DaemonUnavailableError:
        message = (
            f"no loaderd daemon answers on {socket}: start one with "
            f"`loaderd serve --socket {socket}` (or set LOADERD_SOCKET) [{message}]"
        )
    return cls(message, code=code.name, file=file, where=where, reason=reason)
