"""Compare the disk probe's direct-read figures with fio's on the same file.

For each measurement of :func:`probes.disk.probe_disk` (sequential 1 MiB at depth 1,
random 4 KiB at depth 1, random record-size at depth 1 and at depth N) this script runs
fio (https://fio.readthedocs.io/en/latest/fio_doc.html) with ``--direct=1
--ioengine=psync --numjobs=N --group_reporting --time_based`` and the same block size,
depth, warm-up (``--ramp_time``) and duration, then :func:`probes.disk.measure_reads`,
on one test file of random bytes, alternating which goes first. Each pair is repeated
``--repeats`` times; the table shows, per side, the per-figure medians (or with
``--stat best`` the run with the most IOPS), the ratio probe / fio (goal: 0.9-1.1), and
the median of the back-to-back pairs' IOPS ratios, which cancels slow drift in a shared
disk's speed.

Fairness:

* same file, both ``O_DIRECT``, same block sizes, depths, warm-up and duration; fio
  ``--randrepeat=0`` and fresh probe seeds, so no run re-reads the previous run's blocks;
* fio's random offsets are aligned to 4 KiB (``--blockalign=4k``), like the probe's;
* read buffers in transparent huge pages on both sides. The probe reads into a
  ``MADV_HUGEPAGE`` buffer (see ``probes.disk._IOBuffer``); fio's buffers come from
  glibc malloc, so fio runs with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35
  then advises ``MADV_HUGEPAGE`` on malloc'd mappings), ``--iomem_align=2m`` and a write
  block size (unused by the read-only job) that makes its buffer whole 2 MiB pages. With
  4 KiB pages fio's own 1 MiB sequential figure swung between about 900 and 2,700 IOPS
  from run to run on a virtio disk, depending on how the buffer's pages happened to
  lie in physical memory;
* latency percentiles are fio's completion latency (``clat_ns``), which for the
  synchronous psync engine is the read call, as the probe times it.

MB/s uses 1 MB = 1e6 bytes.

Installs nothing: if ``fio`` is not on PATH it says how to install it and exits 2.

Usage::

    python bench/disk_vs_fio.py [--dir /tmp] [--file-bytes 536870912]
        [--record-bytes N] [--queue-depth 4] [--duration 2] [--repeats 5]
        [--stat median|best]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from probes.disk import (
    ALIGN,
    HUGE_PAGE_BYTES,
    SEQ_BLOCK_BYTES,
    SMALL_BLOCK_BYTES,
    align_up,
    direct_io_supported,
    measure_reads,
    write_test_file,
)

SAMPLES = Path("/work/shared/data/imagenet-samples")


def median_file_bytes(folder: Path) -> int | None:
    """Median size in bytes of the regular files under ``folder`` (None if none)."""
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return int(statistics.median(sizes)) if sizes else None


def run_fio(path: Path, rw: str, bs: int, numjobs: int, duration_s: float, warmup_s: float) -> dict:
    """Run fio once; returns {'iops', 'mb_per_s', 'p50_ms', 'p99_ms', 'mean_ms'}.

    Raises:
      RuntimeError: fio failed (message has its stderr and the command).
    """
    cmd = [
        "fio",
        "--name=disk-vs-fio",
        f"--filename={path}",
        "--readonly",
        "--randrepeat=0",
        "--direct=1",
        "--ioengine=psync",
        f"--rw={rw}",
        f"--bs={bs},{align_up(bs, HUGE_PAGE_BYTES)}",  # read bs, write bs (buffer size only)
        f"--iomem_align={HUGE_PAGE_BYTES}",
        f"--blockalign={ALIGN}",
        f"--numjobs={numjobs}",
        "--group_reporting",
        "--time_based",
        f"--runtime={int(round(duration_s * 1000))}ms",
        f"--ramp_time={int(round(warmup_s * 1000))}ms",
        "--output-format=json",
    ]
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(
        t for t in (env.get("GLIBC_TUNABLES", ""), "glibc.malloc.hugetlb=1") if t
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"fio failed ({proc.returncode}): {proc.stderr.strip()}\n{' '.join(cmd)}")
    text = proc.stdout[proc.stdout.index("{"):]
    read = json.loads(text)["jobs"][0]["read"]
    clat = read["clat_ns"]
    pct = clat.get("percentile", {})
    return {
        "iops": float(read["iops"]),
        "mb_per_s": float(read["bw_bytes"]) / 1e6,
        "p50_ms": float(pct.get("50.000000", float("nan"))) / 1e6,
        "p99_ms": float(pct.get("99.000000", float("nan"))) / 1e6,
        "mean_ms": float(clat["mean"]) / 1e6,
    }


def run_probe(path: Path, pattern: str, bs: int, qd: int, duration_s: float, warmup_s: float) -> dict:
    """One :func:`probes.disk.measure_reads` run with ``O_DIRECT``, as a dict like
    :func:`run_fio`'s."""
    s = measure_reads(path, bs, pattern, qd, duration_s, True, warmup_s=warmup_s)
    return {"iops": s.iops, "mb_per_s": s.mb_per_s, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "mean_ms": s.mean_ms}


