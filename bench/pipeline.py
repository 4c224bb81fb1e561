"""Training input pipeline throughput against tf.data with equal work, and against the
ceiling of its own decoder (issue 15; replaces the issue-5 comparison, which was not
equal work).

What is timed, in images/s delivered as ``uint8 [batch, 224, 224, 3]`` batches. Every
method gets the *same crop boxes and flips*: a seeded list, one entry per file of the
data folder, drawn once by ``trainers.preprocess.random_resized_crop_box`` (area
0.08-1, aspect 3/4-4/3) on each file's header and written to a JSON file that every
worker reads, so every side decodes the same rows and columns of the same images and
resizes the same boxes to the same 224 x 224 uint8 output, flipped alike.

* ``autotune`` (fast, the training default) and ``autotune-exact``: the project's real
  pipeline, ``trainers.input_pipeline.make_train_iterator`` with
  ``PipelineConfig(host_batch, augment=AugmentConfig(224, decode_mode=...),
  decode_threads=T, cache_decoded=False)`` over the data folder packed once with
  ``trainers.pack.pack_folder(..., PackOptions(num_shards=8))`` (original bytes):
  ArrayRecord read, ``tf.train.Example`` parse, ``preprocess.train_preprocess``
  (header, region decode of the box by ``trainers/_jpegcrop.c``, resize, flip) written
  into the batch. The only change, made in this benchmark's worker process: the box
  and flip come from the list (``TrainBatches._augment`` hands ``train_preprocess`` a
  stand-in for its random generator, and ``random_resized_crop_box`` returns the given
  box for it). Decode modes:

  - fast (``decode_mode="fast"``, the default): JDCT_IFAST, plain (non-fancy) chroma
    upsampling, DCT-domain downscale by 1/2, 1/4 or 1/8 when the box allows it;
  - exact (``decode_mode="exact"``): JDCT_ISLOW, fancy chroma upsampling, full scale:
    the decode tf.data does below, bit-identical to Pillow's decode of the box.

* ``tf.data``: ``from_tensor_slices((paths, boxes, flips)).shuffle().repeat().map(
  read_file + decode_and_crop_jpeg(crop_window=box, channels=3, fancy_upscaling=True,
  dct_method="INTEGER_ACCURATE") + resize(bilinear) + round + clip + cast uint8 +
  flip if flip, num_parallel_calls=AUTOTUNE).batch().prefetch(AUTOTUNE)``, with
  ``private_threadpool_size = T``, ``max_intra_op_parallelism = 1``,
  ``autotune.cpu_budget = T`` and TF's intra/inter-op pools at ``T``. It reads the same
  images, from their files. This is the equal-work baseline of ``autotune-exact``.
* ``tf.data-ifast``: the same with ``decode_and_crop_jpeg``'s own default
  ``dct_method`` (TF maps "" to JDCT_IFAST: checked, its pixels equal simplejpeg's
  ``fastdct=True, fastupsample=False``): tf.data as shipped, fancy upsampling.
* ``ceiling`` and ``ceiling-exact``: what no pipeline built on this decoder can beat.
  One thread, JPEG bytes and headers in memory, ``preprocess.decode_crop`` of each
  box at the pipeline's scale and mode (the region decode alone), then the same
  again followed by the pipeline's resize + flip into one output buffer
  (``preprocess._resize_flip``), each loop in whole passes over the images; the
  ceiling is the 1-thread rate of the second loop, x T. The difference of the two
  loops, in CPU time per image, is the measured resize + flip cost, printed.
* ``ceiling@T`` and ``ceiling-exact@T`` (at T > 1 only): the ceiling's second
  loop on T > 1 threads at once (each thread its own share of the images and its own
  output buffer): how the bare decoder + resize scales on the machine, which says
  how much of a pipeline's shortfall from "1 thread x T" is the machine's. The
  autotune rows at T > 1 are also given as a % of this ("% of decoder on T", with a
  goal line of its own): no pipeline on T threads of this machine beats it, while
  "1 thread x T" assumes the T CPUs scale perfectly, which the 2-core development VM's
  do not (the bare decoder reaches 92-98% of it there).
* ``naive`` (not run by default): a Python generator over the paths doing
  ``Image.open(p).convert('RGB')``, ``Image.resize(box=..., BILINEAR)`` of the same
  box, the same flip, ``np.stack``; single-threaded.

Pixel difference. Before the timed rounds the script decodes the first
``--mae-images`` boxes with each autotune mode (through ``train_preprocess``) and
with tf.data (both DCT methods), and prints their mean absolute error per channel
(uint8 levels) against Pillow's reference decode (libjpeg ISLOW + fancy upsampling)
and antialiased ``Image.resize(BILINEAR, box=...)`` of the same boxes and flips. The
exact mode decodes the same pixels as Pillow, so its error is the resize's alone;
the fast mode's extra error is the cost of its decode shortcuts.

Fairness and noise. Every point runs in its own fresh process pinned
(``sched_setaffinity``) to T CPUs, so no method gets more cores than its thread
count (TF's and Grain's helper threads included); each point has a warm-up and then
a timed window; the methods are interleaved round-robin, the order rotated each
round, and every round is repeated, so load from other users of a shared machine
hits all of them alike. The table gives the median over rounds (and the best); the
ratios use medians, "paired" ratios are the median of same-round ratios.
``img/CPU-s`` is images per second of process CPU time, which is much less sensitive
to other load than the wall rate.

TensorFlow is needed for the tf.data rows only and is not a project dependency.
Install it (benchmark only), preferably outside the project venv::

    python -m venv /tmp/tfbench && /tmp/tfbench/bin/pip install tensorflow-cpu
    python bench/pipeline.py --tf-python /tmp/tfbench/bin/python

Without TensorFlow the tf.data rows are skipped and the script says how to install it.

Usage::

    python bench/pipeline.py [--data ../shared/data/imagenet-samples] [--threads 1,2]
        [--seconds 5] [--warmup 2] [--repeats 3] [--batch 128] [--tf-python PATH]
        [--methods autotune,autotune-exact,tf.data,tf.data-ifast,ceiling,ceiling-exact,...]
        [--mae-images 1000] [--pack-dir DIR] [--json out.json]
    python bench/pipeline.py --table-from out.json    # the tables again, from the JSON

``--json`` writes every point (round, method, threads, images, seconds, CPU-seconds,
images/s), the pixel errors, the settings and the table rows; ``--table-from``
recomputes and prints the tables from such a file.

Goals (issue 15, ``--threads 1,2`` on a 2-core machine): autotune-exact >= 1.2x
tf.data (equal work) at 1 and 2 threads, fast mode >= 1.3x tf.data, >= 90% of the
ceiling.

This file imports only the standard library at the top: the tf.data worker runs it
under the TensorFlow interpreter, which need not have the project installed.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "imagenet-samples"
IMAGE_SIZE = 224
MIN_SCALE = 0.08
RATIO = (3 / 4, 4 / 3)
GOALS = {"equal_work": 1.2, "fast": 1.3, "ceiling": 0.90}
TF_INSTALL_HINT = ("tf.data rows skipped: TensorFlow is not importable by {python}. It is a "
                   "benchmark-only dependency: python -m venv /tmp/tfbench && "
                   "/tmp/tfbench/bin/pip install tensorflow-cpu, then rerun with "
                   "--tf-python /tmp/tfbench/bin/python (or pip install tensorflow-cpu "
                   "into this venv).")

#: method -> (label in the tables, worker, decode mode / TF dct_method)
METHODS = {
    "autotune": ("autotune fast (default: IFAST, plain upsampling, DCT-scaled)",
                 "autotune", "fast"),
    "autotune-exact": ("autotune exact (ISLOW, fancy upsampling, full scale)",
                       "autotune", "exact"),
    "tf.data": ("tf.data (INTEGER_ACCURATE, fancy, full scale)", "tf.data", "INTEGER_ACCURATE"),
    "tf.data-ifast": ("tf.data defaults (INTEGER_FAST, fancy, full scale)", "tf.data", ""),
    "ceiling": ("ceiling fast: region decode + resize, 1 thread x T", "ceiling", "fast"),
    "ceiling-exact": ("ceiling exact: region decode + resize, 1 thread x T", "ceiling", "exact"),
    "ceiling@T": ("decoder scaling: fast decode + resize measured on T threads", "ceiling", "fast"),
    "ceiling-exact@T": ("decoder scaling: exact decode + resize measured on T threads", "ceiling",
                        "exact"),
    "naive": ("naive: Pillow generator, 1 thread", "naive", None),
}
DEFAULT_METHODS = ("autotune,autotune-exact,tf.data,tf.data-ifast,ceiling,ceiling-exact,"
                   "ceiling@T,ceiling-exact@T")
#: the ceiling each pipeline is held against
CEILING_OF = {"autotune": "ceiling", "autotune-exact": "ceiling-exact"}
#: methods measured at 1 thread only, whatever --threads says
ONE_THREAD = ("ceiling", "ceiling-exact", "naive")
#: methods measured at T > 1 only (their 1-thread rate is the ceiling's)
MANY_THREADS = ("ceiling@T", "ceiling-exact@T")


# --------------------------------------------------------------------------- boxes

def _files(data: str) -> list[str]:
    """The image files of ``<data>/<class>/*`` in sorted order (what pack_folder packs)."""
    root = Path(data)
    return [str(p) for d in sorted(root.iterdir()) if d.is_dir()
            for p in sorted(d.iterdir()) if p.is_file()]


def make_boxes(data: Path, seed: int) -> list[dict]:
    """One crop box and flip per file of ``data`` (sorted order), drawn by the
    training's own ``random_resized_crop_box`` on the file's header with a generator
    seeded by ``seed``: ``{"path", "height", "width", "box": [top, left, h, w],
    "flip"}``."""
    import numpy as np

    from trainers.preprocess import image_header, random_resized_crop_box

    rng = np.random.default_rng(seed)
    out = []
    for path in _files(str(data)):
        h, w = image_header(Path(path).read_bytes())
        box = random_resized_crop_box(h, w, rng, scale=(MIN_SCALE, 1.0), ratio=RATIO)
        out.append({"path": path, "height": h, "width": w, "box": list(box),
                    "flip": bool(rng.random() < 0.5)})
    return out


def boxes_summary(entries: list[dict]) -> dict:
    """Seed-independent facts of a box list, for the JSON: a digest of the boxes (names,
    not paths, so it does not depend on where the data lives) and what they imply."""
    import math

    from trainers.preprocess import dct_denominator

    digest = hashlib.sha256(json.dumps(
        [[Path(e["path"]).name, e["box"], e["flip"]] for e in entries]).encode()).hexdigest()
    area = [e["box"][2] * e["box"][3] / (e["height"] * e["width"]) for e in entries]
    scaled = 0
    for e in entries:  # the scale choice of preprocess.decode_crop
        h, w, ch, cw = e["height"], e["width"], e["box"][2], e["box"][3]
        need = max(IMAGE_SIZE / ch, IMAGE_SIZE / cw)
        if need < 1 and dct_denominator(h, w, math.ceil(h * need), math.ceil(w * need)) > 1:
            scaled += 1
    return {"count": len(entries), "sha256": digest,
            "mean_area_fraction": statistics.fmean(area),
            "flipped": sum(e["flip"] for e in entries),
            "fast_mode_dct_scaled": scaled}


def _read_boxes(path: str) -> list[dict]:
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- workers
# Each worker runs in its own process, pinned to `threads` CPUs, and prints one JSON
# line: {"images": n, "seconds": wall, "cpu_seconds": process CPU, ...}.

def _pin(threads: int) -> list[int]:
    """Restrict this process to its first ``threads`` allowed CPUs; returns them."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def _time_iterator(next_batch, warmup: float, seconds: float) -> dict:
    """Consume batches for ``warmup`` seconds, then time at least ``seconds`` more.

    ``next_batch()`` returns the number of images in the batch it consumed. The window
    runs from the arrival of one batch to the arrival of a later one and counts the
    images that arrived in between, so a partly built batch at either end does not
    skew the rate (batches of 128 at a few hundred images/s are coarse ticks).
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < warmup:
        next_batch()
    next_batch()
    c0, t0 = time.process_time(), time.perf_counter()
    n = 0
    while True:
        n += next_batch()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    return {"images": n, "seconds": elapsed, "cpu_seconds": time.process_time() - c0}


class GivenBox:
    """Stands in for the ``numpy.random.Generator`` that ``train_preprocess`` draws its
    crop and flip from: the crop is ``box`` (see :func:`install_box_hook`) and the flip
    draw, ``random() < 0.5``, comes out as ``flip``."""

    __slots__ = ("box", "flip")

    def __init__(self, box, flip: bool):
        self.box, self.flip = tuple(int(v) for v in box), bool(flip)

    def random(self) -> float:
        return 0.0 if self.flip else 1.0


def install_box_hook(preprocess) -> dict:
    """Make ``preprocess.random_resized_crop_box`` return ``rng.box`` when handed a
    :class:`GivenBox` (and draw as usual otherwise), in this process only. Returns
    counters ``{"given": n, "drawn": n}`` of the calls."""
    draw = preprocess.random_resized_crop_box
    calls = {"given": 0, "drawn": 0}

    def given_or_drawn(height, width, rng, **kw):
        if isinstance(rng, GivenBox):
            calls["given"] += 1
            top, left, ch, cw = rng.box
            if top < 0 or left < 0 or top + ch > height or left + cw > width:
                raise ValueError(f"given box {rng.box} outside a {width}x{height} image")
            return rng.box
        calls["drawn"] += 1
        return draw(height, width, rng, **kw)

    preprocess.random_resized_crop_box = given_or_drawn
    return calls


def worker_autotune(args) -> dict:
    # parse_example imports tensorflow_datasets lazily, in whichever Grain thread
    # parses first; two threads doing that at once can deadlock on Python 3.11
    # (functools.cached_property's class-wide lock in etils' lazy modules against the
    # import lock; seen here with threads=2). Import it here, in the main thread.
    from tensorflow_datasets.proto import tf_example_pb2

    from trainers import input_pipeline as ip
    from trainers import preprocess
    from trainers.options import AugmentConfig
    from trainers.pack import load_pack_result, shard_paths

    mode = METHODS[args.worker][2]
    given = {Path(e["path"]).name: GivenBox(e["box"], e["flip"]) for e in _read_boxes(args.boxes)}
    calls = install_box_hook(preprocess)

    class BoxedBatches(ip.TrainBatches):
        """The training batches, with each record's box and flip from the list."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.given = {}
            for q, records, _ in self.parts:
                names = []
                for rec in records.read(list(range(len(records)))):
                    ex = tf_example_pb2.Example.FromString(rec)
                    names.append(ex.features.feature["file_name"].bytes_list.value[0].decode())
                self.given[q] = [given[n] for n in names]

        def _augment(self, q, records, index, rec, rng, out, augment=None):
            return super()._augment(q, records, index, rec, self.given[q][index], out, augment)

    ip.TrainBatches = BoxedBatches  # make_train_iterator builds this one, here only
    lengths = load_pack_result(args.pack_dir).split("train").shard_lengths
    paths = shard_paths(args.pack_dir, "train")
    cfg = ip.PipelineConfig(host_batch=args.batch,
                            augment=AugmentConfig(IMAGE_SIZE, min_scale=MIN_SCALE, decode_mode=mode),
                            decode_threads=args.threads, cache_decoded=False, seed=args.seed)
    spe = ip.steps_per_epoch(lengths, args.batch)
    it = ip.make_train_iterator(paths, lengths, cfg, epochs=100_000, steps_per_epoch=spe)

    def next_batch():
        b = next(it)
        assert b["image"].shape == (args.batch, IMAGE_SIZE, IMAGE_SIZE, 3), b["image"].shape
        return len(b["image"])
    out = _time_iterator(next_batch, args.warmup, args.seconds)
    if calls["drawn"] or not calls["given"]:
        raise RuntimeError(f"box hook not in effect: {calls}")
    out["decode_mode"] = mode
    return out


def _tf_dataset(tf, entries: list[dict], dct_method: str, seed: int, *, train: bool):
    """The tf.data pipeline over ``entries`` (shuffled and repeated when ``train``)."""
    paths = [e["path"] for e in entries]
    boxes = tf.constant([e["box"] for e in entries], tf.int32)
    flips = tf.constant([e["flip"] for e in entries], tf.bool)

    def preprocess(path, box, flip):
        buf = tf.io.read_file(path)
        img = tf.image.decode_and_crop_jpeg(buf, box, channels=3, fancy_upscaling=True,
                                            dct_method=dct_method)
        img = tf.image.resize(img, [IMAGE_SIZE, IMAGE_SIZE], method="bilinear")
        img = tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)
        return tf.cond(flip, lambda: tf.image.flip_left_right(img), lambda: img)

    ds = tf.data.Dataset.from_tensor_slices((paths, boxes, flips))
    if train:
        ds = ds.shuffle(len(paths), seed=seed).repeat()
    return ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)


def worker_tfdata(args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    t = args.threads
    tf.config.threading.set_inter_op_parallelism_threads(t)
    tf.config.threading.set_intra_op_parallelism_threads(t)
    entries = _read_boxes(args.boxes)
    dct = METHODS[args.worker][2]
    options = tf.data.Options()
    options.threading.private_threadpool_size = t
    options.threading.max_intra_op_parallelism = 1
    options.autotune.cpu_budget = t
    if args.dump:  # the first --dump-count outputs, in list order, for the pixel check
        import numpy as np

        ds = _tf_dataset(tf, entries[:args.dump_count], dct, args.seed, train=False)
        np.save(args.dump, np.stack(list(ds.with_options(options).as_numpy_iterator())))
        return {"images": args.dump_count, "seconds": 0.0, "cpu_seconds": 0.0}
    ds = (_tf_dataset(tf, entries, dct, args.seed, train=True)
          .batch(args.batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
          .with_options(options))
    it = ds.as_numpy_iterator()

    def next_batch():
        b = next(it)
        assert b.shape == (args.batch, IMAGE_SIZE, IMAGE_SIZE, 3), b.shape
        return len(b)
    out = _time_iterator(next_batch, args.warmup, args.seconds)
    out["tensorflow"] = tf.__version__
    out["dct_method"] = dct or "default"
    return out


def worker_ceiling(args) -> dict:
    """One thread: the region decode of every box alone, then decode + resize + flip
    into one output buffer, each loop cycling over the JPEG bytes held in memory
    (``ceiling@T`` methods: the same loops on T threads at once)."""
    import threading

    import numpy as np

    from trainers import preprocess

    if args.worker in MANY_THREADS:
        if args.threads < 2:
            raise ValueError(f"{args.worker} is for T > 1 (its 1-thread rate is the ceiling's)")
    elif args.threads != 1:
        raise ValueError("the ceiling is measured on 1 thread (the ceiling at T is x T)")
    mode = METHODS[args.worker][2]
    items = []
    for e in _read_boxes(args.boxes):
        items.append((Path(e["path"]).read_bytes(), e["height"], e["width"], *e["box"], e["flip"]))
    # A seeded shuffle: the files are in class order, so a window that ends mid-pass
    # (the threaded loops) is still a fair sample of the images.
    np.random.default_rng(args.seed).shuffle(items)
    out = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)

    def decode(item):
        data, h, w, top, left, ch, cw, _ = item
        return preprocess.decode_crop(data, h, w, top, left, ch, cw, min_side=IMAGE_SIZE, mode=mode)

    def decode_resize(item):
        preprocess._resize_flip(decode(item), IMAGE_SIZE, item[-1], out)

    def loop(fn, warmup: float, seconds: float) -> dict:
        """Whole passes over the images (each image equally often), at least ``seconds``."""
        i, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < warmup:
            fn(items[i % len(items)])
            i += 1
        n, c0, t0 = 0, time.process_time(), time.perf_counter()
        while True:
            for item in items:
                fn(item)
            n += len(items)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
        return {"images": n, "seconds": elapsed, "cpu_seconds": time.process_time() - c0}

    def threaded_loop(fn, warmup: float, seconds: float) -> dict:
        t = args.threads
        stop, counts, go = threading.Event(), [0] * t, threading.Barrier(t + 1)

        def work(w):
            buf = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
            i = w
            go.wait()
            while not stop.is_set():
                fn(items[i % len(items)], buf)
                counts[w] += 1
                i += t
        threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(t)]
        for th in threads:
            th.start()
        go.wait()
        time.sleep(warmup)
        n0, c0, t0 = sum(counts), time.process_time(), time.perf_counter()
        time.sleep(seconds)
        n1, c1, t1 = sum(counts), time.process_time(), time.perf_counter()
        stop.set()
        for th in threads:
            th.join()
        return {"images": n1 - n0, "seconds": t1 - t0, "cpu_seconds": c1 - c0}

    if args.worker in MANY_THREADS:
        dec = threaded_loop(lambda item, buf: decode(item), args.warmup / 2, args.seconds / 2)
        res = threaded_loop(lambda item, buf: preprocess._resize_flip(
            decode(item), IMAGE_SIZE, item[-1], buf), args.warmup / 2, args.seconds)
    else:
        dec = loop(decode, args.warmup / 2, args.seconds / 2)
        res = loop(decode_resize, args.warmup / 2, args.seconds)
    # Per image, in CPU time (the wall time less what other processes took).
    us_dec = 1e6 * dec["cpu_seconds"] / dec["images"]
    us_all = 1e6 * res["cpu_seconds"] / res["images"]
    return {**res, "decode_only": dec, "decode_cpu_us": us_dec, "resize_flip_cpu_us": us_all - us_dec,
            "decode_mode": mode}


def worker_naive(args) -> dict:
    import numpy as np
    from PIL import Image

    entries = _read_boxes(args.boxes)

    def generator():
        while True:
            for e in entries:
                top, left, ch, cw = e["box"]
                img = Image.open(e["path"]).convert("RGB")
                img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR,
                                 box=(left, top, left + cw, top + ch))
                if e["flip"]:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
                yield np.asarray(img)

    gen = generator()

    def next_batch():
        return len(np.stack([next(gen) for _ in range(args.batch)]))
    return _time_iterator(next_batch, args.warmup, args.seconds)


WORKERS = {"autotune": worker_autotune, "tf.data": worker_tfdata, "ceiling": worker_ceiling,
           "naive": worker_naive}


def _worker_main(args) -> None:
    cpus = _pin(args.threads) if args.pin else []
    out = WORKERS[METHODS[args.worker][1]](args)
    out["cpus"] = cpus
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------- pixel check

def pixel_errors(entries: list[dict], tf_python: str | None, args) -> dict:
    """Mean absolute error per channel (uint8 levels) of each autotune mode and of
    tf.data against Pillow's decode + ``resize(BILINEAR, box)`` of the same boxes."""
    import numpy as np
    from PIL import Image

    from trainers import preprocess
    from trainers.options import AugmentConfig

    install_box_hook(preprocess)
    entries = entries[:args.mae_images]
    outputs: dict[str, np.ndarray] = {}
    for method in ("autotune", "autotune-exact"):
        cfg = AugmentConfig(IMAGE_SIZE, min_scale=MIN_SCALE, decode_mode=METHODS[method][2])
        outputs[method] = np.stack([
            preprocess.train_preprocess(Path(e["path"]).read_bytes(), GivenBox(e["box"], e["flip"]),
                                        cfg) for e in entries])
    if tf_python:
        with tempfile.TemporaryDirectory() as tmp:
            for method in ("tf.data", "tf.data-ifast"):
                dump = Path(tmp) / f"{method}.npy"
                if _run_point(method, 1, args, tf_python, extra=["--dump", str(dump),
                              "--dump-count", str(len(entries))], pin=False) is not None:
                    outputs[method] = np.load(dump)
    sums = {m: np.zeros(3) for m in outputs}
    fast_vs_exact = np.zeros(3)
    for i, e in enumerate(entries):
        top, left, ch, cw = e["box"]
        with Image.open(e["path"]) as im:
            ref = im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR,
                                           box=(left, top, left + cw, top + ch))
        if e["flip"]:
            ref = ref.transpose(Image.FLIP_LEFT_RIGHT)
        ref = np.asarray(ref, np.int16)
        for m, arr in outputs.items():
            sums[m] += np.abs(arr[i].astype(np.int16) - ref).mean(axis=(0, 1))
        fast_vs_exact += np.abs(outputs["autotune"][i].astype(np.int16)
                                - outputs["autotune-exact"][i]).mean(axis=(0, 1))
    n = len(entries)
    return {"images": n,
            "reference": "Pillow " + Image.__version__ + ": Image.open().convert('RGB') "
                         "(libjpeg ISLOW + fancy upsampling) .resize((224, 224), BILINEAR, box=crop)",
            "mae_rgb": {m: list(s / n) for m, s in sums.items()},
            "fast_vs_exact_rgb": list(fast_vs_exact / n)}


def print_pixel_errors(px: dict) -> None:
    print(f"Pixel difference against the reference ({px['reference']}; same boxes and "
          f"flips, {px['images']} images): mean absolute error per channel, uint8 levels")
    body = [[METHODS[m][0], *(f"{v:.2f}" for v in rgb), f"{sum(rgb) / 3:.2f}"]
            for m, rgb in px["mae_rgb"].items()]
    fe = px["fast_vs_exact_rgb"]
    body.append(["autotune fast against autotune exact", *(f"{v:.2f}" for v in fe),
                 f"{sum(fe) / 3:.2f}"])
    _print_rows(["output", "R", "G", "B", "mean"], body)
    print("(exact decodes the reference's pixels, so its error is the resize's: OpenCV "
          "bilinear + box pre-filter against Pillow's antialiased bilinear)")


# ------------------------------------------------------------------------ orchestrator

def _run_point(method: str, threads: int, args, python: str, *, extra: list[str] = (),
               pin: bool | None = None) -> dict | None:
    """One measurement in a fresh pinned process; None (and a message) on failure."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", method, "--threads", str(threads),
           "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--data", str(args.data), "--pack-dir", str(args.pack_dir), "--seed", str(args.seed),
           "--boxes", str(args.boxes), *extra]
    if not (args.pin if pin is None else pin):
        cmd.append("--no-pin")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=600 + 10 * (args.seconds + args.warmup))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    print(f"  {method} x{threads} failed (exit {proc.returncode}): " + " | ".join(tail),
          file=sys.stderr)
    return None


def _tf_available(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import tensorflow"], capture_output=True,
                              timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
                              ).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_packed(data: Path, pack_dir: Path) -> Path:
    """Pack ``data`` into ``pack_dir`` once (8 shards, original bytes); later calls
    reuse it (``pack_folder`` returns an existing identical pack as is, and replaces
    one made from other inputs or options: the folder is this benchmark's own)."""
    from trainers.options import PackOptions
    from trainers.pack import pack_folder

    t0 = time.perf_counter()
    res = pack_folder(data, pack_dir, PackOptions(num_shards=8), replace_stale=True)
    print(f"packed data: {pack_dir} ({res.packed} images, {res.skipped} skipped, "
          f"{res.bytes_out / 1e6:.0f} MB; {time.perf_counter() - t0:.1f} s)")
    return pack_dir


def _fmt(x: float | None, spec: str = ".0f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _rate(p: dict) -> float:
    return p["images"] / p["seconds"]


def _per_cpu(p: dict) -> float:
    return p["images"] / p["cpu_seconds"] if p["cpu_seconds"] > 0 else float("nan")


def summarise(points: list[dict], threads: list[int]) -> list[dict]:
    """Rows of the table from the raw points (``{"round", "method", "threads", "images",
    "seconds", "cpu_seconds", ...}``).

    Per row: median and best images/s over rounds, median images per CPU-second, CPU
    share (process CPU / (wall x T): 1.0 = all T CPUs busy), the ratios of the median
    rate to each tf.data row at the same T (and the median of the same-round ratios,
    "paired"), and for the autotune rows the % of their ceiling (the ceiling method's
    median 1-thread rate x T; per CPU: its images per CPU-second).
    """
    by: dict[tuple[str, int], list[dict]] = {}
    for p in points:
        by.setdefault((p["method"], p["threads"]), []).append(p)

    def med(key, fn=_rate):
        pts = by.get(key) or []
        return statistics.median(fn(p) for p in pts) if pts else None

    def paired(a_key, b_key, fn=_rate):
        b = {p["round"]: p for p in by.get(b_key) or []}
        ratios = [fn(p) / fn(b[p["round"]]) for p in by.get(a_key) or []
                  if p["round"] in b and fn(b[p["round"]]) > 0]
        return statistics.median(ratios) if ratios else None

    rows = []
    for t in threads:
        for method in METHODS:
            key = (method, 1 if method in ONE_THREAD else t)
            pts = by.get(key) or []
            if not pts or (method == "naive" and t != 1):
                continue
            scale = t if method in ("ceiling", "ceiling-exact") else 1
            r = med(key) * scale
            row = {"method": method, "label": METHODS[method][0], "threads": t,
                   "measured_threads": key[1], "rounds": len(pts),
                   "images_per_s": r, "best_images_per_s": max(_rate(p) for p in pts) * scale,
                   "images_per_cpu_s": med(key, _per_cpu),
                   "cpu_share": statistics.median(p["cpu_seconds"] / (p["seconds"] * key[1])
                                                  for p in pts)}
            pipeline = method not in ONE_THREAD + MANY_THREADS
            for tf_method in ("tf.data", "tf.data-ifast"):
                tfr = med((tf_method, t))
                row[f"x_{tf_method}"] = r / tfr if tfr and pipeline else None
                row[f"paired_x_{tf_method}"] = paired(key, (tf_method, t)) if pipeline else None
                tfe = med((tf_method, t), _per_cpu)
                row[f"eff_x_{tf_method}"] = (row["images_per_cpu_s"] / tfe
                                             if tfe and pipeline else None)
            ceil_key = (CEILING_OF.get(method), 1)
            ceil = med(ceil_key)
            row["ceiling_images_per_s"] = ceil * t if ceil else None
            row["pct_ceiling"] = 100 * r / (ceil * t) if ceil else None
            ceil_eff = med(ceil_key, _per_cpu)
            row["eff_pct_ceiling"] = 100 * row["images_per_cpu_s"] / ceil_eff if ceil_eff else None
            # At T > 1, also against the same decode + resize run on T threads at once:
            # the limit this machine really has (1 thread x T assumes perfect scaling).
            at_t = (f"{CEILING_OF[method]}@T", t) if method in CEILING_OF and t > 1 else None
            dec_t = med(at_t) if at_t else None
            row["pct_decoder_at_t"] = 100 * r / dec_t if dec_t else None
            pair = paired(key, at_t) if at_t else None
            row["paired_pct_decoder_at_t"] = 100 * pair if pair else None
            dec_t_eff = med(at_t, _per_cpu) if at_t else None
            row["eff_pct_decoder_at_t"] = (100 * row["images_per_cpu_s"] / dec_t_eff
                                           if dec_t_eff else None)
            if method.startswith("ceiling"):
                if method in MANY_THREADS:  # against the 1-thread rate x T
                    one = med((method.replace("@T", ""), 1))
                    row["pct_one_thread_x_t"] = 100 * r / (one * t) if one else None
                row["decode_cpu_us"] = statistics.median(p["decode_cpu_us"] for p in pts)
                row["resize_flip_cpu_us"] = statistics.median(p["resize_flip_cpu_us"] for p in pts)
            rows.append(row)
    return rows


def _print_rows(head: list[str], body: list[list[str]]) -> None:
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
    print("  ".join("-" * w for w in widths))
    for b in body:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(b, widths))))


def print_table(rows: list[dict]) -> None:
    """The wall-clock table, then the per-CPU efficiency table, then the ceilings'
    decode / resize split."""
    if not rows:
        print("no measurements")
        return
    _print_rows(
        ["method", "threads", "images/s", "best", "CPU share", "x tf.data", "paired",
         "x tf.data defaults", "% of ceiling", "% of decoder on T"],
        [[r["label"], str(r["threads"]), _fmt(r["images_per_s"]), _fmt(r["best_images_per_s"]),
          _fmt(r["cpu_share"], ".2f"), _fmt(r["x_tf.data"], ".2f"),
          _fmt(r["paired_x_tf.data"], ".2f"), _fmt(r["x_tf.data-ifast"], ".2f"),
          _fmt(r["pct_ceiling"], ".0f"), _fmt(r.get("pct_decoder_at_t"), ".0f")] for r in rows])
    print()
    print("Per-CPU efficiency (images per CPU-second; insensitive to other load):")
    _print_rows(
        ["method", "threads", "img/CPU-s", "x tf.data", "x tf.data defaults", "% of ceiling",
         "% of decoder on T"],
        [[r["label"], str(r["threads"]), _fmt(r["images_per_cpu_s"]), _fmt(r["eff_x_tf.data"], ".2f"),
          _fmt(r["eff_x_tf.data-ifast"], ".2f"), _fmt(r["eff_pct_ceiling"], ".0f"),
          _fmt(r.get("eff_pct_decoder_at_t"), ".0f")] for r in rows])
    ceil = [r for r in rows if r["method"] in ("ceiling", "ceiling-exact")
            and r["threads"] == rows[0]["threads"]]
    if ceil:
        print()
        print("Ceilings, per image on 1 thread (CPU time, median over rounds):")
        _print_rows(["ceiling", "region decode us", "resize + flip us", "images/s", "img/CPU-s"],
                    [[r["method"], _fmt(r["decode_cpu_us"]), _fmt(r["resize_flip_cpu_us"]),
                      _fmt(r["images_per_s"] / r["threads"]), _fmt(r["images_per_cpu_s"])]
                     for r in ceil])
    scaling = [r for r in rows if r["method"] in MANY_THREADS]
    if scaling:
        print()
        print("Decoder scaling: decode + resize measured on T threads against 1 thread x T:")
        _print_rows(["method", "threads", "images/s", "% of 1 thread x T", "img/CPU-s"],
                    [[r["method"], str(r["threads"]), _fmt(r["images_per_s"]),
                      _fmt(r.get("pct_one_thread_x_t")), _fmt(r["images_per_cpu_s"])]
                     for r in scaling])


def check_goals(rows: list[dict]) -> list[dict]:
    """Each goal of issue 15 at each thread count: value (wall, and per CPU) and pass."""
    goals = []
    for r in rows:
        checks = []
        if r["method"] == "autotune-exact":
            checks.append(("equal work: autotune exact / tf.data (ISLOW)", "x_tf.data",
                           GOALS["equal_work"]))
        if r["method"] == "autotune":
            checks.append(("fast mode / tf.data (ISLOW)", "x_tf.data", GOALS["fast"]))
            checks.append(("fast mode / tf.data defaults (IFAST)", "x_tf.data-ifast", GOALS["fast"]))
        if r["method"] in CEILING_OF:
            checks.append((f"{r['method']} / its ceiling", "pct_ceiling", 100 * GOALS["ceiling"]))
            if r.get("pct_decoder_at_t") is not None:
                checks.append((f"{r['method']} / its decode + resize measured on T threads "
                               "(the machine's own scaling, not 1 thread x T)", "pct_decoder_at_t",
                               100 * GOALS["ceiling"]))
        for what, key, goal in checks:
            v, eff = r.get(key), r.get("eff_" + key)
            goals.append({"goal": what, "threads": r["threads"], "target": goal, "wall": v,
                          "unit": "%" if key.startswith("pct") else "x",
                          "paired": r.get("paired_" + key), "per_cpu": eff,
                          "pass": None if v is None else v >= goal})
    return goals


def print_goals(goals: list[dict]) -> None:
    for g in goals:
        unit = g["unit"]
        if g["wall"] is None:
            print(f"threads={g['threads']}: {g['goal']}: not measured")
            continue
        parts = [f"wall {g['wall']:.2f}{unit} {'PASS' if g['pass'] else 'FAIL'}"]
        if g["paired"] is not None:
            parts.append(f"paired {g['paired']:.2f}")
        if g["per_cpu"] is not None:
            parts.append(f"per CPU {g['per_cpu']:.2f}{unit}")
        print(f"threads={g['threads']}: {g['goal']} (goal >= {g['target']:g}{unit}): "
              + "; ".join(parts))


def report(doc: dict) -> None:
    """Print everything the JSON ``doc`` holds: pixel errors, tables, goals."""
    if doc.get("pixel_errors"):
        print_pixel_errors(doc["pixel_errors"])
        print()
    rows = summarise(doc["points"], doc["settings"]["threads"])
    print_table(rows)
    print()
    print("images/s: median over rounds; best: best round; ratios use medians (paired: "
          "median of the same-round ratios). Ceiling: 1-thread region decode of the same "
          "boxes at the pipeline's scale and mode + the pipeline's resize and flip, x T. "
          "Decoder on T: the same decode + resize measured on T threads at once (what the "
          "machine gives that decoder, with no pipeline around it). "
          "CPU share: process CPU time / (wall x T); below ~0.9 other processes took part "
          "of the T CPUs.")
    print_goals(check_goals(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="ImageNet-layout JPEG folder (default: %(default)s)")
    ap.add_argument("--pack-dir", type=Path, default=None,
                    help="where the packed shards go (default: $AUTOTUNE_CACHE or "
                         "~/.cache/autotune, under bench/pipeline-<folder name>)")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--seconds", type=float, default=5.0, help="timed window per point (s)")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up per point (s)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all points")
    ap.add_argument("--batch", type=int, default=128, help="images per batch")
    ap.add_argument("--seed", type=int, default=0, help="seed of the crop boxes and orders")
    ap.add_argument("--methods", default=DEFAULT_METHODS,
                    help=f"subset of {','.join(METHODS)} (default: %(default)s)")
    ap.add_argument("--mae-images", type=int, default=1000,
                    help="images in the pixel-difference check (0: skip it)")
    ap.add_argument("--tf-python", default=None,
                    help="interpreter that has TensorFlow (default: this one)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin each point to T CPUs")
    ap.add_argument("--json", type=Path, default=None,
                    help="write every point, the pixel errors and the rows here")
    ap.add_argument("--table-from", type=Path, default=None,
                    help="print the tables of a --json file and exit")
    ap.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--boxes", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dump", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dump-count", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.threads = int(args.threads)
        _worker_main(args)
        return 0
    sys.path.insert(0, str(REPO))
    if args.table_from:
        report(json.loads(args.table_from.read_text()))
        return 0

    if args.pack_dir is None:
        from trainers.synthetic import default_cache_dir

        args.pack_dir = default_cache_dir() / "bench" / f"pipeline-{args.data.name}"
    threads = [int(t) for t in args.threads.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if not args.data.is_dir():
        print(f"data folder {args.data} does not exist", file=sys.stderr)
        return 2
    started = time.time()
    ensure_packed(args.data, args.pack_dir)
    tf_python = args.tf_python or sys.executable
    if any(METHODS[m][1] == "tf.data" for m in methods) and not _tf_available(tf_python):
        print(TF_INSTALL_HINT.format(python=tf_python))
        methods = [m for m in methods if METHODS[m][1] != "tf.data"]
        tf_python = None
    entries = make_boxes(args.data, args.seed)
    box_info = boxes_summary(entries)
    tmp = tempfile.TemporaryDirectory()
    args.boxes = Path(tmp.name) / "boxes.json"
    args.boxes.write_text(json.dumps(entries))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load0 = os.getloadavg()[0]
    print(f"{cores} CPUs usable; load average {load0:.2f} at start; {args.repeats} rounds x "
          f"({args.warmup:g} s warm-up + {args.seconds:g} s) per point; batch {args.batch}; "
          f"each point pinned to T CPUs: {args.pin}")
    from trainers.preprocess import decoder_description

    print(f"autotune training decode: {decoder_description()}")
    print(f"crop boxes: {box_info['count']} (seed {args.seed}, mean area "
          f"{box_info['mean_area_fraction']:.2f} of the image, {box_info['flipped']} flipped; "
          f"fast mode decodes {box_info['fast_mode_dct_scaled']} of them DCT-scaled), the same "
          f"for every method; sha256 {box_info['sha256'][:16]}")
    pixel = None
    if args.mae_images > 0:
        t0 = time.perf_counter()
        pixel = pixel_errors(entries, tf_python if any(METHODS[m][1] == "tf.data" for m in methods)
                             else None, args)
        print_pixel_errors(pixel)
        print(f"(pixel check: {time.perf_counter() - t0:.0f} s)")
    print()
    plan = [(m, t) for t in threads for m in methods
            if m not in ONE_THREAD and not (m in MANY_THREADS and t < 2)]
    plan = [(m, 1) for m in methods if m in ONE_THREAD] + plan
    points: list[dict] = []
    for rnd in range(args.repeats):
        # Rotate the order every round, so no method always follows the same one.
        k = rnd % len(plan)
        for m, t in plan[k:] + plan[:k]:
            p = _run_point(m, t, args, tf_python if METHODS[m][1] == "tf.data" else sys.executable)
            if p is not None:
                p = {"round": rnd + 1, "method": m, "threads": t, **p,
                     "images_per_s": _rate(p), "images_per_cpu_s": _per_cpu(p)}
                points.append(p)
                print(f"  round {rnd + 1}: {m:14s} x{t}: {p['images_per_s']:7.0f} images/s "
                      f"({p['images_per_cpu_s']:.0f} per CPU-s)", flush=True)
    load1 = os.getloadavg()[0]
    print(f"load average {load1:.2f} at end; {time.time() - started:.0f} s in all")
    print()
    doc = {
        "command": " ".join([Path(sys.executable).name, "bench/pipeline.py", *(argv or sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": cores, "platform": platform.platform(), "processor": platform.processor(),
                    "load_average_start": load0, "load_average_end": load1},
        "decoder": decoder_description(),
        "settings": {"threads": threads, "methods": methods, "seconds": args.seconds,
                     "warmup": args.warmup, "repeats": args.repeats, "batch": args.batch,
                     "image_size": IMAGE_SIZE, "min_scale": MIN_SCALE, "seed": args.seed,
                     "pinned": args.pin, "data": args.data.name},
        "boxes": box_info,
        "pixel_errors": pixel,
        "points": points,
    }
    report(doc)
    if args.json:
        rows = summarise(points, threads)
        doc["rows"] = rows
        doc["goals"] = check_goals(rows)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
