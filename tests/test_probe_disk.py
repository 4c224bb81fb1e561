"""Tests for probes/disk.py: record round trips, exact byte accounting, offsets,
the read-only (existing files) path, clean-up, and errors. Durations are tiny; no
speed is asserted (see bench/disk_vs_fio.py for figures)."""

from __future__ import annotations

import os
import re
import stat

import numpy as np
import pytest

import probes.disk as disk
from probes.disk import ALIGN, TEST_FILE_PREFIX, align_up, measure_reads, probe_disk, random_offsets, write_test_file
from probes.records import DiskReport, ReadStats

MiB = 1 << 20
FAST = dict(duration_s=0.02)


def _snapshot(folder):
    """(relative path, size, mtime_ns) of everything under ``folder``."""
    out = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            out.append((os.path.relpath(p, folder), st.st_size, st.st_mtime_ns))
    return sorted(out)


def _random_file(path, nbytes, seed=0):
    path.write_bytes(np.random.default_rng(seed).bytes(nbytes))
    return path


@pytest.fixture
def preadv_log(monkeypatch):
    """Wrap os.preadv to log (fd, offset, requested bytes, returned bytes)."""
    log = []
    real = os.preadv

    def spy(fd, buffers, offset, *args):
        n = real(fd, buffers, offset, *args)
        log.append((fd, offset, sum(memoryview(b).nbytes for b in buffers), n))
        return n

    monkeypatch.setattr(os, "preadv", spy)
    return log


@pytest.fixture(scope="module")
def method(tmp_path_factory):
    """How the probe bypasses the cache on the test machine's temporary folder."""
    f = _random_file(tmp_path_factory.mktemp("direct") / "probe-direct", ALIGN)
    m = "O_DIRECT" if disk.direct_io_supported(f) else "fadvise"
    f.unlink()
    return m


# ----------------------------------------------------------------- records


