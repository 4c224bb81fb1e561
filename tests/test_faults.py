"""Fault injection: nothing lost, nothing hangs (issue 8).

Each fault is made on purpose and its outcome asserted:

* bad and odd images while packing: converted (the stored record decodes with
  simplejpeg as RGB) or skipped and listed with the reason; input = packed + skipped;
* packing killed with SIGKILL at chosen points (and at a free-running moment) and run
  again: byte-identical to an uninterrupted pack, never taken for finished before;
* a full disk while packing or checkpointing: an error naming the file and the
  bytes; complete shards / the previous checkpoint survive;
* damaged shards (flipped bytes, truncation): named with shard and record at read
  time; ``on_bad_record`` skip counts them, fail stops with that message; once
  through ``train_and_evaluate``;
* no NVML: the host probe says so and goes on;
* a lost process in a two-process ``jax.distributed`` run: the survivor ends within
  a bound and its output names the lost process;
* bad CLI arguments: one line naming the value, exit code 2, no traceback.

Synchronisation with child processes polls a condition (a marker file, a shard file,
a line of output) under a bounded deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import signal
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from conftest import free_port, wait_for as _wait_for, write_jpeg_folder, xla_flags
from trainers import input_pipeline as ip
from trainers import pack as pack_mod
from trainers.example_wire import image_and_label
from trainers.distributed import EXIT_PEER_LOST
from trainers.pack import PACK_SUMMARY, PackError, is_packed, load_pack_result, pack_folder, shard_paths
from trainers.options import PackOptions
from trainers.options import AugmentConfig

REPO = Path(__file__).resolve().parents[1]


def _child_env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": "cpu"}
    env.update(extra)
    return env


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(h=40, w=50, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header (IHDR, CRC fixed) claims ``width x height``."""
    data = bytearray(_encode(Image.new("L", (8, 8)), "PNG"))
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of header data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


# ============================================================ bad images while packing

