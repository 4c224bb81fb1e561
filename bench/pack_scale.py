"""Pack at scale (issue 13): pack images/s, MB/s and peak memory against the number of
images, the rate against what the hardware allows, and the time from ``autotune train
--auto`` start to the first training step.

    python bench/pack_scale.py                                   # 10k, 100k, 1M + samples (x1, x10)
    python bench/pack_scale.py --sizes 10000 100000 --json bench/results/pack_scale.json
    python bench/pack_scale.py --sizes 2000 --no-samples --no-first-step   # a smoke run
    python bench/pack_scale.py --sizes --samples-x 10 100 --no-first-step  # full size at 100k
    python bench/pack_scale.py --sizes --samples-x 100 --no-first-step --out-dir /dev/shm  # no disk writes

Data sets (generated once into ``$AUTOTUNE_CACHE/bench/pack_scale`` or
``~/.cache/autotune/bench/pack_scale``, never into the repository):

* ``synthetic-N``: N small JPEGs (``--side`` x 3/4 ``--side`` pixels, quality 90, smooth
  colour fields with noise, about 3 KB each) in 100 class folders ``n0000000x``; the
  bytes come from a pool of 2,000 distinct encoded images written round-robin, so the
  decode work per image is the same at every N.
* ``imagenet-samples``: the 1,000 full-size ILSVRC-2012 images of ``../shared/data``
  (one per class; average 468x401 pixels, 107 KB).
* ``imagenet-samples-x10``: the same 1,000 images under 10 names each (hard links, or
  copies where the cache is on another file system; 10,000 files in the same 1,000
  class folders), so that a full-size pack runs long enough for the command's fixed
  costs (start-up, listing, worker start, metadata) not to dominate, as they do for
  1,000 images.
* ``imagenet-samples-xK`` for each K of ``--samples-x`` (default 10): ``--samples-x 10
  100`` adds ``imagenet-samples-x100``, 100,000 full-size files (hard links: no space
  beyond the folders; its pack writes about 11 GB), the full-size rate at a scale where
  the fixed costs are about 1% of the time.

Before its packs every file of a set is read once (the page cache is warm for every
pack of it alike; without this the first pack of a set paid disk reads the second was
spared). With ``--cold`` the page cache is dropped before each pack instead (``sync``
and ``/proc/sys/vm/drop_caches``; Linux, as root): every file is read from the disk,
as in a first pack of a downloaded data set. Each pack is ``autotune pack --data D --out O --shards S`` in a child process (a fresh
output folder, on the cache's disk unless ``--out-dir`` says where, e.g. ``/dev/shm``; originals stored, no resize; the default workers: one process per
usable core; with ``--compare-workers`` the sets of at most 100k images are packed a
second time with threads only, ``--workers 0``), with:

* pack images/s and MB/s: images and input bytes (``pack.json``) over the child's wall
  time (process start to exit: scan, fingerprint, verify, write, metadata);
* the machine's CPU seconds in each state over the pack (``machine_cpu_s``: user,
  system, idle, iowait, steal; all cores), so that time spent waiting on the disk is
  seen apart from time spent computing;
* peak RSS: the largest sum of the resident set sizes of the child and its
  descendants (worker processes), sampled every 50 ms with psutil (the figure the goal
  uses). The child's ``ru_maxrss`` from ``os.wait4`` is kept too, but it is no
  measure of the pack: Linux carries a process's peak across ``exec``, so it starts at
  this script's own resident size when it forks the child (about 480 MiB once the 1M
  set is listed here);
* the bound: ``min(check rate x usable cores, sequential read rate)``, where the check
  rate is what one core does of the pack's per-image work (``trainers.pack.packed_bytes``
  on 500 of the set's files already in memory: the integrity check, ``_jpegcrop.check``
  when the extension is built, else a full decode; ``bench/jpeg_check.py``) and the
  sequential read rate is the disk probe's 1 MiB sequential reads with the page cache
  bypassed (``probes.disk.probe_disk``) divided by the mean file size. Small files are
  not read sequentially and generated files sit in the page cache, so the disk term is
  an upper bound of what the pack could get from this disk, not a measurement of it.

Time to first step: ``autotune train --auto --data D`` in a child process with an empty
``AUTOTUNE_CACHE`` (so it probes, plans and packs from scratch) and an empty results
folder; the first ``StepReport`` line in the run's ``metrics.jsonl`` gives the time of
its log step, and ``step - 1`` mean step times are taken off it. The child is stopped
with SIGTERM after that line (the loop stops at the next log step).

Goals (issue 13): time linear in N (1M within 12x of 100k), peak RSS flat (1M within
1.5x of 10k), pack rate at least 80% of the bound. The script prints each and whether it
is met; it never fails on a figure.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "imagenet-samples"
POOL = 2000
CLASSES = 100


def cache_root() -> Path:
    env = os.environ.get("AUTOTUNE_CACHE", "").strip()
    return (Path(env) if env else Path.home() / ".cache" / "autotune") / "bench" / "pack_scale"


def _pool(side: int, seed: int = 0) -> list[bytes]:
    import simplejpeg

    rng = np.random.default_rng(seed)
    h, w = side * 3 // 4, side
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(POOL):
        a, b, c = rng.uniform(0.02, 0.2, 3)
        base = np.stack([np.sin(a * xx + b * yy + k * c * 7) for k in range(3)], -1)
        img = 127 + 100 * base + rng.normal(0, 12, (h, w, 3))
        out.append(simplejpeg.encode_jpeg(np.clip(img, 0, 255).astype(np.uint8), quality=90))
    return out


def make_synthetic(n: int, side: int) -> Path:
    """``synthetic-N``: N JPEGs in 100 class folders, generated once (a ``.complete``
    marker is written last; an interrupted generation is redone)."""
    root = cache_root() / f"synthetic-{n}-{side}px"
    if (root / ".complete").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    pool = _pool(side)
    t = time.perf_counter()
    for c in range(CLASSES):
        (root / f"n{c:08d}").mkdir(parents=True)
    for i in range(n):
        c = i % CLASSES
        with open(root / f"n{c:08d}" / f"n{c:08d}_{i:07d}.JPEG", "wb") as f:
            f.write(pool[i % POOL])
    (root / ".complete").write_text(f"{n}\n")
    print(f"generated {n:,} images in {time.perf_counter() - t:.0f} s: {root}", flush=True)
    return root


def make_samples_x(k: int) -> Path:
    """``imagenet-samples-xK``: every sample file under ``k`` names in its class folder
    (``<stem>_r<j><suffix>``, j < k: hard links; copies across file systems), made
    once (a ``.complete`` marker holding ``k`` is written last; an interrupted or
    different set is made again)."""
    root = cache_root() / f"imagenet-samples-x{k}"
    if k < 1:
        raise SystemExit(f"--samples-x {k}: the multiplier must be at least 1")
    marker = root / ".complete"
    if marker.is_file() and marker.read_text().strip() == str(k):
        return root
    shutil.rmtree(root, ignore_errors=True)
    for src in sorted(SAMPLES.glob("*/*")):
        if not src.is_file():
            continue
        d = root / src.parent.name
        d.mkdir(parents=True, exist_ok=True)
        for j in range(k):
            dst = d / f"{src.stem}_r{j}{src.suffix}"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
    (root / ".complete").write_text(f"{k}\n")
    return root


def _files(root: Path) -> list[Path]:
    from trainers import scan

    return [Path(p) for p, _ in scan.scan_class_folders(root, images_only=True)[1]]


def warm_page_cache(root: Path) -> dict:
    """Read every file of ``root`` once, so that every pack of it (default workers and
    threads only alike) finds the same page cache: the first pack of a set does not
    pay the disk reads the next one is spared. Returns the seconds and bytes read."""
    t, total = time.perf_counter(), 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                while chunk := f.read(1 << 20):
                    total += len(chunk)
    return {"seconds": time.perf_counter() - t, "bytes": total}


def check_rate(root: Path, n: int = 500) -> dict:
    """One core's images/s of ``trainers.pack.packed_bytes`` (no resize) on ``n`` of the
    set's files, read into memory first (best of 3)."""
    from trainers.pack import packed_bytes

    files = _files(root)
    step = max(1, len(files) // n)
    data = [p.read_bytes() for p in files[::step][:n]]
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for d in data:
            packed_bytes(d, None)
        best = min(best, time.perf_counter() - t)
    return {"images": len(data), "images_per_s": len(data) / best,
            "mean_bytes": float(np.mean([len(d) for d in data]))}


def sequential_read(root: Path, mean_bytes: float) -> dict:
    """The disk probe's sequential 1 MiB reads (page cache bypassed) under ``root``."""
    from probes.disk import probe_disk

    rep = probe_disk(root, record_bytes=max(4096, int(mean_bytes)), duration_s=2.0)
    mbs = rep.sequential.mb_per_s
    return {"method": rep.method, "mb_per_s": mbs, "images_per_s": mbs * 1e6 / mean_bytes}


def _watch(proc: subprocess.Popen, every: float = 0.05) -> tuple[int, int]:
    """``(largest RSS sum over proc and its descendants, proc's own ru_maxrss)`` in
    bytes, until ``proc`` exits (it is reaped here with ``os.wait4``, which gives that
    child's own peak: the largest single process of its tree that it waited for)."""
    top, maxrss = 0, 0
    try:
        ps = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        ps = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            maxrss = usage.ru_maxrss * 1024
            break
        total = 0
        try:
            for p in ([ps] + ps.children(recursive=True)) if ps else []:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        top = max(top, total)
        time.sleep(every)
    return top, maxrss


def drop_page_cache() -> None:
    """Write back what is dirty and empty the page cache (``sync``; ``3`` to
    ``/proc/sys/vm/drop_caches``), so that the next pack reads its files from the
    disk. Linux, as root.

    Raises:
      SystemExit: the page cache cannot be dropped here (one line saying why).
    """
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise SystemExit(f"--cold: cannot drop the page cache ({exc.strerror or exc}); "
                         f"it needs Linux and root") from None


def run_pack(root: Path, shards: int, workdir: Path, workers: int | None = None,
             cold: bool = False) -> dict:
    """``autotune pack`` of ``root`` in a child process (``--workers workers`` when
    given, else the default; ``cold``: the page cache dropped first); figures from its
    ``pack.json``."""
    out = workdir / f"packed-{root.name}"
    shutil.rmtree(out, ignore_errors=True)
    if cold:
        drop_page_cache()
    cmd = [sys.executable, "-m", "autotune.cli", "pack", "--data", str(root), "--out", str(out),
           "--shards", str(shards), "--quiet"] + (
               [] if workers is None else ["--workers", str(workers)])
    before = psutil.cpu_times()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    rss_sum, maxrss = _watch(proc)
    wall = time.perf_counter() - t
    after = psutil.cpu_times()
    text = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"pack of {root} failed ({proc.returncode}):\n{text[-2000:]}")
    summary = json.loads((out / "pack.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"data": str(root), "shards": shards, "wall_s": wall,
            "pack_s": summary.get("seconds"), "input_images": summary["input_images"],
            "packed": summary["packed"], "bytes_in": summary["bytes_in"],
            "images_per_s": summary["packed"] / wall, "mb_per_s": summary["bytes_in"] / 1e6 / wall,
            "peak_rss_sum_bytes": rss_sum, "child_ru_maxrss_bytes": maxrss,
            "workers": (summary.get("options") or {}).get("pack_workers"),
            "out": str(out), "cold": cold, "machine_cpu_s": _cpu_deltas(before, after)}


def _cpu_deltas(before, after) -> dict[str, float]:
    """Seconds of the machine's CPU time (all cores) in each state between two
    ``psutil.cpu_times()``: what the pack's wall time went to, its waits on the disk
    (``iowait``) and the hypervisor's share (``steal``) included."""
    return {k: round(getattr(after, k) - getattr(before, k), 2)
            for k in ("user", "system", "idle", "iowait", "steal") if hasattr(after, k)}


def first_step(root: Path, workdir: Path, timeout_s: float = 3600) -> dict:
    """Seconds from ``autotune train --auto --data root`` start to its first training
    step, probing and packing from scratch (empty cache and results folders)."""
    cache, results = workdir / "cache", workdir / "results"
    for p in (cache, results):
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True)
    env = dict(os.environ, AUTOTUNE_CACHE=str(cache), AUTOTUNE_RESULTS=str(results))
    cmd = [sys.executable, "-m", "autotune.cli", "train", "--auto", "--data", str(root),
           "--quiet", "--new-run"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    report = None
    try:
        while report is None and proc.poll() is None and time.perf_counter() - t0 < timeout_s:
            time.sleep(0.2)
            report = _first_report(results)
        t_seen = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
    if report is None:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise SystemExit(f"train --auto on {root} gave no step report:\n{err[-2000:]}")
    shutil.rmtree(cache, ignore_errors=True)
    before = (report["step"] - 1) * report["step_s"]
    return {"data": str(root), "report_step": report["step"], "step_s": report["step_s"],
            "seen_s": t_seen, "first_step_s": t_seen - before,
            "train_elapsed_at_report_s": report["elapsed_s"]}


def _first_report(results: Path) -> dict | None:
    for m in results.glob("*/metrics.jsonl"):
        for line in m.read_text().splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if d.get("kind") == "StepReport":
                return d
    return None


def goals(rows: dict[str, dict]) -> list[dict]:
    """The issue's three goals over the measured rows (keys ``synthetic-N``)."""
    out = []
    syn = {int(k.split("-")[1]): v for k, v in rows.items() if k.startswith("synthetic-")}
    if 100_000 in syn and 1_000_000 in syn:
        r = syn[1_000_000]["pack"]["wall_s"] / syn[100_000]["pack"]["wall_s"]
        out.append({"goal": "time 1M / time 100k <= 12", "value": r, "met": r <= 12})
    if 10_000 in syn and 1_000_000 in syn:
        r = (syn[1_000_000]["pack"]["peak_rss_sum_bytes"]
             / syn[10_000]["pack"]["peak_rss_sum_bytes"])
        out.append({"goal": "peak RSS 1M / 10k <= 1.5", "value": r, "met": r <= 1.5})
    for name, row in rows.items():
        b = row.get("bound_images_per_s")
        if b:
            r = row["pack"]["images_per_s"] / b
            out.append({"goal": f"{name}: pack rate / bound >= 0.8", "value": r, "met": r >= 0.8})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--side", type=int, default=80, help="synthetic image width, pixels")
    ap.add_argument("--no-samples", action="store_true", help="skip imagenet-samples")
    ap.add_argument("--samples-x", type=int, nargs="*", default=[10], metavar="K",
                    help="also pack imagenet-samples-xK (the 1,000 samples under K names "
                         "each: K x 1,000 full-size files) for each K; e.g. 10 100")
    ap.add_argument("--no-first-step", action="store_true", help="skip train --auto timing")
    ap.add_argument("--first-step-sizes", type=int, nargs="*", default=[10_000, 1_000_000])
    ap.add_argument("--compare-workers", action="store_true",
                    help="also pack each set of at most 100k images with threads only "
                         "(--workers 0), to compare with the default worker processes")
    ap.add_argument("--out-dir", help="write the packs under this folder (default: a "
                    "temporary folder in the cache, on the data's disk); e.g. /dev/shm "
                    "takes the disk's write path out of the figure")
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before each pack (Linux, root) instead of "
                         "reading the set into it first: packs of files read from the disk")
    ap.add_argument("--json", help="write the raw figures here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    cores = len(os.sched_getaffinity(0))
    sets = [(f"synthetic-{n}", make_synthetic(n, args.side), n) for n in args.sizes]
    if not args.no_samples:
        sets.append(("imagenet-samples", SAMPLES, 1000))
        for k in args.samples_x:
            sets.append((f"imagenet-samples-x{k}", make_samples_x(k), 1000 * k))
    rows: dict[str, dict] = {}
    out_root = Path(args.out_dir) if args.out_dir else cache_root()
    out_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pack_scale-", dir=out_root) as tmp:
        work = Path(tmp)
        for name, root, n in sets:
            warm = None if args.cold else warm_page_cache(root)
            chk = check_rate(root)
            seq = sequential_read(root, chk["mean_bytes"])
            row = {"warm_up": warm, "check": chk, "sequential": seq, "cores": cores,
                   "bound_images_per_s": min(chk["images_per_s"] * cores, seq["images_per_s"]),
                   "pack": run_pack(root, max(16, n // 20_000), work, cold=args.cold)}
            if (not args.no_first_step and name.startswith("synthetic-")
                    and n in args.first_step_sizes):
                row["first_step"] = first_step(root, work)
            if args.compare_workers and n <= 100_000:
                row["pack_threads"] = run_pack(root, max(16, n // 20_000), work, workers=0,
                                               cold=args.cold)
                t = row["pack_threads"]
                print(f"{name:>22}: threads only (--workers 0): {t['wall_s']:.1f} s, "
                      f"{t['images_per_s']:,.0f} images/s", flush=True)
            rows[name] = row
            p = row["pack"]
            print(f"{name:>22}: {p['packed']:>9,} images {p['wall_s']:8.1f} s "
                  f"{p['images_per_s']:8,.0f} images/s {p['mb_per_s']:6.1f} MB/s "
                  f"peak RSS {p['peak_rss_sum_bytes'] / 2**20:7.0f} MiB; bound "
                  f"{row['bound_images_per_s']:8,.0f} images/s (check {chk['images_per_s']:,.0f}"
                  f" x {cores} cores, sequential {seq['images_per_s']:,.0f}); iowait "
                  f"{p['machine_cpu_s'].get('iowait', 0):.1f} s"
                  + (f"; first step after {row['first_step']['first_step_s']:.0f} s"
                     if "first_step" in row else ""), flush=True)
    met = goals(rows)
    for g in met:
        print(f"  {g['goal']}: {g['value']:.2f} {'met' if g['met'] else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": _dt.date.today().isoformat(), "machine": platform.platform(),
            "cpu_count": os.cpu_count(), "usable_cores": cores, "argv": sys.argv[1:],
            "rows": rows, "goals": met}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
