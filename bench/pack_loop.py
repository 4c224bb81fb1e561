"""The pack's per-member loop alone (issue 13): CPU microseconds per image of
``trainers.pack._write_members`` (read, check, serialize, write one shard) with the C
loop of the extension (``_jpegcrop.pack_files``, a batch of files per call) and
without it (the general path: ``_read_image_file``, ``packed_bytes``,
``example_record``), on the same files, one thread, in this process, best of
``--repeats``.

    python bench/pack_loop.py                        # imagenet-samples + 6,000 small files
    python bench/pack_loop.py --json bench/results/pack_loop.json

Beside the loop, its parts on the same files (best of ``--repeats`` too): ``check_us``,
``trainers.pack.packed_bytes`` on the bytes already in memory (the check: the only
per-image term of bench/pack_scale.py's bound, timed there the same way), and
``write_us``, ``ArrayRecordWriter.write`` of the finished records with the pack's
options (``group_size:1,uncompressed``: one Riegeli chunk per record, which the
trainer's reader needs) and the writer's close. ``rest_us`` is the C loop less both:
opening and reading each file, building its record, the loop itself. And the check
in one forked process per core at once (``check_us_on_every_core_at_once``): the
bound takes one core's check times the cores, which holds only if they scale.

Sets: the 1,000 full-size ``imagenet-samples`` of ``../shared/data`` and the first
``--small`` files of bench/pack_scale.py's ``synthetic-100000`` set (made there once
if missing). Both paths write the same shard (checked here, byte for byte). The shard
goes to a temporary folder on the cache's disk; the page cache is warm (every file is
read once first). CPU time is ``time.process_time`` (user + system of this process);
``fast_system_us`` is the system part of the C loop's best pass (``getrusage``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import pack_scale  # noqa: E402
from trainers import pack, preprocess  # noqa: E402


def loop_us(files: list[str], path: Path, fast: bool) -> tuple[float, float, bytes]:
    """CPU us per image of one ``_write_members`` pass over ``files`` into ``path``,
    the part of it in the kernel (system time, us per image), and the shard's bytes."""
    ext = preprocess._jpegcrop
    if not fast:
        preprocess._jpegcrop = types.SimpleNamespace(check=ext.check, decode_crop=ext.decode_crop)
    try:
        task = pack._ShardTask(path, [(f, i % 1000) for i, f in enumerate(files)], None,
                               None, 90, path.parent, "bench")
        sh = pack._Shard(path, eager=True)
        t, t0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
        pack._write_members(sh, task, pack._ThreadTally(None, None, 0, 0))
        sh.finish()
        sys_s = resource.getrusage(resource.RUSAGE_SELF).ru_stime - t0
        return ((time.process_time() - t) / len(files) * 1e6, sys_s / len(files) * 1e6,
                path.read_bytes())
    finally:
        preprocess._jpegcrop = ext


def check_us(data: list[bytes]) -> float:
    """CPU us per image of ``packed_bytes`` (no resize) on ``data``, in memory."""
    t = time.process_time()
    for d in data:
        pack.packed_bytes(d, None)
    return (time.process_time() - t) / len(data) * 1e6


_DATA: list[bytes] = []


def _best_check_us(repeats: int) -> float:
    return min(check_us(_DATA) for _ in range(repeats))


def check_us_at_once(data: list[bytes], processes: int, repeats: int) -> list[float]:
    """:func:`check_us` (best of ``repeats``) in ``processes`` forked processes at
    once, one figure each: whether the cores scale (the bound multiplies one core's
    check by the core count)."""
    import multiprocessing as mp

    global _DATA
    _DATA = data
    with mp.get_context("fork").Pool(processes) as pool:
        return pool.map(_best_check_us, [repeats] * processes)


def write_us(records: list[bytes], path: Path) -> float:
    """CPU us per record of writing ``records`` to a new shard at ``path`` with the
    pack's writer options, the close included."""
    from array_record.python.array_record_module import ArrayRecordWriter

    t = time.process_time()
    writer = ArrayRecordWriter(str(path), "group_size:1,uncompressed")
    for r in records:
        writer.write(r)
    writer.close()
    return (time.process_time() - t) / len(records) * 1e6


def measure(name: str, files: list[str], repeats: int, work: Path) -> dict:
    data = [Path(f).read_bytes() for f in files]
    records = [pack.example_record(d, i % 1000, Path(f).name)
               for i, (f, d) in enumerate(zip(files, data))]
    best = {"fast": float("inf"), "general": float("inf"), "check": float("inf"),
            "write": float("inf")}
    shards, fast_sys = {}, 0.0
    for _ in range(repeats):
        for mode in ("fast", "general"):
            us, sys_us, shards[mode] = loop_us(files, work / f"{name}-{mode}.array_record",
                                               mode == "fast")
            if mode == "fast" and us < best[mode]:
                fast_sys = sys_us
            best[mode] = min(best[mode], us)
        best["check"] = min(best["check"], check_us(data))
        best["write"] = min(best["write"], write_us(records, work / f"{name}-write.array_record"))
    cores = len(os.sched_getaffinity(0))
    at_once = check_us_at_once(data, cores, repeats) if cores > 1 else []
    if shards["fast"] != shards["general"]:
        raise SystemExit(f"{name}: the two paths wrote different shards")
    if (work / f"{name}-write.array_record").read_bytes() != shards["fast"]:
        raise SystemExit(f"{name}: the writer alone wrote another shard than the loop")
    row = {"images": len(files), "mean_bytes": sum(len(d) for d in data) / len(data),
           "fast_us": best["fast"], "fast_system_us": fast_sys, "general_us": best["general"],
           "fast_over_general": best["fast"] / best["general"],
           "check_us": best["check"], "write_us": best["write"],
           "rest_us": best["fast"] - best["check"] - best["write"],
           "check_over_fast": best["check"] / best["fast"],
           "check_us_on_every_core_at_once": at_once}
    print(f"{name:>24}: {len(files):6,} files of {row['mean_bytes'] / 1e3:6.1f} KB: fast "
          f"{row['fast_us']:8.1f} us, general {row['general_us']:8.1f} us per image "
          f"({row['fast_over_general']:.2f}x); of the fast loop: check {row['check_us']:.1f} us "
          f"({row['check_over_fast']:.2f}), writer {row['write_us']:.1f} us, the rest "
          f"{row['rest_us']:.1f} us; the check on {cores} cores at once: "
          f"{', '.join(f'{u:.1f}' for u in at_once) or '-'} us", flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=6000, help="small synthetic files")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the raw figures here")
    args = ap.parse_args(argv)
    if getattr(preprocess._jpegcrop, "pack_files", None) is None:
        raise SystemExit("trainers._jpegcrop (with pack_files) is not built")
    sets = {"imagenet-samples": sorted(str(p) for p in pack_scale.SAMPLES.glob("*/*"))}
    if args.small:
        root = pack_scale.make_synthetic(100_000, 80)
        sets["synthetic-100000-80px"] = sorted(str(p) for p in root.glob("*/*"))[:args.small]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="pack_loop-", dir=pack_scale.cache_root()) as tmp:
        for name, files in sets.items():
            rows[name] = measure(name, files, args.repeats, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": _dt.date.today().isoformat(), "machine": platform.platform(),
            "argv": sys.argv[1:], "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
