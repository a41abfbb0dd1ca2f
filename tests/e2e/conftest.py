"""Fixtures for end-to-end tests: the real bin/loaderd on a real socket."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loaderd.testing import Daemon

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def corpora() -> Path:
    d = Path(os.environ.get("LOADERD_CORPORA", REPO.parent / "shared" / "corpora"))
    assert (d / "MANIFEST.md").exists(), f"corpora not found at {d}"
    return d


@pytest.fixture(scope="session")
def binary() -> str:
    b = os.environ.get("LOADERD_BIN", str(REPO / "bin" / "loaderd"))
    assert os.access(b, os.X_OK), f"no daemon binary at {b}: run `make build`"
    return b


@pytest.fixture(scope="session")
def gen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,200,000 rows with a unique ``id`` in 5 Parquet files of uneven sizes,
    each with its own row-group size, plus an empty file."""
    d = tmp_path_factory.mktemp("gen")
    sizes = [10_007, 250_000, 1, 539_992, 400_000]
    rg = [3_000, 65_536, 1, 100_000, 47_001]
    rng = np.random.default_rng(0)
    start = 0
    for i, (n, g) in enumerate(zip(sizes, rg, strict=True)):
        ids = np.arange(start, start + n, dtype=np.int64)
        t = pa.table(
            {
                "id": ids,
                "x": rng.standard_normal(n).astype(np.float32),
                "label": (ids % 10).astype(np.int32),
                "name": pa.array([f"r{j}" for j in ids]) if n < 20_000 else pa.array(["r"] * n),
            }
        )
        pq.write_table(t, d / f"part-{i}.parquet", row_group_size=g)
        start += n
    pq.write_table(
        pa.table(
            {
                "id": pa.array([], pa.int64()),
                "x": pa.array([], pa.float32()),
                "label": pa.array([], pa.int32()),
                "name": pa.array([], pa.string()),
            }
        ),
        d / "part-9-empty.parquet",
    )
    return d


GEN_ROWS = 1_200_000


@pytest.fixture(params=["shm", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    """Both transports, for the tests that check what reaches the trainer."""
    param: str = request.param
    return param


def ring_mappings(pid: int | str = "self") -> list[tuple[int, int, str]]:
    """(start, end, permissions) of the loaderd rings a process maps."""
    out = []
    with open(f"/proc/{pid}/maps", encoding="ascii") as f:
        for line in f:
            if "/memfd:loaderd-ring-" in line:
                span, perms = line.split()[:2]
                lo, hi = span.split("-")
                out.append((int(lo, 16), int(hi, 16), perms))
    return out


def in_ring(address: int) -> bool:
    """Whether memory at address lies in a shared-memory ring of this process."""
    return any(lo <= address < hi for lo, hi, _ in ring_mappings())


def address_of(column: object) -> int:
    """Where a numpy array's or a pyarrow array's values lie."""
    if isinstance(column, np.ndarray):
        addr: int = column.__array_interface__["data"][0]
        return addr
    assert isinstance(column, (pa.Array, pa.ChunkedArray))
    arr = column.chunk(0) if isinstance(column, pa.ChunkedArray) else column
    buf = arr.buffers()[-1]
    assert buf is not None
    return int(buf.address)


@pytest.fixture(scope="session")
def daemon(binary: str, corpora: Path, gen_dir: Path) -> Iterator[Daemon]:
    # Every batch through shared memory, however small, so the shm runs of
    # the tests exercise the ring (by default small batches go over gRPC).
    d = Daemon(
        data_roots=[str(corpora), str(gen_dir)],
        binary=binary,
        extra_args=["--log-level", "warn", "--shm-min-batch-bytes", "0"],
    )
    d.start()
    yield d
    code = d.stop()
    d.cleanup()
    assert code == 0, f"daemon exited with {code}:\n{d.log()}"
