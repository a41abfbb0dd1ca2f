"""GPU discovery and the --decode choice, against the real binary. On a
machine without an NVIDIA driver (as CI): auto decodes on the CPU and says
why, and --decode gpu refuses to start, naming why."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from loaderd._client import Client
from loaderd.testing import Daemon


def test_auto_falls_back_to_cpu(binary: str, tmp_path: Path) -> None:
    with Daemon([str(tmp_path)], binary=binary, extra_args=["--decode", "auto"]) as d:
        dec = Client(d.socket).status().decoder
        out = subprocess.run(
            [binary, "status", "--socket", d.socket], capture_output=True, text=True, timeout=30
        )
    assert out.returncode == 0, out.stderr
    assert "decoder:" in out.stdout and "gpus:" in out.stdout, out.stdout
    if dec.gpus:  # a machine with GPUs: auto's reason names them
        assert dec.driver_version and "GPU" in dec.choice, dec
        return
    assert dec.name.startswith("cpu"), dec
    assert dec.choice.startswith("auto: CPU, as "), dec
    assert dec.gpu_error in dec.choice, dec
    assert "libnvidia-ml.so.1" in dec.gpu_error or "cgo" in dec.gpu_error, dec


def test_gpu_without_a_gpu_refuses_to_start(binary: str, tmp_path: Path) -> None:
    if Path("/proc/driver/nvidia").exists():
        pytest.skip("this machine has an NVIDIA driver")
    probe = subprocess.run(
        [
            binary,
            "serve",
            "--socket",
            str(tmp_path / "s.sock"),
            "--data-root",
            str(tmp_path),
            "--decode",
            "gpu",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode != 0
    assert "--decode gpu" in probe.stderr, probe.stderr
    assert "GPU decoding is not available" in probe.stderr, probe.stderr
    assert "use --decode cpu or auto" in probe.stderr, probe.stderr
