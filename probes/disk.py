"""Disk probe: how fast the data's file system serves reads, with the page cache
bypassed, and as the input pipeline sees it through the page cache.

Measurements (all on the file system that holds the data):

* sequential read, 1 MiB blocks, queue depth 1;
* random read, 4 KiB blocks, queue depth 1;
* random read at the data set's record size (median JPEG bytes), queue depth 1;
* the same at queue depth N (N = reader threads of the input pipeline);
* buffered record-size reads at depth N through the page cache, "as the loader sees
  it" in a first epoch: cache dropped, every record slot read once in shuffled order.

The data set's bytes and the total RAM (``psutil``) are reported too; whether the
page cache can serve the epochs after the first is the planner's call.

Queue depth N is N threads each issuing blocking ``os.preadv`` calls, the same I/O
pattern as fio ``--ioengine=psync --numjobs=N --group_reporting`` (fio documentation,
https://fio.readthedocs.io/en/latest/fio_doc.html). The page cache is bypassed with
``O_DIRECT`` (open(2)) when the file system accepts it: buffers come from ``mmap``
(page aligned, in transparent huge pages where available, see :class:`_IOBuffer`),
offsets and lengths are multiples of :data:`ALIGN` (4096 bytes), so record-size reads
are rounded up to the alignment. When ``O_DIRECT`` is refused
(tmpfs, some FUSE and network file systems) the probe falls back to buffered reads of a
file whose cache was dropped with ``posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)``, and
drops each range again right after reading it, so no read is served from memory.

Rates: ``mb_per_s`` is in MB/s with 1 MB = 1e6 bytes (fio's ``bw_bytes`` / 1e6);
latencies are in milliseconds per read call (for reads that span several files in the
existing-files mode, per logical read).

The probe measures and decides nothing; :func:`probe_disk` returns a
:class:`DiskReport`.
"""

from __future__ import annotations

import ctypes
import errno
import heapq
import mmap
import os
import resource
import secrets
import shutil
import stat
import threading
import time
from bisect import bisect_right
from pathlib import Path
from typing import Sequence

import numpy as np
import psutil

from probes.records import DiskReport, ReadStats

ALIGN = 4096
"""Alignment in bytes of ``O_DIRECT`` offsets, lengths and buffers (the page size; it
covers devices with 512- and 4096-byte logical blocks)."""

SEQ_BLOCK_BYTES = 1 << 20
"""Block size of the sequential measurement: 1 MiB."""

SMALL_BLOCK_BYTES = 4096
"""Block size of the small random measurement: 4 KiB."""

DEFAULT_FILE_BYTES = 512 << 20
"""Size of the test file written when ``file_bytes`` is not given: 512 MiB."""

MIN_FILE_BYTES = 2 * SEQ_BLOCK_BYTES
"""Smallest read space (bytes) the probe accepts: two sequential blocks."""

DEFAULT_MAX_OPS = 2_000_000
"""Upper bound on reads per measurement (the other bound is ``duration_s``)."""

MAX_SCAN_ENTRIES = 2_000_000
"""Directory entries looked at, at most, when sizing the data set or choosing files."""

TEST_FILE_PREFIX = ".autotune-disk-probe-"
"""Name prefix of the test file the probe writes (and always deletes) in the data folder."""

_WRITE_CHUNK = 8 << 20
_NOT_WRITABLE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


class DiskProbeError(RuntimeError):
    """The disk probe cannot measure the given path (the message names it and why)."""


# --------------------------------------------------------------------------- helpers


