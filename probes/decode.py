"""JPEG decode + augmentation throughput against thread count, on the user's images.

Times ``trainers.preprocess.train_preprocess`` (the very function the input pipeline
runs: header, random-resized crop, DCT-scaled libjpeg-turbo decode, resize, flip) on
a sample of the user's own files held in memory (so the disk is not measured), at 1,
2, 4, ... threads up to twice the usable cores, and reports images/s, speed-up and
parallel efficiency per point, and the knee (the last count whose added thread still
brought at least half a thread's worth of speed-up).

The ceiling is the raw libjpeg-turbo full-size decode rate of the same images on one
thread (``simplejpeg.decode_jpeg``, no crop, no resize) times the usable cores: what
a perfect pipeline of plain decodes could reach.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from trainers import preprocess
from probes.records import DecodePoint, DecodeReport


IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def sample_files(root: str | os.PathLike, n: int, seed: int = 0) -> list[Path]:
    """Up to ``n`` image files from ``root`` (``<root>/<class>/*`` or flat), spread
    evenly over class folders, in a seeded random order.

    Raises:
      FileNotFoundError: ``root`` does not exist.
      ValueError: no image files under ``root``.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data path {root} does not exist")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    groups = [sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for d in dirs]
    groups.append(sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
    groups = [g for g in groups if g]
    if not groups:
        raise ValueError(f"no image files (.JPEG/.jpg/.png) under {root}")
    rng = random.Random(seed)
    for g in groups:
        rng.shuffle(g)
    out: list[Path] = []
    i = 0
    while len(out) < n and any(i < len(g) for g in groups):
        for g in groups:
            if i < len(g) and len(out) < n:
                out.append(g[i])
        i += 1
    rng.shuffle(out)
    return out


def thread_counts(max_threads: int) -> list[int]:
    """1, 2, 4, ... up to ``max_threads``, ``max_threads`` itself included."""
    counts, t = [], 1
    while t < max_threads:
        counts.append(t)
        t *= 2
    counts.append(max_threads)
    return counts


def _rate(datas: Sequence[bytes], threads: int, cfg: preprocess.AugmentConfig,
          seconds: float, fn=None) -> float:
    """Images/s of ``threads`` workers looping over ``datas`` for ``seconds``."""
    fn = fn or (lambda d, rng: preprocess.train_preprocess(d, rng, cfg))
    stop = threading.Event()
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)

    def work(w):
        rng = np.random.default_rng(w)
        i = w
        barrier.wait()
        while not stop.is_set():
            fn(datas[i % len(datas)], rng)
            counts[w] += 1
            i += threads
    with cf.ThreadPoolExecutor(threads) as pool:
        futs = [pool.submit(work, w) for w in range(threads)]
        barrier.wait()
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while time.perf_counter() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.perf_counter())))
        done_before = sum(counts)
        stop.set()
        elapsed = time.perf_counter() - t0
        for f in futs:
            f.result()
    return done_before / elapsed


def find_knee(points: Sequence[DecodePoint]) -> int:
    """The last thread count whose extra threads each added at least half of one
    thread's throughput (marginal gain >= 0.5 x the 1-thread rate per added thread)."""
    knee = points[0].threads
    base = points[0].images_per_s
    for prev, cur in zip(points, points[1:]):
        gain_per_thread = (cur.images_per_s - prev.images_per_s) / (cur.threads - prev.threads)
        if gain_per_thread >= 0.5 * base:
            knee = cur.threads
        else:
            break
    return knee


def probe_decode(data_path: str | os.PathLike, *, image_size: int = 224,
                 min_crop_scale: float = 0.08, sample: int = 200,
                 seconds_per_point: float = 1.5, max_threads: int | None = None,
                 files: Sequence[str | os.PathLike] | None = None) -> DecodeReport:
    """Measure decode + augmentation images/s against threads on the user's images.

    Args:
      data_path: image folder (ImageNet layout or flat).
      image_size: output side of the training preprocessing (pixels).
      min_crop_scale: smallest random-resized-crop area fraction.
      sample: images read into memory and cycled through.
      seconds_per_point: measuring time per thread count (seconds).
      max_threads: largest thread count (default: 2 x usable cores).
      files: explicit files to time instead of sampling ``data_path``.

    Raises:
      FileNotFoundError / ValueError: no folder, or no decodable image in the sample.
    """
    files = [Path(f) for f in files] if files is not None else sample_files(data_path, sample)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    max_threads = max_threads or 2 * cores
    cfg = preprocess.AugmentConfig(image_size=image_size, min_scale=min_crop_scale)
    datas, bad, dims = [], [], []
    for f in files:
        try:
            data = f.read_bytes()
            h, w = preprocess.image_header(data)
            preprocess.decode_image(data, min_height=1, min_width=1)
        except (OSError, preprocess.BadImageError) as exc:
            bad.append(f"{f}: {getattr(exc, 'reason', None) or exc}")
            continue
        datas.append(data)
        dims.append((w, h))
    if not datas:
        raise ValueError(f"none of the {len(files)} sampled files under {data_path} decodes; "
                         f"first: {bad[0] if bad else '-'}")
    raw = _rate(datas, 1, cfg, seconds_per_point,
                fn=lambda d, rng: preprocess.decode_image(d))
    points: list[DecodePoint] = []
    base = None
    for t in thread_counts(max_threads):
        r = _rate(datas, t, cfg, seconds_per_point)
        base = base or r
        points.append(DecodePoint(threads=t, images_per_s=r, speedup=r / base,
                                  efficiency=r / base / t))
    return DecodeReport(
        data_path=str(data_path), sample_images=len(datas),
        median_bytes=int(statistics.median(len(d) for d in datas)),
        median_width=int(statistics.median(w for w, _ in dims)),
        median_height=int(statistics.median(h for _, h in dims)),
        mean_pixels=float(np.mean([w * h for w, h in dims])),
        image_size=image_size, min_crop_scale=min_crop_scale, points=tuple(points),
        knee_threads=find_knee(points), raw_decode_images_per_s=raw, usable_cores=cores,
        ceiling_images_per_s=raw * cores, bad_images=tuple(bad),
        decoder=preprocess.decoder_description(),
        seconds_per_point=seconds_per_point)
