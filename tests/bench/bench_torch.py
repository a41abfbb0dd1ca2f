"""Parquet → torch tensors, one rank: the daemon versus PyTorch's DataLoader.

The peer is what trainers write without loaderd: an IterableDataset that
reads the Parquet files' batches with pyarrow and makes tensors, in
DataLoader workers (each takes every n-th file; tensors come back through
torch's shared memory) or in the trainer process. Warm page cache; the same
data as the parquet section. Also: a table made in the trainer
(``from_pandas``) uploaded and read back, against a DataLoader over the
same tensors in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
import torch.utils.data
from bench_parquet import BATCH, COLUMNS, dataset

import loaderd
from benchlib import Env, Table, best_of
from loaderd.testing import Daemon


class ParquetBatches(torch.utils.data.IterableDataset[dict[str, torch.Tensor]]):
    """Batches of tensors from Parquet files, split across DataLoader workers by file."""

    def __init__(self, files: list[str]) -> None:
        self.files = files

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        mine = self.files if info is None else self.files[info.id :: info.num_workers]
        for f in mine:
            for b in pq.ParquetFile(f).iter_batches(batch_size=BATCH):
                yield {c: torch.from_numpy(b.column(i).to_numpy()) for i, c in enumerate(b.schema.names)}


def run(env: Env) -> list[Table]:
    d, rows, nbytes = dataset(env)
    files = sorted(str(p) for p in d.glob("*.parquet"))
    reps = 2 if env.quick else 3

    def loader_epoch(workers: int) -> int:
        dl = torch.utils.data.DataLoader(ParquetBatches(files), batch_size=None, num_workers=workers)
        return sum(len(b["id"]) for b in dl)

    results: list[tuple[str, float]] = []
    for workers in (0, 2):
        loader_epoch(workers)
        t, n = best_of(reps, lambda w=workers: loader_epoch(w))  # type: ignore[misc]
        assert n == rows
        results.append((f"DataLoader, pyarrow IterableDataset, num_workers={workers}", t))
    peer = min(t for _, t in results)

    def daemon_epoch(shard: loaderd.Shard) -> int:
        return sum(len(b["id"]) for b in shard.iter_torch_batches(batch_size=BATCH))

    # The cache off: every epoch decodes the Parquet, as the DataLoader does.
    with Daemon([str(d)], binary=env.binary, extra_args=["--log-level", "warn", "--cache-bytes", "0"]) as dm:
        shard = loaderd.read_parquet(str(d / "*.parquet"), socket=dm.socket).shard(0, 1)
        daemon_epoch(shard)
        t, n = best_of(reps, lambda: daemon_epoch(shard))
        assert n == rows
        results.append(("loaderd iter_torch_batches (shared memory), cache off", t))

    with Daemon([str(d)], binary=env.binary, extra_args=["--log-level", "warn"]) as dm:
        shard = loaderd.read_parquet(str(d / "*.parquet"), socket=dm.socket).shard(0, 1)
        daemon_epoch(shard)
        t, n = best_of(reps, lambda: daemon_epoch(shard))
        assert n == rows
        results.append(("loaderd iter_torch_batches (shared memory), epochs from the cache", t))

        # A table made in the trainer: upload once, then epochs.
        n_mem = rows // 4
        rng = np.random.default_rng(1)
        df = pd.DataFrame(
            {"id": np.arange(n_mem), **{f"f{c}": rng.standard_normal(n_mem, np.float32) for c in range(16)}}
        )
        t0 = time.perf_counter()
        mem = loaderd.from_pandas(df, socket=dm.socket)
        upload = time.perf_counter() - t0

        def mem_epoch() -> int:
            return sum(len(b["id"]) for b in mem.shard(0, 1).iter_torch_batches(batch_size=BATCH))

        mem_epoch()
        t_mem, n = best_of(reps, mem_epoch)
        assert n == n_mem
    tensors = {c: torch.from_numpy(df[c].to_numpy()) for c in df.columns}

    def memory_epoch() -> int:
        # Whole batches at once (a BatchSampler), not a sample at a time.
        ds_t = torch.utils.data.TensorDataset(*tensors.values())
        batches = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(ds_t), BATCH, False)
        dl: Any = torch.utils.data.DataLoader(ds_t, batch_size=None, sampler=batches)
        return sum(len(b[0]) for b in dl)

    memory_epoch()
    t_peer_mem, n = best_of(reps, memory_epoch)
    assert n == n_mem

    table = Table(
        f"Parquet → torch tensors, one rank, {rows:,} rows × {COLUMNS} numeric columns "
        f"({nbytes / 1e6:.0f} MB), batch {BATCH}",
        ["reader", "rows/s", "GB/s", "× best DataLoader"],
    )
    for name, tt in results:
        table.rows.append([name, rows / tt, nbytes / tt / 1e9, peer / tt])
    table.notes.append(f"Best of {reps} warm runs each.")

    mem_bytes = n_mem * 68
    made = Table(
        f"A table made in the trainer → torch tensors, {n_mem:,} rows × 17 numeric columns "
        f"({mem_bytes / 1e6:.0f} MB), batch {BATCH}",
        ["reader", "rows/s", "GB/s", "× DataLoader"],
    )
    for name, tt in [
        ("DataLoader(TensorDataset, BatchSampler), tensors in this process", t_peer_mem),
        ("loaderd.from_pandas(df), epochs after the upload", t_mem),
    ]:
        made.rows.append([name, n_mem / tt, mem_bytes / tt / 1e9, t_peer_mem / tt])
    made.notes.append(
        f"Best of {reps} warm runs each. The upload, once (Parquet encode, SHA-256, socket): {upload:.2f}s."
    )
    return [table, made]