def test_records_round_trip_through_json(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _random_file(data / "a.jpg", 300_000)
    rep = probe_disk(data, record_bytes=100_000, queue_depth=2, file_bytes=4 * MiB, **FAST)
    assert isinstance(rep.random_record_qd, ReadStats)
    back = DiskReport.from_json(rep.to_json())
    assert back == rep
    assert isinstance(back.notes, tuple) and isinstance(back.sequential, ReadStats)
    saved = rep.save(tmp_path / "disk.json")
    assert DiskReport.load(saved) == rep
    s = rep.random_4k
    assert ReadStats.from_dict(s.to_dict()) == s


# ----------------------------------------------------------------- accounting


@pytest.mark.parametrize("pattern", ["seq", "rand"])
@pytest.mark.parametrize("block", [4096, 110_000, MiB])
@pytest.mark.parametrize("qd", [1, 3])
def test_bytes_read_is_exact(tmp_path, preadv_log, method, pattern, block, qd):
    f = write_test_file(tmp_path, 8 * MiB)
    s = measure_reads(f, block, pattern, qd, 0.02, True, method=method, warmup_s=0.0)
    expected_block = align_up(block) if method == "O_DIRECT" else block
    assert s.block_bytes == expected_block and s.requested_bytes == block
    assert s.ops > 0 and s.queue_depth == qd and s.pattern == pattern and s.direct
    assert s.short_reads == 0
    assert s.bytes_read == s.ops * s.block_bytes
    # What the read calls returned, counted independently.
    assert len(preadv_log) == s.ops
    assert sum(n for *_, n in preadv_log) == s.bytes_read
    assert all(req == expected_block for _, _, req, _ in preadv_log)
    assert s.iops == pytest.approx(s.ops / s.seconds)
    assert s.mb_per_s == pytest.approx(s.bytes_read / s.seconds / 1e6)
    assert 0 < s.p50_ms <= s.p99_ms


def test_random_offsets_inside_file_and_aligned(tmp_path, preadv_log, method):
    f = write_test_file(tmp_path, 8 * MiB)
    size = f.stat().st_size
    s = measure_reads(f, 110_000, "rand", 2, 0.02, True, method=method, warmup_s=0.0)
    offs = [off for _, off, _, _ in preadv_log]
    assert len(offs) == s.ops > 10
    assert all(off % ALIGN == 0 for off in offs)
    assert all(0 <= off and off + s.block_bytes <= size for off in offs)
    assert len(set(offs)) > 1


def test_random_offsets_cover_every_slot():
    rng = np.random.default_rng(1)
    offs = random_offsets(5 * ALIGN + 100, 2 * ALIGN, 2000, rng)
    # Slots 0..3 (offset + 8 KiB <= 20580 bytes), all of them drawn, none beyond.
    assert sorted(set(offs.tolist())) == [0, ALIGN, 2 * ALIGN, 3 * ALIGN]
    with pytest.raises(ValueError, match="does not fit"):
        random_offsets(ALIGN, 2 * ALIGN, 1, rng)


def test_sequential_reads_walk_and_wrap(tmp_path, preadv_log, method):
    f = write_test_file(tmp_path, 4 * MiB)
    s = measure_reads(f, MiB, "seq", 1, 0.02, True, method=method, warmup_s=0.0, max_ops=9)
    assert s.ops == 9  # the op bound holds
    assert [off for _, off, _, _ in preadv_log] == [(i % 4) * MiB for i in range(9)]


@pytest.mark.parametrize("qd", [1, 2])
def test_shuffle_reads_every_slot_once_across_warmup(tmp_path, preadv_log, qd):
    f = write_test_file(tmp_path, 2 * MiB)  # 20 whole slots of 100,000 bytes
    s = measure_reads(f, 100_000, "shuffle", qd, 5.0, False, warmup_s=0.0)
    offs = [off for _, off, _, _ in preadv_log]
    assert sorted(offs) == [k * 100_000 for k in range(20)]  # all slots, each once
    assert s.ops == 20 and s.bytes_read == 20 * 100_000
    # With a warm-up the measurement goes on where it stopped: still no slot twice.
    preadv_log.clear()
    s = measure_reads(f, 100_000, "shuffle", qd, 5.0, False, warmup_s=0.001, max_ops=8)
    offs = [off for _, off, _, _ in preadv_log]
    assert len(offs) == len(set(offs)) and s.ops <= 8


@pytest.mark.parametrize("pattern", ["seq", "rand"])
def test_op_bound_is_exact_over_threads(tmp_path, preadv_log, method, pattern):
    f = write_test_file(tmp_path, 4 * MiB)
    s = measure_reads(f, ALIGN, pattern, 3, 30.0, True, method=method, warmup_s=0.0, max_ops=10)
    assert s.ops == 10 == len(preadv_log)  # stopped by the op bound, long before 30 s


def test_concatenated_files_are_one_read_space(tmp_path, preadv_log):
    sizes = [3 * ALIGN + 7, 2 * ALIGN, 5 * ALIGN + 4000]
    files = [_random_file(tmp_path / f"f{i}", n, seed=i) for i, n in enumerate(sizes)]
    # Buffered reads use every byte; seq reads of 4 KiB + 1000 bytes cross file ends.
    s = measure_reads(files, ALIGN + 1000, "seq", 1, 0.02, False, warmup_s=0.0, max_ops=20)
    assert s.ops == 20 and s.short_reads == 0
    assert s.bytes_read == 20 * (ALIGN + 1000) == sum(n for *_, n in preadv_log)
    assert len(preadv_log) > s.ops  # some reads were split over two files

    space = disk._ReadSpace(files, direct=True)  # O_DIRECT view: aligned lengths
    try:
        assert space.lengths == [3 * ALIGN, 2 * ALIGN, 5 * ALIGN]
        pieces = space.pieces(2 * ALIGN, 4 * ALIGN)
        assert [(boff, foff, n) for _, foff, boff, n in pieces] == [
            (0, 2 * ALIGN, ALIGN), (ALIGN, 0, 2 * ALIGN), (3 * ALIGN, 0, ALIGN)]
    finally:
        space.close()


def test_fadvise_method_accounts_exactly(tmp_path, preadv_log):
    f = write_test_file(tmp_path, 4 * MiB)
    s = measure_reads(f, 110_000, "rand", 2, 0.02, True, method="fadvise", warmup_s=0.0)
    assert s.block_bytes == 110_000  # no rounding without O_DIRECT
    assert s.bytes_read == s.ops * 110_000 == sum(n for *_, n in preadv_log)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pattern="zigzag"), "pattern"),
        (dict(block_bytes=0), "block_bytes"),
        (dict(queue_depth=0), "queue_depth"),
        (dict(duration_s=0), "duration_s"),
        (dict(method="mmap"), "method"),
        (dict(block_bytes=8 * MiB), "do not fit"),
    ],
)
def test_measure_reads_rejects_bad_arguments(tmp_path, kwargs, match):
    f = write_test_file(tmp_path, 2 * MiB)
    args = dict(block_bytes=4096, pattern="rand", queue_depth=1, duration_s=0.01) | kwargs
    with pytest.raises(ValueError, match=match):
        measure_reads(f, **args)


# ----------------------------------------------------------------- probe_disk


def test_normal_run_uses_a_test_file_and_leaves_nothing(tmp_path, preadv_log):
    data = tmp_path / "data"
    (data / "cls").mkdir(parents=True)
    _random_file(data / "cls" / "a.jpg", 123_456)
    _random_file(data / "cls" / "b.jpg", 65_000)
    before = _snapshot(data)
    rep = probe_disk(data, record_bytes=100_000, queue_depth=3, file_bytes=8 * MiB, **FAST)
    assert _snapshot(data) == before
    assert rep.source == "test-file" and rep.path == str(data)
    assert rep.file_bytes == 8 * MiB and rep.queue_depth == 3 and rep.record_bytes == 100_000
    assert rep.dataset_bytes == 123_456 + 65_000  # summed when not given
    assert rep.ram_bytes > 0 and not hasattr(rep, "fits_page_cache")  # the planner decides
    assert any("1e6" in n for n in rep.notes)
    assert rep.random_record_qd.queue_depth == 3 and rep.random_record.queue_depth == 1
    assert rep.sequential.requested_bytes == MiB and rep.random_4k.requested_bytes == 4096
    assert not rep.buffered_random_record.direct and rep.random_record.direct
    assert rep.buffered_random_record.pattern == "shuffle"
    for s in (rep.sequential, rep.random_4k, rep.random_record, rep.random_record_qd,
              rep.buffered_random_record):
        assert s.ops > 0 and s.bytes_read == s.ops * s.block_bytes
    # Every read went to the test file and stayed inside it.
    assert all(off + req <= rep.file_bytes for _, off, req, _ in preadv_log)


