"""The torchrun example, launched for real: two DDP ranks (gloo, CPU) against
a real daemon; then stopped mid-epoch and resumed from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import loaderd
from loaderd.testing import Daemon

from .conftest import REPO

pytest.importorskip("torch")

EXAMPLE = REPO / "clients" / "python" / "examples" / "train_torchrun.py"
ROWS = 3_001  # odd: one rank's share is padded by a repeated sample
EPOCHS = 2


def torchrun(socket: str, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LOADERD_SOCKET=socket, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    p = subprocess.run(
        [*cmd, str(EXAMPLE), str(data), "--epochs", str(EPOCHS), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, f"torchrun exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def seen(ids_dir: Path) -> dict[tuple[int, int], list[dict[str, object]]]:
    """(rank, epoch) → the records of the runs, in order."""
    out = {}
    for f in ids_dir.glob("rank*-epoch*.jsonl"):
        rank, epoch = f.stem.removeprefix("rank").split("-epoch")
        out[int(rank), int(epoch)] = [json.loads(line) for line in f.read_text().splitlines()]
    return out


@pytest.mark.slow
def test_torchrun_example_trains_and_resumes(binary: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(EXAMPLE), str(data), "--make-data", str(ROWS)], check=True)
    ids_dir, ckpt = tmp_path / "ids", str(tmp_path / "ckpt.pt")
    ids_dir.mkdir()
    with Daemon([str(tmp_path)], binary=binary, extra_args=["--log-level", "warn"]) as dm:
        # Stopped at step 30, in epoch 1 (a rank has 24 batches of 64 an
        # epoch), then resumed from the checkpoint in new processes.
        p = torchrun(dm.socket, data, "--ids-dir", str(ids_dir), "--checkpoint", ckpt, "--max-steps", "30")
        assert "epoch 0: mean loss" in p.stdout and "epoch 1" not in p.stdout
        p = torchrun(dm.socket, data, "--ids-dir", str(ids_dir), "--checkpoint", ckpt, "--resume", ckpt)
        assert "epoch 1: mean loss" in p.stdout

        # What each rank's shard holds, asked here of the same daemon.
        ds = loaderd.read_parquet(str(data), columns=["id", "x", "y"], socket=dm.socket).shuffle(seed=42)
        want = {}
        for r in range(2):
            for e in range(EPOCHS):
                batches = ds.shard(r, 2, "even").iter_batches(64, epoch=e, padding_column="pad")
                want[r, e] = [int(i) for b in batches for i in b["id"][~b["pad"]]]
    runs = seen(ids_dir)
    assert sorted(runs) == [(r, e) for r in range(2) for e in range(EPOCHS)]
    for r in range(2):
        assert [len(runs[r, e]) for e in range(EPOCHS)] == [1, 2]  # epoch 1: before and after the stop
        for e in range(EPOCHS):
            got = [i for rec in runs[r, e] for i in rec["ids"]]  # type: ignore[attr-defined]
            assert got == want[r, e], (r, e)  # nothing skipped or repeated across the restart
    for e in range(EPOCHS):
        # Both ranks together: every sample once per epoch, padding left out.
        assert sorted(want[0, e] + want[1, e]) == list(range(ROWS))
    loss = [
        sum(float(rec["loss_sum"]) for r in range(2) for rec in runs[r, e])  # type: ignore[arg-type]
        / ROWS
        for e in range(EPOCHS)
    ]
    assert loss[1] < loss[0] / 10, loss