def align_up(n: int, align: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``align`` (bytes)."""
    return -(-n // align) * align


def random_offsets(
    space_bytes: int, block_bytes: int, count: int, rng: np.random.Generator, align: int = ALIGN
) -> np.ndarray:
    """``count`` uniform random read offsets (int64 array, shape ``(count,)``, bytes).

    Every offset is a multiple of ``align`` and ``offset + block_bytes <= space_bytes``.

    Raises:
      ValueError: the block does not fit in the space.
    """
    if block_bytes > space_bytes:
        raise ValueError(
            f"Block of {block_bytes} bytes does not fit in a read space of {space_bytes} bytes"
        )
    slots = (space_bytes - block_bytes) // align + 1
    return rng.integers(0, slots, size=count, dtype=np.int64) * align


class _ReadSpace:
    """Open files seen as one concatenated byte range. Under ``direct`` each file
    contributes its length rounded down to :data:`ALIGN`, so every piece of a read is
    aligned."""

    def __init__(self, paths: Sequence[str | os.PathLike], direct: bool):
        self.direct = direct
        flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
        self.fds: list[int] = []
        self.starts: list[int] = []
        self.lengths: list[int] = []
        total = 0
        try:
            for p in paths:
                size = os.stat(p).st_size
                usable = (size // ALIGN) * ALIGN if direct else size
                if usable <= 0:
                    continue
                fd = os.open(p, flags)
                self.fds.append(fd)
                self.starts.append(total)
                self.lengths.append(usable)
                total += usable
        except BaseException:
            self.close()
            raise
        self.size = total

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []

    def pieces(self, off: int, length: int) -> list[tuple[int, int, int, int]]:
        """(fd, file offset, buffer offset, length) pieces of a logical read."""
        out = []
        i = bisect_right(self.starts, off) - 1
        pos = 0
        while length > 0 and i < len(self.fds):
            in_file = off - self.starts[i]
            n = min(length, self.lengths[i] - in_file)
            out.append((self.fds[i], in_file, pos, n))
            pos += n
            off += n
            length -= n
            i += 1
        return out

    def drop_cache(self) -> None:
        """``POSIX_FADV_DONTNEED`` on every file (clean pages leave the page cache)."""
        for fd in self.fds:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def advise(self, advice: int) -> None:
        for fd in self.fds:
            os.posix_fadvise(fd, 0, 0, advice)


HUGE_PAGE_BYTES = 2 << 20
"""Transparent huge page size assumed for read buffers (x86-64 and most arm64: 2 MiB)."""


class _IOBuffer:
    """A page-aligned read buffer of ``nbytes`` (as ``O_DIRECT`` needs), placed at a
    2 MiB boundary of a private anonymous mapping advised ``MADV_HUGEPAGE``.

    Why huge pages: a read's buffer is pinned page by page and handed to the device as a
    scatter list. With 4 KiB pages, whether the pages of a 1 MiB buffer happen to be
    physically adjacent (and merge into few segments) changed 1 MiB direct-read
    throughput on a virtio disk by up to 2x from run to run (measured with
    bench/disk_vs_fio.py; fio's malloc'd buffer shows the same spread). A transparent
    huge page is physically contiguous, so the figure reflects the device, not the
    allocator. Where THP is off or unavailable this silently falls back to 4 KiB pages.
    """

    def __init__(self, nbytes: int):
        size = align_up(nbytes, HUGE_PAGE_BYTES)
        self.map = mmap.mmap(-1, size + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        probe = ctypes.c_char.from_buffer(self.map)
        addr = ctypes.addressof(probe)
        del probe
        start = (-addr) % HUGE_PAGE_BYTES
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                self.map.madvise(mmap.MADV_HUGEPAGE, start, size)
            except OSError:
                pass
        self.map[start : start + size] = bytes(size)  # fault the pages in now
        self._whole = memoryview(self.map)
        self.view = self._whole[start : start + nbytes]

    def close(self) -> None:
        self.view.release()
        self._whole.release()
        self.map.close()

    def __enter__(self) -> "_IOBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_loop(
    space: _ReadSpace,
    io_bytes: int,
    pattern: str,
    start: int,
    plan: np.ndarray | None,
    max_ops: int,
    deadline_ns: int,
    seed: np.random.SeedSequence,
    drop_after: bool,
    buf: _IOBuffer,
    out: dict,
) -> None:
    """Issue blocking reads into ``buf`` until ``deadline_ns`` (after at least one
    read), ``max_ops`` or the end of ``plan``.

    Offsets: 'seq' reads slot ``start``, ``start + 1``, ... (slots of ``io_bytes``,
    wrapping to 0 after the last whole one); 'rand' draws :func:`random_offsets` from
    ``seed``; 'shuffle' reads ``plan[start:]`` in order. Fills ``out`` with ``lat`` (ns
    per read), ``bytes`` (sum of what the read calls returned), ``short``, ``end`` (ns)
    and ``next`` (the position a continuation starts from)."""
    head = buf.view
    lat: list[int] = []
    append = lat.append
    clock = time.perf_counter_ns
    preadv = os.preadv
    fadvise = os.posix_fadvise
    dontneed = os.POSIX_FADV_DONTNEED
    total = 0
    short = 0
    ops = 0
    rng = np.random.default_rng(seed)
    slots = space.size // io_bytes
    pos = start
    single = len(space.fds) == 1
    fd = space.fds[0]
    bufs = [head]
    while ops < max_ops:
        k = min(4096, max_ops - ops)
        if pattern == "seq":
            offs = (((pos + np.arange(k, dtype=np.int64)) % slots) * io_bytes).tolist()
        elif pattern == "rand":
            offs = random_offsets(space.size, io_bytes, k, rng).tolist()
        else:
            offs = plan[pos : pos + k].tolist()
            if not offs:
                break
        pos += k
        stop = False
        if single:
            for off in offs:
                t0 = clock()
                if t0 >= deadline_ns and ops:
                    stop = True
                    break
                n = preadv(fd, bufs, off)
                append(clock() - t0)
                if drop_after:
                    fadvise(fd, off, io_bytes, dontneed)
                total += n
                if n != io_bytes:
                    short += 1
                ops += 1
        else:
            for off in offs:
                t0 = clock()
                if t0 >= deadline_ns and ops:
                    stop = True
                    break
                got = 0
                pieces = space.pieces(off, io_bytes)
                for pfd, foff, boff, n in pieces:
                    got += preadv(pfd, [head[boff : boff + n]], foff)
                append(clock() - t0)
                if drop_after:
                    for pfd, foff, _, n in pieces:
                        fadvise(pfd, foff, n, dontneed)
                total += got
                if got != io_bytes:
                    short += 1
                ops += 1
        if stop:
            break
    out["end"] = clock()
    out["next"] = (start + ops) % slots if pattern == "seq" else start + ops
    out["lat"] = lat
    out["bytes"] = total
    out["short"] = short


def _run(
    space: _ReadSpace,
    io_bytes: int,
    pattern: str,
    queue_depth: int,
    duration_s: float,
    max_ops: int,
    seeds: list[np.random.SeedSequence],
    drop_after: bool,
    starts: list[int],
    plans: list[np.ndarray] | None,
) -> tuple[list[int], int, int, float, list[int]]:
    """Run ``queue_depth`` read loops (thread i: ``starts[i]``, ``seeds[i]``,
    ``plans[i]``) for ``duration_s``. Returns (latencies ns, bytes, short reads,
    seconds, next positions)."""
    quotas = [max_ops // queue_depth + (i < max_ops % queue_depth) for i in range(queue_depth)]
    outs: list[dict] = [dict() for _ in range(queue_depth)]
    errors: list[BaseException] = []
    timing: dict[str, int] = {}

    def start_action() -> None:
        timing["t0"] = time.perf_counter_ns()
        timing["deadline"] = timing["t0"] + int(duration_s * 1e9)

    def body(i: int, barrier: threading.Barrier | None) -> None:
        try:
            if barrier is not None:
                barrier.wait()
            else:
                start_action()
            _read_loop(
                space, io_bytes, pattern, starts[i], plans[i] if plans else None,
                quotas[i], timing["deadline"], seeds[i], drop_after, bufs[i], outs[i],
            )
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)
            if barrier is not None:
                barrier.abort()

    # Buffers are allocated (and their pages faulted in) before the clock starts.
    bufs: list[_IOBuffer] = []
    try:
        for _ in range(queue_depth):
            bufs.append(_IOBuffer(io_bytes))
        if queue_depth == 1:
            body(0, None)
        else:
            barrier = threading.Barrier(queue_depth, action=start_action)
            threads = [
                threading.Thread(target=body, args=(i, barrier), daemon=True)
                for i in range(queue_depth)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        for b in bufs:
            b.close()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    lat = [x for o in outs for x in o["lat"]]
    total = sum(o["bytes"] for o in outs)
    short = sum(o["short"] for o in outs)
    seconds = (max(o["end"] for o in outs) - timing["t0"]) / 1e9
    return lat, total, short, seconds, [o["next"] for o in outs]


def measure_reads(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    block_bytes: int,
    pattern: str = "rand",
    queue_depth: int = 1,
    duration_s: float = 2.0,
    direct: bool = True,
    *,
    method: str = "O_DIRECT",
    warmup_s: float | None = None,
    max_ops: int = DEFAULT_MAX_OPS,
    seed: int | None = None,
) -> ReadStats:
    """Time blocking reads of ``block_bytes`` from a file (or the concatenation of files).

    Args:
      path: one file, or a sequence of files read as one concatenated byte range.
      block_bytes: bytes per read; with ``direct`` and ``method='O_DIRECT'`` rounded up
        to :data:`ALIGN`.
      pattern: ``'seq'`` (consecutive blocks, wrapping at the end; with depth N thread
        i starts at i/N of the space), ``'rand'`` (uniform offsets, multiples of
        :data:`ALIGN`, drawn with replacement, as fio ``randread``) or ``'shuffle'``
        (every whole block slot once, in a random order, split round-robin over the
        threads: one epoch of a loader reading shuffled records; ends early when all
        slots are read).
      queue_depth: threads, each with one blocking ``os.preadv`` in flight (fio
        ``--ioengine=psync --numjobs=N``).
      duration_s: seconds of measured reading (after the warm-up); each thread stops
        issuing reads at the deadline, once it has completed at least one read.
      direct: bypass the page cache. ``method='O_DIRECT'`` opens with ``O_DIRECT``;
        ``method='fadvise'`` reads buffered, drops the files' cache first with
        ``POSIX_FADV_DONTNEED`` and drops each range right after reading it. With
        ``direct=False`` reads are plain buffered reads (the cache is left as it is).
      warmup_s: unmeasured reading before the measurement (default
        ``min(0.25, duration_s / 4)``), like fio ``--ramp_time``.
      max_ops: upper bound on measured reads (all threads together; also applies to
        the warm-up).
      seed: seed of the random offsets (``numpy.random.SeedSequence``; the warm-up and
        each thread get independent child streams). None (default) = fresh entropy, so
        repeated runs do not re-read the same blocks.

    Returns:
      :class:`ReadStats`; ``bytes_read`` is the sum of what the read calls returned.

    Raises:
      ValueError: bad pattern, method, block size, depth, duration or ``max_ops``; or
        the block does not fit in the files (message names them).
      OSError: opening or reading failed (``EINVAL`` from ``O_DIRECT`` on a file system
        that refuses it; use :func:`direct_io_supported` first).
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    _check_read_args(pattern, method, block_bytes, queue_depth, duration_s, max_ops)
    o_direct = direct and method == "O_DIRECT"
    drop = direct and method == "fadvise"
    io_bytes = align_up(block_bytes) if o_direct else block_bytes
    if warmup_s is None:
        warmup_s = min(0.25, duration_s / 4)

    space = _ReadSpace(paths, o_direct)
    try:
        if io_bytes > space.size:
            raise ValueError(
                f"Reads of {io_bytes} bytes do not fit in {space.size} usable bytes of "
                f"{[str(p) for p in paths][:3]}{'...' if len(paths) > 3 else ''}"
            )
        if drop:
            space.drop_cache()
            space.advise(os.POSIX_FADV_SEQUENTIAL if pattern == "seq" else os.POSIX_FADV_RANDOM)
        elif not o_direct:
            space.advise(os.POSIX_FADV_NORMAL)
        root = np.random.SeedSequence(seed)
        warm_seeds, seeds, plan_seed = root.spawn(3)
        warm_seeds, seeds = warm_seeds.spawn(queue_depth), seeds.spawn(queue_depth)
        starts, plans = _thread_starts(space.size // io_bytes, io_bytes, pattern, queue_depth,
                                       plan_seed)
        # The measurement goes on where the warm-up stopped (as fio does after
        # --ramp_time), so a 'shuffle' epoch never reads a slot twice.
        if warmup_s > 0:
            *_, starts = _run(
                space, io_bytes, pattern, queue_depth, warmup_s, max_ops, warm_seeds, drop,
                starts, plans,
            )
        lat, total, short, seconds, _ = _run(
            space, io_bytes, pattern, queue_depth, duration_s, max_ops, seeds, drop, starts, plans
        )
    finally:
        space.close()
    return _read_stats(pattern, block_bytes, io_bytes, queue_depth, direct, lat, total, short,
                       seconds)


def _check_read_args(pattern: str, method: str, block_bytes: int, queue_depth: int,
                     duration_s: float, max_ops: int) -> None:
    """Raise ValueError naming the first argument of :func:`measure_reads` out of range."""
    _require([
        (pattern in ("seq", "rand", "shuffle"),
         f"pattern must be 'seq', 'rand' or 'shuffle', got {pattern!r}"),
        (method in ("O_DIRECT", "fadvise"),
         f"method must be 'O_DIRECT' or 'fadvise', got {method!r}"),
        (block_bytes > 0, f"block_bytes must be positive, got {block_bytes}"),
        (queue_depth >= 1, f"queue_depth must be >= 1, got {queue_depth}"),
        (duration_s > 0, f"duration_s must be positive, got {duration_s}"),
        (max_ops >= 1, f"max_ops must be >= 1, got {max_ops}"),
    ])


def _require(checks: list[tuple[bool, str]], where: str = "") -> None:
    """Raise ValueError with the message (and ``where``) of the first failed check."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message + where)


def _thread_starts(slots: int, io_bytes: int, pattern: str, queue_depth: int,
                   plan_seed: np.random.SeedSequence) -> tuple[list[int], list[np.ndarray] | None]:
    """Where each of ``queue_depth`` read threads starts, and for ``'shuffle'`` each
    thread's offsets (bytes): every one of ``slots`` slots once, in a random order,
    dealt round-robin. Sequential thread i starts at slot i/N of the space."""
    if pattern == "shuffle":
        order = np.random.default_rng(plan_seed).permutation(slots).astype(np.int64) * io_bytes
        return [0] * queue_depth, [order[i::queue_depth] for i in range(queue_depth)]
    return [i * slots // queue_depth for i in range(queue_depth)], None


def _read_stats(pattern: str, block_bytes: int, io_bytes: int, queue_depth: int, direct: bool,
                lat: list[int], total: int, short: int, seconds: float) -> ReadStats:
    """The :class:`ReadStats` of one measurement (latencies in ns, ``total`` bytes)."""
    ops = len(lat)
    if ops:
        arr = np.asarray(lat, dtype=np.float64) / 1e6
        p50, p99 = (float(x) for x in np.percentile(arr, [50, 99]))
        mean = float(arr.mean())
    else:
        p50 = p99 = mean = float("nan")
    seconds = max(seconds, 1e-9)
    return ReadStats(
        pattern=pattern,
        requested_bytes=block_bytes,
        block_bytes=io_bytes,
        queue_depth=queue_depth,
        direct=direct,
        ops=ops,
        bytes_read=total,
        seconds=seconds,
        iops=ops / seconds,
        mb_per_s=total / seconds / 1e6,
        p50_ms=p50,
        p99_ms=p99,
        mean_ms=mean,
        short_reads=short,
    )


def direct_io_supported(path: str | os.PathLike) -> bool:
    """Whether ``path`` (a regular file) can be read with ``O_DIRECT``: opens it with
    ``O_DIRECT`` and reads :data:`ALIGN` bytes at offset 0 into a page-aligned buffer.

    Raises:
      OSError: the file cannot be opened or read for another reason than ``O_DIRECT``
        being refused (``EINVAL``, ``EOPNOTSUPP``).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    buf = _IOBuffer(ALIGN)
    try:
        os.preadv(fd, [buf.view], 0)
        return True
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    finally:
        buf.close()
        os.close(fd)


def folder_writable(folder: str | os.PathLike) -> tuple[bool, str]:
    """Whether the probe may write its test file into ``folder``; returns
    ``(writable, reason)`` where ``reason`` says why not ('' when writable).

    Not writable when the file system is mounted read-only (``statvfs`` ``ST_RDONLY``),
    the process lacks write permission (``os.access``), or the folder's mode has no
    write bit at all: root ignores permission bits, so a data folder marked read-only
    (e.g. ``r-xr-xr-x``) is respected even when running as root.
    """
    folder = os.fspath(folder)
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return False, f"{folder} is on a read-only file system"
    if not os.access(folder, os.W_OK):
        return False, f"no write permission on {folder}"
    mode = os.stat(folder).st_mode
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return False, f"{folder} has no write bits (mode {stat.filemode(mode)}); treated as read-only"
    return True, ""


def write_test_file(folder: str | os.PathLike, file_bytes: int, seed: int | None = None) -> Path:
    """Write a file of ``file_bytes`` random bytes (so compression or deduplication
    cannot shortcut the reads) into ``folder``, fsync it and drop it from the page
    cache (``POSIX_FADV_DONTNEED``). The name starts with :data:`TEST_FILE_PREFIX`;
    the caller deletes it. A partly written file is deleted before the error leaves.

    Raises:
      ValueError: ``file_bytes`` is below :data:`MIN_FILE_BYTES`.
      OSError: creating or writing failed (message names the file).
    """
    if file_bytes < MIN_FILE_BYTES:
        raise ValueError(f"file_bytes ({file_bytes}) must be at least {MIN_FILE_BYTES}")
    file_bytes = align_up(file_bytes)
    path = Path(folder) / f"{TEST_FILE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.tmp"
    rng = np.random.default_rng(seed)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        left = file_bytes
        while left:
            chunk = rng.bytes(min(_WRITE_CHUNK, left))
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            left -= len(chunk)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except BaseException as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"writing disk-probe test file {path}: {exc.strerror}") from exc
        raise
    os.close(fd)
    return path


