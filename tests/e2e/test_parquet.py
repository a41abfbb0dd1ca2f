"""Parquet to trainer ranks, end to end, over the real daemon."""

from __future__ import annotations

import collections
import csv
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loaderd
from loaderd.testing import Daemon

from .conftest import GEN_ROWS, address_of, in_ring


def plain(t: pa.DataType) -> pa.DataType:
    """The type with every temporal type replaced by its integer storage, so
    rows compare without Python datetimes (some corpus values overflow them)."""
    if pa.types.is_temporal(t):
        return pa.int32() if t.bit_width == 32 else pa.int64()
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, plain(f.type), f.nullable) for f in t])
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(plain(t.value_type))
    if pa.types.is_map(t):
        return pa.map_(plain(t.key_type), plain(t.item_type))
    return t


def rows_of(shard: loaderd.Shard, epoch: int, **kw: Any) -> list[str]:
    out: list[str] = []
    for t in shard.iter_batches(
        batch_size=kw.pop("batch_size", 37), epoch=epoch, batch_format="pyarrow", **kw
    ):
        t = t.cast(pa.schema([pa.field(f.name, plain(f.type)) for f in t.schema]))
        out.extend(repr(r) for r in t.to_pylist())
    return out


def check_transport(column: object, transport: str) -> None:
    """A batch's column lies in the shared-memory ring exactly when it came
    over shared memory."""
    assert in_ring(address_of(column)) == (transport == "shm"), transport


def expectations(corpora: Path) -> list[tuple[str, str]]:
    with open(corpora / "parquet" / "EXPECTATIONS.tsv", encoding="utf-8") as f:
        return [
            (r["file"], r["arrow_go_v18.8.0_default_ReadTable"]) for r in csv.DictReader(f, delimiter="\t")
        ]


def readable(corpora: Path) -> dict[str, int]:
    """Valid files arrow-go reads, with their row counts (the manifest's: one
    file's footer says 0 rows while its row group holds 6)."""
    return {
        f: int(res.split("rows=")[1].split()[0])
        for f, res in expectations(corpora)
        if res.startswith("OK") and f.startswith("valid/")
    }


def malformed(corpora: Path) -> list[str]:
    return [f for f, res in expectations(corpora) if not res.startswith("OK")]


def test_corpora_files_split_exactly_once(daemon: Daemon, corpora: Path, transport: str) -> None:
    files = readable(corpora)
    assert len(files) > 40
    for name, n in files.items():
        path = str(corpora / "parquet" / name)
        ds = loaderd.read_parquet(path, socket=daemon.socket)
        assert ds.count() == n, name
        whole = rows_of(ds.shard(0, 1, "exact"), 0, transport=transport)
        assert len(whole) == n, name
        want = collections.Counter(whole)
        for world in (1, 2, 3, 5, 8):
            got: collections.Counter[str] = collections.Counter()
            for r in range(world):
                got.update(rows_of(ds.shuffle(seed=world).shard(r, world, "exact"), 1, transport=transport))
            assert got == want, f"{name}: world {world}"


def test_corpora_values_match_pyarrow(daemon: Daemon, corpora: Path) -> None:
    """Spot-check values against pyarrow on files whose types both read alike."""
    for name in [
        "valid/alltypes_plain.parquet",
        "derived/derived_zipcodes_snappy_rg8192.parquet",
        "valid/delta_binary_packed.parquet",
        "valid/nested_lists.snappy.parquet",
    ]:
        path = str(corpora / "parquet" / name)
        got = pa.Table.from_batches(
            [
                t.to_batches()[0]
                for t in loaderd.read_parquet(path, socket=daemon.socket).iter_batches(
                    batch_size=1000, batch_format="pyarrow"
                )
            ]
        )
        want = pq.read_table(path)
        assert got.num_rows == want.num_rows
        for col in got.column_names:
            # Through integer storage: arrow-go marks INT96 timestamps UTC,
            # pyarrow leaves them naive; the instants are the same.
            g, w = got.column(col), want.column(col)
            assert g.cast(plain(g.type)).to_pylist() == w.cast(plain(w.type)).to_pylist(), f"{name}:{col}"


def ids(shard: loaderd.Shard, epoch: int, **kw: Any) -> np.ndarray[Any, Any]:
    """The ids of one epoch, copied out of each batch so that batches are
    released as they go (as a training loop does)."""
    parts = []
    for b in shard.iter_batches(batch_size=kw.pop("batch_size", 8192), epoch=epoch, **kw):
        if not parts and "transport" in kw:
            check_transport(b["id"], kw["transport"])
        parts.append(b["id"].copy())
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


@pytest.mark.slow
def test_generated_exactly_once_every_world_size(daemon: Daemon, gen_dir: Path, transport: str) -> None:
    ds = loaderd.read_parquet(str(gen_dir / "*.parquet"), columns=["id", "label"], socket=daemon.socket)
    assert ds.count() == GEN_ROWS
    assert ds.schema().names == ["id", "label"]
    sh = ds.shuffle(seed=42)
    for world in range(1, 9):
        for epoch in (0, 1):
            parts = [ids(sh.shard(r, world, "exact"), epoch, transport=transport) for r in range(world)]
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1
            allids = np.sort(np.concatenate(parts))
            assert np.array_equal(allids, np.arange(GEN_ROWS)), f"world {world} epoch {epoch}"


