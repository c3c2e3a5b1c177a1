"""fastadv.data: class folders, the digits demo, and deterministic / resumable / sharded loading."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from fastadv.config import DataConfig
from fastadv.data import Batch, EpochSampler, build_dataset, build_loader, collate
from fastadv.errors import FastadvError

SAMPLES = Path(__file__).resolve().parents[2] / "shared/data/imagenet-samples"
WNIDS = ["n02000003", "n01000001", "n01500002"]  # created unsorted on purpose
SIZES = [(40, 30), (64, 64), (33, 50), (80, 45)]


def _jpeg(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB", fmt: str = "JPEG") -> None:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)
    image.save(path, format=fmt)


def _mode(path: str | Path) -> str:
    with Image.open(path) as image:
        return image.mode


def _make_split(root: Path, per_class: int = 4) -> None:
    for c, wnid in enumerate(WNIDS):
        (root / wnid).mkdir(parents=True)
        for i in range(per_class):
            _jpeg(root / wnid / f"{wnid}_{i}.JPEG", SIZES[i % len(SIZES)], seed=10 * c + i)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """A tiny ImageNet layout: train/ and val/ with 3 classes x 4 JPEGs each."""
    base = tmp_path_factory.mktemp("imagenet")
    _make_split(base / "train")
    _make_split(base / "val")
    return base


def _cfg(path: Path | str, **kw) -> DataConfig:
    return DataConfig(**{"path": str(path), "image_size": 24, "val_resize": 28, "workers": 0, **kw})


def _collect(loader) -> list[Batch]:
    return list(loader)


def _same(a: list[Batch], b: list[Batch]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.images, y.images) and torch.equal(x.indices, y.indices) and torch.equal(x.labels, y.labels)
        for x, y in zip(a, b)
    )


# ------------------------------------------------------------------------------ folder backend
def test_label_mapping_matches_imagefolder(imagenet: Path) -> None:
    ds = build_dataset(_cfg(imagenet), "train")
    ref = ImageFolder(str(imagenet / "train"))
    assert ds.classes == ref.classes == sorted(WNIDS)
    assert ds.num_classes == 3 and len(ds) == 12
    assert ds.labels == [label for _, label in ref.samples]
    assert ds.file_names == [Path(p).name for p, _ in ref.samples]
    assert len(set(ds.file_names)) == len(ds)


def test_train_batches_shape_dtype_range(imagenet: Path) -> None:
    loader = build_loader(_cfg(imagenet), "train", batch_size=5, shuffle=True)
    batches = _collect(loader)
    assert len(loader) == len(batches) == 3
    for b in batches:
        assert b.images.shape[1:] == (3, 24, 24) and b.images.dtype == torch.float32
        assert 0.0 <= b.images.min() and b.images.max() <= 1.0
        assert b.labels.dtype == torch.int64 and b.indices.dtype == torch.int64
        assert b.skipped == 0
    assert sorted(torch.cat([b.indices for b in batches]).tolist()) == list(range(12))
    val = next(iter(build_loader(_cfg(imagenet), "val", batch_size=4, shuffle=False)))
    assert val.images.shape == (4, 3, 24, 24) and val.indices.tolist() == [0, 1, 2, 3]


def test_odd_image_modes_decode_to_rgb(tmp_path: Path) -> None:
    cls = tmp_path / "n00000001"
    cls.mkdir()
    _jpeg(cls / "gray.JPEG", (30, 40), 1, mode="L")
    _jpeg(cls / "cmyk.JPEG", (50, 30), 2, mode="CMYK")
    _jpeg(cls / "png.JPEG", (35, 35), 3, fmt="PNG")  # a PNG with a .JPEG name
    with Image.open(cls / "png.JPEG") as image:
        assert image.format == "PNG"
    for split in ("train", "val"):
        ds = build_dataset(_cfg(tmp_path, same_split=True), split)  # one flat folder of odd files
        assert len(ds) == 3
        for i in range(3):
            image, label, index = ds[(i, 7)]
            assert image.shape == (3, 24, 24) and image.dtype == torch.float32 and (label, index) == (0, i)


def test_bad_files_are_skipped_counted_and_warned(tmp_path: Path, caplog) -> None:
    root = tmp_path / "train"
    _make_split(root)
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, "JPEG")
    (root / WNIDS[0] / "truncated.JPEG").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / WNIDS[1] / "empty.jpg").write_bytes(b"")
    (root / WNIDS[2] / "garbage.png").write_bytes(b"not an image at all" * 10)
    cfg = _cfg(tmp_path)
    ds = build_dataset(cfg, "train")
    assert len(ds) == 15
    with caplog.at_level(logging.WARNING, logger="fastadv.data"):
        for _ in range(2):  # the second epoch must not warn again
            batches = _collect(build_loader(cfg, "train", batch_size=4, shuffle=True, dataset=ds))
            assert sum(b.skipped for b in batches) == 3
            assert sum(len(b.labels) for b in batches) == 12
            assert sum(b.images.shape[0] for b in batches) == 12
    messages = [r.getMessage() for r in caplog.records if r.name == "fastadv.data"]
    for name in ("truncated.JPEG", "empty.jpg", "garbage.png"):
        assert sum(name in m for m in messages) == 1, messages


def test_all_failed_batch_is_empty() -> None:
    batch = collate([None, None], image_size=8)
    assert batch.images.shape == (0, 3, 8, 8) and batch.labels.numel() == 0 and batch.skipped == 2


@pytest.mark.parametrize("case", ["empty", "missing", "no_classes", "empty_class", "missing_split"])
def test_clear_errors(tmp_path: Path, case: str) -> None:
    if case == "empty":
        with pytest.raises(FastadvError, match="data.path is empty"):
            build_dataset(_cfg(""), "train")
        return
    if case == "missing":
        path = tmp_path / "nowhere"
    elif case == "no_classes":
        path = tmp_path / "flat"
        path.mkdir()
        (path / "a.JPEG").write_bytes(b"x")
    elif case == "empty_class":
        path = tmp_path / "data"
        _make_split(path / "train")
        (path / "train" / "n09999999").mkdir()
        (path / "train" / "n09999999" / "notes.txt").write_text("no images here")
    else:  # train/ exists, val/ does not
        path = tmp_path / "data"
        _make_split(path / "train")
    split = "val" if case == "missing_split" else "train"
    with pytest.raises(FastadvError) as err:
        build_dataset(_cfg(path), split)
    assert str(path) in str(err.value)
    if case == "empty_class":
        assert "n09999999" in str(err.value) and "1 of 4" in str(err.value)


def test_single_folder_fallback(tmp_path: Path, caplog) -> None:
    _make_split(tmp_path)  # class folders directly under data.path
    with pytest.raises(FastadvError, match="data.same_split=true"):  # refused unless asked for (issue 17, item 12)
        build_dataset(_cfg(tmp_path), "train")
    with caplog.at_level(logging.WARNING, logger="fastadv.data"):
        train = build_dataset(_cfg(tmp_path, same_split=True), "train")
        val = build_dataset(_cfg(tmp_path, same_split=True), "val")
    assert train.classes == val.classes == sorted(WNIDS) and len(train) == len(val) == 12
    assert sum("using its class folders" in r.getMessage() for r in caplog.records) == 1


def test_limit_keeps_fixed_subset(imagenet: Path) -> None:
    a = build_dataset(_cfg(imagenet, limit_train=5), "train")
    b = build_dataset(_cfg(imagenet, limit_train=5), "train")
    full = build_dataset(_cfg(imagenet), "train")
    assert len(a) == 5 and a.file_names == b.file_names
    assert a.file_names == [n for n in full.file_names if n in set(a.file_names)]  # index order kept
    assert len(build_dataset(_cfg(imagenet, limit_val=3), "val")) == 3


# ------------------------------------------------------------------------------- determinism
def test_same_seed_epoch_identical_other_epoch_differs(imagenet: Path) -> None:
    cfg = _cfg(imagenet)
    ds = build_dataset(cfg, "train")

    def run(epoch: int, seed: int = 3) -> list[Batch]:
        return _collect(build_loader(cfg, "train", batch_size=4, shuffle=True, seed=seed, epoch=epoch, dataset=ds))

    def order(batches: list[Batch]) -> list[int]:
        return torch.cat([b.indices for b in batches]).tolist()

    assert _same(run(0), run(0))
    assert order(run(0)) != order(run(1))
    assert not _same(run(0, seed=4), run(0))


@pytest.mark.parametrize("world_size,rank", [(1, 0), (2, 1)])
def test_start_batch_equals_tail(imagenet: Path, world_size: int, rank: int) -> None:
    cfg = _cfg(imagenet)
    ds = build_dataset(cfg, "train")
    kw = dict(batch_size=2, shuffle=True, seed=1, epoch=2, rank=rank, world_size=world_size, dataset=ds)
    full = _collect(build_loader(cfg, "train", **kw))
    for k in (1, 2):
        resumed = build_loader(cfg, "train", start_batch=k, **kw)
        assert len(resumed) == len(full) - k
        assert _same(_collect(resumed), full[k:])


def test_workers_match_main_process(imagenet: Path) -> None:
    kw = dict(batch_size=4, shuffle=True, seed=5, epoch=1)
    serial = _collect(build_loader(_cfg(imagenet, workers=0), "train", **kw))
    parallel = _collect(build_loader(_cfg(imagenet, workers=2), "train", **kw))
    assert _same(serial, parallel)


@pytest.mark.parametrize("backend", ["folder", "demo"])
def test_global_rng_untouched(imagenet: Path, backend: str) -> None:
    cfg = _cfg(imagenet, backend=backend, limit_train=40)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for _ in build_loader(cfg, "train", batch_size=4, shuffle=True, seed=9):
        pass
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("n", [12, 13])
def test_shards_disjoint_cover_equal(n: int, world_size: int) -> None:
    kw = dict(shuffle=True, seed=2, epoch=1, world_size=world_size)
    samplers = [EpochSampler(n, rank=r, **kw) for r in range(world_size)]
    shards = [list(s) for s in samplers]
    assert len({len(s) for s in shards}) == 1
    assert all(len(shard) == len(s) for shard, s in zip(shards, samplers))
    # position p of the padded order is item p // world_size of rank p % world_size; p >= n is padding
    real = [idx for r, s in enumerate(shards) for k, (idx, _) in enumerate(s) if r + k * world_size < n]
    assert sorted(real) == list(range(n))
    # drop_last truncates instead of padding: disjoint, equal length
    dropped = [EpochSampler(n, rank=r, drop_last=True, **kw) for r in range(world_size)]
    flat = [i for s in dropped for i, _ in s]
    assert len(flat) == len(set(flat)) == (n // world_size) * world_size


def test_sample_seed_depends_on_seed_epoch_index_only() -> None:
    a = dict(EpochSampler(20, shuffle=True, seed=1, epoch=3))
    b = dict(EpochSampler(20, shuffle=False, seed=1, epoch=3, rank=1, world_size=2))
    assert all(a[i] == s for i, s in b.items())
    c = dict(EpochSampler(20, shuffle=True, seed=1, epoch=4))
    assert all(a[i] != c[i] for i in range(20))


# ------------------------------------------------------------------------------- demo backend
def test_demo_dataset() -> None:
    cfg = DataConfig(backend="demo", image_size=32)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val)) == (1437, 360)
    assert train.classes == val.classes == [str(i) for i in range(10)] and train.num_classes == 10
    assert set(train.labels) == set(val.labels) == set(range(10))
    assert not set(train.file_names) & set(val.file_names)
    assert train.file_names[0].startswith("digits_") and train.file_names[0].endswith(".png")
    kw = dict(batch_size=64, shuffle=True, seed=0, epoch=0, dataset=train)
    first, again = _collect(build_loader(cfg, "train", **kw)), _collect(build_loader(cfg, "train", **kw))
    assert _same(first, again) and len(first) == 23
    b = first[0]
    assert b.images.shape == (64, 3, 32, 32) and b.images.dtype == torch.float32 and b.labels.dtype == torch.int64
    assert 0.0 <= b.images.min() and b.images.max() <= 1.0 and b.images.max() > 0.5
    assert torch.equal(b.images[:, 0], b.images[:, 2])  # gray repeated to 3 channels
    # augmentation is a translation: the train image differs from the raw one for some sample
    raw = torch.stack([train.images[i] for i in b.indices.tolist()])
    assert not torch.equal(raw, b.images)
    v = next(iter(build_loader(cfg, "val", batch_size=8, shuffle=False, dataset=val)))
    assert torch.equal(v.images, val.images[:8])
    assert len(build_dataset(DataConfig(backend="demo", image_size=32, limit_train=100), "train")) == 100


# ------------------------------------------------------------------------------- real photos
@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"{SAMPLES} not present")
def test_real_imagenet_samples() -> None:
    cfg = DataConfig(path=str(SAMPLES), workers=0, same_split=True)
    ds = build_dataset(cfg, "val")
    assert ds.num_classes == 1000 and ds.classes[0] == "n01440764" and len(ds) == 1000
    batch = next(iter(build_loader(cfg, "val", batch_size=8, shuffle=False, dataset=ds)))
    assert batch.images.shape == (8, 3, 224, 224) and batch.skipped == 0
    assert batch.labels.tolist() == list(range(8))
    gray = [i for i, path in enumerate(ds.paths) if _mode(path) == "L"]
    assert len(gray) == 23  # per the samples' README
    for i in gray:
        image, label, index = ds[(i, 0)]
        assert image.shape == (3, 224, 224) and (label, index) == (i, i)