def scan_files(root: str | os.PathLike, target_bytes: int, max_files: int) -> tuple[int, list[Path], bool]:
    """Walk ``root`` (not following symlinks) once.

    Returns:
      ``(total_bytes, largest, capped)``: bytes of all regular files seen; the fewest
      largest files (at most ``max_files``, largest first) whose sizes add up to at
      least ``target_bytes`` (all of them if they add up to less); whether the walk
      stopped at :data:`MAX_SCAN_ENTRIES`. Unreadable folders are skipped. Files named
      with :data:`TEST_FILE_PREFIX` are ignored.
    """
    root = Path(root)
    if root.is_file():
        return root.stat().st_size, [root], False
    heap: list[tuple[int, str]] = []  # min-heap of (size, path)
    kept = 0
    total = 0
    seen = 0
    capped = False
    stack = [os.fspath(root)]
    while stack and not capped:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                seen += 1
                if seen > MAX_SCAN_ENTRIES:
                    capped = True
                    break
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                        continue
                    if not e.is_file(follow_symlinks=False) or e.name.startswith(TEST_FILE_PREFIX):
                        continue
                    size = e.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                total += size
                if size <= 0:
                    continue
                heapq.heappush(heap, (size, e.path))
                kept += size
                while len(heap) > max_files or (len(heap) > 1 and kept - heap[0][0] >= target_bytes):
                    kept -= heapq.heappop(heap)[0]
    largest = [Path(p) for _, p in sorted(heap, reverse=True)]
    return total, largest, capped


