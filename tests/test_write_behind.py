"""The pack's write-behind (``trainers.pack._WriteBehind``): which byte ranges of a
shard it hands to ``sync_file_range`` and drops from the page cache, and that a pack
is the same byte for byte whether it drops every few records or never."""

from __future__ import annotations

import os

import pytest

from trainers import pack as pack_mod
from trainers.options import PackOptions
from test_pack_fast_path import _tree
from test_jpeg_check import good_jpegs

WB = pack_mod._WriteBehind


class _Calls:
    """A stand-in for libc's sync_file_range and os.posix_fadvise that records calls."""

    def __init__(self):
        self.log: list[tuple] = []

    def sync(self, fd, offset, nbytes, flags):
        self.log.append(("sync", offset, nbytes, flags))
        return 0

    def fadvise(self, fd, offset, nbytes, advice):
        self.log.append(("drop", offset, nbytes, advice))


@pytest.fixture
def calls(monkeypatch):
    c = _Calls()
    monkeypatch.setattr(WB, "_SYNC", c.sync)
    monkeypatch.setattr(WB, "WINDOW", 1000)
    monkeypatch.setattr(pack_mod.os, "posix_fadvise", c.fadvise)
    return c


def _grow(path, n: int) -> None:
    with open(path, "ab") as f:
        f.write(b"x" * n)


def test_each_window_is_started_then_waited_for_and_dropped(tmp_path, calls):
    path = tmp_path / "shard.tmp"
    path.write_bytes(b"")
    wb = WB(path)
    wb.poll()
    assert calls.log == []  # nothing written yet
    _grow(path, 999)
    wb.poll()
    assert calls.log == []  # less than a window
    _grow(path, 1)
    wb.poll()  # 1000 bytes: started, nothing to drop yet
    assert calls.log == [("sync", 0, 1000, WB._WRITE)]
    _grow(path, 2500)
    wb.poll()  # 3500: start 1000..3500, then wait for and drop 0..1000
    assert calls.log[1:] == [("sync", 1000, 2500, WB._WRITE), ("sync", 0, 1000, WB._WAIT_ALL),
                             ("drop", 0, 1000, os.POSIX_FADV_DONTNEED)]
    _grow(path, 1000)
    wb.poll()
    assert calls.log[4:] == [("sync", 3500, 1000, WB._WRITE), ("sync", 1000, 2500, WB._WAIT_ALL),
                             ("drop", 1000, 2500, os.POSIX_FADV_DONTNEED)]
    _grow(path, 10)
    wb.close()  # the rest is started, not waited for
    assert calls.log[7:] == [("sync", 4500, 10, WB._WRITE)]
    assert path.stat().st_size == 4510
    wb.poll()  # closed: nothing more
    assert len(calls.log) == 8


def test_a_failed_wait_drops_nothing(tmp_path, calls, monkeypatch):
    """Pages whose writeback could not be waited for (an I/O error) are not dropped."""
    path = tmp_path / "shard.tmp"
    path.write_bytes(b"")
    wb = WB(path)
    _grow(path, 1000)
    wb.poll()
    monkeypatch.setattr(WB, "_SYNC", lambda fd, o, n, f: (calls.sync(fd, o, n, f), -1)[1])
    _grow(path, 1000)
    wb.poll()
    assert [c[0] for c in calls.log] == ["sync", "sync", "sync"]
    wb.close()


def test_without_sync_file_range_it_does_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(WB, "_SYNC", False)
    path = tmp_path / "shard.tmp"
    path.write_bytes(b"y" * 5000)
    wb = WB(path)
    assert wb.fd == -1
    wb.poll()
    wb.close()
    assert path.read_bytes() == b"y" * 5000


