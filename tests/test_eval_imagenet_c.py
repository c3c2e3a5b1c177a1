"""ImageNet-C: generation is repeatable under a seed and equals `imagecorruptions` called
directly; the folder reader refuses missing corruptions/severities, wrong sizes, wrong classes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("imagecorruptions")
from imagecorruptions import corrupt  # noqa: E402

from fastadv.config import DataConfig  # noqa: E402
from fastadv.data.folder import FolderDataset, val_transform  # noqa: E402
from fastadv.data.imagenet_c import ImageNetCDataset, check_imagenet_c_root  # noqa: E402
from fastadv.errors import FastadvError  # noqa: E402
from fastadv.eval.imagenet_c_generate import (  # noqa: E402
    clean_array,
    corruption_seed,
    generate_imagenet_c,
    jpeg_bytes,
    parse_corruptions,
    parse_severities,
)

SIZE, RESIZE = 32, 36
CORR = ["gaussian_noise", "impulse_noise"]  # impulse_noise takes seed= (not the global RNG)
SEV = [1, 3]


@pytest.fixture()
def val(tmp_path: Path) -> FolderDataset:
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(("n01440764", "n01443537")):
        d = tmp_path / "val" / wnid
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray((rng.random((40 + i, 48, 3)) * 255).astype(np.uint8)).save(d / f"img_{c}_{i}.JPEG")
    return FolderDataset(tmp_path / "val", val_transform(DataConfig(image_size=SIZE, val_resize=RESIZE)))


def _generate(ds: FolderDataset, cache: Path, seed: int = 0) -> list[str]:
    return generate_imagenet_c(ds.paths, ds.labels, ds.classes, ds.file_names, cache, CORR, SEV, seed, SIZE,
                               RESIZE, ds.root, workers=0, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.JPEG"))}


def test_generation_repeats_and_matches_imagecorruptions(val: FolderDataset, tmp_path: Path) -> None:
    assert _generate(val, tmp_path / "c1") == []
    assert _generate(val, tmp_path / "c2") == []
    one, two = _files(tmp_path / "c1"), _files(tmp_path / "c2")
    assert len(one) == 4 * len(CORR) * len(SEV) and one == two  # byte-identical under the same seed

    # the clean crop is the validation pipeline's, exactly
    path, name = val.paths[3], val.file_names[3]
    clean = clean_array(path, SIZE, RESIZE)
    tensor = val[(3, 0)][0]
    assert np.array_equal(clean, (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    for c in CORR:
        for s in SEV:
            seed = corruption_seed(0, name, c, s)
            np.random.seed(seed)
            direct = corrupt(clean, severity=s, corruption_name=c, **({"seed": seed} if c == "impulse_noise" else {}))
            assert direct.dtype == np.uint8  # truncated to uint8 by corrupt(), then JPEG q85
            assert one[f"{c}/{s}/{val.classes[val.labels[3]]}/{name}"] == jpeg_bytes(direct)

    # another seed, other noise; a rerun writes nothing new
    _generate(val, tmp_path / "c3", seed=1)
    assert _files(tmp_path / "c3") != one
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "c1").rglob("*.JPEG")}
    _generate(val, tmp_path / "c1")
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "c1").rglob("*.JPEG")}
    with pytest.raises(FastadvError, match="other settings.*seed=0 here, 1 now"):
        _generate(val, tmp_path / "c1", seed=1)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(FastadvError, match="not empty"):
        _generate(val, tmp_path / "junk")


def test_reader_and_bad_folders(val: FolderDataset, tmp_path: Path) -> None:
    root = tmp_path / "c"
    _generate(val, root)
    keep = {n: val.classes[y] for n, y in zip(val.file_names, val.labels)}
    ds = ImageNetCDataset(root, "gaussian_noise", 3, val.classes, SIZE, keep)
    assert len(ds) == 4 and ds.file_names == val.file_names and ds.labels == val.labels
    x, y, i = ds[(2, 0)]
    assert x.shape == (3, SIZE, SIZE) and y == val.labels[2] and i == 2
    check_imagenet_c_root(root, CORR, SEV)

    with pytest.raises(FastadvError, match=r"1 of 3 corruption folder\(s\) missing \(snow\)"):
        check_imagenet_c_root(root, CORR + ["snow"], SEV)
    with pytest.raises(FastadvError, match=r"2 severity folder\(s\) missing \(gaussian_noise/5, impulse_noise/5\)"):
        check_imagenet_c_root(root, CORR, [1, 5])

    # wrong class count
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    shutil.rmtree(bad / "gaussian_noise" / "3" / "n01443537")
    with pytest.raises(FastadvError, match=r"1 class folder\(s\), the model has 2 classes \(1 missing, e.g. n01443537"):
        ImageNetCDataset(bad, "gaussian_noise", 3, val.classes, SIZE, keep)
    # missing images
    (bad / "gaussian_noise" / "1" / "n01443537" / val.file_names[3]).unlink()
    with pytest.raises(FastadvError, match=rf"lacks 1 of the 4 evaluated validation images \({val.file_names[3]}\)"):
        ImageNetCDataset(bad, "gaussian_noise", 1, val.classes, SIZE, keep)
    # wrong size: the first image is checked up front, the others after the pass
    first = bad / "impulse_noise" / "1" / "n01440764" / val.file_names[0]
    Image.new("RGB", (40, 40)).save(first)
    with pytest.raises(FastadvError, match="first image checked is not 32x32.*is 40x40.*center crop only"):
        ImageNetCDataset(bad, "impulse_noise", 1, val.classes, SIZE, keep)
    for n, wnid in list(keep.items())[2:]:
        Image.new("RGB", (224, 224)).save(bad / "impulse_noise" / "3" / wnid / n)
    later = ImageNetCDataset(bad, "impulse_noise", 3, val.classes, SIZE, keep)
    assert later[(3, 0)] is None  # skipped in the pass ...
    with pytest.raises(FastadvError, match=r"2 of 4 images are not 32x32 .*is 224x224"):
        later.check_sizes([2, 3])  # ... and reported with counts and examples


def test_parse_corruptions_and_severities() -> None:
    assert len(parse_corruptions("common")) == 15 and len(parse_corruptions("all")) == 19
    assert parse_corruptions("fog, snow,fog") == ["fog", "snow"]
    with pytest.raises(FastadvError, match="unknown corruption.*gaussian"):
        parse_corruptions("gaussian")
    assert parse_severities("5,1,3") == [1, 3, 5]
    with pytest.raises(FastadvError, match="1..5"):
        parse_severities("0,6")