def _max_open_files() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, min(1024, soft // 4))


# --------------------------------------------------------------------------- probe


def probe_disk(
    path: str | os.PathLike,
    *,
    record_bytes: int,
    dataset_bytes: int = 0,
    queue_depth: int = 4,
    duration_s: float = 2.0,
    file_bytes: int | None = None,
) -> DiskReport:
    """Measure the data's file system: sequential 1 MiB, random 4 KiB and random
    record-size reads with the page cache bypassed, record-size reads at depth
    ``queue_depth``, and buffered record-size reads as the loader sees them.

    If the data folder is writable the probe writes a test file of ``file_bytes``
    random bytes there (default :data:`DEFAULT_FILE_BYTES`, shrunk to a quarter of the
    free space if needed) and deletes it before returning, also on error. Otherwise it
    reads the largest existing files under ``path`` (their concatenation, up to
    ``file_bytes``) and writes nothing.

    Args:
      path: the data folder (or one data file).
      record_bytes: bytes per record (median JPEG size), > 0.
      dataset_bytes: bytes of the data set; 0 = sum the regular files under ``path``.
      queue_depth: N, reader threads of the input pipeline, >= 1.
      duration_s: seconds per measurement (plus a short warm-up), > 0.
      file_bytes: test-file size / read-space cap in bytes.

    Returns:
      :class:`DiskReport` (rates in MB/s with 1 MB = 1e6 bytes, latencies in ms).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: ``record_bytes``, ``queue_depth``, ``duration_s`` or ``file_bytes``
        out of range.
      DiskProbeError: the folder is not writable and holds no readable file large
        enough for the reads.
    """
    p = Path(path).absolute()
    _check_probe_args(p, record_bytes, queue_depth, duration_s, file_bytes)
    folder = p if p.is_dir() else p.parent
    notes: list[str] = ["MB/s uses 1 MB = 1e6 bytes; latencies are per read call, in ms."]
    target, writable, reason = _test_file_size(
        folder, file_bytes if file_bytes is not None else DEFAULT_FILE_BYTES, notes)
    scan_total = 0
    largest: list[Path] = []
    if dataset_bytes <= 0 or not writable:
        scan_total, largest, capped = scan_files(p, target, _max_open_files())
        if capped:
            notes.append(f"stopped scanning {p} after {MAX_SCAN_ENTRIES} entries")
    if dataset_bytes <= 0:
        dataset_bytes = scan_total
        notes.append(f"dataset_bytes summed over the files under {p}")

    test_file: Path | None = None
    try:
        if writable:
            try:
                test_file = write_test_file(folder, target)
            except OSError as exc:
                if exc.errno not in _NOT_WRITABLE_ERRNOS:
                    raise
                reason = f"cannot write in {folder}: {exc.strerror}"
                _, largest, _ = scan_files(p, target, _max_open_files())
        if test_file is not None:
            paths, source = [test_file], "test-file"
        else:
            paths, source = largest, "existing-files"
            _note_existing_files(p, paths, reason, notes)
        method, space_bytes = _read_method(p, folder, paths, record_bytes, notes)
        stats = _measure_all(paths, method, record_bytes, queue_depth, duration_s)
    finally:
        if test_file is not None:
            test_file.unlink(missing_ok=True)

    buffered = stats["buffered_random_record"]
    if buffered.seconds < 0.9 * duration_s:
        notes.append(
            f"buffered_random_record read the whole read space ({buffered.ops} records) in "
            f"{buffered.seconds:.2f} s, before duration_s ({duration_s} s) ran out"
        )
    ram = int(psutil.virtual_memory().total)
    notes.append(f"data set {dataset_bytes / 1e9:.2f} GB; RAM {ram / 1e9:.2f} GB"
                 + ("" if dataset_bytes > 0 else " (data set size unknown: 0 bytes found)"))
    return DiskReport(
        path=str(p), method=method, source=source, file_bytes=space_bytes,
        record_bytes=record_bytes, queue_depth=queue_depth, **stats,
        dataset_bytes=dataset_bytes, ram_bytes=ram, notes=tuple(notes),
    )


def _check_probe_args(p: Path, record_bytes: int, queue_depth: int, duration_s: float,
                      file_bytes: int | None) -> None:
    """Raise FileNotFoundError / ValueError (naming ``p``) for :func:`probe_disk`."""
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, f"Disk probe: data path {p} does not exist", str(p))
    _require([
        (record_bytes > 0, f"record_bytes must be positive, got {record_bytes}"),
        (queue_depth >= 1, f"queue_depth must be >= 1, got {queue_depth}"),
        (duration_s > 0, f"duration_s must be positive, got {duration_s}"),
        (file_bytes is None or file_bytes >= MIN_FILE_BYTES,
         f"file_bytes ({file_bytes}) must be at least {MIN_FILE_BYTES}"),
    ], f" (path {p})")