def test_same_seed_same_order_epochs_differ(daemon: Daemon, gen_dir: Path, transport: str) -> None:
    ds = loaderd.read_parquet(str(gen_dir), columns=["id"], socket=daemon.socket)
    a = ids(ds.shuffle(seed=7).shard(1, 3, "exact"), 0, transport=transport)
    b = ids(ds.shuffle(seed=7).shard(1, 3, "exact"), 0, transport=transport)
    c = ids(ds.shuffle(seed=7).shard(1, 3, "exact"), 1, transport=transport)
    d = ids(ds.shuffle(seed=8).shard(1, 3, "exact"), 0, transport=transport)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, d)
    # Unshuffled: file order, identical every epoch.
    u0 = ids(ds.shard(0, 1), 0, transport=transport)
    u1 = ids(ds.shard(0, 1), 3, transport=transport)
    assert np.array_equal(u0, np.arange(GEN_ROWS)) and np.array_equal(u0, u1)


def test_even_mode_equal_counts_and_marked_padding(daemon: Daemon, gen_dir: Path, transport: str) -> None:
    ds = loaderd.read_parquet(str(gen_dir / "*.parquet"), columns=["id"], socket=daemon.socket).shuffle(
        seed=1
    )
    world = 7  # 1.2M is not a multiple of 7
    per = -(-GEN_ROWS // world)
    real: list[np.ndarray[Any, Any]] = []
    npad = 0
    for r in range(world):
        # All of a rank's batches held at once: 18 of 80 KB fit the ring.
        batches = list(
            ds.shard(r, world, "even").iter_batches(
                batch_size=10_000, padding_column="pad", transport=transport
            )
        )
        check_transport(batches[0]["id"], transport)
        got = np.concatenate([b["id"] for b in batches])
        pad = np.concatenate([b["pad"] for b in batches])
        assert len(got) == per
        # Padding rows are trailing, and repeat real samples.
        assert not pad[: len(pad) - int(pad.sum())].any()
        npad += int(pad.sum())
        real.append(got[~pad])
    assert npad == per * world - GEN_ROWS
    assert np.array_equal(np.sort(np.concatenate(real)), np.arange(GEN_ROWS))


def test_batch_formats_and_drop_last(daemon: Daemon, gen_dir: Path) -> None:
    ds = loaderd.read_parquet(str(gen_dir / "part-0.parquet"), socket=daemon.socket)
    nb = next(iter(ds.iter_batches(batch_size=1000)))
    assert set(nb) == {"id", "x", "label", "name"}
    assert nb["id"].dtype == np.int64 and nb["x"].dtype == np.float32 and nb["id"].shape == (1000,)
    assert isinstance(next(iter(ds.iter_batches(batch_size=10, batch_format="pyarrow"))), pa.Table)
    df = next(iter(ds.iter_batches(batch_size=10, batch_format="pandas")))
    assert list(df.columns) == ["id", "x", "label", "name"] and len(df) == 10
    sizes = [len(b["id"]) for b in ds.iter_batches(batch_size=1000, drop_last=True)]
    assert sizes == [1000] * 10
    sizes = [len(b["id"]) for b in ds.iter_batches(batch_size=1000)]
    assert sizes == [1000] * 10 + [7]


@pytest.mark.parametrize("bad", ["nope", "valid/*.nothing"])
def test_missing_paths(daemon: Daemon, corpora: Path, bad: str) -> None:
    with pytest.raises(loaderd.NotFoundError):
        loaderd.read_parquet(str(corpora / "parquet" / bad), socket=daemon.socket).count()


def test_malformed_files_name_the_file_and_daemon_goes_on(
    daemon: Daemon, corpora: Path, gen_dir: Path
) -> None:
    bad = malformed(corpora)
    assert len(bad) == 19  # 8 known arrow-go gaps + 7 bad_data + 3 encrypted + 1 invalid variant
    good = loaderd.read_parquet(str(gen_dir / "part-0.parquet"), socket=daemon.socket)
    for name in bad:
        path = str(corpora / "parquet" / name)
        with pytest.raises(loaderd.LoaderError) as ei:
            for _ in loaderd.read_parquet(path, socket=daemon.socket).iter_batches(batch_size=100):
                pass
        err = ei.value
        assert isinstance(err, (loaderd.DataError, loaderd.UnsupportedError)), (name, err)
        assert err.file == path and path in str(err), (name, err)
        assert err.where, (name, err)
        # The daemon still serves.
        assert good.count() == 10_007
    # on_error="skip" leaves the bad file out and serves the rest.
    both = loaderd.read_parquet(
        [str(corpora / "parquet" / "bad_data" / "PARQUET-1481.parquet"), str(gen_dir / "part-0.parquet")],
        on_error="skip",
        socket=daemon.socket,
    )
    assert sum(len(b["id"]) for b in both.iter_batches(batch_size=4096)) == 10_007


def test_outside_data_root_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1]}), tmp_path / "x.parquet")
    with pytest.raises(loaderd.PermissionDeniedError) as ei:
        loaderd.read_parquet(str(tmp_path / "x.parquet"), socket=daemon.socket).count()
    assert "data root" in str(ei.value)
    link = Path(daemon.args[daemon.args.index("--data-root") + 1])  # corpora root
    assert link.exists()


def test_bad_requests_are_invalid_argument(daemon: Daemon, gen_dir: Path) -> None:
    ds = loaderd.read_parquet(str(gen_dir / "part-0.parquet"), socket=daemon.socket)
    with pytest.raises(loaderd.InvalidArgumentError):
        ds.shard(3, 2)
    with pytest.raises(loaderd.InvalidArgumentError):
        next(iter(ds.iter_batches(batch_size=0)))
    with pytest.raises(loaderd.InvalidArgumentError) as ei:
        loaderd.read_parquet(str(gen_dir / "part-0.parquet"), columns=["nope"], socket=daemon.socket).count()
    assert "nope" in str(ei.value)
