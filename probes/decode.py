"""JPEG decode + augmentation throughput against thread count, on the user's images,
for each way the trainer may get them.

What is timed is what the trainer runs: the input pipeline
(``trainers.input_pipeline.TrainBatches``) calls
``trainers.preprocess.train_preprocess(data, rng, cfg, out=batch[i])`` (header,
random-resized crop, DCT-scaled libjpeg-turbo decode, resize, flip) on the bytes the
pack stored, or, with the decoded-image cache, ``preprocess.augment_decoded(img, rng,
cfg, out=batch[i])`` on the image ``preprocess.decode_image`` made of those bytes. The
probe makes the stored bytes with the pack's own function
(``trainers.pack.packed_bytes``) from a sample of the user's files held in memory (so
the disk is not measured), and times the same calls:

* ``originals``: the bytes packed without a resize (the user's JPEGs as they are;
  other formats converted once), at 1, 2, 4, ... threads up to twice the usable
  cores: the report's main curve (``points``, knee);
* ``resized-<R>``: the bytes packed with ``resize_shorter=R``, for each candidate
  resize (default: the one the planner picks for the image size,
  ``trainers.options.pack_resize_side``), so the resize speed-up is measured, not
  modelled;
* ``cached`` and ``cached-resized-<R>``: the steady state of the decoded-image cache
  (the epochs after the first, which only crop and flip).

The variants other than ``originals`` are timed at fewer thread counts (1, the
originals' knee and their best count) to keep the probe short.

The knee is the last count whose added threads still brought at least half a
thread's worth of speed-up. The ceiling is the raw libjpeg-turbo full-size decode
rate of the same images on one thread (``preprocess.decode_image``, no crop, no
resize) times the usable cores: what a perfect pipeline of plain decodes could reach.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from probes.records import DecodePoint, DecodeReport, DecodeVariant
from trainers import options, pack, preprocess, sources
from trainers.options import PackOptions


def thread_counts(max_threads: int) -> list[int]:
    """1, 2, 4, ... up to ``max_threads``, ``max_threads`` itself included."""
    counts, t = [], 1
    while t < max_threads:
        counts.append(t)
        t *= 2
    counts.append(max_threads)
    return counts


def _rate(items: Sequence, threads: int, seconds: float,
          fn: Callable[[object, np.random.Generator, np.ndarray], object],
          image_size: int) -> float:
    """Images/s of ``threads`` workers looping over ``items`` for ``seconds``, each
    calling ``fn(item, rng, out)`` with its own ``out`` (``uint8 [S, S, 3]``, as a
    batch row of the input pipeline)."""
    stop = threading.Event()
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)

    def work(w):
        rng = np.random.default_rng(w)
        out = np.empty((image_size, image_size, 3), np.uint8)
        i = w
        barrier.wait()
        while not stop.is_set():
            fn(items[i % len(items)], rng, out)
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


def variant_name(resize_shorter: int | None, cached: bool) -> str:
    """``originals``, ``resized-<R>``, ``cached`` or ``cached-resized-<R>``."""
    name = f"resized-{resize_shorter}" if resize_shorter else "originals"
    return ("cached" if name == "originals" else f"cached-{name}") if cached else name


def stored_bytes(originals: Sequence[bytes], resize_shorter: int | None, *,
                 quality: int = PackOptions().quality, threads: int = 1) -> list[bytes]:
    """The bytes the pack stores for each of ``originals`` (image file bytes) with
    ``resize_shorter`` (pixels, None: no resize) and ``quality``: the pack's own
    :func:`trainers.pack.packed_bytes`, on ``threads`` threads; order is kept.

    Raises:
      trainers.preprocess.BadImageError: an image that does not decode.
    """
    with cf.ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(lambda d: pack.packed_bytes(d, resize_shorter, quality), originals))


def decoded_images(stored: Sequence[bytes], *, threads: int = 1) -> list[np.ndarray]:
    """The images (``uint8 [H, W, 3]``) the input pipeline's decoded-image cache holds
    for packed bytes ``stored``: the same :func:`trainers.preprocess.decode_image`
    call, on ``threads`` threads; order is kept.

    Raises:
      trainers.preprocess.BadImageError: an image that does not decode.
    """
    with cf.ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(preprocess.decode_image, stored))


def time_variant(inputs: Sequence, cached: bool, cfg: preprocess.AugmentConfig,
                 counts: Sequence[int], seconds: float) -> tuple[DecodePoint, ...]:
    """Images/s at each of ``counts`` threads of the call the input pipeline makes per
    image: ``preprocess.augment_decoded(img, rng, cfg, out=...)`` when ``cached``,
    else ``preprocess.train_preprocess(data, rng, cfg, out=...)``, over ``inputs``
    (:func:`stored_bytes` or :func:`decoded_images`), ``seconds`` per count.
    ``counts`` starts at 1: speed-up and efficiency are against the 1-thread rate.

    Raises:
      ValueError: ``counts`` does not start at 1.
    """
    if not counts or counts[0] != 1:
        raise ValueError(f"thread counts must start at 1, got {list(counts)}")
    if cached:
        def fn(img, rng, out):
            return preprocess.augment_decoded(img, rng, cfg, out=out)
    else:
        def fn(data, rng, out):
            return preprocess.train_preprocess(data, rng, cfg, out=out)
    points: list[DecodePoint] = []
    base = None
    for t in counts:
        r = _rate(inputs, t, seconds, fn, cfg.image_size)
        base = base or max(r, 1e-9)
        points.append(DecodePoint(threads=t, images_per_s=r, speedup=r / base,
                                  efficiency=r / base / t))
    return tuple(points)


def _load_sample(files: Sequence[tuple[str, bytes | None]], quality: int
                 ) -> tuple[list[bytes], list[bytes], list[str], list[tuple[int, int]]]:
    """``files``: ``(path or archive key, bytes or None to read the path)``. Returns
    (file bytes, bytes as packed, ``"path: reason"`` of the bad ones, (width, height)
    of each good one)."""
    originals, stored, bad, dims = [], [], [], []
    for f, data in files:
        try:
            data = Path(f).read_bytes() if data is None else data
            h, w = preprocess.image_header(data)
            packed = pack.packed_bytes(data, None, quality)  # the pack's check: every scan decoded
        except (OSError, preprocess.BadImageError) as exc:
            bad.append(f"{f}: {getattr(exc, 'reason', None) or exc}")
            continue
        originals.append(data)
        stored.append(packed)
        dims.append((w, h))
    return originals, stored, bad, dims


def measure_variants(originals: Sequence[bytes], stored: Sequence[bytes],
                     main: tuple[DecodePoint, ...], cfg: preprocess.AugmentConfig, *,
                     resizes: Sequence[int], cache: bool, quality: int, counts: Sequence[int],
                     seconds: float) -> tuple[DecodeVariant, ...]:
    """One :class:`DecodeVariant` per way the trainer may get its images:
    ``originals`` (the ``main`` curve, already timed on ``stored``, the bytes packed
    without a resize), ``resized-<R>`` for each of ``resizes`` (the pack's bytes of
    ``originals`` at R), and with ``cache`` the decoded-cache form of each, timed at
    ``counts`` threads for ``seconds`` each (:func:`time_variant`). A resize that
    changes no image of the sample reuses the figures of the unresized bytes."""
    threads = max(counts)
    forms: dict[int | None, list[bytes]] = {None: list(stored)}
    for r in resizes:
        forms[r] = stored_bytes(originals, r, quality=quality, threads=threads)
    timed = {(None, False): main}

    def points(key: int | None, cached: bool) -> tuple[DecodePoint, ...]:
        if (key, cached) not in timed:
            inputs = decoded_images(forms[key], threads=threads) if cached else forms[key]
            timed[(key, cached)] = time_variant(inputs, cached, cfg, counts, seconds)
        return timed[(key, cached)]

    variants = []
    for r in (None, *resizes):
        key = None if r is None or forms[r] == forms[None] else r
        for cached in (False, True) if cache else (False,):
            pts = points(key, cached)
            variants.append(DecodeVariant(
                name=variant_name(r, cached), resize_shorter=r, cached=cached,
                best_images_per_s=max(p.images_per_s for p in pts), points=pts))
    return tuple(variants)


def probe_decode(data_path: str | os.PathLike, *, image_size: int = 224,
                 min_crop_scale: float = 0.08, sample: int = 200,
                 seconds_per_point: float = 1.5, max_threads: int | None = None,
                 files: Sequence[str | os.PathLike] | None = None,
                 resizes: Sequence[int] | None = None, cache: bool = True,
                 quality: int = PackOptions().quality) -> DecodeReport:
    """Measure decode + augmentation images/s against threads on the user's images,
    for the original bytes, each candidate pack-time resize and the decoded cache
    (see the module docstring).

    Args:
      data_path: the training input, any kind ``trainers.sources`` reads (a class-
        folder tree, a tar of per-class tars: images from its first inner tars only,
        the Kaggle folder or zip).
      image_size: output side of the training preprocessing (pixels).
      min_crop_scale: smallest random-resized-crop area fraction.
      sample: images read into memory and cycled through.
      seconds_per_point: measuring time per thread count (seconds).
      max_threads: largest thread count (default: 2 x usable cores).
      files: explicit files to time instead of sampling ``data_path``.
      resizes: candidate pack-time resizes, shorter side in pixels (default: the one
        for ``image_size``, :func:`trainers.options.pack_resize_side`); ``()`` for none.
      cache: also time the decoded-image cache.
      quality: JPEG quality of re-encoded images (the pack's).

    Returns:
      :class:`DecodeReport`; ``variants`` holds one :class:`DecodeVariant` per way
      of getting the images.

    Raises:
      trainers.scan.DataFolderError (a ValueError): no input, not a readable kind, or
        no image file in it.
      ValueError: no decodable image in the sample.
    """
    files = ([(str(f), None) for f in files] if files is not None
             else sources.sample_members(data_path, sample))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    max_threads = max_threads or 2 * cores
    cfg = preprocess.AugmentConfig(image_size=image_size, min_scale=min_crop_scale)
    originals, stored, bad, dims = _load_sample(files, quality)
    if not stored:
        raise ValueError(f"none of the {len(files)} sampled files under {data_path} decodes; "
                         f"first: {bad[0] if bad else '-'}")
    raw = _rate(stored, 1, seconds_per_point, lambda d, rng, out: preprocess.decode_image(d),
                image_size)
    points = time_variant(stored, False, cfg, thread_counts(max_threads), seconds_per_point)
    knee = find_knee(points)
    best = max(points, key=lambda p: p.images_per_s)
    resizes = (options.pack_resize_side(image_size),) if resizes is None else tuple(resizes)
    variants = measure_variants(originals, stored, points, cfg, resizes=resizes, cache=cache,
                                quality=quality, counts=sorted({1, knee, best.threads}),
                                seconds=seconds_per_point)
    return DecodeReport(
        data_path=str(data_path), sample_images=len(stored),
        median_bytes=int(statistics.median(len(d) for d in originals)),
        median_width=int(statistics.median(w for w, _ in dims)),
        median_height=int(statistics.median(h for _, h in dims)),
        mean_pixels=float(np.mean([w * h for w, h in dims])),
        image_size=image_size, min_crop_scale=min_crop_scale, points=points,
        knee_threads=knee, raw_decode_images_per_s=raw, usable_cores=cores,
        ceiling_images_per_s=raw * cores, bad_images=tuple(bad),
        decoder=preprocess.decoder_description(),
        seconds_per_point=seconds_per_point, variants=variants)