def _test_file_size(folder: Path, target: int, notes: list[str]) -> tuple[int, bool, str]:
    """``(bytes, writable, reason not)`` of the test file: ``target`` shrunk to a
    quarter of the free space when needed; not writable when that is below
    :data:`MIN_FILE_BYTES` or :func:`folder_writable` says so."""
    writable, reason = folder_writable(folder)
    if writable:
        free = shutil.disk_usage(folder).free
        if free // 4 < target:
            shrunk = (free // 4 // ALIGN) * ALIGN
            if shrunk < MIN_FILE_BYTES:
                return target, False, f"only {free} bytes free on {folder}"
            notes.append(f"test file shrunk from {target} to {shrunk} bytes ({free} bytes free)")
            target = shrunk
    return target, writable, reason


def _note_existing_files(p: Path, paths: list[Path], reason: str, notes: list[str]) -> None:
    """Note the existing files read instead of a test file.

    Raises:
      DiskProbeError: there are none.
    """
    if not paths:
        raise DiskProbeError(f"Disk probe: {p} is not writable ({reason}) and holds no files to read")
    sizes = sorted(q.stat().st_size for q in paths)
    notes.append(
        f"not writing: {reason}; read the {len(paths)} largest files under {p} "
        f"(median {sizes[len(sizes) // 2]} bytes) as one concatenated space; a read "
        "that crosses a file end is one read call per file, timed as one read"
    )


def _read_method(p: Path, folder: Path, paths: list[Path], record_bytes: int,
                 notes: list[str]) -> tuple[str, int]:
    """``(method, usable bytes of paths)``: ``'O_DIRECT'`` where the file system takes
    it, else ``'fadvise'``.

    Raises:
      DiskProbeError: the files hold fewer usable bytes than one read.
    """
    direct_ok = direct_io_supported(paths[0])
    if not direct_ok:
        notes.append(
            f"O_DIRECT refused on {folder}; buffered reads with the cache dropped "
            "(POSIX_FADV_DONTNEED) before and after each read"
        )
    space_bytes = sum(
        ((q.stat().st_size // ALIGN) * ALIGN) if direct_ok else q.stat().st_size for q in paths
    )
    need = max(SEQ_BLOCK_BYTES, align_up(record_bytes))
    if space_bytes < need:
        raise DiskProbeError(
            f"Disk probe: the files read under {p} hold {space_bytes} usable bytes, "
            f"fewer than one read of {need} bytes"
        )
    return ("O_DIRECT" if direct_ok else "fadvise"), space_bytes


def _measure_all(paths: list[Path], method: str, record_bytes: int, queue_depth: int,
                 duration_s: float) -> dict[str, ReadStats]:
    """The five :class:`DiskReport` read measurements, by field name."""
    def m(block: int, pattern: str, qd: int, direct: bool = True, **kw) -> ReadStats:
        return measure_reads(paths, block, pattern, qd, duration_s, direct, method=method, **kw)

    stats = {
        "sequential": m(SEQ_BLOCK_BYTES, "seq", 1),
        "random_4k": m(SMALL_BLOCK_BYTES, "rand", 1),
        "random_record": m(record_bytes, "rand", 1),
        "random_record_qd": m(record_bytes, "rand", queue_depth),
    }
    # Buffered, as the loader sees it in its first epoch: start cold, read each
    # record slot once in shuffled order, and let the kernel cache and read ahead as
    # it would for the input pipeline. ('rand' would re-read a small test file's
    # blocks from the cache and report RAM speed.)
    drop_page_cache(paths)
    stats["buffered_random_record"] = m(record_bytes, "shuffle", queue_depth, direct=False,
                                        warmup_s=0.0)
    return stats


def drop_page_cache(paths: Sequence[str | os.PathLike]) -> bool:
    """Evict ``paths`` from the page cache: ``posix_fadvise(POSIX_FADV_DONTNEED)`` on
    each, after an ``fsync`` of the ones this process may write (dirty pages are not
    dropped). Works without root. Returns False where ``posix_fadvise`` is unavailable.

    Raises:
      OSError: a file cannot be opened.
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            if os.access(p, os.W_OK):
                os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True
