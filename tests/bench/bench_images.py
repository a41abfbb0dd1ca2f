"""Images: RandomResizedCrop(224) + flip → uint8, one rank through the daemon,
versus torchvision's ImageFolder + DataLoader on the same files and cores, and
versus a decode-only loop with the same JPEG library (the limit).

The files are the corpus's ImageNet sample (143 JPEGs, 0.2 MPix, ~120 KB),
copied several times into class folders. Every reader runs one warm-up epoch
(page cache, daemon block cache, worker start) before it is timed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import loaderd
from benchlib import REPO, Env, Table, best_of
from loaderd.testing import Daemon

BATCH = 256
SIZE = 224


def dataset(env: Env) -> tuple[Path, int]:
    copies = 4 if env.quick else 16
    d = env.work / f"imagenet-sample-x{copies}"
    src = sorted((env.corpora / "images" / "imagenet-sample").glob("*/*"))
    if not (d / "_done").exists():
        shutil.rmtree(d, ignore_errors=True)
        for p in src:
            (d / p.parent.name).mkdir(parents=True, exist_ok=True)
            for k in range(copies):
                shutil.copyfile(p, d / p.parent.name / f"{k:02d}_{p.name}")
        (d / "_done").touch()
    return d, len(src) * copies


def go_bench(name: str, images: Path, cores: int, n: int) -> float:
    """img/s of a Go benchmark of the decode package on these files."""
    cmd = ["go", "test", "-run", "^$", "-bench", f"^{name}$", "-benchtime", f"{n}x", "-cpu", str(cores)]
    out = subprocess.run(
        [*cmd, "./decode/"],
        cwd=REPO,
        env={**os.environ, "LOADERD_BENCH_IMAGES": str(images)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"([\d.]+) img/s", out)
    if m is None:
        raise RuntimeError(f"no img/s in:\n{out}")
    return float(m.group(1))


def torchvision_epoch(root: Path, cores: int) -> tuple[float, int]:
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(), transforms.PILToTensor()]
    )
    ds = datasets.ImageFolder(str(root), transform=tf)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=BATCH, shuffle=True, num_workers=cores, persistent_workers=True
    )

    def epoch() -> int:
        n = 0
        for x, _ in loader:
            assert x.dtype == torch.uint8 and x.shape[1:] == (3, SIZE, SIZE)
            n += len(x)
        return n

    epoch()
    return best_of(2, epoch)


def run(env: Env) -> list[Table]:
    root, n = dataset(env)
    cores = os.cpu_count() or 1
    reps = 2 if env.quick else 3

    args = ["--log-level", "warn", "--workers", str(cores)]
    with Daemon([str(root)], binary=env.binary, extra_args=args) as dm:
        ds = (
            loaderd.read_images(str(root), socket=dm.socket)
            .random_resized_crop(SIZE)
            .random_horizontal_flip()
            .shuffle(seed=1)
        )
        epochs = iter(range(100))

        def daemon_epoch() -> int:
            got = 0
            for b in ds.iter_batches(batch_size=BATCH, epoch=next(epochs)):
                assert b["image"].shape[1:] == (SIZE, SIZE, 3)
                got += len(b["image"])
            return got

        daemon_epoch()
        # Consecutive epochs timed together: the daemon prepares epoch e+1
        # while e is read, so one epoch alone would borrow from the next.
        t0 = time.perf_counter()
        got = sum(daemon_epoch() for _ in range(reps))
        t_daemon = (time.perf_counter() - t0) / reps
        assert got == n * reps
    t_tv, got = torchvision_epoch(root, cores)
    assert got == n
    limit = go_bench("BenchmarkDecodeOnly", root, cores, n)
    inproc = go_bench("BenchmarkRandomResizedCrop224", root, cores, n)

    loaderd_rate, tv_rate = n / t_daemon, n / t_tv
    table = Table(
        f"Images → uint8 tensors: RandomResizedCrop({SIZE}) + RandomHorizontalFlip, {n:,} ImageNet JPEGs, "
        f"batch {BATCH}, {cores} cores",
        ["reader", "img/s", "× torchvision", "× decode-only limit"],
    )
    for name, rate in [
        ("loaderd daemon, one rank (shared memory)", loaderd_rate),
        (f"torchvision ImageFolder + DataLoader(num_workers={cores})", tv_rate),
        ("decode only: whole JPEG → RGB, libjpeg-turbo (go test -bench)", limit),
        ("loaderd's decode + transforms alone, in-process (go test -bench)", inproc),
    ]:
        table.rows.append([name, rate, rate / tv_rate, rate / limit])
    table.notes.append(
        "Aim: loaderd ≥ 2× torchvision and ≥ 0.8× the decode-only limit. The daemon decodes only the "
        "crop's rows and iMCU columns, at the smallest DCT scale that covers 224×224, so it can pass "
        f"the whole-image decode limit. loaderd: the mean of {reps} consecutive warm epochs (it prepares "
        "each next epoch during the current one); torchvision: best of 2 warm epochs, persistent workers."
    )
    return [table]
