"""Exact resumption from a shard's state_dict, and torch batches.

Resumption runs in a new process (and after a daemon restart): the ids it
reads must be exactly the rest of the uninterrupted epoch, in order."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loaderd
from loaderd.testing import Daemon

from .conftest import in_ring

ROWS = 30_011

# A trainer that reads `cut` batches of its shard, checkpoints, and dies; or,
# given a checkpoint, reads the rest. It prints the ids it read as JSON.
TRAINER = """
import json, sys, loaderd
socket, glob, rank, world, epoch, cut, state_in, state_out = sys.argv[1:9]
rank, world, epoch, cut = int(rank), int(world), int(epoch), int(cut)
shard = loaderd.read_parquet(glob, socket=socket).shuffle(seed=7).shard(rank, world, mode="exact")
if state_in != "-":
    shard.load_state_dict(json.load(open(state_in)))
ids = []
for i, b in enumerate(shard.iter_batches(batch_size=997, epoch=epoch)):
    ids.extend(b["id"].tolist())
    if i + 1 == cut:
        json.dump(shard.state_dict(), open(state_out, "w"))
        break
print(json.dumps(ids))
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("resume")
    for i, (n, rg) in enumerate([(10_000, 1_000), (20_011, 3_001)]):
        start = 0 if i == 0 else 10_000
        ids = np.arange(start, start + n, dtype=np.int64)
        pq.write_table(
            pa.table(
                {
                    "id": ids,
                    "x": ids.astype(np.float32),
                    "v": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 2)), 2),
                }
            ),
            d / f"p{i}.parquet",
            row_group_size=rg,
        )
    return d


def trainer(
    socket: str, d: Path, rank: int, world: int, epoch: int, cut: int, state_in: str, state_out: str
) -> list[int]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            TRAINER,
            socket,
            str(d / "*.parquet"),
            str(rank),
            str(world),
            str(epoch),
            str(cut),
            state_in,
            state_out,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    ids: list[int] = json.loads(out)
    return ids


