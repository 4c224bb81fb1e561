"""The pack's fast path for files stored as they are (``trainers._jpegcrop.pack_files``):
open ahead, read, check and serialize in C, a batch of members per call. Its records
must be ``trainers.pack.example_record`` byte for byte, it must hand every other case
to the general path (which names the reason or converts the file), its batches must
not change the result nor leave a descriptor open, and a pack must give the same
shards and the same skipped list with it and without it."""

from __future__ import annotations

import io
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainers import pack as pack_mod
from trainers import preprocess as P
from trainers import scan
from trainers.options import PackOptions
from test_jpeg_check import damaged, good_jpegs, pillow_jpeg
from test_roi_decode import textured

HAS_FAST = getattr(P._jpegcrop, "pack_files", None) is not None
pytestmark = pytest.mark.skipif(not HAS_FAST, reason="trainers._jpegcrop (with pack_files) not built")

MAX_BYTES, MAX_PIXELS = pack_mod.MAX_FILE_BYTES, P.MAX_PIXELS


def batch(members, start=0, max_count=1 << 20, ahead=32, max_batch_bytes=1 << 62,
          max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS):
    return P._jpegcrop.pack_files(members, start, max_count, ahead, max_batch_bytes,
                                  scan.IMAGE_SUFFIXES, max_bytes, max_pixels)


def fast(path, name: str, label: int, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS):
    """``(record, size)`` of one file (named ``name``) by the fast path, or None."""
    assert Path(path).name == name
    (record,), size = batch([(str(path), label)], max_bytes=max_bytes, max_pixels=max_pixels)
    return None if record is None else (record, size)


@pytest.fixture(scope="module")
def base() -> bytes:
    return good_jpegs()["pillow baseline"]


# Sizes on each side of the varint steps of the image's lengths (1, 2, 3 bytes), and
# names on each side of example_record's one-byte shortcut (< 124 bytes) and of the
# name's own varint step (128).
SIZES = [None, 16_375, 16_380, 16_384, 16_390, 2_097_140, 2_097_152, 2_097_160]
NAMES = ["a.JPEG", "n01440764_10026.JPEG", "x" * 118 + ".JPEG", "y" * 119 + ".JPEG",
         "z" * 123 + ".JPEG", "w" * 200 + ".jpg", "é" * 70 + ".JPEG"]
LABELS = [0, 1, 127, 128, 999, 16_384, 21_840]


@pytest.mark.parametrize("size", SIZES)
def test_the_record_is_example_record_byte_for_byte(size, base, tmp_path):
    """Zeros after the EOI marker make every size (decoders stop at EOI, and the pack
    keeps the bytes as they are)."""
    data = base if size is None else base + bytes(size - len(base))
    for i, name in enumerate(NAMES):
        label = LABELS[i % len(LABELS)]
        path = tmp_path / name
        path.write_bytes(data)
        got = fast(path, name, label)
        assert got is not None, (size, name)
        assert got[1] == len(data)
        assert got[0] == pack_mod.example_record(data, label, name), (size, name, label)
    for label in LABELS:
        assert fast(path, name, label)[0] == pack_mod.example_record(data, label, name)


def test_every_good_jpeg_is_taken(tmp_path):
    for i, (kind, data) in enumerate(good_jpegs().items()):
        path = tmp_path / f"{i}.JPEG"
        path.write_bytes(data)
        assert fast(path, path.name, i) == (pack_mod.example_record(data, i, path.name),
                                            len(data)), kind


def test_the_limits_are_inclusive(base, tmp_path):
    path = tmp_path / "a.JPEG"
    path.write_bytes(base)
    h, w = P.image_header(base)
    assert fast(path, "a.JPEG", 3, max_bytes=len(base), max_pixels=h * w) is not None
    assert fast(path, "a.JPEG", 3, max_bytes=len(base) - 1) is None
    assert fast(path, "a.JPEG", 3, max_pixels=h * w - 1) is None


def test_everything_else_goes_to_the_general_path(base, tmp_path):
    cases: dict[str, Path] = {}

    def write(name: str, data: bytes) -> None:
        cases[name] = tmp_path / f"{len(cases)}.JPEG"
        cases[name].write_bytes(data)

    write("empty", b"")
    png = io.BytesIO()
    Image.fromarray(textured(30, 20)).save(png, "PNG")
    write("PNG named .JPEG", png.getvalue())
    write("CMYK", pillow_jpeg(Image.fromarray(textured(40, 56)).convert("CMYK")))
    write("not an image at all", b"\xff\xd8\xff" + b"hello" * 20)
    for kind, data in damaged(base).items():
        if kind.startswith(("truncated", "missing EOI", "EOI ")):  # refused by any check
            write(kind, data)
    (tmp_path / "folder.JPEG").mkdir()
    cases["folder"] = tmp_path / "folder.JPEG"
    os.mkfifo(tmp_path / "fifo.JPEG")
    cases["FIFO (no block)"] = tmp_path / "fifo.JPEG"
    os.symlink(tmp_path / "gone.JPEG", tmp_path / "dangling.JPEG")
    cases["dangling link"] = tmp_path / "dangling.JPEG"
    cases["missing"] = tmp_path / "missing.JPEG"
    for kind, path in cases.items():
        assert fast(path, path.name, 0) is None, kind


