"""Zip members read by the pack without ``zipfile`` (trainers.pack._read_zip_entry,
from the member's place in trainers.sources.ZIP_ENTRY): the same bytes as
``zipfile``, a damaged member named, other methods handed to ``zipfile``, and a Kaggle
zip packed without any worker building a ``ZipFile``."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import simplejpeg

from trainers import pack, sources


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return simplejpeg.encode_jpeg(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), quality=90)


@pytest.fixture
def zpath(tmp_path):
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/stored.JPEG", _jpeg(0), compress_type=zipfile.ZIP_STORED)
        zf.writestr("a/deflated.JPEG", _jpeg(1) * 3, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("a/bzip2.JPEG", _jpeg(2), compress_type=zipfile.ZIP_BZIP2)
        zf.writestr("a/" + "long" * 40 + ".JPEG", _jpeg(3), compress_type=zipfile.ZIP_DEFLATED)
    return path


def _entries(path, names):
    all_names, entries = sources.read_zip_directory(path)
    return entries[[all_names.index(n) for n in names]]


def _as_zipfile_reads_it(path):
    with zipfile.ZipFile(path) as zf:
        return [(z.filename, z.header_offset, z.compress_size, z.file_size, z.CRC,
                 z.compress_type, z.flag_bits) for z in zf.infolist()]


def _as_read_here(path):
    names, entries = sources.read_zip_directory(path)
    return [(n, *e) for n, e in zip(names, entries.tolist())]


def test_the_central_directory_reads_as_zipfile_reads_it(zpath, tmp_path):
    assert _as_read_here(zpath) == _as_zipfile_reads_it(zpath)
    # names in UTF-8 (flag bit 11) and CP437, a folder entry, a comment, ZIP64 fields
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("n01440764/", b"")
        zf.writestr("n01440764/caf\u00e9_\u65e5.JPEG", _jpeg(5), compress_type=zipfile.ZIP_DEFLATED)
        info = zipfile.ZipInfo("n01440764/plain.JPEG")
        info.flag_bits &= ~0x800
        zf.writestr(info, _jpeg(6))
        with zf.open("n01443537/zip64.JPEG", "w", force_zip64=True) as f:
            f.write(_jpeg(7))
        zf.comment = b"a comment of the archive" * 10
    assert _as_read_here(other) == _as_zipfile_reads_it(other)
    assert any(f & 0x800 for f in sources.read_zip_directory(other)[1]["flags"])


def test_a_zip_of_more_than_65535_members_has_a_zip64_end_record(tmp_path, monkeypatch):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(65_540):
            zf.writestr(f"d/{i}", b"")
    assert path.read_bytes().find(b"PK\x06\x06") > 0  # the ZIP64 end record is there
    monkeypatch.setattr(sources, "_CD_CHUNK", 4096)  # entries cut by the chunk ends too
    names, entries = sources.read_zip_directory(path)
    assert len(names) == 65_540 and names[-1] == "d/65539"
    assert _as_read_here(path) == _as_zipfile_reads_it(path)


@pytest.mark.parametrize("damage", ["no end record", "directory cut", "entry signature"])
def test_a_damaged_directory_is_a_bad_zip_file(zpath, damage):
    raw = bytearray(zpath.read_bytes())
    cd = int.from_bytes(raw[-6:-2], "little")  # the EOCD's directory offset (no comment)
    if damage == "no end record":
        raw = raw[:-22]
    elif damage == "directory cut":
        raw = raw[:cd + 60] + raw[-22:]
    else:
        raw[cd + 46 + 13 + 2] ^= 0xFF  # inside the first entry's name: then the second's signature
        raw[cd:cd + 4] = b"PK\x09\x09"
    zpath.write_bytes(bytes(raw))
    with pytest.raises(zipfile.BadZipFile):
        sources.read_zip_directory(zpath)


def test_members_read_from_their_entries_equal_zipfiles_bytes(zpath):
    with zipfile.ZipFile(zpath) as zf:
        names = zf.namelist()
        want = {n: zf.read(n) for n in names}
    entries = _entries(zpath, names)
    assert entries.dtype.names == ("offset", "csize", "size", "crc", "method", "flags")
    for name, entry in zip(names, entries):
        got, reason = pack._read_zip_entry(str(zpath), f"{zpath}!{name}", entry)
        assert (got, reason) == (want[name], None), name
    assert sorted(entries["method"].tolist()) == [0, 8, 8, 12]


def test_a_damaged_member_is_named_and_other_methods_go_to_zipfile(zpath, monkeypatch):
    names = ["a/stored.JPEG", "a/deflated.JPEG", "a/bzip2.JPEG"]
    entries = _entries(zpath, names)
    raw = bytearray(zpath.read_bytes())
    for e in entries[:2]:  # one byte flipped in the stored data, one in the deflated
        at = int(e["offset"]) + 30 + raw[int(e["offset"]) + 26] + 40
        raw[at] ^= 0xFF
    zpath.write_bytes(bytes(raw))
    pack._ZIP_FDS.pop(str(zpath), None)
    for name, entry in zip(names[:2], entries[:2]):
        got, reason = pack._read_zip_entry(str(zpath), f"{zpath}!{name}", entry)
        assert got is None and reason.startswith("cannot read: "), (name, reason)
    calls = []
    monkeypatch.setattr(pack, "_read_zip_member", lambda p, k: calls.append(k) or (b"z", None))
    assert pack._read_zip_entry(str(zpath), f"{zpath}!{names[2]}", entries[2]) == (b"z", None)
    assert calls == [f"{zpath}!{names[2]}"]


def test_a_header_that_is_not_there_is_named(zpath):
    entry = _entries(zpath, ["a/stored.JPEG"])[0].copy()
    entry["offset"] += 3
    pack._ZIP_FDS.pop(str(zpath), None)
    got, reason = pack._read_zip_entry(str(zpath), f"{zpath}!a/stored.JPEG", entry)
    assert got is None and "no local file header" in reason


def test_a_kaggle_zip_packs_without_zipfile_in_the_shard_loop(tmp_path, monkeypatch):
    from trainers.options import PackOptions

    data = tmp_path / "imagenet-object-localization-challenge.zip"
    with zipfile.ZipFile(data, "w") as zf:
        for c, wnid in enumerate(("n01440764", "n01443537", "n01484850")):
            for i in range(4):
                zf.writestr(f"ILSVRC/Data/CLS-LOC/train/{wnid}/{wnid}_{i}.JPEG",
                            _jpeg(10 * c + i), compress_type=zipfile.ZIP_DEFLATED)
    used = []
    monkeypatch.setattr(pack, "_read_zip_member",
                        lambda p, k: used.append(k) or (None, "zipfile used"))
    res = pack.pack_folder(data, tmp_path / "out",
                           PackOptions(num_shards=2, val_fraction=0.0, pack_workers=0,
                                       pack_threads=2))
    assert used == [] and (res.packed, res.skipped) == (12, 0)
