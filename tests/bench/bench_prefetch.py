"""Prefetch, look-ahead, memory budget and block cache, through the daemon.

(a) Per-batch wait of a trainer that sleeps like a training step after each
    batch, and the wait for the first batch of epochs 2 and 3 (which includes
    opening the epoch's stream), with look-ahead and the cache on and off.
(b) The daemon's peak RSS while four ranks stream a dataset ten times
    --memory-bytes, against the budget.
(c) Epoch 2 against epoch 1 rows/s, one rank, with a cache that holds the
    dataset and with none.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_parquet import COLUMNS
from bench_parquet import dataset as numeric_dataset

import loaderd
from benchlib import Env, Table
from loaderd._client import Client
from loaderd.testing import Daemon

ROW_BYTES = 76  # id int64, f0..f15 float32, label int32
MiB = 1 << 20
# Row groups of 2.5 MB decoded. A rank holds a few blocks at once (the window
# being assembled and the next one's): the budget must exceed that for every
# rank, whatever the dataset's size.
RG_ROWS = 32_768


def warm(d: Path) -> None:
    """Read the files once, so epoch 1 measures decoding, not the disk."""
    for f in d.glob("*.parquet"):
        with open(f, "rb") as fh:
            while fh.read(8 << 20):
                pass


def daemon(env: Env, d: Path, *args: str) -> Daemon:
    return Daemon([str(d)], binary=env.binary, extra_args=["--log-level", "warn", *args])


def vm(pid: int, field: str) -> int:
    """A VmRSS / VmHWM figure of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


# (a) ------------------------------------------------------------------------


def waits(env: Env) -> Table:
    d, rows, _ = numeric_dataset(env)
    warm(d)
    batch, step = 4096, 0.004
    epochs = 3
    table = Table(
        f"(a) Batch wait with a training step of {step * 1e3:.0f} ms, one rank, {rows:,} rows, "
        f"batch {batch}, shuffled, {epochs} epochs",
        [
            "look-ahead",
            "cache",
            "p50 ms",
            "p99 ms",
            "max ms",
            "epoch 2 first ms",
            "epoch 3 first ms",
            "epoch 1 p99 ms",
            "epoch 1 first ms",
        ],
    )
    for lookahead, cache in [(True, True), (False, True), (True, False), (False, False)]:
        args = [] if lookahead else ["--no-lookahead"]
        args += [] if cache else ["--cache-bytes", "0"]
        with daemon(env, d, *args) as dm:
            shard = loaderd.read_parquet(str(d / "*.parquet"), socket=dm.socket).shuffle(seed=1).shard(0, 1)
            firsts: list[float] = []
            rest: list[list[float]] = []
            for e in range(epochs):
                it = iter(shard.iter_batches(batch_size=batch, epoch=e))
                rest.append([])
                first = True
                while True:
                    t0 = time.perf_counter()
                    try:
                        next(it)
                    except StopIteration:
                        break
                    w = time.perf_counter() - t0
                    if first:
                        firsts.append(w)
                        first = False
                    else:
                        rest[e].append(w)
                    time.sleep(step)
        later = [w for ws in rest[1:] for w in ws]
        q = statistics.quantiles(later, n=100)
        table.rows.append(
            [
                "on" if lookahead else "off",
                "on" if cache else "off",
                q[49] * 1e3,
                q[98] * 1e3,
                max(later) * 1e3,
                firsts[1] * 1e3,
                firsts[2] * 1e3,
                statistics.quantiles(rest[0], n=100)[98] * 1e3,
                firsts[0] * 1e3,
            ]
        )
    table.notes.append(
        "Wait: time in next() on the trainer's iterator; p50, p99 and max are over the batches of epochs 2 "
        f"and {epochs} after their first, whose wait (it includes opening the epoch's stream) has its own "
        "columns. Aim: epoch-boundary wait ≤ p99 and both under 5 ms with look-ahead on. Epoch 1 is cold: "
        "every block is decoded for the first time and there is nothing to look ahead from."
    )
    return table


# (b) ------------------------------------------------------------------------


def big_dataset(env: Env, total_bytes: int) -> tuple[Path, int]:
    rows = math.ceil(total_bytes / ROW_BYTES / RG_ROWS / 16) * RG_ROWS * 16
    d = env.work / f"parquet-numeric-big-{rows}-rg{RG_ROWS}"
    files = 16
    if not (d / "_done").exists():
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(1)
        per = rows // files
        for i in range(files):
            cols: dict[str, np.ndarray] = {"id": np.arange(i * per, (i + 1) * per, dtype=np.int64)}
            for c in range(16):
                cols[f"f{c}"] = rng.standard_normal(per).astype(np.float32)
            cols["label"] = (cols["id"] % 1000).astype(np.int32)
            pq.write_table(pa.table(cols), d / f"part-{i:02d}.parquet", row_group_size=RG_ROWS)
        (d / "_done").touch()
    return d, rows


