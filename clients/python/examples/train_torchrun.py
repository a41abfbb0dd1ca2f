"""Distributed training on loaderd with torchrun: DDP on CPU (gloo), each rank
reading its own shard from the node's daemon, with checkpoints that resume
mid-epoch exactly.

Start a daemon that may read the data, then launch one process per rank::

    loaderd serve --data-root /data &
    torchrun --standalone --nproc_per_node=2 train_torchrun.py /data/regression \\
        --epochs 2 --checkpoint ckpt.pt
    # later, or after a crash:
    torchrun --standalone --nproc_per_node=2 train_torchrun.py /data/regression \\
        --epochs 2 --checkpoint ckpt.pt --resume ckpt.pt

The data is Parquet with a feature column ``x`` (a fixed-size list of
floats), a target ``y`` and an ``id``; ``train_torchrun.py DATA --make-data
ROWS`` writes such a dataset to DATA. The daemon's socket comes from ``LOADERD_SOCKET`` (or the
default one).

``--ids-dir`` makes every rank write the ids it trained on, one file per rank
and epoch, so that a test can check each sample was seen once per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import loaderd

FEATURES = 8


def make_data(out: Path, rows: int, seed: int = 0) -> None:
    """y = x·w + 0.5 + noise, in three Parquet files."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(FEATURES).astype(np.float32)
    x = rng.standard_normal((rows, FEATURES)).astype(np.float32)
    y = x @ w + 0.5 + 0.01 * rng.standard_normal(rows).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(rows), 3)):
        table = pa.table(
            {
                "id": pa.array(part, pa.int64()),
                "x": pa.FixedSizeListArray.from_arrays(pa.array(x[part].ravel()), FEATURES),
                "y": pa.array(y[part]),
            }
        )
        pq.write_table(table, out / f"part-{i}.parquet", row_group_size=500)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="directory of Parquet files with columns id, x, y")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=42, help="the shuffle's seed")
    p.add_argument(
        "--checkpoint", help="save a checkpoint here after each epoch and every --save-every steps"
    )
    p.add_argument("--save-every", type=int, default=0, help="steps between mid-epoch checkpoints")
    p.add_argument("--resume", help="a checkpoint to continue from (model, optimizer and data position)")
    p.add_argument("--max-steps", type=int, default=0, help="stop (after a checkpoint) at this global step")
    p.add_argument("--ids-dir", help="write the ids each rank trained on here")
    p.add_argument(
        "--make-data", metavar="ROWS", type=int, help="write a dataset of ROWS rows to DATA and exit"
    )
    args = p.parse_args()
    if args.make_data:
        make_data(Path(args.data), args.make_data)
        return

    dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_ADDR... come from torchrun
    rank = dist.get_rank()
    torch.manual_seed(0)  # every rank starts from the same weights
    model = DistributedDataParallel(torch.nn.Linear(FEATURES, 1))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)

    # "even": every rank gets the same number of samples (so DDP's
    # all-reduces line up), the last few repeating earlier ones; the
    # padding column marks them, and they are left out of the loss.
    ds = loaderd.read_parquet(args.data, columns=["id", "x", "y"]).shuffle(seed=args.seed)
    shard = loaderd.get_dataset_shard(ds, mode="even")

    start_epoch, step = 0, 0
    if args.resume:
        ckpt = torch.load(args.resume, weights_only=False)
        model.module.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        shard.load_state_dict(ckpt["shards"][rank])  # this rank's cursor
        start_epoch, step = ckpt["shards"][rank]["epoch"], ckpt["step"]

    def save() -> None:
        # Each rank's cursor differs: gather them all into rank 0's file.
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, shard.state_dict())
        if rank == 0 and args.checkpoint:
            ckpt = {
                "model": model.module.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "shards": states,
            }
            tmp = args.checkpoint + ".tmp"
            torch.save(ckpt, tmp)
            os.replace(tmp, args.checkpoint)

    for epoch in range(start_epoch, args.epochs):
        total, count = 0.0, 0
        seen: list[int] = []
        batches = shard.iter_batches(
            args.batch_size, epoch=epoch, batch_format="torch", padding_column="is_padding"
        )
        for batch in batches:
            real = ~batch["is_padding"]
            weight = real.float()
            pred = model(batch["x"]).squeeze(1)
            loss = ((pred - batch["y"]) ** 2 * weight).sum() / weight.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()  # DDP averages the gradients over the ranks
            opt.step()
            step += 1
            total += float(loss) * int(real.sum())
            count += int(real.sum())
            seen.extend(batch["id"][real].tolist())
            if (args.save_every and step % args.save_every == 0) or step == args.max_steps:
                save()
            if step == args.max_steps:
                break
        if args.ids_dir:
            with open(Path(args.ids_dir) / f"rank{rank}-epoch{epoch}.jsonl", "a") as f:
                f.write(json.dumps({"ids": seen, "loss_sum": total, "count": count}) + "\n")
        if step == args.max_steps:
            break
        save()
        if rank == 0:
            print(
                f"epoch {epoch}: mean loss {total / max(count, 1):.5f} (rank 0, {count} samples)", flush=True
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
