"""Multi-node: three daemons as three "nodes" (own sockets, own caches) serve
one world of 8 ranks, spread 3/3/2, over a shared dataset. No coordinator and
no traffic between the daemons: each computes the same global plan and serves
the ranks that live on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import loaderd
from loaderd.testing import Daemon

WORKER = Path(__file__).with_name("multinode_rank.py")
LAYOUT = [3, 3, 2]  # ranks per node
WORLD = sum(LAYOUT)
EPOCHS = 2


def test_three_nodes_eight_ranks_exactly_once(binary: str, gen_dir: Path, tmp_path: Path) -> None:
    # 799,999 rows in 14 row groups of three sizes: not a multiple of 8, so
    # even mode pads one sample.
    files = [str(gen_dir / f"part-{i}.parquet") for i in (0, 1, 3)]
    want = np.sort(np.concatenate([pq.read_table(f, columns=["id"])["id"].to_numpy() for f in files]))
    assert len(want) == 799_999
    nodes = [
        Daemon([str(gen_dir)], binary=binary, extra_args=["--cache-bytes", cache, "--log-level", "warn"])
        for cache in ("64MiB", "0", "256MiB")
    ]
    with ExitStack() as stack:
        for node in nodes:
            stack.enter_context(node)
        procs = []
        for node, ranks_here in enumerate(LAYOUT):
            for local in range(ranks_here):
                rank = sum(LAYOUT[:node]) + local
                env = {
                    **os.environ,
                    "LOADERD_SOCKET": nodes[node].socket,
                    "LOADERD_JOB": "multinode",
                    "WORLD_SIZE": str(WORLD),
                    "NODE_RANK": str(node),
                    "LOCAL_RANK": str(local),
                    "LOCAL_WORLD_SIZE": "3",
                }
                # torchrun sets RANK; the last node's ranks derive it from
                # NODE_RANK × LOCAL_WORLD_SIZE + LOCAL_RANK instead.
                if node < len(LAYOUT) - 1:
                    env["RANK"] = str(rank)
                else:
                    env.pop("RANK", None)
                out = str(tmp_path / f"rank{rank}")
                log = open(out + ".log", "wb")  # closed by the exit stack
                stack.callback(log.close)
                p = subprocess.Popen(
                    [sys.executable, str(WORKER), out, str(EPOCHS), *files],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                stack.callback(p.kill)
                procs.append((rank, node, p))
        for rank, _, p in procs:
            code = p.wait(timeout=300)
            assert code == 0, f"rank {rank} exited {code}:\n{(tmp_path / f'rank{rank}.log').read_text()}"
        codes = [n.stop() for n in nodes]
        assert codes == [0, 0, 0], [n.log() for n in nodes]

    reports: dict[int, dict[str, Any]] = {}
    for rank, node, _ in procs:
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert (r["rank"], r["world_size"]) == (rank, WORLD)
        assert r["socket"] == nodes[node].socket, f"rank {rank} talked to another node's daemon"
        reports[rank] = {**r, **np.load(tmp_path / f"rank{rank}.npz")}

    fingerprints = []
    for epoch in range(EPOCHS):
        # Identical plans: every rank on every node saw the same fingerprint.
        plans = {reports[r]["plans"][epoch]["fingerprint"] for r in range(WORLD)}
        assert len(plans) == 1, f"epoch {epoch}: the nodes disagree on the plan: {plans}"
        fingerprints.append(plans.pop())
        # Exactly once globally: the real samples of all ranks are the dataset.
        real = [reports[r][f"ids{epoch}"][~reports[r][f"pad{epoch}"]] for r in range(WORLD)]
        got = np.sort(np.concatenate(real))
        assert np.array_equal(got, want), f"epoch {epoch}: not every sample exactly once"
        # Even mode: equal counts, the one padding sample repeats a real one.
        counts = {len(reports[r][f"ids{epoch}"]) for r in range(WORLD)}
        assert counts == {100_000}, counts
        padded = np.concatenate([reports[r][f"ids{epoch}"][reports[r][f"pad{epoch}"]] for r in range(WORLD)])
        assert len(padded) == 1 and padded[0] in want
        for r in range(WORLD):
            p = reports[r]["plans"][epoch]
            assert (p["num_samples"], p["total_samples"]) == (100_000, 799_999)
            assert p["padding_samples"] == int(reports[r][f"pad{epoch}"].sum())
    assert fingerprints[0] != fingerprints[1], "shuffled epochs share one plan"
    for r in range(WORLD):
        assert not np.array_equal(reports[r]["ids0"], reports[r]["ids1"]), f"rank {r}: same order both epochs"

    # The same plan in content, not only in name: one daemon serving all 8
    # ranks delivers exactly what the three nodes delivered, in the same order.
    with Daemon(data_roots=[str(gen_dir)], binary=binary) as single:
        ds = loaderd.read_parquet(files, columns=["id"], socket=single.socket)
        ds = ds.shuffle(seed=2024, window_rows=4096)
        for r in range(WORLD):
            shard = ds.shard(r, WORLD)
            assert shard.plan(1).fingerprint == reports[r]["plans"][1]["fingerprint"]
            ids = np.concatenate([b["id"] for b in shard.iter_batches(batch_size=4096, epoch=1)])
            assert np.array_equal(ids, reports[r]["ids1"]), f"rank {r}: a single daemon orders it differently"


def test_status_shows_the_same_plan_on_every_node(binary: str, tmp_path: Path) -> None:
    """What an operator compares: `loaderd status` on each node lists the
    job's plan fingerprint and the global ranks that node serves."""
    # Each rank's share (~34 MB) outgrows gRPC's flow-control windows, so a
    # session stays open while its trainer holds the iterator.
    n = 400_000
    blob = np.full(n, b"b" * 250, dtype="S250")
    pq.write_table(
        pa.table({"id": np.arange(n), "blob": blob}), tmp_path / "blobs.parquet", row_group_size=20_000
    )
    files = [str(tmp_path / "blobs.parquet")]
    with Daemon([str(tmp_path)], binary=binary) as a, Daemon([str(tmp_path)], binary=binary) as b:
        streams = []
        for node, rank in ((a, 0), (b, 1), (b, 2)):
            ds = loaderd.read_parquet(files, socket=node.socket).shuffle(seed=9)
            shard = ds.shard(rank, 3)
            shard.job = "status-check"
            it = shard.iter_batches(batch_size=1000, epoch=3)
            next(it)  # the session stays open while the trainer holds the iterator
            streams.append(it)
        tables = []
        for node in (a, b):
            p = subprocess.run(
                [binary, "status", "--socket", node.socket], capture_output=True, text=True, timeout=30
            )
            assert p.returncode == 0, p.stderr
            tables.append(p.stdout)
        for it in streams:
            it.close()
    plans = []
    for out, ranks in zip(tables, ("0", "1 2"), strict=True):
        lines = out.splitlines()
        head = lines.index(next(line for line in lines if line.startswith("JOB")))
        row = lines[head + 1].split(maxsplit=4)
        assert row[:3] == ["status-check", "3", "3"] and row[4] == ranks, out
        plans.append(row[3])
    assert plans[0] == plans[1] and len(plans[0]) == 32, tables
