"""Parquet → numpy, one rank through the daemon, versus pyarrow in-process.

Numeric columns, warm page cache (every reader runs once before it is timed).
The daemon's figure includes everything a trainer sees: reading, splitting,
the socket, and the numpy views in the trainer process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import loaderd
from benchlib import Env, Table, best_of
from loaderd._client import Transport
from loaderd.testing import Daemon

BATCH = 8192
COLUMNS = 18  # id int64, f0..f15 float32, label int32: 76 bytes a row


def dataset(env: Env) -> tuple[Path, int, int]:
    rows = 1_000_000 if env.quick else 4_000_000
    d = env.work / f"parquet-numeric-{rows}"
    files = 8
    if not (d / "_done").exists():
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        per = rows // files
        for i in range(files):
            cols: dict[str, np.ndarray] = {"id": np.arange(i * per, (i + 1) * per, dtype=np.int64)}
            for c in range(16):
                cols[f"f{c}"] = rng.standard_normal(per).astype(np.float32)
            cols["label"] = (cols["id"] % 1000).astype(np.int32)
            pq.write_table(pa.table(cols), d / f"part-{i}.parquet", row_group_size=131_072)
        (d / "_done").touch()
    return d, rows, rows * 76


def run(env: Env) -> list[Table]:
    d, rows, nbytes = dataset(env)
    files = sorted(str(p) for p in d.glob("*.parquet"))
    reps = 2 if env.quick else 3

    def pyarrow_stream() -> int:
        n = 0
        for f in files:
            for b in pq.ParquetFile(f).iter_batches(batch_size=BATCH):
                x = {c: b.column(i).to_numpy() for i, c in enumerate(b.schema.names)}
                n += len(x["id"])
        return n

    def pyarrow_table() -> int:
        n = 0
        for b in pq.read_table(files).to_batches(BATCH):
            x = {c: b.column(i).to_numpy() for i, c in enumerate(b.schema.names)}
            n += len(x["id"])
        return n

    results: list[tuple[str, float]] = []
    for name, fn in [
        ("pyarrow ParquetFile.iter_batches (streaming)", pyarrow_stream),
        ("pyarrow read_table (whole table in memory)", pyarrow_table),
    ]:
        fn()
        t, n = best_of(reps, fn)
        assert n == rows
        results.append((name, t))

    daemon: list[tuple[str, float]] = []
    with Daemon([str(d)], binary=env.binary, extra_args=["--log-level", "warn"]) as dm:
        ds = loaderd.read_parquet(str(d / "*.parquet"), socket=dm.socket)
        for transport in ("shm", "grpc"):

            def daemon_epoch(transport: Transport = transport) -> int:
                n = 0
                for b in ds.iter_batches(batch_size=BATCH, batch_format="numpy", transport=transport):
                    n += len(b["id"])
                return n

            daemon_epoch()
            t, n = best_of(reps, daemon_epoch)
            assert n == rows
            daemon.append((f"loaderd daemon ({'shared memory' if transport == 'shm' else 'gRPC'})", t))
    peer = min(t for _, t in results)
    table = Table(
        f"Parquet → numpy, one rank, {rows:,} rows × {COLUMNS} numeric columns "
        f"({nbytes / 1e6:.0f} MB), batch {BATCH}",
        ["reader", "rows/s", "GB/s", "× best pyarrow"],
    )
    for name, tt in results + daemon:
        table.rows.append([name, rows / tt, nbytes / tt / 1e9, peer / tt])
    table.notes.append(f"Aim: loaderd ≥ 0.8× the best pyarrow path. Best of {reps} warm runs each.")
    return [table]
