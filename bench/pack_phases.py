"""A pack's steps before its first shard is written (issue 13): wall seconds of the
listing (``trainers.scan.scan_class_folders``), the fingerprint (``_fingerprint``:
every file stat'ed, by the worker processes) and the assignment of members to shards
(``_split_plans``), each the best of ``--repeats`` runs of ``pack_folder`` in this
process with one worker process a usable core (``autotune pack``'s default), stopped
where the shards would start (``_Workers.run_shards``). These steps
come before any worker writes, so on N files they are the pack's fixed start.

    python bench/pack_phases.py                        # the 1M synthetic set
    python bench/pack_phases.py --size 100000 --json bench/results/pack_phases.json

The set is bench/pack_scale.py's ``synthetic-N`` (made there once if missing); the
page cache is warm (the set is read first). The output folder is a temporary one on
the cache's disk, deleted after each run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import pack_scale  # noqa: E402
from trainers import pack, scan  # noqa: E402
from trainers.options import PackOptions  # noqa: E402

STEPS = {"list_s": (scan, "scan_class_folders"), "fingerprint_s": (pack, "_fingerprint"),
         "assign_s": (pack, "_split_plans")}


class _Stop(Exception):
    """Raised where the shards would start."""


def one_run(root: Path, work: Path, shards: int, workers: int) -> dict:
    """Seconds of each step of one pack of ``root`` with ``workers`` worker processes,
    stopped before its shards."""
    times: dict[str, float] = {}
    saved = [(mod, name, getattr(mod, name)) for mod, name in STEPS.values()]

    def timed(key, fn):
        def run(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[key] = time.perf_counter() - t
        return run

    def stop(*a, **k):
        raise _Stop

    real_run = pack._Workers.run_shards
    try:
        for key, (mod, name) in STEPS.items():
            setattr(mod, name, timed(key, getattr(mod, name)))
        pack._Workers.run_shards = stop
        out = work / "packed"
        t = time.perf_counter()
        try:
            pack.pack_folder(root, out, PackOptions(num_shards=shards, pack_workers=workers))
        except _Stop:
            pass
        times["until_shards_s"] = time.perf_counter() - t
        shutil.rmtree(out, ignore_errors=True)
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
        pack._Workers.run_shards = real_run
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1_000_000, help="synthetic set size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the raw figures here")
    args = ap.parse_args(argv)
    workers = len(os.sched_getaffinity(0))  # autotune pack's default: a process a core
    root = pack_scale.make_synthetic(args.size, 80)
    pack_scale.warm_page_cache(root)
    runs = []
    with tempfile.TemporaryDirectory(prefix="pack_phases-", dir=pack_scale.cache_root()) as tmp:
        for _ in range(args.repeats):
            runs.append(one_run(root, Path(tmp), max(16, args.size // 20_000), workers))
            print("  ".join(f"{k} {v:6.2f}" for k, v in runs[-1].items()), flush=True)
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    print("best: " + "  ".join(f"{k} {v:.2f}" for k, v in best.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": _dt.date.today().isoformat(), "machine": platform.platform(),
            "argv": sys.argv[1:], "data": str(root), "runs": runs, "best": best}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
