"""Run a real daemon for tests: ``with loaderd.testing.Daemon(data_roots=[...]) as d: ...``.

The binary comes from ``binary=``, ``$LOADERD_BIN``, or ``loaderd`` on PATH.
Each daemon gets a private socket in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from types import TracebackType

from loaderd._client import Client
from loaderd.errors import LoaderError


class Daemon:
    """A ``loaderd serve`` process on a private socket."""

    def __init__(
        self,
        data_roots: Sequence[str],
        *,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        socket: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.binary = binary or os.environ.get("LOADERD_BIN") or shutil.which("loaderd") or ""
        if not self.binary:
            raise FileNotFoundError("no loaderd binary: set LOADERD_BIN or put loaderd on PATH")
        self._tmp: str | None = None
        if socket is None:
            self._tmp = tempfile.mkdtemp(prefix="loaderd-test-")
            socket = os.path.join(self._tmp, "run", "loaderd.sock")
        self.socket = socket
        self.args = [
            self.binary,
            "serve",
            "--socket",
            socket,
            *[a for r in data_roots for a in ("--data-root", r)],
            *extra_args,
        ]
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(self._tmp or tempfile.gettempdir(), "daemon.log")

    def start(self) -> Daemon:
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        client = Client(self.socket)
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"loaderd exited with {self.proc.returncode}:\n{self.log()}")
                if os.path.exists(self.socket):
                    try:
                        client.version()
                        return self
                    except LoaderError:
                        pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"loaderd did not become ready:\n{self.log()}")
                time.sleep(0.02)
        finally:
            client.close()

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait, and return the exit code."""
        code = 0
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        elif self.proc is not None:
            code = self.proc.returncode
        if hasattr(self, "_log"):
            self._log.close()
        return code

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.cleanup()