@pytest.mark.skipif(pack_mod._load_sync_file_range() is None, reason="no sync_file_range")
def test_the_real_calls_leave_the_file_as_written(tmp_path, monkeypatch):
    monkeypatch.setattr(WB, "WINDOW", 8192)
    path = tmp_path / "shard.tmp"
    data = os.urandom(100_000)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    wb = WB(path)
    assert wb.fd >= 0
    for i in range(0, len(data), 3000):
        os.write(fd, data[i:i + 3000])
        wb.poll()
    os.close(fd)
    assert wb.dropped > 0 and wb.started > wb.dropped
    wb.close()
    assert path.read_bytes() == data


def test_a_pack_is_the_same_dropping_every_few_records_or_never(tmp_path, monkeypatch):
    src = _tree(tmp_path / "src", good_jpegs()["pillow baseline"])

    def shards(out, window):
        monkeypatch.setattr(WB, "WINDOW", window)
        pack_mod.pack_folder(src, out, PackOptions(num_shards=2, val_fraction=0.2))
        return {p.name: p.read_bytes() for p in sorted(out.rglob("*array_record*"))}

    polls = []
    real = WB.poll
    monkeypatch.setattr(WB, "poll", lambda self: (polls.append(1), real(self))[1])
    monkeypatch.setattr(pack_mod, "FAST_BATCH", 2)  # it looks after each batch
    often = shards(tmp_path / "often", 4096)
    assert len(polls) > 4  # the write-behind looked within each shard
    never = shards(tmp_path / "never", 1 << 40)
    assert often and often == never


def test_a_shard_is_on_the_disk_before_its_name_and_sidecar(tmp_path, monkeypatch):
    """Each shard is fsynced under its temporary name: the final name and the sidecar
    that vouches for it come after (so a power loss never leaves a kept shard whose
    records did not reach the disk)."""
    src = _tree(tmp_path / "src", good_jpegs()["pillow baseline"])
    out = tmp_path / "out"
    seen = []
    real = pack_mod._fsync_file

    def spy(path):
        final = path.with_name(path.name[:-len(".tmp")])
        seen.append((path.name, final.exists(), pack_mod._sidecar(final).exists()))
        real(path)

    monkeypatch.setattr(pack_mod, "_fsync_file", spy)
    res = pack_mod.pack_folder(src, out, PackOptions(num_shards=2, val_fraction=0.2))
    shards = sorted(p.name for p in out.glob("*array_record-*") if not p.name.endswith(".json"))
    assert res.packed > 0 and len(shards) == 3  # 2 train shards, 1 validation shard
    assert sorted(name[:-len(".tmp")] for name, _, _ in seen) == shards
    assert all(name.endswith(".tmp") and not final and not side for name, final, side in seen)


def test_a_failed_sync_is_a_failed_write_of_that_shard(tmp_path, monkeypatch):
    """A shard whose sync fails (EIO from the disk) is not kept: the pack ends in the
    one-line write error naming it, leaves no partial file, and a rerun completes."""
    import errno

    src = _tree(tmp_path / "src", good_jpegs()["pillow baseline"])
    out = tmp_path / "out"
    real = pack_mod._fsync_file

    def failing(path):
        if "train.array_record-00001" in path.name:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(path)

    monkeypatch.setattr(pack_mod, "_fsync_file", failing)
    opts = PackOptions(num_shards=2, val_fraction=0.2)
    with pytest.raises(OSError, match=r"writing .*train\.array_record-00001-of-00002\.tmp failed: "
                                      r"Input/output error"):
        pack_mod.pack_folder(src, out, opts)
    assert list(out.glob("*.tmp")) == [] and not pack_mod.is_packed(out)
    assert not (out / "autotune_images-train.array_record-00001-of-00002").exists()
    monkeypatch.setattr(pack_mod, "_fsync_file", real)
    res = pack_mod.pack_folder(src, out, opts)
    assert res.complete and res.packed > 0


