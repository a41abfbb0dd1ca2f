"""Shard.to_tf: the element spec from the schema, and the batches through
tf.data. The TensorFlow parts skip where TensorFlow is not installed; the
spec and the missing-TensorFlow message are checked everywhere."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loaderd
from loaderd._tf import STRING, signature
from loaderd.testing import Daemon

ROWS = 3_001


@pytest.fixture(scope="module")
def served(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    d = tmp_path_factory.mktemp("tf")
    ids = np.arange(ROWS, dtype=np.int64)
    table = pa.table(
        {
            "id": ids,
            "x": ids.astype(np.float32),
            "even": ids % 2 == 0,
            "name": [f"r{i}" for i in ids],
            "raw": [i.tobytes() for i in ids],
            "v": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 3).astype(np.float32)), 3),
            "m": pa.FixedSizeListArray.from_arrays(
                pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 4).astype(np.int16)), 2), 2
            ),
            "when": pa.array(ids.astype("datetime64[s]")),
        }
    )
    pq.write_table(table, d / "a.parquet", row_group_size=1_000)
    dm = Daemon([str(d)], binary=binary, extra_args=["--log-level", "warn"]).start()
    yield dm, str(d / "a.parquet")
    dm.stop()
    dm.cleanup()


COLUMNS = ["id", "x", "even", "name", "raw", "v", "m"]


def test_the_spec_is_what_the_batches_hold(served: tuple[Daemon, str]) -> None:
    dm, path = served
    ds = loaderd.read_parquet(path, columns=COLUMNS, socket=dm.socket)
    spec = signature(ds.schema())
    assert spec == {
        "id": ((None,), "int64"),
        "x": ((None,), "float32"),
        "even": ((None,), "bool"),
        "name": ((None,), STRING),
        "raw": ((None,), STRING),
        "v": ((None, 3), "float32"),
        "m": ((None, 2, 2), "int16"),
    }
    for batch in ds.iter_batches(batch_size=1024):
        assert set(batch) == set(spec)
        for name, arr in batch.items():
            shape, dtype = spec[name]
            assert arr.shape[1:] == shape[1:], name
            assert arr.dtype.kind in "OSU" if dtype == STRING else arr.dtype.name == dtype, name


def test_a_column_without_a_tensorflow_type_is_named(served: tuple[Daemon, str]) -> None:
    dm, path = served
    schema = loaderd.read_parquet(path, socket=dm.socket).schema()
    with pytest.raises(loaderd.InvalidArgumentError, match=r"column 'when' has type timestamp"):
        signature(schema)
    with pytest.raises(loaderd.InvalidArgumentError, match=r"column 'l' has type list<item: int64>"):
        signature(pa.schema([("l", pa.list_(pa.int64()))]))


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_without_tensorflow_the_error_says_what_to_install(served: tuple[Daemon, str]) -> None:
    dm, path = served
    shard = loaderd.read_parquet(path, columns=COLUMNS, socket=dm.socket).shard(0, 1)
    with pytest.raises(loaderd.LoaderError, match=r"to_tf needs TensorFlow.*: pip install tensorflow$"):
        shard.to_tf(batch_size=100)
    with pytest.raises(loaderd.InvalidArgumentError, match="batch_size"):
        shard.to_tf(batch_size=0)  # arguments are checked first


def test_to_tf(served: tuple[Daemon, str], tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    dm, path = served
    ds = loaderd.read_parquet(path, columns=COLUMNS, socket=dm.socket).shuffle(seed=5)
    shard = ds.shard(1, 2, mode="exact")
    tfds = shard.to_tf(batch_size=256, epoch=1)
    spec = tfds.element_spec
    assert spec["v"].shape.as_list() == [None, 3] and spec["v"].dtype == tf.float32
    assert spec["m"].shape.as_list() == [None, 2, 2] and spec["name"].dtype == tf.string
    want = [int(i) for b in shard.iter_batches(batch_size=256, epoch=1) for i in b["id"]]
    got = []
    for b in tfds:
        assert b["name"].numpy()[0].decode() == f"r{int(b['id'][0])}"
        np.testing.assert_array_equal(b["v"].numpy()[:, 2], b["id"].numpy().astype(np.float32))
        got.extend(int(i) for i in b["id"].numpy())
    assert got == want and len(got) == ROWS // 2

    # Resumption: a saved cursor applies to the next to_tf iteration.
    head = shard.iter_batches(batch_size=256, epoch=1)
    next(head)
    state = json.loads(json.dumps(shard.state_dict()))
    del head
    fresh = ds.shard(1, 2, mode="exact")
    fresh.load_state_dict(state)
    rest = [int(i) for b in fresh.to_tf(batch_size=256, epoch=1) for i in b["id"].numpy()]
    assert rest == want[256:]