@pytest.mark.parametrize("world", [1, 3, 8])
def test_resume_in_a_new_process_gives_the_rest_of_the_epoch(
    binary: str, small: Path, tmp_path: Path, world: int
) -> None:
    with Daemon([str(small)], binary=binary, extra_args=["--log-level", "warn"]) as dm:
        for rank in {0, world - 1}:
            whole = trainer(dm.socket, small, rank, world, 1, 0, "-", "-")
            batches = -(-len(whole) // 997)
            for cut in sorted({1, batches // 2, batches - 1} - {0}):
                state = tmp_path / f"s-{world}-{rank}-{cut}.json"
                head = trainer(dm.socket, small, rank, world, 1, cut, "-", str(state))
                saved = json.loads(state.read_text())
                assert saved["epoch"] == 1 and saved["next_sample"] == len(head)
                rest = trainer(dm.socket, small, rank, world, 1, 0, str(state), "-")
                assert head + rest == whole, (world, rank, cut)


def test_resume_after_the_daemon_restarted(binary: str, small: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with Daemon([str(small)], binary=binary, extra_args=["--log-level", "warn"]) as dm:
        whole = trainer(dm.socket, small, 1, 2, 0, 0, "-", "-")
        head = trainer(dm.socket, small, 1, 2, 0, 5, "-", str(state))
    with Daemon([str(small)], binary=binary, extra_args=["--log-level", "warn"]) as dm:
        rest = trainer(dm.socket, small, 1, 2, 0, 0, str(state), "-")
    assert head + rest == whole


def test_state_is_validated(daemon: Daemon, small: Path) -> None:
    del daemon  # the daemon fixture serves other roots; these checks need no reads
    shard = loaderd.read_parquet(str(small / "*.parquet")).shard(0, 2)
    state = shard.state_dict()
    assert state["next_sample"] == 0 and json.loads(json.dumps(state)) == state
    with pytest.raises(loaderd.InvalidArgumentError, match="world_size"):
        loaderd.read_parquet(str(small / "*.parquet")).shard(0, 3).load_state_dict(state)
    with pytest.raises(loaderd.InvalidArgumentError, match="version"):
        shard.load_state_dict({"version": 99})


def test_a_cursor_of_another_plan_is_refused(binary: str, small: Path) -> None:
    with Daemon([str(small)], binary=binary, extra_args=["--log-level", "warn"]) as dm:
        shard = loaderd.read_parquet(str(small / "*.parquet"), socket=dm.socket).shuffle(seed=1).shard(0, 1)
        it = shard.iter_batches(batch_size=1000)
        next(it)
        state = shard.state_dict()
        del it
        other = loaderd.read_parquet(str(small / "*.parquet"), socket=dm.socket).shuffle(seed=2).shard(0, 1)
        other.load_state_dict(state)
        with pytest.raises(loaderd.InvalidArgumentError, match="another plan"):
            next(iter(other.iter_batches(batch_size=1000)))


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("transport", ["shm", "grpc"])
def test_torch_batches(binary: str, small: Path, transport: str) -> None:
    with Daemon(
        [str(small)], binary=binary, extra_args=["--log-level", "warn", "--shm-min-batch-bytes", "0"]
    ) as dm:
        shard = loaderd.read_parquet(str(small / "*.parquet"), socket=dm.socket).shard(0, 1, mode="exact")
        seen = []
        for b in shard.iter_torch_batches(batch_size=4096, transport=transport, dtypes={"x": torch.float64}):
            assert b["id"].dtype == torch.int64 and b["x"].dtype == torch.float64
            assert b["id"].shape == (len(b["id"]),) and b["x"].shape == b["id"].shape
            assert b["v"].shape == (len(b["id"]), 2) and b["v"].dtype == torch.int64
            assert torch.equal(b["v"][:, 0], b["id"]) and torch.equal(b["x"], b["id"].double())
            # Zero copy over shared memory: the tensors' memory is the
            # daemon's ring; the cast column is a copy, in this process's heap.
            assert in_ring(b["id"].data_ptr()) == in_ring(b["v"].data_ptr()) == (transport == "shm")
            assert not in_ring(b["x"].data_ptr())
            seen.append(b["id"])
        assert len(seen) == -(-ROWS // 4096)
        assert torch.equal(torch.sort(torch.cat(seen)).values, torch.arange(ROWS))


def test_torch_tensors_are_the_arrow_buffers(binary: str, small: Path) -> None:
    """The tensors of a batch lie exactly where its Arrow columns do."""
    from loaderd._formats import format_batch

    from .conftest import address_of

    with Daemon(
        [str(small)], binary=binary, extra_args=["--log-level", "warn", "--shm-min-batch-bytes", "0"]
    ) as dm:
        ds = loaderd.read_parquet(str(small / "*.parquet"), socket=dm.socket)
        for table in ds.iter_batches(batch_size=5000, batch_format="pyarrow", transport="shm"):
            (rb,) = table.to_batches()
            t = format_batch(rb, "torch")
            assert t["id"].data_ptr() == address_of(table["id"])
            assert t["v"].data_ptr() == address_of(table["v"].chunk(0).flatten())
            assert in_ring(t["id"].data_ptr())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without CUDA")
def test_pin_memory_without_cuda_warns_once_and_does_not_copy(binary: str, small: Path) -> None:
    with Daemon(
        [str(small)], binary=binary, extra_args=["--log-level", "warn", "--shm-min-batch-bytes", "0"]
    ) as dm:
        shard = loaderd.read_parquet(str(small / "*.parquet"), socket=dm.socket).shard(0, 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batches = shard.iter_torch_batches(batch_size=4096, pin_memory=True, transport="shm")
            assert [str(w.message) for w in caught] == [
                "loaderd: pin_memory=True but torch finds no CUDA device: the tensors are not pinned"
            ]
            assert caught[0].filename == __file__  # it points at the caller
            n = 0
            for b in batches:
                assert not b["id"].is_pinned() and in_ring(b["id"].data_ptr())
                n += len(b["id"])
            assert n == ROWS and len(caught) == 1


def test_dataloader_over_a_shard(binary: str, small: Path) -> None:
    with Daemon([str(small)], binary=binary, extra_args=["--log-level", "warn"]) as dm:
        shard = loaderd.read_parquet(str(small / "*.parquet"), socket=dm.socket).shuffle(seed=3).shard(0, 1)
        ds = shard.to_torch(batch_size=1000)
        loader = torch.utils.data.DataLoader(ds, batch_size=None)
        epochs = []
        for e in range(2):
            ds.set_epoch(e)
            epochs.append(torch.cat([b["id"] for b in loader]))
        for ids in epochs:
            assert torch.equal(torch.sort(ids).values, torch.arange(ROWS))
        assert not torch.equal(epochs[0], epochs[1])  # each epoch its own shuffle


def test_dataloader_workers(binary: str, small: Path) -> None:
    with Daemon([str(small)], binary=binary, extra_args=["--log-level", "warn"]) as dm:
        shard = loaderd.read_parquet(str(small / "*.parquet"), socket=dm.socket).shuffle(seed=3).shard(0, 1)
        ds = shard.to_torch(batch_size=1000)
        # One worker reads the shard once, in a child process.
        one = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1)
        ids = torch.cat([b["id"] for b in one])
        assert torch.equal(torch.sort(ids).values, torch.arange(ROWS))
        # Two would each read all of it: refused, with what to do instead.
        two = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        with pytest.raises(
            loaderd.InvalidArgumentError, match=r"num_workers=2: each worker would read"
        ) as ei:
            next(iter(two))
        assert "num_workers=0" in str(ei.value)


def test_environment_checks(monkeypatch: pytest.MonkeyPatch, small: Path) -> None:
    ds = loaderd.read_parquet(str(small / "*.parquet"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(loaderd.InvalidArgumentError, match="rank 5 is outside world_size 4"):
        loaderd.get_dataset_shard(ds)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(loaderd.InvalidArgumentError, match="LOCAL_RANK=0"):
        loaderd.get_dataset_shard(ds)
    monkeypatch.setenv("LOCAL_RANK", "1")
    s = loaderd.get_dataset_shard(ds)
    assert (s.rank, s.world_size) == (3, 4)