def _odd_files(folder: Path) -> tuple[dict[str, str], set[str]]:
    """Write odd and bad files into ``folder``'s class folders.

    Returns ({file name: expected reason fragment} for the files that must be skipped,
    {file names} that must be converted and packed)."""
    c0, c1 = folder / "n00000000", folder / "n00000001"
    rgb = _rgb()
    good = simplejpeg.encode_jpeg(rgb, quality=90)
    bomb_jpeg = bytearray(good)  # a JPEG header claiming 60000 x 60000 pixels
    sof = bomb_jpeg.find(b"\xff\xc0")
    bomb_jpeg[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    skipped = {
        "zero.JPEG": (c0, b"", "empty file"),
        "truncated.JPEG": (c0, good[: len(good) // 2], "truncated"),
        "text.JPEG": (c0, b"just some text, no image\n" * 20, "not a decodable image"),
        "bomb.JPEG": (c1, _png_claiming(20000, 20000), "decompression bomb"),
        "huge_header.JPEG": (c1, bytes(bomb_jpeg), "image too large"),
        ".DS_Store": (c0, b"\0\0\0\1Bud1\0", "system file"),
        "Thumbs.db": (c1, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "system file"),
        "._n00000000_0.JPEG": (c0, b"\0\5\x16\7AppleDouble", "system file"),
    }
    converted = {
        "png.JPEG": (c0, _encode(Image.fromarray(rgb), "PNG")),
        "gif.JPEG": (c0, _encode(Image.fromarray(rgb).convert("P"), "GIF")),
        "webp.JPEG": (c1, _encode(Image.fromarray(rgb), "WEBP")),
        "rgba.JPEG": (c1, _encode(Image.fromarray(rgb).convert("RGBA"), "PNG")),
        "cmyk.JPEG": (c0, _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG")),
        "grey.JPEG": (c1, _encode(Image.fromarray(rgb).convert("L"), "JPEG")),
        "progressive.JPEG": (c1, _encode(Image.fromarray(rgb), "JPEG", progressive=True)),
        "one_pixel.JPEG": (c1, simplejpeg.encode_jpeg(np.zeros((1, 1, 3), np.uint8))),
    }
    for name, (d, data, _) in skipped.items():
        (d / name).write_bytes(data)
    for name, (d, data) in converted.items():
        (d / name).write_bytes(data)
    # Entries that are not files at all: a FIFO (opening it would block forever), a
    # folder named like an image, a dangling link.
    os.mkfifo(c0 / "fifo.JPEG")
    (c1 / "folder.JPEG").mkdir()
    (c1 / "dangling.JPEG").symlink_to(c1 / "gone.JPEG")
    skipped_reasons = {n: r for n, (_, _, r) in skipped.items()}
    skipped_reasons.update({"fifo.JPEG": "FIFO", "folder.JPEG": "folder",
                            "dangling.JPEG": "dangling symbolic link"})
    return skipped_reasons, set(converted)


def _records(out: Path, split: str = "train") -> dict[str, tuple[bytes, int]]:
    """file_name -> (stored image bytes, label) for every record of ``split``."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource
    from tensorflow_datasets.proto import tf_example_pb2

    got = {}
    for rec in ArrayRecordDataSource(shard_paths(out, split)):
        ex = tf_example_pb2.Example.FromString(rec).features.feature
        name = ex["file_name"].bytes_list.value[0].decode()
        got[name] = (ex["image"].bytes_list.value[0], int(ex["label"].int64_list.value[0]))
    return got


def _fast_path_fails_on(monkeypatch, path: str) -> None:
    """The pack's C path (``_jpegcrop.pack_files``, when built) opens and reads the
    files itself, past the Python functions the tests fault: make it fail on ``path``
    as it does on a failed open or read (None for that member, raising nothing), so
    the general path meets the fault and names it."""
    from trainers import preprocess
    real = getattr(preprocess._jpegcrop, "pack_files", None)
    if real is None:
        return

    def pack_files(members, start, *a):
        records, image_bytes = real(members, start, *a)
        records = list(records)
        for i, record in enumerate(records):
            if record is not None and members[start + i][0] == path:
                records[i] = None
                image_bytes -= os.path.getsize(path)
        return records, image_bytes

    monkeypatch.setattr(preprocess._jpegcrop, "pack_files", pack_files)


def test_bad_images_are_listed_odd_ones_converted_and_counts_add_up(tmp_path, monkeypatch):
    folder = write_jpeg_folder(tmp_path / "imgs", classes=2, per_class=6)
    skipped, converted = _odd_files(folder)
    # An unreadable file (tests run as root, so permissions cannot be used): the
    # packer's os.open() fails for that one path.
    unreadable = folder / "n00000001" / "n00000001_3.JPEG"
    real_open = os.open

    def fake_open(path, *a, **k):
        if os.fspath(path) == str(unreadable):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(pack_mod.os, "open", fake_open)
    _fast_path_fails_on(monkeypatch, str(unreadable))
    skipped["n00000001_3.JPEG"] = "Permission denied"
    entries = sum(1 for d in folder.iterdir() for _ in d.iterdir())

    res = pack_folder(folder, tmp_path / "packed", PackOptions(num_shards=2))

    assert res.input_images == entries == 12 + len(skipped) + len(converted) - 1
    assert res.input_images == res.packed + res.skipped
    reasons = {Path(b.path).name: b.reason for b in res.bad_images}
    assert set(reasons) == set(skipped)
    for name, fragment in skipped.items():
        assert fragment.lower() in reasons[name].lower(), (name, reasons[name])
    # The same list, with paths, in bad_images.json and pack.json.
    listed = json.loads((tmp_path / "packed" / "bad_images.json").read_text())
    assert {(b["path"], b["reason"]) for b in listed} == {(b.path, b.reason) for b in res.bad_images}
    assert load_pack_result(tmp_path / "packed").bad_images == res.bad_images
    # Every converted file is stored as a JPEG that simplejpeg decodes to RGB, with
    # the label of its folder.
    records = _records(tmp_path / "packed")
    assert len(records) == res.packed
    for name in converted:
        data, label = records[name]
        img = simplejpeg.decode_jpeg(data, colorspace="RGB")
        assert img.ndim == 3 and img.shape[2] == 3, name
        assert label == (0 if (folder / "n00000000" / name).exists() else 1)
    # CMYK is stored with the right colours (not inverted or garbled).
    cmyk = simplejpeg.decode_jpeg(records["cmyk.JPEG"][0], colorspace="RGB").astype(int)
    assert np.abs(cmyk - _rgb()).mean() < 10


def test_an_unexpected_error_on_one_file_lists_it_and_packs_the_rest(tmp_path, monkeypatch):
    folder = write_jpeg_folder(tmp_path / "imgs", classes=2, per_class=4)
    odd = str(folder / "n00000000" / "n00000000_2.JPEG")
    real = pack_mod._read_image_file

    def read(path):
        if path == odd:
            raise RuntimeError("libjpeg-turbo: internal error (injected)")
        return real(path)

    monkeypatch.setattr(pack_mod, "_read_image_file", read)
    _fast_path_fails_on(monkeypatch, odd)
    res = pack_folder(folder, tmp_path / "packed", PackOptions(num_shards=1))
    assert (res.input_images, res.packed, res.skipped) == (8, 7, 1)
    assert res.bad_images[0].path == odd
    assert res.bad_images[0].reason == "cannot process: RuntimeError: libjpeg-turbo: internal " \
                                       "error (injected)"


# ============================================================ SIGKILL while packing

_PACK_CHILD = textwrap.dedent("""
    import os, sys, threading, time
    from pathlib import Path
    import trainers.pack as pk

    src, out, point, marker = sys.argv[1:5]
    kind, _, arg = point.partition(":")

    def tell(text):  # atomically: the test never reads a half-written marker
        Path(marker + ".tmp").write_text(text)
        os.replace(marker + ".tmp", marker)

    def hold():  # tell the test where we are, then wait for its SIGKILL
        tell(point)
        threading.Event().wait()

    progress = None
    if kind == "progress":  # at the first count of N images: the shard is partial
        def progress(done, total, bad):
            if done >= int(arg):
                hold()
    elif kind == "sidecar":  # shard K renamed into place, its sidecar not yet written
        real_write, seen = pk.write_text_atomic, []
        def write_text_atomic(path, text, **kw):  # every later sidecar waits too (threads)
            if ".array_record-" in Path(path).name:
                seen.append(path)
                if len(seen) > int(arg):
                    hold()
            return real_write(path, text, **kw)
        pk.write_text_atomic = write_text_atomic
    elif kind == "metadata":  # every shard done, no dataset_info.json yet
        pk._write_tfds_metadata = lambda *a, **k: hold()
    elif kind == "summary":  # everything but pack.json written
        pk.PackResult.save = lambda *a, **k: hold()
    elif kind == "free":  # no stop: slowed down so that the test's kill lands mid-pack
        real_prepare = pk._prepare
        def _prepare(*a):
            time.sleep(0.005)
            return real_prepare(*a)
        pk._prepare = _prepare
    pk.pack_folder(src, out, pk.PackOptions(num_shards=6, val_fraction=0.25, pack_threads=2),
                   progress=progress)
    tell("finished")
""")


def _pack_files(out: Path) -> dict[str, bytes]:
    """Every file of a packed folder by name; pack.json without its run-dependent
    fields (``seconds``, ``resumed_shards``, ``out_dir``)."""
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    summary = json.loads(files.pop(PACK_SUMMARY))
    for key in ("seconds", "resumed_shards", "out_dir"):
        summary.pop(key)
    files[PACK_SUMMARY] = json.dumps(summary, sort_keys=True).encode()
    return files


@pytest.fixture(scope="module")
def kill_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    folder = write_jpeg_folder(root / "imgs", classes=3, per_class=40, size=(32, 24))
    (folder / "n00000001" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "n00000002" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    ref = pack_folder(folder, root / "ref", PackOptions(num_shards=6, val_fraction=0.25))
    return folder, root / "ref", ref


# (kill point, shards that must be kept by the rerun; None: not fixed)
KILL_POINTS = [("progress:1", 0), ("progress:50", None), ("sidecar:2", 2),
               ("metadata", 8), ("summary", 8), ("free", None)]


@pytest.mark.parametrize("point,kept", KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_pack_killed_with_sigkill_resumes_to_an_identical_result(kill_folder, tmp_path,
                                                                 point, kept):
    folder, ref_dir, ref = kill_folder
    assert len(ref.splits[0].shard_lengths) + len(ref.splits[1].shard_lengths) == 8
    out, marker = tmp_path / "packed", tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", _PACK_CHILD, str(folder), str(out), point,
                              str(marker)], env=_child_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        if point == "free":  # kill as soon as the third train shard is in place
            third = out / "autotune_images-train.array_record-00002-of-00006"
            _wait_for(lambda: third.exists() or child.poll() is not None, 120, "shard 3")
        else:
            try:
                _wait_for(lambda: marker.exists() or child.poll() is not None, 120, point)
            except AssertionError:
                child.kill()
                raise AssertionError(f"the packing child never reached {point!r}; its "
                                     f"stderr: {child.stderr.read().decode()[-2000:]}") from None
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert marker.read_text() == point
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()  # also when a wait above failed: never leave it running
        child.wait(timeout=60)
        child.stderr.close()
    if point != "free" or not is_packed(out):  # "free" may have finished before the kill
        # A half-written data set is never taken for a finished one.
        assert not is_packed(out)
        with pytest.raises(PackError, match="not a complete packed data set"):
            load_pack_result(out)
        with pytest.raises(PackError):
            shard_paths(out, "train")

    res = pack_folder(folder, out, PackOptions(num_shards=6, val_fraction=0.25))

    if kept is not None:
        assert res.resumed_shards == kept
    assert (res.input_images, res.packed, res.skipped) == (ref.input_images, ref.packed,
                                                          ref.skipped)
    assert res.bad_images == ref.bad_images and res.splits == ref.splits
    assert _pack_files(out) == _pack_files(ref_dir)  # byte-identical shards and metadata


def test_a_shard_damaged_after_packing_is_redone_on_resume(kill_folder, tmp_path):
    """A complete shard whose size no longer matches its sidecar is rewritten; the
    partial files of a killed run are removed."""
    folder, ref_dir, _ = kill_folder
    out = tmp_path / "packed"
    pack_folder(folder, out, PackOptions(num_shards=6, val_fraction=0.25))
    (out / PACK_SUMMARY).unlink()  # make it unfinished again
    shard = out / "autotune_images-train.array_record-00001-of-00006"
    shard.write_bytes(shard.read_bytes()[:1000])
    (out / ".pack.json.x1y2z3ab").write_text("{")  # write_text_atomic's temporary
    (out / "autotune_images-train.array_record-00004-of-00006.tmp").write_bytes(b"partial")
    res = pack_folder(folder, out, PackOptions(num_shards=6, val_fraction=0.25))
    assert res.resumed_shards == 7
    assert _pack_files(out) == _pack_files(ref_dir)


# ============================================================ disk full

class _FullDiskWriter:
    """Stands in for ``ArrayRecordWriter``: the ``fail_at``-th write of the run fails
    like a full disk, as an ``OSError(ENOSPC)`` or as array_record's own
    ``RuntimeError`` text."""

    writes = 0
    fail_at = 10
    kind = "oserror"
    real_class = None
    written: dict = {}  # path -> the records written to it, in order

    def __init__(self, path, options):
        self.path = path
        self.real = self.real_class(path, options)

    def write(self, record):
        type(self).writes += 1
        if type(self).writes == self.fail_at:
            if self.kind == "oserror":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError(f"write() failed: No space left on device; writing {self.path}; "
                               f"at byte 200704; Failed to close chunk_writer")
        self.real.write(record)
        self.written.setdefault(str(self.path), []).append(record)

    def close(self):
        self.real.close()


@pytest.mark.parametrize("kind", ["oserror", "runtimeerror"])
def test_disk_full_while_packing_names_the_shard_and_bytes_and_resumes(kill_folder, tmp_path,
                                                                       monkeypatch, kind):
    import array_record.python.array_record_module as arm

    folder, ref_dir, ref = kill_folder
    out = tmp_path / "packed"
    monkeypatch.setattr(_FullDiskWriter, "writes", 0)
    monkeypatch.setattr(_FullDiskWriter, "kind", kind)
    monkeypatch.setattr(_FullDiskWriter, "fail_at", 30)  # in the second shard (~15 each)
    monkeypatch.setattr(_FullDiskWriter, "real_class", arm.ArrayRecordWriter)
    monkeypatch.setattr(_FullDiskWriter, "written", {})
    monkeypatch.setattr(arm, "ArrayRecordWriter", _FullDiskWriter)
    with pytest.raises(OSError) as info:  # one thread: the shards are written in order
        pack_folder(folder, out, PackOptions(num_shards=6, val_fraction=0.25, pack_threads=1))
    err = info.value
    msg = str(err)
    assert err.errno == errno.ENOSPC
    assert "autotune_images-train.array_record-00001-of-00006.tmp" in msg
    assert "No space left on device" in msg
    # The figures count exactly what reached the failed shard (the C loop's batch
    # included: the failure is in the middle of one).
    (tmp,) = [p for p in _FullDiskWriter.written if p.endswith("00001-of-00006.tmp")]
    done = _FullDiskWriter.written[tmp]
    image_bytes = sum(len(image_and_label(r)[0]) for r in done)
    assert f"{len(done)} records, {image_bytes:,} bytes of images written to it" in msg
    assert "bytes still to write" in msg
    assert "bytes free there" in msg
    # The complete shards survive, the partial one is gone (its space freed), and the
    # data set is not taken for finished.
    # (The worker may have finished the next shard before it heard of the failure.)
    assert (out / "autotune_images-train.array_record-00000-of-00006.json").is_file()
    assert not (out / "autotune_images-train.array_record-00001-of-00006.json").exists()
    complete = len(list(out.glob("*.array_record-*.json")))
    assert not list(out.glob("*.tmp"))
    assert not is_packed(out)
    monkeypatch.undo()  # space again
    res = pack_folder(folder, out, PackOptions(num_shards=6, val_fraction=0.25))
    assert res.resumed_shards == complete
    assert _pack_files(out) == _pack_files(ref_dir)


def test_disk_full_writing_the_summary_names_it(kill_folder, tmp_path, monkeypatch):
    folder, ref_dir, _ = kill_folder
    out = tmp_path / "packed"

    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pack_mod.PackResult, "save", full)
    with pytest.raises(OSError, match=r"writing .*pack\.json failed: No space left") as info:
        pack_folder(folder, out, PackOptions(num_shards=6, val_fraction=0.25))
    assert info.value.errno == errno.ENOSPC and not is_packed(out)
    monkeypatch.undo()
    res = pack_folder(folder, out, PackOptions(num_shards=6, val_fraction=0.25))
    assert res.resumed_shards == 8 and _pack_files(out) == _pack_files(ref_dir)


def _replicated(tree):
    """``tree`` as the loop holds its state: one array replicated over the devices."""
    import jax

    from trainers.feed import replicated_sharding

    return jax.device_put(tree, replicated_sharding())


def _tiny_state(value: float, n: int = 1000) -> dict:
    """A stand-in train state: ``w`` float32 [n] (random, so that it does not
    compress), ``b`` float32 [3]; ``value`` seeds and offsets it."""
    w = np.random.default_rng(int(value)).standard_normal(n).astype(np.float32) + value
    return {"w": w, "b": np.full((3,), value, np.float32)}


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch

    from trainers.checkpoint import Checkpointer, CheckpointError

    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, _replicated(_tiny_state(1.0)), {"next_batch": 1}, {"bad_records": 0})
    real = jch.JsonCheckpointHandler._save_fn

    async def full_disk(self, item, directory):  # the state is written, then the disk is full
        if "extra" in str(directory):
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))
        return await real(self, item, directory)

    monkeypatch.setattr(jch.JsonCheckpointHandler, "_save_fn", full_disk)
    with pytest.raises(CheckpointError) as info:
        ckpt.save(2, _replicated(_tiny_state(2.0)), {"next_batch": 2}, {"bad_records": 0})
    msg = str(info.value)
    assert str(tmp_path / "ckpt") in msg and "No space left on device" in msg
    assert "bytes free" in msg and "previous checkpoint 1 is intact" in msg
    assert ckpt.latest_step() == 1
    state, it, extra, step = ckpt.restore(_tiny_state(0.0))
    assert step == 1 and it == {"next_batch": 1}
    np.testing.assert_array_equal(state["w"], _tiny_state(1.0)["w"])
    # A new process sees the same; the next save (space again) works.
    monkeypatch.undo()
    again = Checkpointer(tmp_path / "ckpt")
    assert again.latest_step() == 1
    again.save(3, _replicated(_tiny_state(3.0)), {"next_batch": 3}, {"bad_records": 0})
    assert again.latest_step() == 3
    np.testing.assert_array_equal(again.restore(_tiny_state(0.0))[0]["w"], _tiny_state(3.0)["w"])
    again.close()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _remount(mnt: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


def test_really_full_disk_while_packing(tmp_path, small_tmpfs):
    folder = write_jpeg_folder(tmp_path / "big", classes=2, per_class=20, size=(200, 150))
    ref = pack_folder(folder, tmp_path / "ref", PackOptions(num_shards=4))
    out = small_tmpfs / "packed"
    with pytest.raises(OSError) as info:
        pack_folder(folder, out, PackOptions(num_shards=4))
    assert info.value.errno == errno.ENOSPC
    assert str(out / "autotune_images-train.array_record-") in str(info.value)
    assert not list(out.glob("*.tmp")) and not is_packed(out)
    _remount(small_tmpfs, "16m")
    res = pack_folder(folder, out, PackOptions(num_shards=4))
    assert res.packed == ref.packed
    assert _pack_files(out) == _pack_files(tmp_path / "ref")


def test_really_full_disk_while_checkpointing(small_tmpfs):

    from trainers.checkpoint import Checkpointer, CheckpointError

    _remount(small_tmpfs, "1m")
    ckpt = Checkpointer(small_tmpfs / "ckpt")
    ckpt.save(1, _replicated(_tiny_state(1.0)), {"next_batch": 1}, {})
    with pytest.raises(CheckpointError) as info:  # 4 MB of parameters on a 1 MB disk
        ckpt.save(2, _replicated(_tiny_state(2.0, n=1_000_000)), {"next_batch": 2}, {})
    msg = str(info.value)
    assert str(small_tmpfs / "ckpt") in msg and "No space left on device" in msg
    assert ckpt.latest_step() == 1
    state, _, _, step = ckpt.restore(_tiny_state(0.0))
    assert step == 1
    np.testing.assert_array_equal(state["w"], _tiny_state(1.0)["w"])
    _remount(small_tmpfs, "16m")
    ckpt.save(3, _replicated(_tiny_state(3.0, n=1_000_000)), {"next_batch": 3}, {})
    assert ckpt.latest_step() == 3
    ckpt.close()


# ============================================================ damaged shards

#: ArrayRecord / Riegeli layout: a 24-byte block header and the 40-byte file
#: signature chunk, then the first record's chunk at byte 64 (40-byte chunk header,
#: then its data). Bytes 160-175 are inside the data of record 0 of the shard, where
#: its image feature begins (the feature's lengths, the JPEG's first markers): damage
#: that no longer parses or decodes, so the pipeline reads the record again through
#: ArrayRecord, whose chunk data hash names it. (Records are read without that hash,
#: trainers/shard_reader.py: flipped bytes that still decode, e.g. inside the JPEG's
#: quantisation table at byte 200, are not caught.)
_RECORD0_DATA = 160


@pytest.fixture
def small_pack(tmp_path):
    folder = write_jpeg_folder(tmp_path / "imgs", classes=2, per_class=16, size=(32, 24))
    res = pack_folder(folder, tmp_path / "packed", PackOptions(num_shards=4))
    return tmp_path / "packed", res


def _flip(path: str, offset: int, n: int = 16) -> None:
    data = bytearray(Path(path).read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def _iterate(packed, mode, threads=2):
    out, res = packed
    lengths = res.split("train").shard_lengths
    cfg = ip.PipelineConfig(host_batch=4, augment=AugmentConfig(image_size=16), decode_threads=threads,
                            prefetch_batches=2, on_bad_record=mode)
    spe = ip.steps_per_epoch(lengths, 4)
    return list(ip.make_train_iterator(shard_paths(out, "train"), lengths, cfg, 1, spe))


def test_flipped_bytes_are_named_then_skipped_or_fatal(small_pack):
    paths = shard_paths(small_pack[0], "train")
    _flip(paths[1], _RECORD0_DATA)
    batches = _iterate(small_pack, "skip")
    assert len(batches) == 8 and sum(int(b["bad"]) for b in batches) == 1
    with pytest.raises(ip.BadRecordError) as info:
        _iterate(small_pack, "fail")
    msg = str(info.value)
    assert f"shard {paths[1]} record 0" in msg and "hash mismatch" in msg


@pytest.mark.parametrize("cut", ["empty", "head", "half", "tail"])
def test_a_truncated_shard_is_named_and_its_records_skipped_or_fatal(small_pack, cut):
    paths = shard_paths(small_pack[0], "train")
    lengths = small_pack[1].split("train").shard_lengths
    data = Path(paths[2]).read_bytes()
    keep = {"empty": 0, "head": 2_000, "half": len(data) // 2 + 64, "tail": len(data) - 72}[cut]
    Path(paths[2]).write_bytes(data[:keep])
    assert "damaged or truncated" in ip.check_shard(paths[2], lengths[2])
    batches = _iterate(small_pack, "skip")
    assert len(batches) == 8
    assert sum(int(b["bad"]) for b in batches) >= lengths[2]  # each seen at least once
    with pytest.raises(ip.BadRecordError,
                       match=rf"shard {re.escape(paths[2])} record \d+: cannot read: the shard "
                             rf"is damaged or truncated \({keep:,} bytes on disk\)"):
        _iterate(small_pack, "fail")


def test_a_missing_or_replaced_shard_is_named(small_pack):
    paths = shard_paths(small_pack[0], "train")
    lengths = small_pack[1].split("train").shard_lengths
    os.replace(paths[0], paths[0] + ".moved")
    assert "missing" in ip.check_shard(paths[0], lengths[0])
    with pytest.raises(ip.BadRecordError, match=rf"shard {re.escape(paths[0])} record \d+: "
                                                rf"cannot read: the shard is missing"):
        _iterate(small_pack, "fail")
    os.replace(paths[3], paths[0])  # another shard (another record count) in its place
    assert ip.check_shard(paths[0], lengths[0] + 1) == (
        f"holds {lengths[0]} records, pack.json lists {lengths[0] + 1}")


TINY = dict(arch="resnet_tiny", width=4, small_images=True, image_size=16, num_classes=2,
            per_device_batch=1, epochs=1, learning_rate=0.1, warmup_epochs=0,
            log_every_steps=1)


def _loop_run(small_pack, workdir: Path, on_bad_record: str):
    from trainers import train as tr
    from trainers.loop import train_and_evaluate
    from trainers.options import LoopOptions

    config = tr.TrainConfig(**TINY)  # 8 devices x 1 = 8 images a step, 4 steps
    opts = LoopOptions(decode_threads=1, prefetch_batches=1, device_prefetch=1, eval_every_epochs=0,
                       checkpoint_every_s=0, on_bad_record=on_bad_record)
    return train_and_evaluate(config, str(small_pack[0]), str(workdir), opts)


def test_training_loop_skips_and_counts_a_damaged_record(small_pack, tmp_path):
    _flip(shard_paths(small_pack[0], "train")[0], _RECORD0_DATA)
    summary = _loop_run(small_pack, tmp_path / "run", "skip")
    assert summary.status == "completed" and summary.steps == 4
    assert summary.bad_records == 1


def test_training_loop_stops_on_a_damaged_record_in_fail_mode(small_pack, tmp_path):
    path = shard_paths(small_pack[0], "train")[0]
    _flip(path, _RECORD0_DATA)
    with pytest.raises(ip.BadRecordError, match=rf"shard {re.escape(path)} record 0: cannot read"):
        _loop_run(small_pack, tmp_path / "run", "fail")


# ============================================================ no NVML / no GPU

def test_host_probe_says_nvml_is_missing_and_goes_on(tmp_path, monkeypatch):
    from probes import gpu, host

    def no_pynvml():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(gpu, "_import_pynvml", no_pynvml)
    report = host.probe_host(tmp_path, jax_in_child=False)
    assert report.gpu.gpus == () and not report.gpu.nvml_available
    assert report.gpu.status.startswith("NVML unavailable") and "pynvml" in report.gpu.status
    assert report.jax.backend == "cpu" and len(report.jax.devices) == 8


# ============================================================ multi-host: a lost process

_PEER_CHILD = textwrap.dedent("""
    import os, re, sys
    pid, port, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    from trainers.distributed import initialize
    initialize(f"127.0.0.1:{port}", 2, pid, peer_timeout_s=5)
    import jax, jax.numpy as jnp
    step = jax.pmap(lambda x: jax.lax.psum(x, "i"), axis_name="i")
    x = jnp.ones((jax.local_device_count(),))
    i = 0
    try:
        while True:
            y = step(x)
            y.block_until_ready()
            assert float(y[0]) == 2.0
            i += 1
            if i == 20:
                print(f"process {pid}: running", flush=True)
    except Exception as exc:
        print(f"process {pid}: collective failed at step {i}: {exc}", flush=True)
        if mode == "wrapped":
            # What trainers/loop.py does: a short barrier among the survivors (the
            # coordination service names who did not come), then an exit at once (a
            # normal exit would wait in JAX's shutdown barrier for the lost process).
            from trainers.distributed import EXIT_PEER_LOST, exit_now, lost_processes
            lost = lost_processes(timeout_s=2.0)
            exit_now(EXIT_PEER_LOST, f"process {pid}: lost process(es) "
                                     f"{', '.join(map(str, lost)) if lost else '?'}")
        raise
""")



#: (victim, child mode, what the survivor's output must contain). Killing process 1:
#: the failed collective's barrier names it within 2 s, or the peer watchdog does after
#: its 5 s timeout (whichever comes first). Killing process 0 (the coordinator): JAX
#: ends the survivor at once, naming the leader task.
LOST_CASES = [
    (1, "wrapped", [r"(process 0: lost process\(es\) 1\b|process 0: process\(es\) 1 of 2 "
                    r"stopped responding)"]),
    (0, "jax", [r"leader task was preempted/died"]),
]


@pytest.mark.parametrize("victim,mode,needles", LOST_CASES, ids=["kill-1", "kill-coordinator"])
def test_a_killed_process_ends_the_other_within_a_bound_naming_it(tmp_path, victim, mode,
                                                                   needles):
    port = free_port()
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = []
    for i in range(2):
        with open(logs[i], "wb") as f:
            procs.append(subprocess.Popen([sys.executable, "-c", _PEER_CHILD, str(i), str(port),
                                           mode], env=_child_env(XLA_FLAGS=xla_flags(1)),
                                          stdout=f,
                                          stderr=subprocess.STDOUT))
    try:
        _wait_for(lambda: all(f"process {i}: running" in logs[i].read_text(errors="replace")
                              or procs[i].poll() is not None for i in range(2)), 120,
                  "both processes in the psum loop")
        assert [p.poll() for p in procs] == [None, None], logs[0].read_text()[-3000:]
        procs[victim].send_signal(signal.SIGKILL)
        survivor = procs[1 - victim]
        rc = survivor.wait(timeout=60)  # the bound: heartbeat timeout 5 s, plus margin
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    out = logs[1 - victim].read_text(errors="replace")
    assert rc != 0
    if mode == "wrapped":
        assert rc == EXIT_PEER_LOST, out[-3000:]
    assert f"process {1 - victim}: collective failed" in out or victim == 0
    for needle in needles:
        assert re.search(needle, out), (needle, out[-3000:])


# ============================================================ bad CLI arguments

@pytest.fixture(scope="module")
def cli_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_faults")
    (root / "empty_class" / "n00000000").mkdir(parents=True)
    write_jpeg_folder(root / "empty_class", classes=1, per_class=2)
    (root / "empty_class" / "n00000005").mkdir()
    (root / "no_classes").mkdir()
    (root / "no_classes" / "a.JPEG").write_bytes(b"x")
    (root / "a_file").write_bytes(b"x")
    write_jpeg_folder(root / "ok", classes=2, per_class=4, size=(32, 24))
    write_jpeg_folder(root / "other", classes=2, per_class=3, size=(32, 24))
    pack_folder(root / "other", root / "packed_other", PackOptions(num_shards=1))
    return root


CLI_CASES = [
    (["pack", "--data", "{r}/a_file", "--out", "{r}/o"],
     "{r}/a_file is not a folder, a zip or a tar archive"),
    (["pack", "--data", "{r}/nope", "--out", "{r}/o"], "--data {r}/nope: no such folder"),
    (["pack", "--data", "{r}/empty_class", "--out", "{r}/o"],
     "class folder {r}/empty_class/n00000005 is empty"),
    (["pack", "--data", "{r}/no_classes", "--out", "{r}/o"], "has no class folders"),
    (["pack", "--data", "{r}/ok", "--out", "{r}/o", "--shards", "0"], "num_shards (0)"),
    (["pack", "--data", "{r}/ok", "--out", "{r}/o", "--val-fraction", "1.5"],
     "val_fraction (1.5) must be in [0, 1)"),
    (["pack", "--data", "{r}/ok", "--out", "{r}/o", "--resize", "4"], "resize_shorter (4)"),
    (["pack", "--data", "{r}/ok", "--out", "{r}/o", "--threads", "0"], "threads (0)"),
    (["pack", "--data", "{r}/ok", "--out", "{r}/packed_other"],
     "already holds a different packed data set"),
    (["train", "--auto", "--data", "{r}/empty_class", "--preset", "cpu-tiny",
      "--results", "{r}/res"], "class folder {r}/empty_class/n00000005 is empty"),
    (["train", "--auto", "--data", "{r}/no_classes", "--preset", "cpu-tiny",
      "--results", "{r}/res"], "has no class folders"),
    (["probe", "--data", "{r}/empty_class", "--preset", "cpu-tiny", "--results", "{r}/res"],
     "class folder {r}/empty_class/n00000005 is empty"),
    (["train", "--auto", "--data", "{r}/ok", "--preset", "odd-batch", "--results", "{r}/res"],
     "Batch size (30) must be divisible by device count (8)"),
    (["train", "--auto", "--data", "{r}/ok", "--preset", "cpu-tiny", "--batch", "0"],
     "--batch 0: must be > 0"),
    (["train", "--auto", "--data", "{r}/ok", "--preset", "cpu-tiny", "--threads", "0"],
     "--threads 0: must be > 0"),
    (["train", "--auto", "--data", "{r}/ok", "--preset", "cpu-tiny", "--shards", "0"],
     "--shards 0: must be > 0"),
    (["train", "--auto", "--data", "{r}/ok", "--preset", "cpu-tiny", "--max-steps", "0"],
     "--max-steps 0: must be > 0"),
    (["train", "--resume", "{r}/nope"], "--resume {r}/nope: not a run folder"),
    (["train", "--auto", "--data", "{r}/ok", "--coordinator", "localhost:1234"],
     "--coordinator, --num-processes and --process-id go together"),
    (["train", "--auto", "--data", "{r}/ok", "--coordinator", "localhost", "--num-processes",
      "2", "--process-id", "0"], "coordinator 'localhost': expected host:port"),
    (["train", "--auto", "--data", "{r}/ok", "--coordinator", "localhost:1", "--num-processes",
      "2", "--process-id", "5"], "process id (5) must be in [0, 2)"),
    (["plan", "--probe", "{r}/nope"], "--probe {r}/nope: no probe.json there"),
]


@pytest.mark.parametrize("argv,needle", CLI_CASES,
                         ids=[f"{i}-{a[0]}" for i, (a, _) in enumerate(CLI_CASES)])
def test_bad_arguments_are_one_line_errors_with_exit_code_2(cli_folders, argv, needle, capsys,
                                                            monkeypatch):
    from autotune import cli, presets

    monkeypatch.setitem(presets.PRESETS, "odd-batch", dataclasses.replace(
        presets.PRESETS["cpu-tiny"], name="odd-batch", global_batch=30))
    r = str(cli_folders)
    rc = cli.main([a.replace("{r}", r) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert needle.replace("{r}", r) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_malformed_numbers_are_argparse_errors_with_exit_code_2(capsys):
    from autotune import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--auto", "--batch", "many"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "--batch: 'many': expected auto, max or a per-device batch" in err and "Traceback" not in err
