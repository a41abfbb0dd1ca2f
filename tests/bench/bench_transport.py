"""Batches to Python: shared memory versus gRPC, next to memcpy.

Delivered GB/s to one Python consumer that receives each batch as numpy
arrays (views where the transport allows), for batches of about 1, 10 and 50
MB. The daemon is ``transportd`` (tests/bench/transportd): loaderd's own feed
server, sessions and transports, over an in-memory format whose blocks are
built once, so the figures measure the transport and not Parquet decoding
(bench_parquet has the whole pipeline). Blocks are as long as the plan's
windows (16,384 rows), so every batch is a zero-copy slice of one block and
the daemon's only copy is the one into the ring (or the gRPC message).

memcpy is one numpy copy per batch-sized chunk on one core, in this process,
measured two ways: along the daemon's access pattern (from a block-sized
source into a ring-sized destination, cycling: the memory traffic the shm
transport itself must do) and hot (one batch-sized buffer copied again and
again, which stays in cache below the L3 size).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchlib import REPO, Env, Table, best_of
from loaderd._client import Client, Transport
from loaderd.dataset import Dataset, _Spec
from loaderd.errors import LoaderError

BLOCK_ROWS = 16_384  # = the plan's window when unshuffled (shard.DefaultWindowRows)
RING_LIMIT = 256 << 20  # loaderd serve --shm-ring-bytes default
RING_BATCHES = 8  # feed.ShmRingBatches
# (label, floats per row, rows per batch): batches of 1.05, 10.5 and 52.4 MB.
SIZES = [("1 MB", 1024, 256), ("10 MB", 1280, 2048), ("50 MB", 1600, 8192)]


@contextlib.contextmanager
def transportd(env: Env, data: Path) -> Iterator[str]:
    binary = env.work / "transportd"
    subprocess.run(
        ["go", "build", "-o", str(binary), "./tests/bench/transportd"], cwd=REPO, check=True, timeout=600
    )
    tmp = tempfile.mkdtemp(prefix="loaderd-bench-")
    sock = os.path.join(tmp, "t.sock")
    proc = subprocess.Popen([str(binary), sock, str(data)], stderr=subprocess.DEVNULL)
    client = Client(sock)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.version()
                break
            except LoaderError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("transportd did not start") from None
                time.sleep(0.05)
        yield sock
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def memcpy_gbps(batch_bytes: int, block_bytes: int, total: int, reps: int) -> tuple[float, float]:
    """Single-core copy rate of batch-sized chunks: along the daemon's
    pattern (block → ring), and hot (one buffer, again and again)."""
    n = max(1, total // batch_bytes)
    slots = max(1, min(RING_LIMIT, RING_BATCHES * batch_bytes) // batch_bytes)
    per_block = block_bytes // batch_bytes
    src = np.ones(block_bytes, np.uint8)
    dst = np.zeros(slots * batch_bytes, np.uint8)
    chunks = [src[i * batch_bytes : (i + 1) * batch_bytes] for i in range(per_block)]
    targets = [dst[i * batch_bytes : (i + 1) * batch_bytes] for i in range(slots)]

    def pattern() -> int:
        for i in range(n):
            np.copyto(targets[i % slots], chunks[i % per_block])
        return n

    def hot() -> int:
        for _ in range(n):
            np.copyto(targets[0], chunks[0])
        return n

    pattern()
    t_pattern, _ = best_of(reps, pattern)
    hot()
    t_hot, _ = best_of(reps, hot)
    return n * batch_bytes / t_pattern / 1e9, n * batch_bytes / t_hot / 1e9


def epoch(ds: Dataset, rows: int, transport: Transport) -> tuple[int, float, float]:
    """One session: bytes delivered as numpy, seconds, seconds to the first batch."""
    n, first = 0, 0.0
    t0 = time.perf_counter()
    for b in ds.iter_batches(batch_size=rows, transport=transport):
        if n == 0:
            first = time.perf_counter() - t0
        n += b["x"].nbytes
    return n, time.perf_counter() - t0, first


def run(env: Env) -> list[Table]:
    data = env.work / "transport"
    data.mkdir(parents=True, exist_ok=True)
    total = 500_000_000 if env.quick else 2_000_000_000
    reps = 2 if env.quick else 3
    table = Table(
        "Batches to Python as numpy, one session: delivered GB/s by transport, next to memcpy",
        [
            "batch",
            "memcpy, daemon's pattern",
            "memcpy, hot",
            "shm",
            "gRPC",
            "shm ÷ memcpy (pattern)",
            "shm ÷ memcpy (hot)",
            "shm ÷ gRPC",
            "first batch ms, shm / gRPC",
        ],
    )
    with transportd(env, data) as sock:
        client = Client(sock)
        for label, width, rows in SIZES:
            row_bytes = width * 4
            batch_bytes = rows * row_bytes
            block_bytes = BLOCK_ROWS * row_bytes
            blocks = max(1, total // block_bytes)
            spec = data / f"w{width}.mem"
            spec.write_text(f"rows={BLOCK_ROWS} blocks={blocks} width={width}")
            ds = Dataset(_Spec(format="memory", uris=(str(spec),)), client)
            epoch_bytes = blocks * block_bytes

            got: dict[str, float] = {}
            first: dict[str, float] = {}
            for transport in ("shm", "grpc"):
                epoch(ds, rows, transport)  # warm: the daemon builds the block once
                runs = [epoch(ds, rows, transport) for _ in range(reps)]
                assert all(n == epoch_bytes for n, _, _ in runs), (label, transport, runs, epoch_bytes)
                got[transport] = epoch_bytes / min(t for _, t, _ in runs) / 1e9
                first[transport] = min(f for _, _, f in runs)
            pattern, hot = memcpy_gbps(batch_bytes, block_bytes, epoch_bytes, reps)
            table.rows.append(
                [
                    f"{label} ({batch_bytes / 1e6:.1f} MB)",
                    pattern,
                    hot,
                    got["shm"],
                    got["grpc"],
                    got["shm"] / pattern,
                    got["shm"] / hot,
                    got["shm"] / got["grpc"],
                    f"{first['shm'] * 1e3:.0f} / {first['grpc'] * 1e3:.0f}",
                ]
            )
        client.close()
    table.notes.append(
        f"Aim: shm ≥ 0.5× memcpy and ≥ 5× gRPC for 10 MB batches. Each run is one session (one "
        f"epoch) of {total / 1e9:.1f} GB, timed from opening it to its last batch, best of {reps}: "
        "it includes the session's start, whose ring pages are faulted in on first use. GB/s in "
        "units of 1e9 bytes. The daemon's copy into the ring reads a block and writes the ring, both "
        "larger than the L3 cache; 'hot' memcpy stays in cache below it."
    )
    return [table]