def peak_rss(env: Env) -> Table:
    budget = 96 * MiB if env.quick else 128 * MiB
    cache = budget // 4
    d, rows = big_dataset(env, 10 * budget)
    warm(d)
    ranks, batch = 4, 8192
    with daemon(env, d, "--memory-bytes", str(budget), "--cache-bytes", str(cache)) as dm:
        assert dm.proc is not None
        pid = dm.proc.pid
        start_rss = vm(pid, "VmRSS")
        ds = loaderd.read_parquet(str(d / "*.parquet"), socket=dm.socket).shuffle(seed=3)
        got = [0] * ranks
        errors: list[BaseException] = []

        def rank_main(r: int) -> None:
            try:
                for b in ds.shard(r, ranks, mode="exact").iter_batches(batch_size=batch):
                    got[r] += len(b["id"])
            except BaseException as err:
                errors.append(err)

        samples: list[int] = []
        # The daemon's own memory: anonymous pages and its shared-memory
        # rings. VmRSS also counts the binary's pages, clean page cache the
        # kernel can drop (RssFile).
        own: list[int] = []
        files: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                samples.append(vm(pid, "VmRSS"))
                own.append(vm(pid, "RssAnon") + vm(pid, "RssShmem"))
                files.append(vm(pid, "RssFile"))

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(ranks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        secs = time.perf_counter() - t0
        done.set()
        sampler.join()
        assert not errors, errors
        assert sum(got) == rows, (sum(got), rows)
        hwm = vm(pid, "VmHWM")
        st = Client(dm.socket).status()
    table = Table(
        f"(b) Daemon peak RSS, {ranks} ranks streaming {rows * ROW_BYTES / MiB:,.0f} MiB "
        f"({rows * ROW_BYTES / budget:.1f}× --memory-bytes) once",
        [
            "--memory-bytes MiB",
            "--cache-bytes MiB",
            "RSS idle MiB",
            "peak RSS MiB",
            "peak − budget MiB",
            "peak anon+shm MiB",
            "anon+shm − budget MiB",
            "aim (anon+shm)",
            "rows/s",
        ],
    )
    table.rows.append(
        [
            budget / MiB,
            cache / MiB,
            start_rss / MiB,
            hwm / MiB,
            (hwm - budget) / MiB,
            max(own or [0]) / MiB,
            (max(own or [0]) - budget) / MiB,
            "≤ 64" if max(own or [0]) - budget <= 64 * MiB else "MISSED (> 64)",
            rows / secs,
        ]
    )
    table.notes.append(
        f"Peak RSS is VmHWM of the daemon (sampled VmRSS max {max(samples or [0]) / MiB:.0f} MiB), of which "
        f"up to {max(files or [0]) / MiB:.0f} MiB are file pages (RssFile: the binary's code and tables, "
        "clean page cache); anon+shm (RssAnon + RssShmem, sampled every 50 ms) is the memory "
        "the daemon allocates. "
        f"At the end: {st.memory.in_use_bytes / MiB:.1f} MiB in use, "
        f"{st.memory.idle_bytes / MiB:.1f} MiB idle, "
        f"cache {st.cache.bytes / MiB:.1f} MiB, reads waited {st.memory.wait_seconds:.1f}s for the budget."
    )
    return table


# (c) ------------------------------------------------------------------------


def cached_epochs(env: Env) -> Table:
    d, rows, nbytes = numeric_dataset(env)
    warm(d)
    batch = 8192
    table = Table(
        f"(c) Epoch 2 vs epoch 1, one rank, {rows:,} rows × {COLUMNS} columns "
        f"({nbytes / 1e6:.0f} MB), batch {batch}",
        ["cache", "epoch 1 rows/s", "epoch 2 rows/s", "epoch 2 GB/s", "epoch 2 / epoch 1"],
    )
    for cache in ["1GiB", "0"]:
        with daemon(env, d, "--memory-bytes", "2GiB", "--cache-bytes", cache) as dm:
            shard = loaderd.read_parquet(str(d / "*.parquet"), socket=dm.socket).shuffle(seed=5).shard(0, 1)
            rates = []
            for e in range(2):
                t0 = time.perf_counter()
                n = sum(len(b["id"]) for b in shard.iter_batches(batch_size=batch, epoch=e))
                assert n == rows
                rates.append(rows / (time.perf_counter() - t0))
        table.rows.append(
            [
                "holds the dataset" if cache != "0" else "off",
                rates[0],
                rates[1],
                rates[1] * ROW_BYTES / 1e9,
                rates[1] / rates[0],
            ]
        )
    table.notes.append("Page cache warm in both; epoch 2 of the cached run decodes nothing.")
    return table


def run(env: Env) -> list[Table]:
    return [waits(env), peak_rss(env), cached_epochs(env)]
