"""CSV, JSON Lines and NumPy through the real daemon, writing datasets back,
repartition and groupby."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

import loaderd
from loaderd.testing import Daemon


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("out")


@pytest.fixture(scope="module")
def fdaemon(binary: str, corpora: Path, out_dir: Path) -> Iterator[Daemon]:
    d = Daemon(data_roots=[str(corpora), str(out_dir)], binary=binary, extra_args=["--log-level", "warn"])
    d.start()
    yield d
    code = d.stop()
    d.cleanup()
    assert code == 0, f"daemon exited with {code}:\n{d.log()}"


def table(ds: loaderd.Dataset) -> pa.Table:
    return pa.concat_tables(list(ds.iter_batches(batch_size=4096, batch_format="pyarrow")))


def test_csv_matches_pyarrow(fdaemon: Daemon, corpora: Path) -> None:
    path = corpora / "tabular/real-csv/seattle-weather.csv"
    ours = table(loaderd.read_csv(str(path), socket=fdaemon.socket, block_bytes=8192))
    theirs = pacsv.read_csv(path)
    assert ours.num_rows == theirs.num_rows == 1461
    assert ours.column_names == theirs.column_names
    for name in ("precipitation", "temp_max", "weather"):
        assert ours[name].to_pylist() == theirs[name].to_pylist(), name


def test_json_lines_match_pyarrow(fdaemon: Daemon, corpora: Path) -> None:
    path = corpora / "tabular/jsonl/gsm8k_test.jsonl"
    ours = table(loaderd.read_json(str(path), socket=fdaemon.socket, block_bytes=65536))
    theirs = pajson.read_json(path)
    assert ours.num_rows == 1319
    assert ours.to_pylist() == theirs.select(ours.column_names).to_pylist()


def test_numpy_matches_numpy(fdaemon: Daemon, corpora: Path) -> None:
    path = corpora / "npy/derived/derived_zipcodes_latlon_f8_42049x2.npy"
    ds = loaderd.read_numpy(str(path), socket=fdaemon.socket, block_bytes=100_000)
    got = np.concatenate([b["data"] for b in ds.iter_batches(batch_size=5000)])
    assert got.shape == (42049, 2)
    np.testing.assert_array_equal(got, np.load(path))


def test_invalid_json_names_file_and_line(fdaemon: Daemon, corpora: Path) -> None:
    path = corpora / "tabular/derived/derived_jsonl_bad_line3_MALFORMED.jsonl"
    with pytest.raises(loaderd.LoaderError) as e:
        loaderd.read_json(str(path), socket=fdaemon.socket).count()
    assert isinstance(e.value, loaderd.DataError)
    assert str(path) in str(e.value) and "line 3" in str(e.value)


CORPUS = {
    "csv": ("tabular/real-csv/birdstrikes.csv", loaderd.read_csv),
    "json": ("tabular/jsonl/gsm8k_test.jsonl", loaderd.read_json),
    "numpy": ("npy/derived/derived_zipcodes_latlon_f4_42049x2.npy", loaderd.read_numpy),
}


def source(name: str, corpora: Path, socket: str) -> loaderd.Dataset:
    if name == "parquet":
        return loaderd.read_parquet(
            str(corpora / "parquet/derived/derived_zipcodes_snappy_rg8192.parquet"), socket=socket
        )
    path, read = CORPUS[name]
    ds: loaderd.Dataset = read(str(corpora / path), socket=socket, block_bytes=65536)  # type: ignore[operator]
    return ds


@pytest.mark.parametrize("name", ["csv", "json", "numpy", "parquet"])
def test_round_trip_through_parquet(fdaemon: Daemon, corpora: Path, out_dir: Path, name: str) -> None:
    ds = source(name, corpora, fdaemon.socket)
    before = table(ds)
    dest = out_dir / f"rt-{name}"
    paths = ds.write_parquet(str(dest), rows_per_file=3000)
    assert paths == sorted(paths) and len(paths) == -(-before.num_rows // 3000)
    assert sorted(p.name for p in dest.iterdir()) == [Path(p).name for p in paths]  # no temp files left
    after = table(loaderd.read_parquet(str(dest), socket=fdaemon.socket))
    assert after.schema.names == before.schema.names
    assert after.equals(before.cast(after.schema)), name
    assert pq.read_table(dest).num_rows == before.num_rows


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_write_text_and_read_back(fdaemon: Daemon, corpora: Path, out_dir: Path, fmt: str) -> None:
    ds = source("csv", corpora, fdaemon.socket).repartition(3)
    before = table(ds)
    dest = out_dir / f"text-{fmt}"
    paths = ds.write_csv(str(dest)) if fmt == "csv" else ds.write_json(str(dest))
    assert len(paths) == 3
    back = (
        loaderd.read_csv(str(dest), socket=fdaemon.socket)
        if fmt == "csv"
        else loaderd.read_json(str(dest), socket=fdaemon.socket)
    )
    after = table(back)
    assert after.num_rows == before.num_rows
    for name in ("Airport Name", "Cost Total $", "Flight Date"):
        a = after[name].to_pylist()
        b = before[name].to_pylist()
        assert [str(x) if x is not None else None for x in a] == [
            str(x) if x is not None else None for x in b
        ], name


def test_write_is_confined_and_reported(
    fdaemon: Daemon, corpora: Path, out_dir: Path, tmp_path: Path
) -> None:
    ds = source("json", corpora, fdaemon.socket)
    with pytest.raises(loaderd.PermissionDeniedError):
        ds.write_parquet(str(tmp_path / "outside"))
    assert not (tmp_path / "outside").exists()
    ds.write_json(str(out_dir / "reported"))
    out = subprocess.run(
        [fdaemon.binary, "status", "--socket", fdaemon.socket], check=True, capture_output=True, text=True
    ).stdout
    assert "WRITE" in out and "done" in out and "1319/1319" in out and str(out_dir / "reported") in out


def test_groupby(fdaemon: Daemon, corpora: Path) -> None:
    path = corpora / "tabular/real-csv/seattle-weather.csv"
    ds = loaderd.read_csv(str(path), socket=fdaemon.socket, block_bytes=8192)
    counts = ds.groupby("weather").count()
    theirs = pacsv.read_csv(path).group_by("weather").aggregate([("weather", "count")])
    want = dict(zip(theirs["weather"].to_pylist(), theirs["weather_count"].to_pylist(), strict=True))
    assert dict(zip(counts["weather"].to_pylist(), counts["count"].to_pylist(), strict=True)) == want
    assert counts["weather"].to_pylist() == sorted(want)
    sizes = ds.groupby("weather").map_groups(lambda b: (b["weather"][0], len(b["date"])))
    assert dict(sizes) == want
    maxes = ds.groupby("weather").map_groups(lambda t: pc.max(t["temp_max"]).as_py(), batch_format="pyarrow")
    assert len(maxes) == len(want)
    with pytest.raises(loaderd.InvalidArgumentError):
        ds.groupby("nope").count()


@pytest.fixture(scope="module")
def s3(corpora: Path) -> Iterator[str]:
    """An S3-compatible server (gofakes3, tests/objserver) holding
    s3://bkt/derived/ (Parquet) and s3://bkt/real-csv/."""
    binary = Path(__file__).resolve().parents[2] / "bin" / "objserver"
    proc = subprocess.Popen(
        [str(binary), "--dir", str(corpora / "parquet/derived"), "--dir", str(corpora / "tabular/real-csv")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_reads_from_s3(binary: str, corpora: Path, s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    d = Daemon(
        data_roots=[str(corpora)], binary=binary, extra_args=["--s3-endpoint", s3, "--allow-bucket", "bkt"]
    )
    d.start()
    try:
        remote = table(loaderd.read_parquet("s3://bkt/derived/*zipcodes*.parquet", socket=d.socket))
        local = table(
            loaderd.read_parquet(
                str(corpora / "parquet/derived/derived_zipcodes_snappy_rg8192.parquet"), socket=d.socket
            )
        )
        assert remote.num_rows == 42049 and remote.equals(local)
        csv = loaderd.read_csv("s3://bkt/real-csv/**/seattle-*.csv", socket=d.socket, block_bytes=8192)
        assert csv.count() == 1461
        with pytest.raises(loaderd.PermissionDeniedError):
            loaderd.read_parquet("s3://elsewhere/x.parquet", socket=d.socket).count()
        with pytest.raises(loaderd.NotFoundError):
            loaderd.read_parquet("s3://bkt/nothing/*.parquet", socket=d.socket).count()
    finally:
        code = d.stop()
        d.cleanup()
    assert code == 0