def test_a_sidecar_cut_short_by_a_power_loss_means_the_shard_is_redone(tmp_path):
    """Sidecars are not fsynced: after a power loss one may be empty or cut short.
    Such a sidecar reads as "not complete", so the rerun writes that shard again and
    keeps the others; the result is the same pack."""
    import json

    src = _tree(tmp_path / "src", good_jpegs()["pillow baseline"])
    ref, out = tmp_path / "ref", tmp_path / "out"
    opts = PackOptions(num_shards=3, val_fraction=0.2)
    pack_mod.pack_folder(src, ref, opts)
    pack_mod.pack_folder(src, out, opts)
    (out / pack_mod.PACK_SUMMARY).unlink()  # as if the power went before the end
    sidecars = sorted(out.glob("*array_record-*.json"))
    sidecars[0].write_text("")
    sidecars[1].write_text(sidecars[1].read_text()[:20])
    res = pack_mod.pack_folder(src, out, opts)
    assert res.resumed_shards == len(sidecars) - 2
    for p in sorted(ref.glob("*array_record-*")):
        got = (out / p.name).read_bytes()
        if p.suffix == ".json":
            assert json.loads(got) == json.loads(p.read_bytes())
        else:
            assert got == p.read_bytes()


def test_the_write_behind_benchmark_runs_and_keeps_its_points(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "write_behind.py"
    out = tmp_path / "points.json"
    proc = subprocess.run([sys.executable, str(bench), "--dir", str(tmp_path), "--gb", "0.04",
                           "--repeats", "1", "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [r["write_behind"] for r in runs] == [False, True]
    assert all(r["bytes"] == 2 * (16 << 20) and r["wall_s"] > 0 for r in runs)
    assert not (tmp_path / "write_behind_bench.bin").exists()


@pytest.mark.skipif(getattr(pack_mod.preprocess._jpegcrop, "prefetch", None) is None,
                    reason="trainers._jpegcrop (with prefetch) not built")
def test_each_file_is_prefetched_once_ahead_of_its_check(tmp_path, monkeypatch):
    """The general path of the shard loop (files the C loop does not take) asks for
    every member's file once, PREFETCH_AHEAD members ahead of reading it (the first
    ones before the loop), and the shard is the one the C loop writes."""
    import types

    src = _tree(tmp_path / "src", good_jpegs()["pillow baseline"])
    ext = pack_mod.preprocess._jpegcrop
    events: list[tuple[str, str]] = []
    real_prepare = pack_mod._prepare
    fake = types.SimpleNamespace(  # no pack_files: every member takes the general path
        check=ext.check, decode_crop=ext.decode_crop, stat_lines=ext.stat_lines,
        prefetch=lambda p: (events.append(("ahead", p)), ext.prefetch(p))[1])
    monkeypatch.setattr(pack_mod, "_prepare",
                        lambda p, *a: (events.append(("read", p)), real_prepare(p, *a))[1])
    monkeypatch.setattr(pack_mod, "PREFETCH_AHEAD", 3)
    monkeypatch.setattr(pack_mod.preprocess, "_jpegcrop", fake)
    with_ahead = pack_mod.pack_folder(src, tmp_path / "a", PackOptions(num_shards=1))
    ahead = [p for e, p in events if e == "ahead"]
    reads = [p for e, p in events if e == "read"]
    assert len(ahead) == len(set(ahead)) == len(reads) == with_ahead.input_images
    for p in reads:  # each file read was asked for 3 members (or more, at the start) before
        assert events.index(("ahead", p)) < events.index(("read", p))
    assert [e for e, _ in events[:3]] == ["ahead"] * 3  # the first 3, before the loop
    for i, p in enumerate(reads):  # never more than 3 + 1 asked for ahead of a read
        asked = sum(1 for e, _ in events[:events.index(("read", p))] if e == "ahead")
        assert asked <= ahead.index(p) + 4
    monkeypatch.setattr(pack_mod.preprocess, "_jpegcrop", ext)  # the C loop
    monkeypatch.setattr(pack_mod, "_prepare", real_prepare)
    monkeypatch.setattr(pack_mod, "PREFETCH_AHEAD", 10**6)  # as far as it goes
    pack_mod.pack_folder(src, tmp_path / "b", PackOptions(num_shards=1))
    shard = "autotune_images-train.array_record-00000-of-00001"
    assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
