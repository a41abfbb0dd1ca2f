"""Prefetch, the block cache and the memory budget, through the real daemon:
eight ranks on one daemon, epoch look-ahead, `loaderd status`, /metrics and
the memory flags."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loaderd
from loaderd._client import Client
from loaderd.testing import Daemon

ROWS = 120_000


@pytest.fixture(scope="module")
def ids_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ids")
    for i in range(4):
        n = ROWS // 4
        ids = np.arange(i * n, (i + 1) * n, dtype=np.int64)
        t = pa.table({"id": ids, "x": np.sqrt(ids).astype(np.float32)})
        pq.write_table(t, d / f"part-{i}.parquet", row_group_size=5_000)
    return d


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 MB of rows: more than gRPC buffers, so sessions stay open while a
    client holds back."""
    d = tmp_path_factory.mktemp("big")
    n = 1_000_000
    for i in range(4):
        ids = np.arange(i * n, (i + 1) * n, dtype=np.int64)
        pq.write_table(
            pa.table({"id": ids, "x": ids.astype(np.float32)}),
            d / f"part-{i}.parquet",
            row_group_size=100_000,
        )
    return d


def test_eight_ranks_three_epochs(binary: str, ids_dir: Path) -> None:
    """Eight ranks stream three epochs each, all at once, from one daemon:
    every epoch delivers every row exactly once, epochs differ, each rank's
    next epoch is prepared while it reads the current one, and blocks are
    decoded once for all ranks and epochs."""
    world, epochs = 8, 3
    with Daemon([str(ids_dir)], binary=binary, extra_args=["--log-level", "warn"]) as d:
        ds = loaderd.read_parquet(str(ids_dir / "*.parquet"), socket=d.socket).shuffle(seed=11)
        got: dict[tuple[int, int], list[int]] = {}
        errors: list[BaseException] = []

        def rank_main(rank: int) -> None:
            try:
                shard = ds.shard(rank, world, mode="exact")
                for e in range(epochs):
                    ids: list[int] = []
                    for b in shard.iter_batches(batch_size=1000, epoch=e):
                        ids.extend(b["id"].tolist())
                    got[(rank, e)] = ids
            except BaseException as err:  # reported by the main thread
                errors.append(err)

        threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        orders = []
        for e in range(epochs):
            every = [i for r in range(world) for i in got[(r, e)]]
            assert len(every) == ROWS and set(every) == set(range(ROWS)), f"epoch {e}"
            orders.append(every)
        assert orders[0] != orders[1] != orders[2]
        st = Client(d.socket).status()
        assert st.lookahead.claimed == world * (epochs - 1), st.lookahead
        assert st.cache.loads == 24  # 4 files × 6 row groups: each decoded once
        assert st.cache.hits > 0 and st.memory.in_use_bytes > 0


def test_status_table(binary: str, big_dir: Path) -> None:
    """`loaderd status` shows a row per session with batches/s, stall % and
    queue depth, then the cache's hit rate and memory."""
    with Daemon([str(big_dir)], binary=binary, extra_args=["--log-level", "warn"]) as d:
        ds = loaderd.read_parquet(str(big_dir / "*.parquet"), socket=d.socket)
        iters: list[Any] = [iter(ds.shard(r, 3).iter_batches(batch_size=500)) for r in range(3)]
        for it in iters:
            next(it)  # the sessions are open and have sent a batch
        p = subprocess.run(
            [binary, "status", "--socket", d.socket], capture_output=True, text=True, timeout=30
        )
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        header = next(line for line in lines if line.startswith("SESSION"))
        for col in ("RANK", "EPOCH", "BATCHES/S", "STALL %", "QUEUE", "PREPARED"):
            assert col in header
        rows = [line for line in lines if re.match(r"^s\d+\s", line)]
        assert len(rows) == 3, p.stdout
        assert sorted(re.findall(r"\s(\d/3)\s", "\n".join(rows))) == ["0/3", "1/3", "2/3"]
        assert re.search(r"^cache: +\d+\.\d% hit rate", p.stdout, re.M), p.stdout
        assert re.search(r"^memory: +.* in use of .* for data", p.stdout, re.M), p.stdout
        for it in iters:
            for _ in it:
                pass


def test_metrics_endpoint(binary: str, ids_dir: Path) -> None:
    with Daemon(
        [str(ids_dir)], binary=binary, extra_args=["--metrics-addr", "127.0.0.1:0", "--log-level", "info"]
    ) as d:
        url = ""
        for _ in range(100):
            m = re.search(r"url=(http://\S+/metrics)", d.log())
            if m:
                url = m.group(1)
                break
            time.sleep(0.05)
        assert url, d.log()
        ds = loaderd.read_parquet(str(ids_dir / "*.parquet"), socket=d.socket)
        assert sum(len(b["id"]) for b in ds.iter_batches(batch_size=10_000)) == ROWS
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                key = name.split("{")[0]
                values[key] = values.get(key, 0.0) + float(value)
        assert values.get("loaderd_rows_served_total") == ROWS
        for name in (
            "loaderd_batches_served_total",
            "loaderd_cache_misses_total",
            "loaderd_memory_budget_bytes",
            "loaderd_memory_in_use_bytes",
            "loaderd_read_bytes_total",
            "loaderd_block_seconds_count",
            "loaderd_batch_wait_seconds_count",
            "process_resident_memory_bytes",
        ):
            assert values.get(name, 0) > 0, name


def test_metrics_off_by_default(daemon: Daemon) -> None:
    assert "serving metrics" not in daemon.log()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["--memory-bytes", "100MiB", "--cache-bytes", "90MiB"],
            ["--cache-bytes 90MiB", "memory-bytes 100MiB"],
        ),
        (["--memory-bytes", "10MiB"], ["--memory-bytes 10MiB", "at least"]),
        (["--metrics-addr", "256.0.0.1:99999"], ["--metrics-addr 256.0.0.1:99999"]),
    ],
)
def test_memory_flags_are_checked(binary: str, tmp_path: Path, args: list[str], needles: list[str]) -> None:
    p = subprocess.run(
        [binary, "serve", "--socket", str(tmp_path / "s.sock"), "--data-root", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode != 0
    for n in needles:
        assert n in p.stderr, p.stderr
