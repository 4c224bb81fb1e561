"""CPU time per record read (issue 15): ArrayRecord's own one-record read
(``ArrayRecordDataSource[i]``, what ``_Records`` used before) against the direct read
of ``trainers.shard_reader.ShardReader`` and a bare ``os.pread`` of the record's bytes
(the floor), over every record of one shard in a seeded random order on one thread;
``time.process_time`` (CPU, not wall: fair on a shared machine), best of
``--repeats``. Also the CPU time to build the shard's index from its footer.

    python bench/record_read.py                     # packs ../shared/data/imagenet-samples once
    python bench/record_read.py --shard PATH --repeats 5 --json /tmp/record_read.json

The default shard: the 1,000 full-size ILSVRC-2012 sample images (originals, about
110 KB a record, so most records cross a 64 KiB block header) packed into one shard
under ``$AUTOTUNE_CACHE`` or ``~/.cache/autotune`` (``bench/record_read``). The file is
read once before timing (page cache warm for all three alike).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers import shard_reader as sr  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"


def _default_shard() -> str:
    from trainers.options import PackOptions
    from trainers.pack import pack_folder, shard_paths

    cache = Path(os.environ.get("AUTOTUNE_CACHE", Path.home() / ".cache" / "autotune"))
    out = cache / "bench" / "record_read"
    pack_folder(SAMPLES, out, PackOptions(num_shards=1, val_fraction=0.0))
    return str(shard_paths(out, "train")[0])


def _best(read, order, repeats: int) -> float:
    """Least CPU seconds per record over ``repeats`` passes of ``read`` over ``order``."""
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        for i in order:
            read(i)
        best = min(best, time.process_time() - t)
    return best / len(order)


def measure(shard: str, repeats: int = 3, seed: int = 0) -> dict:
    """Microseconds of CPU per record for each way of reading ``shard``, and ms per
    index build. Raises AssertionError when a direct read differs from the library's."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    reader = sr.ShardReader(shard)
    index = reader.index()
    if index is None:
        raise SystemExit(f"{shard}: not read directly: {reader.reason}")
    n = len(index.offsets)
    library = ArrayRecordDataSource([shard])
    assert all(reader.read(i) == library[i] for i in range(n)), "direct read differs"
    order = list(range(n))
    random.Random(seed).shuffle(order)
    fd = os.open(shard, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        bare = _best(lambda i: os.pread(fd, index.lengths[i], index.offsets[i]), order, repeats)
        build = _best(lambda _: sr.read_index(fd, size), range(20), repeats)
    finally:
        os.close(fd)
    return {"shard": shard, "records": n, "mean_record_bytes": sum(index.lengths) / max(n, 1),
            "repeats": repeats, "seed": seed,
            "library_us": _best(library.__getitem__, order, repeats) * 1e6,
            "direct_us": _best(reader.read, order, repeats) * 1e6,
            "bare_pread_us": bare * 1e6, "index_build_ms": build * 1e3}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shard", help="an ArrayRecord shard (default: the packed samples)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    shard = args.shard or _default_shard()
    with open(shard, "rb") as f:  # warm the page cache
        while f.read(1 << 24):
            pass
    r = measure(shard, args.repeats, args.seed)
    print(f"{r['records']:,} records of {r['mean_record_bytes'] / 1e3:.1f} KB on average, "
          f"CPU us per record (best of {r['repeats']}, seeded random order, 1 thread):")
    print(f"  ArrayRecordDataSource[i]  {r['library_us']:7.1f}")
    print(f"  ShardReader.read          {r['direct_us']:7.1f}")
    print(f"  bare os.pread             {r['bare_pread_us']:7.1f}")
    print(f"index build from the footer: {r['index_build_ms']:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
