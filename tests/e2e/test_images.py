"""Images end to end: folders, WebDataset shards and Parquet image columns,
decoded and transformed in the real daemon, checked against Pillow."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

import loaderd
from loaderd.testing import Daemon

# Agreement with Pillow. Without DCT scaling the CPU decoder is libjpeg-turbo
# with Pillow's settings and Pillow's resampling, and matches to the bit; a
# reduced DCT scale (used when the output is at most half the source) and
# the Go decoders of PNG and WebP cost some fidelity.
MIN_PSNR_JPEG = 25.0
MIN_PSNR_PNG = 30.0


def psnr(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def pillow_rgb(path: str | Path | bytes) -> Image.Image:
    """The image as the daemon sees it: EXIF orientation applied, RGB, alpha
    dropped, 16-bit samples cut to their high byte (Pillow's own I;16 to RGB
    conversion clips at 255 instead)."""
    im = Image.open(io.BytesIO(path) if isinstance(path, bytes) else path)
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I"):
        im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
    return im.convert("RGB")


def batches(ds: loaderd.Dataset, **kw: Any) -> Iterator[dict[str, np.ndarray[Any, Any]]]:
    yield from ds.iter_batches(batch_size=kw.pop("batch_size", 32), **kw)


@pytest.fixture(scope="module")
def img_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def img_daemon(binary: str, corpora: Path, img_dir: Path) -> Iterator[Daemon]:
    d = Daemon(data_roots=[str(corpora), str(img_dir)], binary=binary, extra_args=["--log-level", "error"])
    d.start()
    yield d
    code = d.stop()
    d.cleanup()
    assert code == 0, f"daemon exited with {code}:\n{d.log()}"


def may_fail(corpora: Path) -> set[str]:
    """Tricky images a decoder may refuse: codings libjpeg-turbo 2.1 lacks
    (12-bit, lossless) and damaged files."""
    with open(corpora / "images" / "EXPECTATIONS.tsv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    words = ("unsupported", "12-bit", "damaged", "partial", "rejects")
    return {str(corpora / r[0]) for r in rows if any(w in r[1] for w in words)}


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")
def test_tricky_images_match_pillow(img_daemon: Daemon, corpora: Path) -> None:
    """Every tricky image (progressive, CMYK, YCCK, gray, 16-bit and
    paletted PNG, interlaced, EXIF-rotated, odd sizes) against Pillow."""
    root = corpora / "images" / "tricky"
    ds = loaderd.read_images(str(root), on_error="skip", socket=img_daemon.socket).resize((40, 48))
    field = ds.schema().field("image")
    assert isinstance(field.type, pa.FixedShapeTensorType)
    assert field.type.shape == [40, 48, 3] and field.type.value_type == pa.uint8()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert json.loads(ds.schema().metadata[b"loaderd.classes"]) == classes
    seen: set[str] = set()
    for b in batches(ds):
        assert b["image"].dtype == np.uint8 and b["image"].shape[1:] == (40, 48, 3)
        for img, label, path in zip(b["image"], b["label"], b["path"], strict=True):
            assert classes[label] == Path(path).relative_to(root).parts[0]
            ref = np.asarray(pillow_rgb(path).resize((48, 40), Image.Resampling.BILINEAR))
            bound = MIN_PSNR_JPEG if path.lower().endswith((".jpg", ".jpeg")) else MIN_PSNR_PNG
            assert psnr(img, ref) >= bound, f"{path}: PSNR {psnr(img, ref):.1f} dB"
            seen.add(path)
    images = {str(p) for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    missing = images - seen
    assert missing <= may_fail(corpora), f"valid images left out: {sorted(missing - may_fail(corpora))}"
    assert len(seen) >= 220


def test_random_resized_crop_deterministic(img_daemon: Daemon, corpora: Path) -> None:
    """The same (seed, epoch, sample) gives the same pixels whatever the world
    size, shuffle or batching; another epoch gives another crop."""
    root = str(corpora / "images" / "imagenet-sample")
    ds = (
        loaderd.read_images(root, seed=3, socket=img_daemon.socket)
        .random_resized_crop(64)
        .random_horizontal_flip()
    )

    def by_path(d: loaderd.Dataset, world: int, epoch: int, batch_size: int) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for r in range(world):
            for b in d.shard(r, world, "exact").iter_batches(batch_size=batch_size, epoch=epoch):
                assert b["image"].shape[1:] == (64, 64, 3)
                out.update({p: img.tobytes() for p, img in zip(b["path"], b["image"], strict=True)})
        return out

    base = by_path(ds, 1, 0, 32)
    assert len(base) == 143
    assert by_path(ds, 3, 0, 10) == base
    assert by_path(ds.shuffle(seed=9), 2, 0, 17) == base  # the explicit seed, not the shuffle's
    other = by_path(ds, 1, 1, 32)
    assert sum(other[p] == base[p] for p in base) <= 3


def test_eval_transforms_and_normalize(img_daemon: Daemon, corpora: Path) -> None:
    """resize(256) + center_crop(224), as torchvision evaluates ImageNet,
    against Pillow; normalize gives float32 CHW of the same pixels."""
    root = str(corpora / "images" / "imagenet-sample")
    ds = loaderd.read_images(root, socket=img_daemon.socket).resize(256).center_crop(224)
    norm = ds.normalize()
    f = norm.schema().field("image").type
    assert isinstance(f, pa.FixedShapeTensorType)
    assert f.shape == [3, 224, 224] and f.value_type == pa.float32()
    mean = np.array(loaderd.IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.array(loaderd.IMAGENET_STD, np.float32)[:, None, None]
    for u8, fl in zip(batches(ds, batch_size=50), batches(norm, batch_size=50), strict=True):
        assert fl["image"].dtype == np.float32 and fl["image"].shape[1:] == (3, 224, 224)
        expect = (u8["image"].transpose(0, 3, 1, 2).astype(np.float32) / 255 - mean) / std
        np.testing.assert_allclose(fl["image"], expect, atol=1e-5)
        for img, path in zip(u8["image"][:10], u8["path"][:10], strict=True):
            im = pillow_rgb(path)
            w, h = im.size
            nw, nh = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
            r = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = round((nw - 224) / 2), round((nh - 224) / 2)
            ref = np.asarray(r.crop((left, top, left + 224, top + 224)))
            assert psnr(img, ref) >= MIN_PSNR_JPEG, f"{path}: {psnr(img, ref):.1f} dB"


def bad_files(corpora: Path) -> list[tuple[str, str]]:
    with open(corpora / "bad-images" / "EXPECTATIONS.tsv", encoding="utf-8") as f:
        return [(r[0], r[1]) for r in list(csv.reader(f, delimiter="\t"))[1:]]


def test_every_corrupt_image_is_named(img_daemon: Daemon, corpora: Path, img_dir: Path) -> None:
    """Each corrupt file alone in a folder: a DataError (or UnsupportedError)
    that names it; the damaged-but-decodable ones may decode. The daemon
    answers throughout."""
    failed = 0
    for i, (rel, status) in enumerate(bad_files(corpora)):
        root = img_dir / "one" / str(i)
        (root / "c").mkdir(parents=True)
        dst = root / "c" / Path(rel).name
        shutil.copyfile(corpora / rel, dst)
        ds = loaderd.read_images(str(root), socket=img_daemon.socket).random_resized_crop(32)
        try:
            n = sum(len(b["label"]) for b in batches(ds))
        except loaderd.LoaderError as e:
            assert isinstance(e, (loaderd.DataError, loaderd.UnsupportedError)), f"{rel}: {e!r}"
            assert e.file == str(dst), f"{rel}: error names {e.file}: {e}"
            failed += 1
            continue
        assert n == 1
        assert not status.startswith(("MALFORMED", "DECOMPRESSION")), f"{rel} ({status}) decoded"
    assert failed >= 130
    sample = str(corpora / "images" / "imagenet-sample")
    assert loaderd.read_images(sample, socket=img_daemon.socket).count() == 143


def test_bad_images_skipped_and_counted(img_daemon: Daemon, corpora: Path, img_dir: Path) -> None:
    root = img_dir / "mixed"
    good = sorted((corpora / "images" / "imagenet-sample").glob("*/*"))[:20]
    bad = [r for r, s in bad_files(corpora) if s.startswith(("MALFORMED", "DECOMPRESSION"))][:12]
    for p in good:
        (root / "a").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, root / "a" / p.name)
    for r in bad:
        (root / "b").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpora / r, root / "b" / Path(r).name)
    ds = loaderd.read_images(str(root), socket=img_daemon.socket).random_resized_crop(48)
    with pytest.raises(loaderd.DataError) as err:
        for _ in batches(ds.shuffle(seed=1)):
            pass
    assert err.value.file is not None and err.value.file.startswith(str(root / "b"))
    skip = loaderd.read_images(str(root), on_error="skip", socket=img_daemon.socket).random_resized_crop(48)
    paths = [p for b in batches(skip.shuffle(seed=1), batch_size=5) for p in b["path"]]
    assert sorted(paths) == sorted(str(root / "a" / p.name) for p in good)


def test_webdataset(img_daemon: Daemon, corpora: Path) -> None:
    d = corpora / "webdataset" / "derived"
    ds = loaderd.read_webdataset(str(d / "imagenet-sample-*.tar"), socket=img_daemon.socket).center_crop(96)
    rows = 0
    for b in batches(ds, batch_size=10):
        for key, img, label, meta in zip(b["key"], b["image"], b["label"], b["json"], strict=True):
            m = json.loads(meta)
            assert label == m["class_index"] and key == f"sample{rows:06d}"
            src = corpora / "images" / "imagenet-sample" / m["wnid"] / m["source_file"]
            im = pillow_rgb(src)
            w, h = im.size
            left, top = round((w - 96) / 2), round((h - 96) / 2)
            ref = np.asarray(im.crop((left, top, left + 96, top + 96)))
            # Only the crop's edge columns may differ: libjpeg-turbo decodes
            # just the crop's iMCU columns, and upsamples chroma at the edge
            # of what it decoded as at an image edge.
            assert psnr(img, ref) >= 50, f"{key}: center crop differs from Pillow's: {psnr(img, ref):.1f} dB"
            rows += 1
    assert rows == 24
    with pytest.raises(loaderd.DataError) as err:
        loaderd.read_webdataset(str(d), socket=img_daemon.socket).count()
    assert err.value.file is not None and "MALFORMED" in err.value.file
    assert loaderd.read_webdataset(str(d), on_error="skip", socket=img_daemon.socket).count() == 24
    # upstream's gzip shard of 28x28 PNG digits
    tgz_path = str(corpora / "webdataset" / "upstream" / "sample.tgz")
    tgz = loaderd.read_webdataset(tgz_path, socket=img_daemon.socket)
    b = next(iter(batches(tgz.resize((28, 28)), batch_size=90)))
    assert b["image"].shape == (90, 28, 28, 3) and b["label"].dtype == np.int64


def test_parquet_image_column(img_daemon: Daemon, corpora: Path, img_dir: Path) -> None:
    files = sorted((corpora / "images" / "imagenet-sample").glob("*/*"))[:30]
    jpegs = pa.array([p.read_bytes() for p in files], pa.binary())
    table = pa.table({"jpeg": jpegs, "idx": pa.array(range(30), pa.int64())})
    path = img_dir / "images.parquet"
    pq.write_table(table, path, row_group_size=8)
    ds = (
        loaderd.read_parquet(str(path), socket=img_daemon.socket)
        .decode_image("jpeg")
        .resize(64)
        .center_crop((64, 80))
    )
    n = 0
    for b in batches(ds, batch_size=7):
        assert b["jpeg"].shape[1:] == (64, 80, 3)
        for img, i in zip(b["jpeg"], b["idx"], strict=True):
            im = pillow_rgb(files[i])
            w, h = im.size
            nw, nh = (64, int(64 * h / w)) if w <= h else (int(64 * w / h), 64)
            r = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = round((nw - 80) / 2), round((nh - 64) / 2)
            ref = np.asarray(r.crop((left, top, left + 80, top + 64)))
            assert psnr(img, ref) >= MIN_PSNR_JPEG
            n += 1
    assert n == 30
    with pytest.raises(loaderd.InvalidArgumentError):
        loaderd.read_parquet(str(path), socket=img_daemon.socket).decode_image("idx").resize((8, 8)).count()


def test_transform_arguments_checked() -> None:
    ds = loaderd.read_images("/nowhere", socket="/none")
    with pytest.raises(loaderd.InvalidArgumentError):
        ds.random_resized_crop(0)
    with pytest.raises(loaderd.InvalidArgumentError):
        ds.random_resized_crop(224, scale=(0.9, 0.1))
    with pytest.raises(loaderd.InvalidArgumentError):
        ds.random_horizontal_flip(p=2)
    with pytest.raises(loaderd.InvalidArgumentError):
        ds.normalize(mean=(0.5, 0.5), std=(1, 1))
    with pytest.raises(loaderd.InvalidArgumentError, match="decode_image"):
        loaderd.read_parquet("/x.parquet", socket="/none").resize(8)
    spec = ds.resize(256).center_crop(224).normalize()._spec.to_proto()
    assert [t.WhichOneof("op") for t in spec.image.transforms] == ["resize", "center_crop", "normalize"]
    assert spec.image.transforms[0].resize.width == 0 and spec.image.seed == 0
    assert ds.shuffle(seed=5).resize((4, 4))._spec.to_proto().image.seed == 5
    assert not ds._spec.to_proto().HasField("image")  # no transform: encoded bytes


def test_decode_flag(binary: str, tmp_path: Path) -> None:
    """--decode gpu fails clearly where there is no GPU decoder; a bad value
    is refused; cpu and auto start and say which decoder runs."""
    base = [binary, "serve", "--socket", str(tmp_path / "d.sock"), "--data-root", str(tmp_path)]
    r = subprocess.run([*base, "--decode", "gpu"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "GPU decoding is not available" in r.stderr
    r = subprocess.run([*base, "--decode", "tpu"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "want cpu, gpu or auto" in r.stderr
    with Daemon([str(tmp_path)], binary=binary, extra_args=["--decode", "cpu"]) as d:
        assert "libjpeg-turbo" in d.log() or "Go image/jpeg" in d.log()