def summarize(runs: list[dict], stat: str) -> dict:
    """'best': the run with the most IOPS (its latencies too); 'median': per-figure
    medians over the runs."""
    if stat == "best":
        return max(runs, key=lambda r: r["iops"])
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="folder for the test file")
    ap.add_argument("--file-bytes", type=int, default=512 << 20)
    ap.add_argument("--record-bytes", type=int, default=None,
                    help=f"record size; default: median file size under {SAMPLES}, else 110000")
    ap.add_argument("--queue-depth", type=int, default=4)
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per run")
    ap.add_argument("--warmup", type=float, default=0.25, help="seconds of unmeasured reads first")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stat", choices=["best", "median"], default="median",
                    help="per side, the per-figure median of the runs (default) or the run with the "
                         "most IOPS (other tenants only slow a shared disk down)")
    args = ap.parse_args(argv)

    if shutil.which("fio") is None:
        print("fio is not installed; install it with:  apt-get install -y fio", file=sys.stderr)
        return 2
    record = args.record_bytes or median_file_bytes(SAMPLES) or 110000
    record_io = align_up(record)
    cases = [
        ("seq 1MiB qd1", "read", "seq", SEQ_BLOCK_BYTES, 1),
        ("rand 4KiB qd1", "randread", "rand", SMALL_BLOCK_BYTES, 1),
        (f"rand {record_io}B qd1", "randread", "rand", record_io, 1),
        (f"rand {record_io}B qd{args.queue_depth}", "randread", "rand", record_io, args.queue_depth),
    ]
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    print(f"transparent huge pages: {thp.read_text().strip() if thp.exists() else 'unknown'} "
          "(buffers in 4 KiB pages if THP is off; see the module docstring)")
    print(f"test file: {args.file_bytes} bytes of random data in {args.dir}; record {record} B "
          f"(read as {record_io} B); {args.duration} s per run after {args.warmup} s warm-up; "
          f"{args.stat} of {args.repeats} runs per side; MB/s = 1e6 bytes/s", flush=True)

    path = write_test_file(args.dir, args.file_bytes)
    rows = []
    try:
        if not direct_io_supported(path):
            print(f"O_DIRECT is not supported on {args.dir}; fio --direct=1 cannot run there", file=sys.stderr)
            return 3
        for name, rw, pattern, bs, qd in cases:
            fio_runs, probe_runs = [], []
            for r in range(args.repeats):
                order = (0, 1) if r % 2 == 0 else (1, 0)
                for who in order:
                    if who == 0:
                        fio_runs.append(run_fio(path, rw, bs, qd, args.duration, args.warmup))
                    else:
                        probe_runs.append(run_probe(path, pattern, bs, qd, args.duration, args.warmup))
            f, p = (summarize(runs, args.stat) for runs in (fio_runs, probe_runs))
            # Ratios of the back-to-back pairs cancel slow drift in the disk's speed.
            pairs = statistics.median(b["iops"] / a["iops"] for a, b in zip(fio_runs, probe_runs))
            rows.append((name, f, p, pairs))
            print(f"  done {name}: IOPS per run, fio {[round(x['iops']) for x in fio_runs]}, "
                  f"probe {[round(x['iops']) for x in probe_runs]}", flush=True)
    finally:
        path.unlink(missing_ok=True)

    keys = [("iops", "IOPS", "{:.0f}"), ("mb_per_s", "MB/s", "{:.1f}"), ("p50_ms", "p50 ms", "{:.3f}"),
            ("p99_ms", "p99 ms", "{:.3f}")]
    header = f"{'measurement':<22}" + "".join(
        f"{'fio ' + lab:>12}{'probe ' + lab:>13}{'ratio':>7}" for _, lab, _ in keys) + f"{'pairs':>7}"
    print()
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name, f, p, pairs in rows:
        line = f"{name:<22}"
        for k, _, fmt in keys:
            ratio = p[k] / f[k] if f[k] else float("nan")
            if k in ("iops", "mb_per_s"):
                worst = max(worst, abs(ratio - 1))
            line += f"{fmt.format(f[k]):>12}{fmt.format(p[k]):>13}{ratio:>7.2f}"
        print(line + f"{pairs:>7.2f}")
    print(f"\nratio = probe / fio of the {args.stat} runs; pairs = median over the back-to-back "
          "runs of probe IOPS / fio IOPS")
    print(f"largest throughput deviation: {worst:.1%} (goal: within 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
