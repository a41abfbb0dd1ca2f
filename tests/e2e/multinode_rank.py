"""One trainer rank of test_multinode: run as its own process, with the
environment a launcher gives it, it reads its shard of every epoch from its
node's daemon ($LOADERD_SOCKET) and saves what it got.

Usage: python multinode_rank.py OUT_PREFIX EPOCHS FILE...
"""

from __future__ import annotations

import json
import sys

import numpy as np

import loaderd


def main() -> None:
    out, epochs, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    ds = loaderd.read_parquet(files, columns=["id"]).shuffle(seed=2024, window_rows=4096)
    shard = loaderd.get_dataset_shard(ds)
    report: dict[str, object] = {"rank": shard.rank, "world_size": shard.world_size, "socket": ds.socket}
    arrays: dict[str, np.ndarray] = {}
    plans = []
    for epoch in range(epochs):
        plans.append(shard.plan(epoch).__dict__)
        ids, pad = [], []
        for batch in shard.iter_batches(batch_size=1000, epoch=epoch, padding_column="pad"):
            ids.append(batch["id"])
            pad.append(batch["pad"])
        arrays[f"ids{epoch}"] = np.concatenate(ids)
        arrays[f"pad{epoch}"] = np.concatenate(pad)
    report["plans"] = plans
    np.savez(out + ".npz", **arrays)
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
