"""Tests for trainers/synthetic.py: the cached synthetic JPEG data set."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from trainers import synthetic
from trainers.synthetic import (
    class_names,
    default_cache_dir,
    encode_image,
    ensure_synthetic_dataset,
    generate_image,
    synthetic_dataset_name,
    write_synthetic_dataset,
)

C, N = 3, 4  # a small set: 12 images


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def dataset(cache) -> Path:
    return ensure_synthetic_dataset(cache, num_classes=C, images_per_class=N, seed=0)


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.JPEG"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------- names and cache dir


def test_default_cache_dir_env_and_home(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("AUTOTUNE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "autotune"
    monkeypatch.setenv("AUTOTUNE_CACHE", "")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "autotune"


def test_ensure_uses_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "env-cache"))
    root = ensure_synthetic_dataset(num_classes=1, images_per_class=1, seed=0)
    assert root == tmp_path / "env-cache" / "synthetic-v1-c1-n1-s0"
    assert len(_files(root)) == 1


def test_class_names_sorted_wnid_like():
    names = class_names(12)
    assert names[0] == "n00000000" and names[11] == "n00000011"
    assert names == sorted(names) and len(set(names)) == 12
    with pytest.raises(ValueError, match="num_classes"):
        class_names(0)


def test_dataset_name_encodes_parameters():
    assert synthetic_dataset_name(10, 100, 0) == "synthetic-v1-c10-n100-s0"
    assert synthetic_dataset_name(7, 3, 42) == "synthetic-v1-c7-n3-s42"


# ----------------------------------------------------------------- layout and images


def test_layout(dataset, cache):
    assert dataset == cache / synthetic_dataset_name(C, N, 0)
    assert sorted(p.name for p in dataset.iterdir()) == class_names(C)
    for name in class_names(C):
        files = sorted(p.name for p in (dataset / name).iterdir())
        assert files == sorted(f"{name}_{i}.JPEG" for i in range(N))
    # Nothing but the finished folder is left in the cache.
    assert [p.name for p in cache.iterdir()] == [dataset.name]


def test_every_file_decodes_with_imagenet_like_size(dataset):
    shapes = set()
    portrait = 0
    for path in _files(dataset):
        data = path.read_bytes()
        assert 15_000 < len(data) < 250_000, (path, len(data))
        img = simplejpeg.decode_jpeg(data, colorspace="RGB")
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        h, w = img.shape[:2]
        assert 330 <= min(h, w) <= 400, (path, h, w)
        assert 1.19 <= max(h, w) / min(h, w) <= 4 / 3 + 0.01, (path, h, w)
        # Not a flat or saturated image: photographic spread of values.
        assert 10 < img.std() < 90 and img.min() < 60 and img.max() > 150
        shapes.add((h, w))
        portrait += h > w
    assert len(shapes) > len(_files(dataset)) // 2  # sizes vary per image
    assert portrait < len(_files(dataset))


def test_sizes_and_portrait_fraction_over_many_draws():
    rng_sizes = [synthetic._image_size(np.random.default_rng(s)) for s in range(400)]
    shorts = [min(h, w) for h, w in rng_sizes]
    assert min(shorts) >= 330 and max(shorts) <= 400
    frac = np.mean([h > w for h, w in rng_sizes])
    assert 0.15 < frac < 0.35


def test_natural_spectrum_not_white_noise():
    """Most luminance energy sits at low frequencies (1/f-like), unlike white noise."""
    img = generate_image(0, 0).astype(np.float32).mean(axis=2)
    img -= img.mean()
    power = np.abs(np.fft.rfft2(img)) ** 2
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.rfftfreq(img.shape[1])[None, :]
    f = np.sqrt(fy**2 + fx**2)
    low = power[f < 0.05].sum() / power.sum()
    assert low > 0.3  # white noise would put about 1% of its power below f = 0.05


def test_channels_correlated():
    img = generate_image(1, 2).astype(np.float32)
    r, g, b = (img[..., k].ravel() for k in range(3))
    hp = lambda x: x - np.convolve(x, np.ones(9) / 9, mode="same")  # noqa: E731
    assert np.corrcoef(hp(r), hp(g))[0, 1] > 0.5
    assert np.corrcoef(hp(g), hp(b))[0, 1] > 0.5


def test_generate_image_errors():
    with pytest.raises(ValueError, match="class_index"):
        generate_image(3, 0, num_classes=3)
    with pytest.raises(ValueError, match="image_index"):
        generate_image(0, -1)
    with pytest.raises(ValueError, match="seed"):
        generate_image(0, 0, seed=-1)


def test_invalid_counts_raise(tmp_path):
    for kwargs in ({"num_classes": 0}, {"images_per_class": 0}, {"seed": -2}):
        with pytest.raises(ValueError, match="trainers/synthetic.py"):
            ensure_synthetic_dataset(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- determinism


def test_same_seed_same_bytes_different_seed_different(dataset, tmp_path):
    again = ensure_synthetic_dataset(tmp_path / "a", num_classes=C, images_per_class=N, seed=0)
    for p, q in zip(_files(dataset), _files(again), strict=True):
        assert p.relative_to(dataset) == q.relative_to(again)
        assert p.read_bytes() == q.read_bytes()
    other = ensure_synthetic_dataset(tmp_path / "b", num_classes=C, images_per_class=N, seed=1)
    assert other.name.endswith("-s1")
    differ = [p.read_bytes() != q.read_bytes() for p, q in zip(_files(dataset), _files(other))]
    assert all(differ)


def test_image_does_not_depend_on_generation_order():
    a = generate_image(2, 5, num_classes=4, seed=3)
    generate_image(0, 0, num_classes=4, seed=3)
    assert np.array_equal(a, generate_image(2, 5, num_classes=4, seed=3))
    assert encode_image(a) == encode_image(a.copy())


# ----------------------------------------------------------------- caching and atomicity


def test_second_call_does_not_regenerate(dataset, cache):
    before = {p: p.stat().st_mtime_ns for p in _files(dataset)}
    calls = []
    again = ensure_synthetic_dataset(
        cache, num_classes=C, images_per_class=N, seed=0, progress=lambda d, t: calls.append(d)
    )
    assert again == dataset
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in _files(dataset)} == before


def test_progress_and_final_folder_appears_only_when_complete(tmp_path):
    final = tmp_path / synthetic_dataset_name(2, 3, 0)
    seen = []

    def progress(done, total):
        assert not final.exists()  # never visible while generating
        partials = [p for p in tmp_path.iterdir() if ".partial-" in p.name]
        assert len(partials) == 1
        seen.append((done, total, len(list(partials[0].rglob("*.JPEG")))))

    root = ensure_synthetic_dataset(tmp_path, num_classes=2, images_per_class=3, progress=progress)
    assert root == final and len(_files(root)) == 6
    assert [s[0] for s in seen] == list(range(7)) and all(s[1] == 6 for s in seen)
    assert all(done == written for done, _, written in seen)
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_interrupted_generation_leaves_no_final_folder(tmp_path, monkeypatch):
    real = synthetic.encode_image
    count = {"n": 0}

    def failing(image, quality=synthetic.JPEG_QUALITY):
        count["n"] += 1
        if count["n"] == 4:
            raise KeyboardInterrupt
        return real(image, quality)

    monkeypatch.setattr(synthetic, "encode_image", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(tmp_path, num_classes=2, images_per_class=3)
    assert list(tmp_path.iterdir()) == []  # no final folder, partial one removed
    monkeypatch.setattr(synthetic, "encode_image", real)
    root = ensure_synthetic_dataset(tmp_path, num_classes=2, images_per_class=3)
    assert len(_files(root)) == 6


def test_stale_partial_of_dead_process_is_ignored_and_cleaned(tmp_path):
    name = synthetic_dataset_name(2, 2, 0)
    host = socket.gethostname()
    stale = tmp_path / f".{name}.partial-{host}-{_dead_pid()}-abc123"
    (stale / "n00000000").mkdir(parents=True)
    (stale / "n00000000" / "n00000000_0.JPEG").write_bytes(b"truncated")
    live = tmp_path / f".{name}.partial-{host}-{os.getpid()}-live99"  # a live process's
    live.mkdir()
    other_host = tmp_path / f".{name}.partial-some-other-host-1-xyz"  # maybe still running
    other_host.mkdir()

    root = ensure_synthetic_dataset(tmp_path, num_classes=2, images_per_class=2)
    assert root == tmp_path / name and len(_files(root)) == 4
    assert not stale.exists()
    assert live.exists() and other_host.exists()
    for p in _files(root):
        simplejpeg.decode_jpeg(p.read_bytes())


def test_race_lost_keeps_other_process_copy(tmp_path):
    """If another process renames its copy into place first, ours is discarded."""
    final = tmp_path / synthetic_dataset_name(1, 2, 0)

    def progress(done, total):
        if done == total:  # the other process finishes just before we rename
            (final / "n00000000").mkdir(parents=True)
            (final / "n00000000" / "theirs.txt").write_text("x")

    root = ensure_synthetic_dataset(tmp_path, num_classes=1, images_per_class=2, progress=progress)
    assert root == final
    assert [p.name for p in (final / "n00000000").iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_foreign_final_folder_raises(tmp_path):
    (tmp_path / synthetic_dataset_name(2, 2, 0) / "n00000000").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="n00000001"):
        ensure_synthetic_dataset(tmp_path, num_classes=2, images_per_class=2)


def test_write_synthetic_dataset_into_plain_folder(tmp_path):
    write_synthetic_dataset(tmp_path / "d", num_classes=2, images_per_class=1, seed=5)
    assert [p.relative_to(tmp_path / "d").as_posix() for p in _files(tmp_path / "d")] == [
        "n00000000/n00000000_0.JPEG",
        "n00000001/n00000001_0.JPEG",
    ]


# ----------------------------------------------------------------- learnability (cheap)


def _random_resized_crop(img: np.ndarray, rng: np.random.Generator, out: int = 32) -> np.ndarray:
    """torchvision-style RandomResizedCrop(scale=(0.25, 1), ratio=(3/4, 4/3)) + flip."""
    h, w = img.shape[:2]
    area = h * w * rng.uniform(0.25, 1.0)
    r = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw, ch = min(w, round(math.sqrt(area * r))), min(h, round(math.sqrt(area / r)))
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    crop = Image.fromarray(img[y : y + ch, x : x + cw]).resize((out, out), Image.BILINEAR)
    a = np.asarray(crop, np.float32) / 255.0
    return a[:, ::-1] if rng.uniform() < 0.5 else a


def test_classes_learnable_by_nearest_class_mean():
    """Held-out random-resized crops at 32x32: a nearest-class-mean classifier on raw
    pixels must clearly beat chance (10%). (By hand, on 10 x 100 images: about 61%.)"""
    k, train_n, test_n = 10, 6, 4
    rng = np.random.default_rng(0)
    train, test = [], []
    for c in range(k):
        for i in range(train_n + test_n):
            img = generate_image(c, i, num_classes=k, seed=0)
            views = [_random_resized_crop(img, rng).ravel() for _ in range(2)]
            (train if i < train_n else test).append((c, views))
    means = np.stack([np.mean([v for cc, vs in train if cc == c for v in vs], 0) for c in range(k)])
    x = np.stack([v for _, vs in test for v in vs])
    y = np.array([c for c, vs in test for _ in vs])
    pred = ((x[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y).mean() > 0.3