def test_bad_arguments_raise():
    with pytest.raises(TypeError):
        batch(("not", "a list"))
    with pytest.raises(TypeError):
        P._jpegcrop.pack_files([], 0, 1, 0, 1, [".jpeg"], 1, 1)  # suffixes: a tuple
    with pytest.raises(ValueError, match="suffix 1 is not a UTF-8 str"):
        P._jpegcrop.pack_files([], 0, 1, 0, 1, (".jpeg", b".jpg"), 1, 1)
    with pytest.raises(ValueError, match="33 suffixes, at most 32"):
        P._jpegcrop.pack_files([], 0, 1, 0, 1, (".jpeg",) * 33, 1, 1)
    for start, count in [(-1, 1), (1, 1), (0, 0)]:
        with pytest.raises(ValueError, match="start"):
            batch([], start, count)


def test_members_it_cannot_vouch_for_go_to_the_general_path(base, tmp_path):
    """Every member that is not a plain (str path, int label >= 0) pair of an image
    name is None (the general path names the reason), the rest are taken."""
    good = tmp_path / "good.JPEG"
    good.write_bytes(base)
    odd_name = tmp_path / "bad\udcff.JPEG"  # not UTF-8 on the disk (surrogateescape)
    os.symlink(good, os.fsencode(str(odd_name)))
    cases = [(str(good), 0), [str(good), 0], (str(good), 0, 1), (str(good), -1),
             (str(good), 2 ** 63), (str(good), 1.0), (good, 0), (str(good) + "\0", 0),
             (str(odd_name), 0), (str(good), 5)]
    records, size = batch(cases)
    assert [r is not None for r in records] == [True] + [False] * 8 + [True]
    assert records[9] == pack_mod.example_record(base, 5, "good.JPEG")
    assert size == 2 * len(base)


NAMES_BY_SUFFIX = ["a.JPEG", "a.jpg", "a.JpE", "a.jfif", "a.png", "a.txt", "a", ".a.jpg",
                   ".jpg", "..jpg", "a.", "a.b.JPEG", "a.JPEG.txt", "Thumbs.db", "desktop.ini",
                   ".DS_Store", "a.jpeg ", "a.\u212apg", "a.jpégé", "x" * 200 + ".jpeg"]


@pytest.mark.parametrize("name", NAMES_BY_SUFFIX)
def test_a_name_is_taken_only_when_it_is_an_image_s(name, base, tmp_path):
    """The name test in C takes a name only when trainers/scan.py not_an_image
    finds no reason (a JPEG file under any image suffix is kept as it is)."""
    path = tmp_path / name
    path.write_bytes(base)
    taken = fast(path, name, 1) is not None
    if scan.not_an_image(name) is not None:
        assert not taken
    elif name.isascii():
        assert taken


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_batches_and_look_ahead_change_nothing_and_leave_no_descriptor(base, tmp_path):
    """The same records and sizes whatever the batch size, byte cap and look-ahead
    (0, within, past the end, over the 63 of its ring); a byte cap stops a batch
    after the member that reaches it; no descriptor stays open, also where the
    batch stops with files opened ahead and where members are refused."""
    jpegs = list(good_jpegs().values())
    members = []
    for i in range(150):
        path = tmp_path / (f"{i}.JPEG" if i % 17 else f"{i}.txt")
        path.write_bytes(jpegs[i % len(jpegs)] if i % 23 else b"\xff\xd8\xff broken")
        members.append((str(path), i % 7))
    members.append((str(tmp_path / "missing.JPEG"), 0))
    members.insert(40, (str(tmp_path), 3))  # a folder
    want = [None if (not p.endswith(".JPEG") or os.path.isdir(p) or not os.path.exists(p)
                     or open(p, "rb").read(4) == b"\xff\xd8\xff ") else
            pack_mod.example_record(open(p, "rb").read(), label, os.path.basename(p))
            for p, label in members]
    assert sum(w is None for w in want) > 10 and sum(w is not None for w in want) > 100
    before = _open_fds()
    for count, cap, ahead in [(10 ** 6, 1 << 62, 32), (1, 1 << 62, 32), (7, 1 << 62, 0),
                              (13, 1 << 62, 200), (1000, 3000, 63), (64, 1, 5)]:
        got, start, total = [], 0, 0
        while start < len(members):
            records, size = batch(members, start, count, ahead, cap)
            assert 1 <= len(records) <= count
            assert size == sum(len(open(members[start + i][0], "rb").read())
                               for i, r in enumerate(records) if r is not None)
            if start + len(records) < len(members) and len(records) < count:
                assert size >= cap  # stopped by the byte cap
            got += records
            start += len(records)
            total += size
        assert got == want, (count, cap, ahead)
        assert _open_fds() == before
    assert batch(members, len(members)) == ([], 0)


