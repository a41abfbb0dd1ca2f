"""The daemon's lifecycle: readiness, signals, the socket, clear failures."""

from __future__ import annotations

import os
import signal
import socket as pysocket
import stat
import subprocess
from pathlib import Path

import pytest

import loaderd
from loaderd._client import Client
from loaderd.testing import Daemon


def daemon_answers(sock: str) -> bool:
    c = Client(sock)
    try:
        return c.version() != ""
    finally:
        c.close()


def test_sigterm_exits_zero_and_removes_socket(binary: str, tmp_path: Path) -> None:
    d = Daemon(data_roots=[str(tmp_path)], binary=binary)
    d.start()
    st = os.stat(d.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(os.stat(os.path.dirname(d.socket)).st_mode) == 0o700
    assert "loaderd ready" in d.log() and d.socket in d.log()
    assert d.stop() == 0
    assert not os.path.exists(d.socket)
    d.cleanup()


def test_sigint_too(binary: str, tmp_path: Path) -> None:
    d = Daemon(data_roots=[str(tmp_path)], binary=binary).start()
    assert d.proc is not None
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(20) == 0
    d.stop()
    d.cleanup()


def test_second_daemon_on_live_socket_fails_clearly(daemon: Daemon, binary: str, tmp_path: Path) -> None:
    p = subprocess.run(
        [binary, "serve", "--socket", daemon.socket, "--data-root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode != 0
    assert "in use by a live daemon" in p.stderr
    # The first daemon is untouched and still answers.
    assert os.path.exists(daemon.socket)
    assert daemon_answers(daemon.socket)


def test_stale_socket_is_replaced(binary: str, tmp_path: Path) -> None:
    sock = str(tmp_path / "run" / "s.sock")
    os.makedirs(os.path.dirname(sock), mode=0o700)
    s = pysocket.socket(pysocket.AF_UNIX)
    s.bind(sock)
    s.close()  # bound, never listened: a dead daemon's leftover
    with Daemon(data_roots=[str(tmp_path)], binary=binary, socket=sock) as d:
        assert daemon_answers(d.socket)


def test_bad_config_exits_nonzero(binary: str, tmp_path: Path) -> None:
    p = subprocess.run(
        [binary, "serve", "--socket", str(tmp_path / "s"), "--data-root", "/nonexistent/x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode != 0 and "--data-root /nonexistent/x" in p.stderr
    p = subprocess.run(
        [binary, "serve", "--workers", "-1", "--socket", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode != 0 and "--workers" in p.stderr


def test_no_daemon_gives_a_hint(tmp_path: Path) -> None:
    sock = str(tmp_path / "none.sock")
    with pytest.raises(loaderd.DaemonUnavailableError) as ei:
        loaderd.read_parquet(str(tmp_path / "x.parquet"), socket=sock).count()
    msg = str(ei.value)
    assert sock in msg and "loaderd serve" in msg
    assert "\n" not in msg.split("[")[0]


def test_status_and_version_commands(daemon: Daemon, binary: str) -> None:
    p = subprocess.run(
        [binary, "status", "--socket", daemon.socket], capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 0 and "sessions" in p.stdout, p.stderr
    p = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout.startswith("loaderd ")


def test_demo_runs(binary: str) -> None:
    p = subprocess.run([binary, "demo", "--rows", "50000"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "loaderd demo: OK" in p.stdout and "rows/s" in p.stdout
