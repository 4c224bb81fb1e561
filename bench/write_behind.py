"""The pack's write-behind (``trainers.pack._WriteBehind``) on its own: ``--gb`` GB
written to one file in 16 MiB pieces (the array_record writer's buffer), plain or
with the write-behind's look after every piece, alternating, each run a fresh file
deleted after it. Prints each run's wall time, the ``sync`` after it (what the run
left dirty), its system CPU and the page cache's growth; ``--json`` keeps the points.

    python bench/write_behind.py --dir /path/on/the/disk --gb 4 --repeats 2 --json bench/results/write_behind.json

Notes: the first plain run of a session may write into memory the VM never used
before (the slowest case); the deleted file's pages are then free for the next run.
The file must be on a disk, not tmpfs (``/dev/shm`` has no writeback)."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.pack import _WriteBehind  # noqa: E402

PIECE = 16 << 20  #: bytes per write (array_record's writer buffer)


def _cached_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1])
    return 0


def run(path: Path, nbytes: int, behind: bool) -> dict:
    """Write ``nbytes`` to ``path`` in :data:`PIECE` pieces; wall seconds, this
    process's system and user CPU seconds, page-cache growth (kB)."""
    buf = os.urandom(PIECE)
    c0, t0, k0 = os.times(), time.perf_counter(), _cached_kb()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    wb = _WriteBehind(path) if behind else None
    for _ in range(nbytes // PIECE):
        os.write(fd, buf)
        if wb is not None:
            wb.poll()
    if wb is not None:
        wb.close()
    os.close(fd)
    c1, t1, k1 = os.times(), time.perf_counter(), _cached_kb()
    os.sync()  # what is still dirty: written after the run in the plain case
    t2 = time.perf_counter()
    path.unlink()
    os.sync()
    return {"write_behind": behind, "bytes": nbytes, "wall_s": t1 - t0,
            "system_s": c1.system - c0.system, "user_s": c1.user - c0.user,
            "sync_after_s": t2 - t1, "page_cache_growth_kb": k1 - k0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=".", help="folder on the disk to write in")
    ap.add_argument("--gb", type=float, default=4.0, help="GB written per run")
    ap.add_argument("--repeats", type=int, default=2, help="pairs of runs (plain, write-behind)")
    ap.add_argument("--json", help="write the raw points here")
    args = ap.parse_args()
    path = Path(args.dir) / "write_behind_bench.bin"
    nbytes = int(args.gb * 1e9) // PIECE * PIECE
    runs = []
    for _ in range(args.repeats):
        for behind in (False, True):
            r = run(path, nbytes, behind)
            runs.append(r)
            print(f"{'write-behind' if behind else 'plain':>12}: {r['bytes'] / 1e9:.1f} GB "
                  f"in {r['wall_s']:.2f} s (+ {r['sync_after_s']:.2f} s of sync after), system CPU "
                  f"{r['system_s']:.2f} s, page cache "
                  f"+{r['page_cache_growth_kb'] / 2**20:.2f} GiB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": _dt.date.today().isoformat(), "machine": platform.platform(),
            "argv": sys.argv[1:], "dir": str(Path(args.dir).resolve()), "runs": runs},
            indent=1) + "\n")


if __name__ == "__main__":
    main()