def test_given_dataset_size_is_reported_as_measured_not_judged(tmp_path):
    rep = probe_disk(tmp_path, record_bytes=4096, dataset_bytes=10**15, file_bytes=2 * MiB, **FAST)
    assert rep.dataset_bytes == 10**15 and rep.ram_bytes > 0
    assert any("1000000.00 GB" in n and "RAM" in n for n in rep.notes)
    assert not any("fits" in n or "larger than" in n for n in rep.notes)


def test_old_report_with_the_dropped_page_cache_verdict_still_loads(tmp_path):
    rep = probe_disk(tmp_path, record_bytes=4096, file_bytes=2 * MiB, **FAST)
    old = rep.to_dict() | {"fits_page_cache": True}
    assert DiskReport.from_dict(old) == rep


def test_test_file_removed_when_a_measurement_fails(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(disk, "measure_reads", boom)
    made = []
    real_write = disk.write_test_file
    monkeypatch.setattr(disk, "write_test_file", lambda *a, **k: made.append(real_write(*a, **k)) or made[-1])
    with pytest.raises(RuntimeError, match="simulated"):
        probe_disk(tmp_path, record_bytes=4096, file_bytes=2 * MiB, **FAST)
    assert len(made) == 1 and made[0].name.startswith(TEST_FILE_PREFIX)  # it was written
    assert _snapshot(tmp_path) == []  # and removed


def test_read_only_folder_reads_existing_files_and_writes_nothing(tmp_path, monkeypatch, preadv_log):
    data = tmp_path / "ro"
    (data / "x").mkdir(parents=True)
    big = _random_file(data / "x" / "big.jpg", 3 * MiB + 123)
    mid = _random_file(data / "mid.jpg", 2 * MiB + 5000, seed=1)
    _random_file(data / "x" / "small.jpg", 9000, seed=2)
    before = _snapshot(data)

    monkeypatch.setattr(disk, "folder_writable", lambda folder: (False, "simulated read-only"))

    def no_write(*a, **k):
        raise AssertionError("the probe tried to write a test file")

    monkeypatch.setattr(disk, "write_test_file", no_write)
    rep = probe_disk(data, record_bytes=100_000, queue_depth=2, file_bytes=4 * MiB, **FAST)

    assert rep.source == "existing-files"
    assert _snapshot(data) == before
    # The largest files reaching file_bytes: big (3 MiB) + mid; not the small one.
    if rep.method == "O_DIRECT":
        assert rep.file_bytes == (big.stat().st_size // ALIGN + mid.stat().st_size // ALIGN) * ALIGN
    else:
        assert rep.file_bytes == big.stat().st_size + mid.stat().st_size
    assert any("simulated read-only" in n for n in rep.notes)
    assert rep.sequential.bytes_read == rep.sequential.ops * MiB
    read_fds = {fd for fd, *_ in preadv_log}
    assert len(read_fds) >= 2  # both files were read


def test_mode_without_write_bits_counts_as_read_only_even_for_root(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    assert disk.folder_writable(folder) == (True, "")
    folder.chmod(0o555)
    try:
        ok, reason = disk.folder_writable(folder)
        assert not ok and str(folder) in reason
    finally:
        folder.chmod(stat.S_IRWXU)


def test_read_only_folder_without_files_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "folder_writable", lambda folder: (False, "simulated"))
    with pytest.raises(disk.DiskProbeError, match=re.escape(str(tmp_path))):
        probe_disk(tmp_path, record_bytes=4096, **FAST)


def test_fadvise_fallback_when_o_direct_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "direct_io_supported", lambda path: False)
    rep = probe_disk(tmp_path, record_bytes=100_000, file_bytes=4 * MiB, **FAST)
    assert rep.method == "fadvise" and rep.random_record.block_bytes == 100_000
    assert any("O_DIRECT refused" in n for n in rep.notes)
    assert _snapshot(tmp_path) == []


def test_missing_path_raises_a_clear_error(tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(FileNotFoundError, match="does not exist") as ei:
        probe_disk(missing, record_bytes=100_000)
    assert str(missing) in str(ei.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(record_bytes=0), "record_bytes"), (dict(queue_depth=0), "queue_depth"),
     (dict(duration_s=-1.0), "duration_s"), (dict(file_bytes=1000), "file_bytes")],
)
def test_probe_disk_rejects_bad_arguments(tmp_path, kwargs, match):
    args = dict(record_bytes=4096) | kwargs
    with pytest.raises(ValueError, match=match):
        probe_disk(tmp_path, **args)
    assert _snapshot(tmp_path) == []