def _tree(root: Path, base: bytes) -> Path:
    """Class folders with every kind of file: good JPEGs, damaged ones, a PNG and a
    CMYK JPEG named .JPEG (converted), a text file and a system file (skipped)."""
    jpegs = list(good_jpegs().values())
    bad = list(damaged(base).values())
    png = io.BytesIO()
    Image.fromarray(textured(30, 20)).save(png, "PNG")
    odd = [png.getvalue(), pillow_jpeg(Image.fromarray(textured(40, 56)).convert("CMYK")), b""]
    for c in range(3):
        d = root / f"n0000000{c}"
        (d / "images").mkdir(parents=True)
        for i, data in enumerate(jpegs):
            (d / f"good_{i}.JPEG").write_bytes(data)
        for i, data in enumerate(bad[c::3]):
            (d / "images" / f"bad_{i}.JPEG").write_bytes(data)
        (d / f"odd_{c}.JPEG").write_bytes(odd[c])
        (d / "boxes.txt").write_text("0 0 1 1\n")
        (d / ".DS_Store").write_bytes(b"\0\1")
    return root


def _pack(src: Path, out: Path) -> tuple[dict[str, bytes], dict]:
    res = pack_mod.pack_folder(src, out, PackOptions(num_shards=3, val_fraction=0.2))
    shards = {p.name: p.read_bytes() for p in sorted(out.rglob("*array_record*"))}
    bad = json.loads((out / "bad_images.json").read_text()) if (out / "bad_images.json").exists() else None
    return shards, {"bad": bad, "packed": res.packed, "skipped": res.skipped,
                    "bytes": (res.bytes_in, res.bytes_out), "splits": res.splits}


def test_a_pack_is_the_same_with_and_without_the_fast_path(base, tmp_path, monkeypatch):
    src = _tree(tmp_path / "src", base)
    with_fast = _pack(src, tmp_path / "fast")
    ext = P._jpegcrop
    monkeypatch.setattr(P, "_jpegcrop", types.SimpleNamespace(check=ext.check,
                                                              decode_crop=ext.decode_crop))
    without = _pack(src, tmp_path / "general")
    assert with_fast[0] and with_fast[0] == without[0]
    assert with_fast[1] == without[1]
    assert with_fast[1]["packed"] > 0 and with_fast[1]["bad"]


def test_the_fast_path_is_taken_for_plain_jpegs(base, tmp_path, monkeypatch):
    """Good JPEGs never reach the general path's reader (so the fast path is what
    packs them); the odd files still do."""
    src = _tree(tmp_path / "src", base)
    seen: list[str] = []
    general = pack_mod._prepare

    def spy(path, *args):
        seen.append(Path(path).name)
        return general(path, *args)

    monkeypatch.setattr(pack_mod, "_prepare", spy)
    pack_mod.pack_folder(src, tmp_path / "out", PackOptions(num_shards=2))
    assert seen and not any(n.startswith("good_") for n in seen)
    assert {f"odd_{c}.JPEG" for c in range(3)} <= set(seen)
    assert np.all([not n.startswith("good_") for n in seen])


def test_many_threads_hold_at_most_a_quarter_of_the_descriptor_limit(base, tmp_path, monkeypatch):
    """With threads, each shard loop opens fewer files ahead so that together they
    hold at most a quarter of RLIMIT_NOFILE (at least 1 each); processes keep
    PREFETCH_AHEAD. A pack with a tight limit gives the same shards."""
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (256, 4096))
    assert pack_mod._files_ahead(1) == pack_mod.PREFETCH_AHEAD  # 64 >= 32
    assert pack_mod._files_ahead(4) == 16 and pack_mod._files_ahead(16) == 4
    assert pack_mod._files_ahead(1000) == 1
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY,) * 2)
    assert pack_mod._files_ahead(1000) == pack_mod.PREFETCH_AHEAD
    src = _tree(tmp_path / "src", base)
    seen = []
    real = P._jpegcrop.pack_files
    monkeypatch.setattr(P._jpegcrop, "pack_files",
                        lambda m, s, c, ahead, *a: (seen.append(ahead), real(m, s, c, ahead, *a))[1])
    monkeypatch.setattr(resource, "getrlimit", lambda which: (64, 4096))
    res = pack_mod.pack_folder(src, tmp_path / "tight", PackOptions(num_shards=3, val_fraction=0.2,
                                                                     pack_threads=4))
    assert seen and set(seen) == {4}  # 64 // (4 x 4)
    monkeypatch.undo()
    ref = pack_mod.pack_folder(src, tmp_path / "ref", PackOptions(num_shards=3, val_fraction=0.2))
    shards = lambda out: {p.name: p.read_bytes() for p in sorted(out.glob("*array_record*"))}
    assert shards(tmp_path / "tight") == shards(tmp_path / "ref") and res.packed == ref.packed
