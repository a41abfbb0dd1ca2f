"""Client behaviour that needs no daemon: arguments, environment, socket rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import loaderd


def test_socket_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOADERD_SOCKET", "/x/y.sock")
    assert loaderd.default_socket() == "/x/y.sock"
    monkeypatch.delenv("LOADERD_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert loaderd.default_socket() == str(tmp_path / "loaderd" / "loaderd.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert loaderd.default_socket().endswith(f"loaderd-{os.getuid()}/loaderd.sock")


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ds = loaderd.read_parquet(["a/*.parquet", "s3://bucket/b.parquet"], socket="/none")
    assert ds._spec.uris == (str(tmp_path / "a" / "*.parquet"), "s3://bucket/b.parquet")


def test_get_dataset_shard_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = loaderd.read_parquet("/d/*.parquet", socket="/none")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(loaderd.InvalidArgumentError, match="RANK and WORLD_SIZE"):
        loaderd.get_dataset_shard(ds)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    s = loaderd.get_dataset_shard(ds, mode="exact")
    assert (s.rank, s.world_size, s.mode) == (2, 4, "exact")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(loaderd.InvalidArgumentError, match="outside"):
        loaderd.get_dataset_shard(ds)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(loaderd.InvalidArgumentError, match="integers"):
        loaderd.get_dataset_shard(ds)
    # Without RANK: node rank × ranks per node + local rank.
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("NODE_RANK", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert loaderd.get_dataset_shard(ds).rank == 7
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(loaderd.InvalidArgumentError, match="LOCAL_RANK=3 is outside LOCAL_WORLD_SIZE=3"):
        loaderd.get_dataset_shard(ds)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(loaderd.InvalidArgumentError, match="rank 8 is outside world_size 8"):
        loaderd.get_dataset_shard(ds)
    # RANK, when set, wins; it must agree with LOCAL_RANK as torchrun numbers them.
    monkeypatch.setenv("RANK", "5")
    assert loaderd.get_dataset_shard(ds).rank == 5
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(loaderd.InvalidArgumentError, match="LOCAL_RANK=2 does not match RANK=0"):
        loaderd.get_dataset_shard(ds)


@pytest.mark.parametrize(
    "call",
    [
        lambda ds: ds.shard(0, 0),
        lambda ds: ds.shard(-1, 2),
        lambda ds: ds.shard(0, 2, mode="strided"),
        lambda ds: ds.shuffle(seed=-1),
        lambda ds: ds.shuffle(seed=1, window_rows=0),
        lambda ds: ds.shard(0, 1).iter_batches(batch_size=0),
        lambda ds: ds.shard(0, 1).iter_batches(epoch=-1),
        lambda ds: ds.shard(0, 1).iter_batches(batch_format="arrow"),
        lambda ds: ds.shard(0, 1).iter_batches(transport="tcp"),
    ],
)
def test_bad_arguments_fail_before_any_call(call: object) -> None:
    ds = loaderd.read_parquet("/d/*.parquet", socket="/none")
    with pytest.raises(loaderd.InvalidArgumentError):
        call(ds)  # type: ignore[operator]


def test_read_parquet_arguments() -> None:
    with pytest.raises(loaderd.InvalidArgumentError):
        loaderd.read_parquet([])
    with pytest.raises(loaderd.InvalidArgumentError):
        loaderd.read_parquet("/x", on_error="ignore")  # type: ignore[arg-type]


def test_errors_are_one_hierarchy() -> None:
    for cls in (
        loaderd.DataError,
        loaderd.NotFoundError,
        loaderd.PermissionDeniedError,
        loaderd.InvalidArgumentError,
        loaderd.UnsupportedError,
        loaderd.DaemonUnavailableError,
    ):
        assert issubclass(cls, loaderd.LoaderError)
    assert issubclass(loaderd.NotFoundError, FileNotFoundError)
    assert issubclass(loaderd.InvalidArgumentError, ValueError)
