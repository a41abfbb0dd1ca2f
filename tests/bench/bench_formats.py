"""CSV and JSON Lines → numpy through the daemon versus pyarrow's readers in
process, and Parquet read from an in-process S3-compatible server.

Generated numeric-and-text rows, warm page cache (every reader runs once
before it is timed). The S3 rows read the same Parquet files from
tests/objserver (gofakes3 on loopback): a local disk versus the object-store
path (ranged GETs, listing, the block cache off so every byte is fetched).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

import loaderd
from benchlib import REPO, Env, Table, best_of
from loaderd.testing import Daemon

BATCH = 8192


def dataset(env: Env) -> tuple[Path, int]:
    rows = 200_000 if env.quick else 1_000_000
    d = env.work / f"formats-{rows}"
    if not (d / "_done").exists():
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        per = rows // 4
        for i in range(4):
            ids = np.arange(i * per, (i + 1) * per, dtype=np.int64)
            t = pa.table(
                {
                    "id": ids,
                    "x": rng.standard_normal(per),
                    "y": rng.standard_normal(per),
                    "label": ids % 1000,
                    "name": pa.array([f'row {j}, "quoted"' for j in ids]),
                }
            )
            pacsv.write_csv(t, d / f"part-{i}.csv")
            with open(d / f"part-{i}.jsonl", "w") as f:
                for r in t.to_pylist():
                    f.write(json.dumps(r) + "\n")
            pq.write_table(t, d / f"part-{i}.parquet", row_group_size=65_536)
        (d / "_done").touch()
    return d, rows


def run(env: Env) -> list[Table]:
    d, rows = dataset(env)
    reps = 2 if env.quick else 3
    tables: list[Table] = []
    with (
        Daemon([str(d)], binary=env.binary, extra_args=["--log-level", "warn"]) as dm,
        Daemon([str(d)], binary=env.binary, extra_args=["--log-level", "warn", "--cache-bytes", "0"]) as cold,
    ):
        for fmt, ext, peer_name, peer_read, ours in [
            ("CSV", "csv", "pyarrow.csv.read_csv", pacsv.read_csv, loaderd.read_csv),
            ("JSON Lines", "jsonl", "pyarrow.json.read_json", pajson.read_json, loaderd.read_json),
        ]:
            files = sorted(d.glob(f"*.{ext}"))
            nbytes = sum(f.stat().st_size for f in files)

            def peer(files: list[Path] = files, read: object = peer_read) -> int:
                n = 0
                for f in files:
                    for b in read(f).to_batches(BATCH):  # type: ignore[operator]
                        x = {
                            c: b.column(i).to_numpy(zero_copy_only=False)
                            for i, c in enumerate(b.schema.names)
                        }
                        n += len(x["id"])
                return n

            def daemon(socket: str, ours: object = ours, ext: str = ext) -> int:
                ds = ours(str(d / f"*.{ext}"), socket=socket)  # type: ignore[operator]
                return sum(len(b["id"]) for b in ds.iter_batches(batch_size=BATCH, batch_format="numpy"))

            res = []
            for name, fn in [
                (peer_name + " (in process)", peer),
                ("loaderd daemon, parsing every block (cache off)", lambda: daemon(cold.socket)),
                ("loaderd daemon, blocks in its cache (epoch 2 on)", lambda: daemon(dm.socket)),
            ]:
                fn()
                t, n = best_of(reps, fn)
                assert n == rows, (name, n)
                res.append((name, t))
            tp = res[0][1]
            tb = Table(
                f"{fmt} → numpy, one rank, {rows:,} rows × 5 columns ({nbytes / 1e6:.0f} MB), batch {BATCH}",
                ["reader", "rows/s", "MB/s", "× pyarrow"],
            )
            for name, t in res:
                tb.rows.append([name, rows / t, nbytes / t / 1e6, tp / t])
            tb.notes.append(
                f"pyarrow's readers use every core in process; the daemon here has --workers "
                f"{os.cpu_count()}. Best of {reps} warm runs (page cache warm). With its cache on, the "
                "daemon keeps decoded blocks, so every read after the first skips parsing."
            )
            tables.append(tb)

        # Parquet from local disk versus the in-process S3 server.
        objserver = REPO / "bin" / "objserver"
        proc = subprocess.Popen(
            [str(objserver), "--dir", str(d)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            nbytes = sum(f.stat().st_size for f in d.glob("*.parquet"))
            os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
            res = []
            with Daemon(
                [str(d)],
                binary=env.binary,
                extra_args=["--log-level", "warn", "--s3-endpoint", url, "--cache-bytes", "0"],
            ) as ds3:
                for name, uri in [
                    ("local disk", str(d / "*.parquet")),
                    ("S3 (gofakes3 on loopback, cache off)", f"s3://bkt/{d.name}/*.parquet"),
                ]:
                    pds = loaderd.read_parquet(uri, socket=ds3.socket)

                    def epoch(pds: loaderd.Dataset = pds) -> int:
                        return sum(
                            len(b["id"]) for b in pds.iter_batches(batch_size=BATCH, batch_format="numpy")
                        )

                    epoch()
                    t, n = best_of(reps, epoch)
                    assert n == rows
                    res.append((name, t))
            tb = Table(
                f"Parquet → numpy via the daemon: local disk vs S3, {rows:,} rows ({nbytes / 1e6:.0f} MB)",
                ["source", "rows/s", "MB/s", "× local"],
            )
            for name, t in res:
                tb.rows.append([name, rows / t, nbytes / t / 1e6, res[0][1] / t])
            tb.notes.append("The S3 server runs on this machine and competes for its cores.")
            tables.append(tb)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return tables
