"""Where a pack waits in the kernel: ``autotune pack`` in a child process, and every
~10 ms the kernel stack of each of its threads (and its worker processes' threads)
that is in uninterruptible sleep (D state: waiting on the disk), counted by its top
frames. Before the pack, the share of a sample of the input files that has pages in
the page cache (``mincore``), since a file that is not there is a disk read.

    python bench/kernel_waits.py --data ~/.cache/autotune/bench/pack_scale/synthetic-1000000-80px --out /work/po --shards 50 --json bench/results/kernel_waits_1m.json

Linux only, as root (``/proc/<pid>/task/<tid>/stack``). The output folder is deleted
before and after. A sample is a look at every thread, so a count times the period is
roughly the seconds some thread waited there (more than one thread can wait at once).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import datetime as _dt
import json
import mmap
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
_LIBC = ctypes.CDLL(None, use_errno=True)


def cached_share(root: Path, every: int = 97) -> dict:
    """Of every ``every``-th file under ``root`` (sorted walk), how many have at least
    one page in the page cache, by ``mincore`` on a private mapping (no page of it is touched)."""
    page = mmap.PAGESIZE
    seen = cached = 0
    k = 0
    for dirpath, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            k += 1
            if k % every:
                continue
            path = os.path.join(dirpath, name)
            size = os.path.getsize(path)
            if size == 0:
                continue
            seen += 1
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as m:
                n = (size + page - 1) // page
                vec = (ctypes.c_ubyte * n)()
                addr = _map_address(m)
                if _LIBC.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) == 0:
                    cached += any(b & 1 for b in vec)
    return {"sampled_files": seen, "with_pages_cached": cached}


def _map_address(m: mmap.mmap) -> int:
    """The address of ``m``'s mapping (through a ctypes view of it, released at once)."""
    view = (ctypes.c_char * 1).from_buffer(m)
    try:
        return ctypes.addressof(view)
    finally:
        del view


def sample(cmd: list[str], period: float = 0.01) -> dict:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    stacks: collections.Counter = collections.Counter()
    looks, t0 = 0, time.perf_counter()
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for pr in procs:
            try:
                for tid in os.listdir(f"/proc/{pr.pid}/task"):
                    with open(f"/proc/{pr.pid}/task/{tid}/stat") as f:
                        st = f.read()
                    if st[st.rfind(")") + 2] != "D":
                        continue
                    with open(f"/proc/{pr.pid}/task/{tid}/stack") as f:
                        frames = [ln.split("] ", 1)[1].split("+")[0]
                                  for ln in f.read().splitlines() if "] " in ln]
                    stacks[" < ".join(frames[:7])] += 1
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
        looks += 1
        time.sleep(period)
    wall = time.perf_counter() - t0
    return {"returncode": proc.wait(), "wall_s": wall, "looks": looks,
            "seconds_per_look": wall / max(1, looks),
            "d_state_stacks": [{"count": n, "stack": k} for k, n in stacks.most_common(30)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, help="the pack's output folder (deleted before and after)")
    ap.add_argument("--shards", type=int, default=50)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    data = Path(os.path.expanduser(args.data))
    shutil.rmtree(args.out, ignore_errors=True)
    cache = cached_share(data)
    print(f"input files with pages in the page cache: {cache['with_pages_cached']:,} of "
          f"{cache['sampled_files']:,} sampled", flush=True)
    cmd = [sys.executable, "-m", "autotune.cli", "pack", "--data", str(data), "--out", args.out,
           "--shards", str(args.shards), "--quiet"]
    got = sample(cmd)
    shutil.rmtree(args.out, ignore_errors=True)
    print(f"pack: {got['wall_s']:.1f} s, {got['looks']} looks "
          f"({got['seconds_per_look'] * 1e3:.1f} ms each), exit {got['returncode']}")
    for row in got["d_state_stacks"][:10]:
        print(f"{row['count']:6d}  {row['stack']}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": _dt.date.today().isoformat(), "machine": platform.platform(),
            "argv": sys.argv[1:], "input_cache": cache, **got}, indent=1) + "\n")


if __name__ == "__main__":
    main()
