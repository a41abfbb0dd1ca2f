"""GPU decode: decode + RandomResizedCrop(224) + flip → uint8 on one GPU (nvJPEG
+ NPP) versus the CPU path (libjpeg-turbo, every core) of the same machine, in
one run of decode's BenchmarkDecoders, on the images section's files.

Without a usable GPU decoder (no driver, no GPU, or a build without nvJPEG:
set NVJPEG=1 to build it, which needs the CUDA toolkit) the section prints
"skipped: no GPU (reason)". Aim (issue 9): >= 5,000 img/s per GPU and >= 5x
the machine's CPU path.
"""

from __future__ import annotations

import os
import re
import subprocess

from bench_images import dataset

from benchlib import REPO, Env, Table


def run(env: Env) -> list[Table]:
    images, n = dataset(env)
    tags = subprocess.run(
        ["bash", "deploy/dev/gotags.sh"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    if os.environ.get("NVJPEG") == "1":
        tags.append("nvjpeg")
    per_case = 2048 if env.quick else 8192
    out = subprocess.run(
        [
            "go",
            "test",
            "-tags",
            " ".join(tags),
            "-run",
            "^$",
            "-bench",
            "^BenchmarkDecoders$",
            "-v",
            "-benchtime",
            f"{per_case}x",
            "./decode/",
        ],
        cwd=REPO,
        env={**os.environ, "LOADERD_BENCH_IMAGES": str(images)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rates = dict(re.findall(r"BenchmarkDecoders/(cpu|gpu)\S*\s+\d+\s+[\d.]+ ns/op\s+([\d.]+) img/s", out))
    names = dict(re.findall(r"BenchmarkDecoders/(cpu|gpu)\S*\n\s+bench_test.go:\d+: decoder: (.*)", out))
    title = (
        f"GPU decode: RandomResizedCrop({224}) + flip → uint8, {n:,} ImageNet JPEGs "
        f"cycled, batches of 256, {os.cpu_count()} cores"
    )
    if "cpu" not in rates:
        raise RuntimeError(f"no CPU figure in:\n{out}")
    cpu = float(rates["cpu"])
    table = Table(title, ["decoder", "img/s", "× CPU path"])
    table.rows.append([f"CPU: {names.get('cpu', 'cpu')}, every core", cpu, 1.0])
    if "gpu" in rates:
        gpu = float(rates["gpu"])
        table.rows.append([f"GPU: {names.get('gpu', 'gpu')}", gpu, gpu / cpu])
        table.notes.append("Aim: >= 5,000 img/s per GPU and >= 5x the CPU path.")
    else:
        m = re.search(r"--- SKIP: BenchmarkDecoders/gpu\S*\n\s+bench_test.go:\d+: (.*)", out)
        reason = m.group(1) if m else "the GPU case did not run"
        table.rows.append(["GPU", "skipped", "-"])
        table.notes.append(f"skipped: no GPU ({reason})")
    return [table]
