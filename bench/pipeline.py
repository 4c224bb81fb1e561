"""Training input pipeline throughput against tf.data, a naive Pillow generator and
the raw JPEG decode ceiling (issue 5).

What is timed, in images/s delivered as ``uint8 [batch, 224, 224, 3]`` batches:

* ``autotune``: the project's real pipeline,
  ``trainers.input_pipeline.make_train_iterator`` with ``PipelineConfig(host_batch,
  augment=AugmentConfig(224), decode_threads=T, cache_decoded=False)`` over the data folder
  packed once with ``trainers.pack.pack_folder(..., PackOptions(num_shards=8))`` (no
  resize): ArrayRecord read, ``tf.train.Example`` parse, region decode of the crop
  (``trainers/_jpegcrop.c``; the whole image when the extension is not built: the
  table header says which), random-resized crop (area 0.08-1, aspect 3/4-4/3),
  bilinear resize to 224, flip, batch.
* ``tf.data``: the standard TensorFlow ImageNet training preprocessing (the fused
  ``tf.image.decode_and_crop_jpeg`` of the TF official ResNet input pipeline) with
  the same crop distribution: ``from_tensor_slices(paths).map(read_file +
  sample_distorted_bounding_box + decode_and_crop_jpeg + random_flip_left_right +
  resize(bilinear) + cast uint8, num_parallel_calls=AUTOTUNE).batch().prefetch(
  AUTOTUNE)``, ``tf.data.Options().threading.private_threadpool_size = T``,
  ``max_intra_op_parallelism = 1``, ``autotune.cpu_budget = T`` and TF's intra/inter
  op pools set to ``T`` threads. It reads the same images, from their files.
* ``naive``: a Python generator over a list of paths (a pandas DataFrame column if
  pandas is installed) doing ``Image.open(p).convert('RGB')``, the same crop box,
  ``Image.resize(box=..., BILINEAR)``, flip, ``np.stack`` -- single-threaded, as
  people write it.
* ``decode``: the raw decode ceiling, ``simplejpeg.decode_jpeg`` of the full image
  (same flags as the pipeline: ``fastdct``, ``fastupsample``; no crop, no resize,
  no batching) over the same JPEG bytes held in memory, measured on 1 thread and on
  T threads. The ceiling of a row with T threads is the 1-thread rate x T.
  The pipeline decodes only the crop's region (and at a reduced DCT scale when the
  crop allows it), so it can pass 100%.

Fairness and noise. Every point runs in its own fresh process pinned
(``sched_setaffinity``) to T CPUs, so no method gets more cores than its thread
count (TF's and Grain's helper threads included); each point has a warm-up and
then a timed window; the methods are interleaved round-robin and every round is
repeated, so load from other users of a shared machine hits all of them alike. The
table gives the median over rounds (and the best); the ratios use medians.
``img/CPU-s`` is images per second of process CPU time, which is much less
sensitive to other load than the wall rate.

TensorFlow is needed for the tf.data row only and is not a project dependency.
Install it (benchmark only), preferably outside the project venv so that
tensorflow-datasets keeps running without TF there::

    python -m venv /tmp/tfbench && /tmp/tfbench/bin/pip install tensorflow-cpu
    python bench/pipeline.py --tf-python /tmp/tfbench/bin/python

(``pip install tensorflow-cpu`` into the project venv works too; then no
``--tf-python`` is needed.) Without TensorFlow the tf.data row is skipped and the
script says how to install it.

Usage::

    python bench/pipeline.py [--data ../shared/data/imagenet-samples] [--threads 1,2]
        [--seconds 5] [--warmup 2] [--repeats 3] [--batch 128] [--tf-python PATH]
        [--pack-dir DIR] [--json out.json]

Goals (issue 5): >= 1.2x tf.data, >= 3x the naive generator, >= 85% of the ceiling.

This file imports only the standard library at the top: the tf.data worker runs it
under the TensorFlow interpreter, which need not have the project installed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "imagenet-samples"
IMAGE_SIZE = 224
MIN_SCALE = 0.08
RATIO = (3 / 4, 4 / 3)
GOALS = {"tf.data": 1.2, "naive": 3.0, "ceiling": 0.85}
TF_INSTALL_HINT = ("tf.data row skipped: TensorFlow is not importable by {python}. It is a "
                   "benchmark-only dependency: python -m venv /tmp/tfbench && "
                   "/tmp/tfbench/bin/pip install tensorflow-cpu, then rerun with "
                   "--tf-python /tmp/tfbench/bin/python (or pip install tensorflow-cpu "
                   "into this venv).")


# --------------------------------------------------------------------------- workers
# Each worker runs in its own process, pinned to `threads` CPUs, and prints one JSON
# line: {"images": n, "seconds": wall, "cpu_seconds": process CPU}.

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


def _files(data: str) -> list[str]:
    """The image files of ``<data>/<class>/*`` in sorted order (what pack_folder packs)."""
    root = Path(data)
    return [str(p) for d in sorted(root.iterdir()) if d.is_dir()
            for p in sorted(d.iterdir()) if p.is_file()]


def worker_autotune(args) -> dict:
    # parse_example imports tensorflow_datasets lazily, in whichever Grain thread
    # parses first; two threads doing that at once can deadlock on Python 3.11
    # (functools.cached_property's class-wide lock in etils' lazy modules against the
    # import lock; seen here with threads=2). Import it here, in the main thread.
    from tensorflow_datasets.proto import tf_example_pb2  # noqa: F401

    from trainers.input_pipeline import PipelineConfig, make_train_iterator, steps_per_epoch
    from trainers.pack import load_pack_result, shard_paths
    from trainers.options import AugmentConfig

    lengths = load_pack_result(args.pack_dir).split("train").shard_lengths
    paths = shard_paths(args.pack_dir, "train")
    cfg = PipelineConfig(host_batch=args.batch, augment=AugmentConfig(IMAGE_SIZE, min_scale=MIN_SCALE),
                         decode_threads=args.threads, cache_decoded=False, seed=args.seed)
    spe = steps_per_epoch(lengths, args.batch)
    it = make_train_iterator(paths, lengths, cfg, epochs=100_000, steps_per_epoch=spe)

    def next_batch():
        b = next(it)
        assert b["image"].shape == (args.batch, IMAGE_SIZE, IMAGE_SIZE, 3), b["image"].shape
        return len(b["image"])
    return _time_iterator(next_batch, args.warmup, args.seconds)


def worker_tfdata(args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    t = args.threads
    tf.config.threading.set_inter_op_parallelism_threads(t)
    tf.config.threading.set_intra_op_parallelism_threads(t)
    paths = _files(args.data)
    whole = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])

    def preprocess(path):
        # The TF official ResNet ImageNet preprocessing (_decode_crop_and_flip +
        # _resize_image), with the crop distribution of the other rows.
        buf = tf.io.read_file(path)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.io.extract_jpeg_shape(buf), bounding_boxes=whole, min_object_covered=MIN_SCALE,
            aspect_ratio_range=RATIO, area_range=(MIN_SCALE, 1.0), max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        oy, ox, _ = tf.unstack(begin)
        h, w, _ = tf.unstack(size)
        img = tf.image.decode_and_crop_jpeg(buf, tf.stack([oy, ox, h, w]), channels=3)
        img = tf.image.random_flip_left_right(img)
        img = tf.image.resize(img, [IMAGE_SIZE, IMAGE_SIZE], method="bilinear")
        return tf.cast(tf.clip_by_value(img, 0, 255), tf.uint8)

    options = tf.data.Options()
    options.threading.private_threadpool_size = t
    options.threading.max_intra_op_parallelism = 1
    options.autotune.cpu_budget = t
    ds = (tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths), seed=args.seed).repeat()
          .map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(args.batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
          .with_options(options))
    it = ds.as_numpy_iterator()

    def next_batch():
        b = next(it)
        assert b.shape == (args.batch, IMAGE_SIZE, IMAGE_SIZE, 3), b.shape
        return len(b)
    out = _time_iterator(next_batch, args.warmup, args.seconds)
    out["tensorflow"] = tf.__version__
    return out


def worker_naive(args) -> dict:
    import numpy as np
    from PIL import Image

    from trainers.preprocess import random_resized_crop_box

    paths = _files(args.data)
    try:  # "a DataFrame of paths", as people do; a plain list without pandas.
        import pandas as pd

        paths = pd.DataFrame({"path": paths})["path"]
    except ImportError:
        pass

    def generator():
        rng = np.random.default_rng(args.seed)
        while True:
            for p in paths:
                img = Image.open(p).convert("RGB")
                top, left, ch, cw = random_resized_crop_box(img.height, img.width, rng,
                                                            scale=(MIN_SCALE, 1.0), ratio=RATIO)
                img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR,
                                 box=(left, top, left + cw, top + ch))
                if rng.random() < 0.5:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
                yield np.asarray(img)

    gen = generator()

    def next_batch():
        b = np.stack([next(gen) for _ in range(args.batch)])
        return len(b)
    return _time_iterator(next_batch, args.warmup, args.seconds)


def worker_decode(args) -> dict:
    """Raw full-size simplejpeg decodes by ``args.threads`` threads over the packed JPEG
    bytes in memory (each thread cycles through its own share)."""
    import threading

    import simplejpeg

    from trainers.input_pipeline import parse_example
    from trainers.pack import shard_paths
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    src = ArrayRecordDataSource(shard_paths(args.pack_dir, "train"))
    datas = [parse_example(r)[0] for r in src.__getitems__(list(range(len(src))))]
    stop, counts = threading.Event(), [0] * args.threads
    go = threading.Barrier(args.threads + 1)

    def work(w):
        i = w
        go.wait()
        while not stop.is_set():
            simplejpeg.decode_jpeg(datas[i % len(datas)], colorspace="RGB", fastdct=True,
                                   fastupsample=True)
            counts[w] += 1
            i += args.threads
    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(args.threads)]
    for th in threads:
        th.start()
    go.wait()
    time.sleep(args.warmup)
    n0, c0, t0 = sum(counts), time.process_time(), time.perf_counter()
    time.sleep(args.seconds)
    n1, c1, t1 = sum(counts), time.process_time(), time.perf_counter()
    stop.set()
    for th in threads:
        th.join()
    return {"images": n1 - n0, "seconds": t1 - t0, "cpu_seconds": c1 - c0}


WORKERS = {"autotune": worker_autotune, "tf.data": worker_tfdata, "naive": worker_naive,
           "decode": worker_decode}


def _worker_main(args) -> None:
    cpus = _pin(args.threads) if args.pin else []
    out = WORKERS[args.worker](args)
    out["cpus"] = cpus
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------ orchestrator

def _run_point(method: str, threads: int, args, python: str) -> dict | None:
    """One measurement in a fresh pinned process; None (and a message) on failure."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", method, "--threads", str(threads),
           "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--data", str(args.data), "--pack-dir", str(args.pack_dir), "--seed", str(args.seed)]
    if not args.pin:
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
    reuse it (``pack_folder`` returns an existing identical pack as is)."""
    from trainers.pack import pack_folder
    from trainers.options import PackOptions

    t0 = time.perf_counter()
    res = pack_folder(data, pack_dir, PackOptions(num_shards=8))
    print(f"packed data: {pack_dir} ({res.packed} images, {res.skipped} skipped, "
          f"{res.bytes_out / 1e6:.0f} MB; {time.perf_counter() - t0:.1f} s)")
    return pack_dir


def _fmt(x: float | None, spec: str = ".0f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def summarise(results: dict[tuple[str, int], list[dict]], threads: list[int]) -> list[dict]:
    """Rows of the table from the raw points.

    Per row: median and best images/s over rounds, median images per CPU-second and
    CPU share (process CPU / (wall x T): 1.0 = all T CPUs busy), and the ratios of the
    median rates to tf.data at the same T, to the (single-threaded) naive generator
    and to the ceiling (1-thread decode rate x T). The ``eff_`` ratios compare images
    per CPU-second instead (the ceiling's: 1-thread decodes per CPU-second), which
    equal the wall ratios when every method keeps its T CPUs busy and barely move
    with load from other processes.
    """
    def rate(p):
        return p["images"] / p["seconds"]

    def per_cpu(p):
        return p["images"] / p["cpu_seconds"] if p["cpu_seconds"] > 0 else float("nan")

    def med(key, fn=rate):
        pts = results.get(key) or []
        return statistics.median(fn(p) for p in pts) if pts else None

    def paired(method, t, fn=rate):
        """Median over rounds of method / tf.data within the same round: robust to
        the machine getting faster or slower between rounds."""
        a, b = results.get((method, t)) or [], results.get(("tf.data", t)) or []
        ratios = [fn(x) / fn(y) for x, y in zip(a, b) if fn(y) > 0]
        return statistics.median(ratios) if ratios else None

    rows = []
    naive, naive_eff = med(("naive", 1)), med(("naive", 1), per_cpu)
    dec1, dec1_eff = med(("decode", 1)), med(("decode", 1), per_cpu)
    for t in threads:
        tfr, tf_eff = med(("tf.data", t)), med(("tf.data", t), per_cpu)
        ceiling = dec1 * t if dec1 else None
        for method in ("autotune", "tf.data", "naive", "decode"):
            pts = results.get((method, t)) or []
            if not pts:
                continue
            r, eff = med((method, t)), med((method, t), per_cpu)
            rows.append({
                "method": method if method != "decode" else "decode ceiling (measured)",
                "threads": t, "images_per_s": r, "best_images_per_s": max(rate(p) for p in pts),
                "images_per_cpu_s": eff, "rounds": len(pts),
                "cpu_share": statistics.median(p["cpu_seconds"] / (p["seconds"] * t) for p in pts),
                "x_tfdata": r / tfr if tfr else None, "x_naive": r / naive if naive else None,
                "paired_x_tfdata": paired(method, t), "paired_eff_x_tfdata": paired(method, t, per_cpu),
                "pct_ceiling": 100 * r / ceiling if ceiling else None,
                "ceiling_images_per_s": ceiling,
                "eff_x_tfdata": eff / tf_eff if tf_eff else None,
                "eff_x_naive": eff / naive_eff if naive_eff else None,
                "eff_pct_ceiling": 100 * eff / dec1_eff if dec1_eff else None})
    return rows


def _print_rows(head: list[str], body: list[list[str]]) -> None:
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
    print("  ".join("-" * w for w in widths))
    for b in body:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(b, widths))))


def print_table(rows: list[dict]) -> None:
    """The wall-clock table, then the per-CPU efficiency table."""
    if not rows:
        print("no measurements")
        return
    _print_rows(
        ["method", "threads", "images/s", "best", "CPU share", "x tf.data", "x naive",
         "% of ceiling", "ceiling"],
        [[r["method"], str(r["threads"]), _fmt(r["images_per_s"]), _fmt(r["best_images_per_s"]),
          _fmt(r["cpu_share"], ".2f"), _fmt(r["x_tfdata"], ".2f"), _fmt(r["x_naive"], ".2f"),
          _fmt(r["pct_ceiling"], ".0f"), _fmt(r["ceiling_images_per_s"])] for r in rows])
    print()
    print("Per-CPU efficiency (images per CPU-second; insensitive to other load; ratios of "
          "img/CPU-s, so x naive is per CPU, not x T):")
    _print_rows(
        ["method", "threads", "img/CPU-s", "x tf.data", "x naive", "% of 1-thread decode"],
        [[r["method"], str(r["threads"]), _fmt(r["images_per_cpu_s"]), _fmt(r["eff_x_tfdata"], ".2f"),
          _fmt(r["eff_x_naive"], ".2f"), _fmt(r["eff_pct_ceiling"], ".0f")] for r in rows])


def check_goals(rows: list[dict]) -> list[str]:
    """One line per goal and thread count: the wall figure, the per-CPU figure, and
    PASS/FAIL of each."""
    lines = []
    for r in rows:
        if r["method"] != "autotune":
            continue
        if r.get("paired_x_tfdata") is not None:
            lines.append(f"threads={r['threads']}: x tf.data paired within rounds (median of "
                         f"{r['rounds']} same-round ratios): wall {r['paired_x_tfdata']:.2f}, "
                         f"per CPU {r['paired_eff_x_tfdata']:.2f}")
        for key, goal, label in (("x_tfdata", GOALS["tf.data"], "x tf.data"),
                                 ("x_naive", GOALS["naive"], "x naive"),
                                 ("pct_ceiling", 100 * GOALS["ceiling"], "% of ceiling")):
            parts = []
            for k, what in ((key, "wall"), ("eff_" + key, "per CPU")):
                v = r[k]
                if k == "eff_x_naive":  # the naive generator uses one CPU whatever T is
                    v = v * r["threads"] if v is not None else None
                    what = "per CPU x T"
                parts.append(f"{what} {v:.2f} {'PASS' if v >= goal else 'FAIL'}" if v is not None
                             else f"{what}: not measured")
            lines.append(f"threads={r['threads']}: {label} (goal >= {goal:g}): " + "; ".join(parts))
    return lines


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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="autotune,tf.data,naive,decode",
                    help="subset of autotune,tf.data,naive,decode")
    ap.add_argument("--tf-python", default=None,
                    help="interpreter that has TensorFlow (default: this one)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin each point to T CPUs")
    ap.add_argument("--json", type=Path, default=None, help="also write the points and rows here")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.threads = int(args.threads)
        _worker_main(args)
        return 0

    if args.pack_dir is None:
        sys.path.insert(0, str(REPO))
        from trainers.synthetic import default_cache_dir

        args.pack_dir = default_cache_dir() / "bench" / f"pipeline-{args.data.name}"
    threads = [int(t) for t in args.threads.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(WORKERS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; choose from {sorted(WORKERS)}")
    if not args.data.is_dir():
        print(f"data folder {args.data} does not exist", file=sys.stderr)
        return 2
    ensure_packed(args.data, args.pack_dir)
    tf_python = args.tf_python or sys.executable
    if "tf.data" in methods and not _tf_available(tf_python):
        print(TF_INSTALL_HINT.format(python=tf_python))
        methods.remove("tf.data")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cores} CPUs usable; load average {os.getloadavg()[0]:.2f} at start; "
          f"{args.repeats} rounds x ({args.warmup:g} s warm-up + {args.seconds:g} s) per point; "
          f"batch {args.batch}; each point pinned to T CPUs: {args.pin}")
    from trainers.preprocess import decoder_description
    print(f"autotune training decode: {decoder_description()}")
    points = [(m, t) for t in threads for m in methods if not (m == "naive" and t != 1)]
    for m in ("decode", "naive"):  # the ceiling and x naive need their 1-thread rates
        if m in methods and 1 not in threads:
            points.insert(0, (m, 1))
    results: dict[tuple[str, int], list[dict]] = {}
    for rnd in range(args.repeats):
        # Rotate the order every round, so no method always follows the same one.
        k = rnd % len(points)
        for m, t in points[k:] + points[:k]:
            p = _run_point(m, t, args, tf_python if m == "tf.data" else sys.executable)
            if p is not None:
                results.setdefault((m, t), []).append(p)
                print(f"  round {rnd + 1}: {m:8s} x{t}: {p['images'] / p['seconds']:7.0f} images/s "
                      f"({p['images'] / max(p['cpu_seconds'], 1e-9):.0f} per CPU-s)", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    rows = summarise(results, threads)
    print()
    print_table(rows)
    print()
    print("images/s: median over rounds; best: best round; ratios use medians (paired: "
          "median of the same-round ratios). Ceiling: "
          "1-thread full-size simplejpeg decode (fastdct, fastupsample) x T. CPU share: process "
          "CPU time / (wall x T); below ~0.9 other processes took part of the T CPUs.")
    for line in check_goals(rows):
        print(line)
    if args.json:
        args.json.write_text(json.dumps({
            "points": {f"{m}@{t}": v for (m, t), v in results.items()}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
