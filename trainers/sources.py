"""What a user downloaded, read as it is: detect the input kind from a path and list or
stream its images as members ``(key, file name, label, bytes or skip reason)``.

Kinds (:func:`open_source`), each shown by name in the pack table:

* ``class folders``: ``<root>/<wnid>/**/<file>`` at any depth below the class folder
  (:func:`trainers.scan.scan_class_folders`); for validation also a flat folder of
  images with a label file (``flat folder + labels``, :mod:`trainers.validation`).
* ``Kaggle folder`` / ``Kaggle zip``: the ``imagenet-object-localization-challenge``
  download, ``ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG`` and ``.../val/*.JPEG`` with
  ``LOC_val_solution.csv`` and ``LOC_synset_mapping.txt``, as the folder or as the zip
  (read through the zip's central directory, nothing extracted).
* ``tar of per-class tars``: ``ILSVRC2012_img_train.tar`` (1,000 ``<wnid>.tar``) and
  ImageNet-21k's ``fall11_whole.tar`` / ``winter21_whole.tar.gz`` (19,167 or 21,841),
  optionally gzip/bz2/xz-compressed.
* ``tar of class folders``: a class-folder tree tarred as it is (the class is the folder
  right below the deepest folder that holds every image).
* ``flat tar + labels``: ``ILSVRC2012_img_val.tar`` (validation), labelled by the devkit
  archive ``ILSVRC2012_devkit_t12.tar.gz`` (ground truth + ``meta.mat``, read from the
  archive), ``LOC_val_solution.csv`` or any text/CSV/TSV file mapping file names to
  wnids or class indices (:func:`trainers.validation.labels_from_file`), found beside
  the tar (and up to ``LABEL_SEARCH_DEPTH`` folders above) or given.

Listed kinds (folders, zips: a listing is cheap) give ``items``, a compact
:class:`trainers.listing.Listing` of ``(key, label)`` in scan order (about 13 bytes per
member, not a Python tuple each), and the pack shuffles them globally. Archive kinds
(tars) are **streamed**: the tar is read once, sequentially (``tarfile`` stream
mode ``'r|*'``: right for hard disks, network volumes and gzip, which cannot seek),
and never extracted. Labels must
be known before the first record is written (the class index is the position of the
wnid in the sorted wnids, as tensorflow-datasets ``imagenet2012``), so a tar is first
walked for its *member headers only* (:func:`list_tar`): on an uncompressed tar this
seeks from header to header (1,000 reads for the ILSVRC-2012 train tar, whatever its
138 GB); on a ``.tar.gz`` it costs one full decompression (gzip cannot seek), the price
of knowing all 21,841 wnids of ImageNet-21k before its first image.

Class index = sorted wnid order. Class names (words) come from ``LOC_synset_mapping.txt``
or ``words.txt`` beside the data (or in the Kaggle zip), or the devkit's ``meta.mat``.

A truncated tar packs what it can: the stream ends at the damage and
:class:`StreamEnd` ``stopped`` names the member and the byte offset in the tar stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

from trainers import scan
from trainers.listing import Listing
from trainers.validation import (LABEL_FILE_NAMES, LABEL_SEARCH_DEPTH, ValidationLayoutError,
                                 labels_from_file, read_devkit_archive, scan_validation)

KIND_FOLDERS = "class folders"
KIND_FLAT_FOLDER = "flat folder + labels"
KIND_KAGGLE = "Kaggle folder"
KIND_KAGGLE_ZIP = "Kaggle zip"
KIND_TAR_OF_TARS = "tar of per-class tars"
KIND_FLAT_TAR = "flat tar + labels"
KIND_TAR_OF_FOLDERS = "tar of class folders"
#: Suffixes of the per-class inner tars of a tar of tars.
INNER_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
#: Errors a damaged or truncated archive raises while read.
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, zipfile.BadZipFile)
#: Members larger than this are skipped unread (as the pack's ``MAX_FILE_BYTES``).
MAX_MEMBER_BYTES = 512 * 1024 * 1024
#: numpy dtype of one zip member's place (:attr:`Source.zip_dir`), from the zip's
#: central directory as ``zipfile`` reads it (ZIP64 sizes and offsets resolved):
#: ``offset`` of its local file header, ``csize`` / ``size`` (bytes stored / after
#: decompression), ``crc`` (CRC-32 of the decompressed bytes), ``method`` (0 stored,
#: 8 deflated, ...) and ``flags`` (bit 0: encrypted), PKWARE APPNOTE section 4.4.
ZIP_ENTRY = [("offset", "<i8"), ("csize", "<i8"), ("size", "<i8"), ("crc", "<u4"),
             ("method", "<u2"), ("flags", "<u2")]
KAGGLE_DIR = "ILSVRC/Data/CLS-LOC/"
WORDS_FILES = ("LOC_synset_mapping.txt", "words.txt")


class SourceError(scan.DataFolderError):
    """A ``--data`` that cannot be read: missing, empty, not an archive, an unknown
    layout; the message names the path and the reason."""


@dataclass(frozen=True)
class Member:
    """One input member: ``key`` (a file path, or ``<archive>!<member>``, unique and
    stable), ``name`` (its file name, stored as ``file_name``), ``label`` (class index;
    -1 when it has none), ``data`` (its bytes, for archive members; None: read ``key``
    from disk) and ``reason`` (why it is skipped, decided before reading; None: pack)."""

    key: str
    name: str
    label: int
    data: bytes | None = None
    reason: str | None = None


@dataclass
class StreamEnd:
    """Filled in by a stream as it runs: ``members`` yielded so far, ``stopped`` (None,
    or where and why a damaged archive ended early: member name, byte offset)."""

    members: int = 0
    stopped: str | None = None


@dataclass
class Source:
    """An opened input (see the module docstring).

    Attributes:
      kind: one of the ``KIND_*`` names.
      path: the absolute path given.
      class_names: wnids in class-index order.
      class_words: the words of each class ('' when unknown), or ().
      items: listed kinds: a :class:`trainers.listing.Listing` of ``(key, label)`` in
        scan order (every entry, images or not); None for streamed kinds.
      zip_path: the zip the keys of ``items`` lie in (``<zip>!<member>``), if any.
      zip_dir: with ``zip_path``: where each member of ``items`` lies in the zip, a
        :data:`ZIP_ENTRY` array aligned with ``items`` (about 28 bytes a member, so
        that pack workers read members without ``zipfile``'s ~635-byte ``ZipInfo``
        per member of the whole archive); None otherwise.
      stream_fn: streamed kinds: ``stream_fn(end)`` yields every :class:`Member` in
        archive order.
      stamp: fingerprint material for archives (path, size, mtime, label file).
      labels_from: the label file used, if any (shown).
      note: where a header pass found the archive damaged (streamed kinds).
    """

    kind: str
    path: str
    class_names: tuple[str, ...]
    class_words: tuple[str, ...] = ()
    items: Listing | None = None
    zip_path: str | None = None
    stream_fn: Callable[[StreamEnd], Iterator[Member]] | None = None
    stamp: str = ""
    labels_from: str | None = None
    note: str | None = None
    zip_dir: object = field(default=None, repr=False)

    @property
    def streamed(self) -> bool:
        return self.stream_fn is not None

    def stream(self, end: StreamEnd) -> Iterator[Member]:
        """Every member in archive order (streamed kinds)."""
        return self.stream_fn(end)

    def read(self, key: str, index: int) -> bytes | None:
        """The bytes of listed item ``key``, at position ``index`` of ``items``, when it
        lies in a zip (None for a file: the reader opens ``key`` itself), read from
        :attr:`zip_dir` (:func:`read_zip_directory`; every zip source has it).

        Raises:
          zipfile.BadZipFile, OSError, zlib.error: the member cannot be read.
        """
        if self.zip_path is None:
            return None
        return _read_zip_at(self.zip_path, key[len(self.zip_path) + 1:], self.zip_dir[index])


def open_source(path: str | os.PathLike, *, role: str = "train",
                class_names: Sequence[str] | None = None,
                label_file: str | os.PathLike | None = None,
                error: type[Exception] = SourceError) -> Source:
    """Detect what ``path`` is and open it (see the module docstring).

    Args:
      path: a folder, a tar (any compression) or a zip.
      role: ``"train"`` (classes from the data) or ``"val"`` (labels index
        ``class_names``, the train classes; flat layouts need a label file).
      class_names: the train classes (``role="val"``).
      label_file: validation labels (default: looked for beside the images).
      error: the exception type raised for a bad ``path`` (validation label problems
        raise :class:`trainers.validation.ValidationLayoutError`).

    Raises:
      error: missing, empty, not a folder/tar/zip, an unknown layout, no class
        folders, a truncated archive that yields nothing.
      ValidationLayoutError: labels naming unknown wnids, a file list that does not
        match the labels, no label file.
    """
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise error(f"{p} does not exist")
    if role == "val" and class_names is None:
        raise ValueError("open_source(role='val') needs the train class_names")
    if p.is_dir():
        if (p / KAGGLE_DIR).is_dir():
            return _kaggle_folder(p, role, class_names, label_file, error)
        if role == "train":
            _hint_archives(p, error)
            return _class_folders(p, error)
        return _val_folder(p, class_names, label_file)
    if not p.is_file():
        raise error(f"{p} is neither a folder nor a regular file")
    size = p.stat().st_size
    if size == 0:
        raise error(f"{p} is empty (0 bytes): expected a folder, a tar or a zip archive")
    if not _looks_like_tar(p) and zipfile.is_zipfile(p):
        return _kaggle_zip(p, role, class_names, label_file, error)
    kind = _tar_kind(p, error)
    if kind == KIND_TAR_OF_TARS:
        return _tar_of_tars(p, role, class_names, error)
    listing, stopped = list_tar(p, error)
    names = [n for n, _ in listing if scan.is_image_name(os.path.basename(n))]
    root = _common_dir(names)
    if all("/" not in n[len(root):] for n in names):
        return _flat_tar(p, role, class_names, label_file, error)
    return _tar_of_folders(p, root, names, stopped, role, class_names)


# ------------------------------------------------------------------ folders

def _hint_archives(p: Path, error) -> None:
    """A download folder holding archives but no class folders: name the archives
    to pass instead."""
    if scan.list_class_folders(p):
        return
    archives = sorted(e.name for e in p.iterdir() if e.is_file() and e.name.lower().endswith(
        (".tar", ".tar.gz", ".tgz", ".zip")))
    if archives:
        raise error(f"data folder {p} has no class folders but holds {', '.join(archives[:3])}: "
                    f"pass the archive itself (e.g. --data {p / archives[0]})")


def read_class_words(text: str) -> dict[str, str]:
    """``LOC_synset_mapping.txt`` / ``words.txt`` text (a wnid, then its words, per
    line) -> ``{wnid: words}``."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if parts:
            out[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return out


def _words_beside(folders: Sequence[Path], class_names: Sequence[str]) -> tuple[str, ...]:
    """Class words from the first words file in ``folders`` (or ())."""
    for d in folders:
        for name in WORDS_FILES:
            if (d / name).is_file():
                words = read_class_words((d / name).read_text(errors="replace"))
                return tuple(words.get(c, "") for c in class_names)
    return ()


def _class_folders(p: Path, error, kind: str = KIND_FOLDERS,
                   words_from: Sequence[Path] = ()) -> Source:
    names, items = scan.scan_class_folders(p, error=error)
    return Source(kind=kind, path=str(p), class_names=names, items=items,
                  class_words=_words_beside(list(words_from) or [p, p.parent], names))


def _val_folder(p: Path, class_names, label_file) -> Source:
    items = scan_validation(p, class_names, label_file=label_file)
    if scan.list_class_folders(p):
        return Source(kind=KIND_FOLDERS, path=str(p), class_names=tuple(class_names),
                      items=items)
    from trainers.validation import find_label_file

    used = label_file or find_label_file(p)
    return Source(kind=KIND_FLAT_FOLDER, path=str(p), class_names=tuple(class_names),
                  items=items, labels_from=str(used))


def _kaggle_folder(root: Path, role, class_names, label_file, error) -> Source:
    if role == "train":
        return _class_folders(root / KAGGLE_DIR / "train", error, KIND_KAGGLE, [root])
    val = root / KAGGLE_DIR / "val"
    label_file = label_file or root / "LOC_val_solution.csv"
    items = scan_validation(val, class_names, label_file=label_file)
    return Source(kind=KIND_KAGGLE, path=str(val), class_names=tuple(class_names), items=items,
                  labels_from=str(label_file))


# ------------------------------------------------------------------ zip

def _kaggle_zip(p: Path, role, class_names, label_file, error) -> Source:
    """The Kaggle zip, listed through its central directory."""
    try:
        names, entries = read_zip_directory(p)
        prefix = next((n[:n.index(KAGGLE_DIR)] for n in names if KAGGLE_DIR in n), None)
        if prefix is None:
            raise error(f"{p}: a zip archive, but not Kaggle's imagenet-object-localization-"
                        f"challenge layout (no {KAGGLE_DIR} inside; first entries: "
                        f"{', '.join(names[:3]) or 'none'})")
        extra = {}
        for n in ("LOC_synset_mapping.txt", "LOC_val_solution.csv"):
            at = next((i for i, m in enumerate(names) if m == prefix + n), None)
            if at is not None:
                extra[n] = _read_zip_at(p, prefix + n, entries[at])
    except (*ARCHIVE_ERRORS, NotImplementedError) as exc:
        raise error(f"{p}: a damaged zip archive: {exc}") from None
    base = prefix + KAGGLE_DIR + ("train/" if role == "train" else "val/")
    # positions of the members under base, sorted by name (names are not copied)
    order = sorted((i for i, n in enumerate(names) if n.startswith(base) and not n.endswith("/")),
                   key=names.__getitem__)
    stamp = _stamp(p)

    def key(name: str) -> str:
        return f"{p}!{name}"

    if role == "train":
        keep = [i for i in order if "/" in names[i][len(base):]]
        classed = [names[i] for i in keep]
        wnids = sorted({n[len(base):].split("/", 1)[0] for n in classed})
        if not wnids:
            raise error(f"{p}: no class folders under {base}")
        index = {w: i for i, w in enumerate(wnids)}
        words = read_class_words(extra.get("LOC_synset_mapping.txt", b"").decode(errors="replace"))
        items = Listing.from_pairs((key(n), index[n[len(base):].split("/", 1)[0]])
                                   for n in classed)
        return Source(kind=KIND_KAGGLE_ZIP, path=str(p), class_names=tuple(wnids),
                      class_words=tuple(words.get(w, "") for w in wnids) if words else (),
                      items=items, zip_path=str(p), stamp=stamp,
                      zip_dir=entries[keep])
    keep = [i for i in order
            if "/" not in names[i][len(base):] and scan.is_image_name(names[i][len(base):])]
    images = [names[i] for i in keep]
    if not images:
        raise error(f"{p}: no validation images under {base}")
    if label_file is None and "LOC_val_solution.csv" not in extra:
        raise ValidationLayoutError(f"{p}: no LOC_val_solution.csv in the zip; pass a label file")
    where = f" in {p}!{base}"
    lname = str(label_file) if label_file else f"{p}!{prefix}LOC_val_solution.csv"
    labels = labels_from_file(lname, [os.path.basename(n) for n in images], class_names,
                              data=None if label_file else extra["LOC_val_solution.csv"],
                              where=where)
    return Source(kind=KIND_KAGGLE_ZIP, path=str(p), class_names=tuple(class_names),
                  items=Listing.from_pairs((key(n), lab) for n, lab in zip(images, labels)),
                  zip_path=str(p), zip_dir=entries[keep],
                  stamp=stamp + f"|{lname}", labels_from=lname)


# Zip records (PKWARE APPNOTE 6.3.x): end of central directory (4.3.16), ZIP64 end of
# central directory locator (4.3.15) and record (4.3.14), central directory file
# header (4.3.12) and local file header (4.3.7), all little-endian.
_EOCD = struct.Struct("<4s4H2LH")  # sig, disk, cd disk, entries here, entries, cd size, cd offset, comment
_EOCD64_LOCATOR = struct.Struct("<4sLQL")  # sig, cd disk, ZIP64 EOCD offset, disks
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # sig, size, made by, needed, disk, cd disk, entries here, entries, cd size, cd offset
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # sig, made by, needed, flags, method, time, date, crc, csize, size, name, extra, comment, disk, int attr, ext attr, offset
_LOCAL = struct.Struct("<4s22xHH")  # sig, ..., name length, extra length
_ZIP64_EXTRA = 0x0001  # extra field id of the ZIP64 sizes and offset (4.5.3)
_U32 = 0xFFFFFFFF
#: Bytes of the central directory parsed at a time by :func:`read_zip_directory`.
_CD_CHUNK = 8 << 20


def _zip_tail(fd: int, size: int) -> tuple[int, int]:
    """``(entries, central directory offset)`` from the end records of a zip of
    ``size`` bytes (ZIP64 ones when the EOCD says so). Raises zipfile.BadZipFile."""
    tail_len = min(size, _EOCD.size + 0xFFFF)  # the EOCD and its longest comment
    tail = os.pread(fd, tail_len, size - tail_len)
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0 and at + _EOCD.size > len(tail):
        at = tail.rfind(b"PK\x05\x06", 0, at)
    if at < 0:
        raise zipfile.BadZipFile("no end of central directory record (not a zip, or truncated)")
    _, disk, cd_disk, _, entries, _, cd_offset, _ = _EOCD.unpack_from(tail, at)
    eocd_at = size - tail_len + at
    if eocd_at >= _EOCD64_LOCATOR.size:
        loc = os.pread(fd, _EOCD64_LOCATOR.size, eocd_at - _EOCD64_LOCATOR.size)
        if loc[:4] == b"PK\x06\x07":
            _, _, rec_at, _ = _EOCD64_LOCATOR.unpack(loc)
            rec = os.pread(fd, _EOCD64.size, rec_at)
            if len(rec) < _EOCD64.size or rec[:4] != b"PK\x06\x06":
                raise zipfile.BadZipFile(f"no ZIP64 end of central directory record at byte {rec_at:,}")
            _, _, _, _, disk, cd_disk, _, entries, _, cd_offset = _EOCD64.unpack(rec)
    if disk or cd_disk:
        raise zipfile.BadZipFile("a zip split over several disks is not read")
    return entries, cd_offset


def _zip64_fields(extra: bytes, csize: int, size: int, offset: int) -> tuple[int, int, int]:
    """``(csize, size, offset)`` with the 0xFFFFFFFF ones taken from the ZIP64 extra
    field (which holds, in this order, only the fields set to 0xFFFFFFFF: uncompressed
    size, compressed size, local header offset; APPNOTE 4.5.3)."""
    i = 0
    while i + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, i)
        if tag == _ZIP64_EXTRA:
            vals, j = [], i + 4
            for is_max in (size == _U32, csize == _U32, offset == _U32):
                if is_max:
                    if j + 8 > i + 4 + n:
                        raise zipfile.BadZipFile("a ZIP64 extra field too short for its sizes")
                    vals.append(struct.unpack_from("<Q", extra, j)[0])
                    j += 8
                else:
                    vals.append(None)
            size = vals[0] if vals[0] is not None else size
            csize = vals[1] if vals[1] is not None else csize
            offset = vals[2] if vals[2] is not None else offset
            return csize, size, offset
        i += 4 + n
    if _U32 in (csize, size, offset):
        raise zipfile.BadZipFile("sizes of 0xFFFFFFFF without a ZIP64 extra field")
    return csize, size, offset


def read_zip_directory(path: str | os.PathLike) -> tuple[list[str], "np.ndarray"]:
    """Every member of a zip from its central directory, without ``zipfile``: its
    names (in directory order; UTF-8 when the member's flag bit 11 says so, else
    CP437, as ``zipfile`` decodes them) and their :data:`ZIP_ENTRY` array, aligned.

    Why not ``zipfile``: a ``ZipFile`` holds a ``ZipInfo`` of ~635 bytes per member,
    ~775 MiB for the 1.28 M members of Kaggle's ImageNet zip; this holds the names and
    28 bytes a member, and parses the directory 8 MiB at a time.

    Raises:
      zipfile.BadZipFile: no end record, a split zip, a directory that is not where
        or what its end record says.
      OSError: the file cannot be read.
    """
    import numpy as np

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        entries, pos = _zip_tail(fd, size)
        out = np.zeros(entries, ZIP_ENTRY)
        names: list[str] = []
        buf, at = b"", 0
        for i in range(entries):
            if len(buf) - at < _CENTRAL.size:
                more = os.pread(fd, _CD_CHUNK, pos)
                buf, at, pos = buf[at:] + more, 0, pos + len(more)
            if len(buf) - at < _CENTRAL.size or buf[at:at + 4] != b"PK\x01\x02":
                raise zipfile.BadZipFile(f"central directory entry {i:,} of {entries:,} "
                                         "is missing or damaged")
            (_, _, _, flags, method, _, _, crc, csize, fsize, n, e, c, _, _, _,
             offset) = _CENTRAL.unpack_from(buf, at)
            end = at + _CENTRAL.size + n + e + c
            while len(buf) < end:
                more = os.pread(fd, _CD_CHUNK, pos)
                if not more:
                    raise zipfile.BadZipFile(f"central directory entry {i:,} runs past the end")
                buf, pos = buf + more, pos + len(more)
            name = buf[at + _CENTRAL.size:at + _CENTRAL.size + n]
            if _U32 in (csize, fsize, offset):
                csize, fsize, offset = _zip64_fields(
                    buf[at + _CENTRAL.size + n:at + _CENTRAL.size + n + e], csize, fsize, offset)
            name = name.decode("utf-8" if flags & 0x800 else "cp437")
            names.append(name.split("\0", 1)[0] if "\0" in name else name)  # as ZipInfo does
            out[i] = (offset, csize, fsize, crc, method, flags)
            at = end
        return names, out
    finally:
        os.close(fd)


def _read_zip_at(path: str | os.PathLike, name: str, entry) -> bytes:
    """Member ``name`` of the zip at ``path`` from its :data:`ZIP_ENTRY` ``entry``
    (:func:`zip_member_bytes`), or through ``zipfile`` for what that does not read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return zip_member_bytes(fd, entry)
    except NotImplementedError:
        with zipfile.ZipFile(path) as zf:
            return zf.read(name)
    finally:
        os.close(fd)


def zip_member_bytes(fd: int, entry) -> bytes:
    """The bytes of the zip member at :data:`ZIP_ENTRY` ``entry`` of the zip open as
    ``fd``: two ``os.pread`` (the local file header, then the data, APPNOTE 4.3.7),
    inflated when deflated (``zlib``, raw stream), checked against the central
    directory's CRC-32 and size.

    Raises:
      NotImplementedError: an encrypted member or a method other than stored (0) and
        deflated (8) (``zipfile`` reads those).
      zipfile.BadZipFile: no local header at the offset, the data truncated, a CRC-32
        or size that differs.
      OSError, zlib.error: the read or the inflate failed.
    """
    offset, csize, size, crc, method, flags = (int(v) for v in entry.tolist())
    if flags & 1 or method not in (0, 8):
        raise NotImplementedError(f"zip method {method}, flags {flags:#x}")
    head = os.pread(fd, _LOCAL.size, offset)
    if len(head) < _LOCAL.size or head[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local file header at byte {offset:,}")
    _, n, e = _LOCAL.unpack(head)
    raw = os.pread(fd, csize, offset + _LOCAL.size + n + e)
    if len(raw) != csize:
        raise zipfile.BadZipFile(f"{len(raw):,} of {csize:,} bytes (truncated zip?)")
    data = raw if method == 0 else zlib.decompress(raw, -15)
    if len(data) != size or zlib.crc32(data) != crc:
        raise zipfile.BadZipFile("Bad CRC-32 or size")
    return data


# ------------------------------------------------------------------ tar

def _stamp(p: Path) -> str:
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def _looks_like_tar(p: Path) -> bool:
    """A POSIX tar header (``ustar`` at byte 257) or a gzip/bz2/xz stream: checked
    before the zip test, which looks at the end of the file, where a tar's last
    member could itself be a zip."""
    with open(p, "rb") as f:
        head = f.read(512)
    return head[257:262] == b"ustar" or _compressed(p)


def _compressed(p: Path) -> bool:
    with open(p, "rb") as f:
        head = f.read(6)
    return head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00"


def inner_tar_wnid(name: str) -> str | None:
    """``n01440764`` for ``n01440764.tar`` (any folder, ``.tar.gz``/``.tgz`` too);
    None for other names."""
    base = os.path.basename(name)
    for suf in INNER_TAR_SUFFIXES:
        if base.lower().endswith(suf) and len(base) > len(suf):
            return base[:-len(suf)]
    return None


def _tar_kind(p: Path, error) -> str:
    """Peek at the first members (stream mode: a few header reads)."""
    seen: list[str] = []
    try:
        with tarfile.open(p, "r|*") as tf:
            for m in tf:
                if m.isfile():
                    seen.append(m.name)
                if len(seen) >= 32:
                    break
    except ARCHIVE_ERRORS as exc:
        if not seen:
            with open(p, "rb") as f:
                head = f.read(8)
            raise error(f"{p} is not a folder, a zip or a tar archive ({type(exc).__name__}: "
                        f"{exc}; first bytes {head!r})") from None
    if any(inner_tar_wnid(n) for n in seen):
        return KIND_TAR_OF_TARS
    if any(scan.is_image_name(os.path.basename(n)) for n in seen):
        return KIND_FLAT_TAR
    if any(n.endswith("ILSVRC2012_validation_ground_truth.txt") for n in seen):
        raise error(f"{p} is the ILSVRC-2012 devkit, not images: pass it with --val-labels")
    raise error(f"{p}: a tar archive of an unknown layout (expected per-class <wnid>.tar "
                f"members or image files; first members: {', '.join(seen[:3]) or 'none'})")


_LISTINGS: dict[str, tuple[list[tuple[str, int]], str | None]] = {}


def list_tar(p: Path, error=SourceError) -> tuple[list[tuple[str, int]], str | None]:
    """The file members of tar ``p`` as ``[(name, size), ...]`` in archive order, by
    their headers alone (seeks on an uncompressed tar; a full decompression otherwise),
    and where it ends early (None when complete): a damaged header, or a last member
    whose data runs past the end of an uncompressed file.

    A listing is walked once per archive, not once per command: it is kept for the life
    of the process and saved in the cache folder
    (``trainers.synthetic.default_cache_dir() / 'tar-listings'``), keyed by the
    archive's absolute path, size and mtime, so ``probe``, ``pack`` and ``train`` on one
    150 GB tar (or a resumed pack of a ``.tar.gz``, which has to be decompressed to
    walk) do not walk it again. A saved listing that cannot be read is walked again.

    Raises:
      error: not a readable tar.
    """
    key = _stamp(p)
    if key not in _LISTINGS:
        saved = _listing_file(p)
        cached = _load_listing(saved)
        if cached is None:
            cached = _walk_tar(p, error)
            _save_listing(saved, p, cached)
        _LISTINGS[key] = cached
    return _LISTINGS[key]


def _listing_file(p: Path) -> Path:
    from trainers.synthetic import default_cache_dir

    st = p.stat()
    key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|v1"
    return default_cache_dir() / "tar-listings" / (hashlib.sha256(key.encode()).hexdigest()[:24]
                                                  + ".json")


def _load_listing(path: Path) -> tuple[list[tuple[str, int]], str | None] | None:
    try:
        d = json.loads(path.read_text())
        return [(str(n), int(z)) for n, z in d["members"]], d["stopped"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_listing(path: Path, p: Path, listing: tuple[list[tuple[str, int]], str | None]
                  ) -> None:
    """Save the listing of archive ``p`` at ``path``; best effort: a cache folder that
    cannot be written costs a walk next time."""
    members, stopped = listing
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"archive": str(p.resolve()), "stopped": stopped,
                                   "members": members}))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _walk_tar(p: Path, error) -> tuple[list[tuple[str, int]], str | None]:
    out: list[tuple[str, int]] = []
    stopped = None
    try:
        tf = tarfile.open(p, "r:*")
    except ARCHIVE_ERRORS as exc:
        raise error(f"{p}: not a readable tar archive: {exc}") from None
    end = 0
    with tf:
        try:
            while (m := tf.next()) is not None:
                if m.isfile():
                    out.append((m.name, m.size))
                end = m.offset_data + m.size
        except ARCHIVE_ERRORS as exc:
            stopped = (f"{p} ends early: damaged after member "
                       f"{out[-1][0] if out else '(none)'} at byte {tf.offset:,}: {exc}")
    if stopped is None and not _compressed(p) and end > p.stat().st_size:
        stopped = (f"{p} ends early: member {out[-1][0]} runs to byte {end:,} but the file "
                   f"has {p.stat().st_size:,} bytes (truncated)")
    return out, stopped


def _train_classes(found: Sequence[str], class_names: Sequence[str], where) -> list[str]:
    """The train classes a validation input is labelled with, after checking that every
    class it has (``found``) is one of them.

    Raises:
      ValidationLayoutError: a class that is not a train class (``where(name)`` names it)."""
    known = set(class_names)
    unknown = [c for c in found if c not in known]
    if unknown:
        raise ValidationLayoutError(f"{where(unknown[0])} is not a train class "
                                    f"({len(unknown)} such)")
    return list(class_names)


def _tar_of_tars(p: Path, role, class_names, error) -> Source:
    listing, stopped = list_tar(p, error)
    wnids = sorted({w for n, _ in listing if (w := inner_tar_wnid(n))})
    if not wnids:
        raise error(f"{p}: a tar of per-class tars with no <wnid>.tar member"
                    + (f" ({stopped})" if stopped else ""))
    if role == "val":
        wnids = _train_classes(wnids, class_names, lambda w: f"{p}: per-class tar {w}.tar")
    index = {w: i for i, w in enumerate(wnids)}
    words = _words_beside([p.parent], wnids) or _devkit_words(p.parent, wnids)
    return Source(kind=KIND_TAR_OF_TARS, path=str(p), class_names=tuple(wnids),
                  class_words=words, stream_fn=partial(_stream_tar_of_tars, p, index),
                  stamp=_stamp(p), note=stopped)


def _devkit_words(folder: Path, wnids) -> tuple[str, ...]:
    for name in ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12.tar"):
        if (folder / name).is_file():
            try:
                _, words = read_devkit_archive(folder / name)
            except ValidationLayoutError:
                return ()
            return tuple(words.get(w, "") for w in wnids)
    return ()


def _end_check(p: Path, tf, end: StreamEnd, last: str) -> None:
    """An uncompressed tar that ended without its two zero end blocks was cut at a
    member boundary."""
    if end.stopped is None and not _compressed(p) and p.stat().st_size < tf.offset + 1024:
        end.stopped = (f"{p} ends early: no end-of-archive blocks after {last or '(none)'} "
                       f"at byte {tf.offset:,} (truncated)")


def _stream_tar(p: Path, end: StreamEnd, visit) -> Iterator[Member]:
    """The Members ``visit(tf, member)`` makes of each file member of the tar ``p``,
    read as one stream in archive order (``tf.members`` cleared as it goes: memory
    stays flat). ``visit`` returns the name of the last entry it read (None: the
    member's own). A damaged stream ends the walk with ``end.stopped`` naming the entry
    it stopped in (or after) and the byte reached; an uncompressed tar cut at a member boundary is
    caught by :func:`_end_check`."""
    last, where = "", "after"
    with tarfile.open(p, "r|*") as tf:
        while True:
            try:
                m = tf.next()
                if m is None:
                    break
                tf.members.clear()
                if not m.isfile():
                    continue
                last, where = m.name, "in"
                last = (yield from visit(tf, m)) or last
                where = "after"
            except ARCHIVE_ERRORS as exc:
                end.stopped = (f"{p} ends early: stopped {where} {last or '(none)'} at byte "
                               f"{tf.offset:,} of the tar stream: {exc}")
                return
        _end_check(p, tf, end, last)


def _stream_tar_of_tars(p: Path, index: dict[str, int], end: StreamEnd) -> Iterator[Member]:
    """Members of each per-class tar, in archive order (see the module docstring)."""

    def visit(tf, m):
        wnid = inner_tar_wnid(m.name)
        if wnid not in index:
            end.members += 1
            yield Member(f"{p}!{m.name}", os.path.basename(m.name), -1,
                         reason=f"not a per-class tar of a train class ({m.name})")
            return None
        return (yield from _inner_members(p, tf, m, index[wnid], end))

    return _stream_tar(p, end, visit)


def _inner_members(p: Path, tf, m, label: int, end: StreamEnd) -> Iterator[Member]:
    """The members of one inner tar; a damaged inner tar ends in one skipped entry
    for its unread rest. Returns the name of the last member read."""
    last = m.name
    count = 0
    try:
        inner = tarfile.open(fileobj=tf.extractfile(m), mode="r|*")
        with inner:
            while (im := inner.next()) is not None:
                inner.members.clear()
                if not im.isfile():
                    continue
                last = f"{m.name}/{im.name}"
                count += 1
                end.members += 1
                yield _read_member(inner, im, f"{p}!{last}", label)
    except ARCHIVE_ERRORS as exc:
        end.members += 1
        yield Member(f"{p}!{m.name}/*", os.path.basename(m.name), label,
                     reason=f"rest of {m.name} unreadable after {count} members: "
                            f"{type(exc).__name__}: {exc}")
    return last


def _read_member(tf, m, key: str, label: int) -> Member:
    """A tar member as a Member: read when an image by name and not too large."""
    name = os.path.basename(m.name)
    reason = scan.not_an_image(name)
    if reason is None and m.size > MAX_MEMBER_BYTES:
        reason = f"file too large ({m.size:,} bytes)"
    if reason is not None:
        return Member(key, name, label, reason=reason)
    return Member(key, name, label, data=tf.extractfile(m).read())


def find_labels_beside(p: Path) -> Path | None:
    """The first of :data:`trainers.validation.LABEL_FILE_NAMES` in the folder of
    ``p`` or up to ``LABEL_SEARCH_DEPTH`` folders above, or None."""
    for d in [p.parent, *list(p.parent.parents)[:LABEL_SEARCH_DEPTH]]:
        for name in LABEL_FILE_NAMES:
            if (d / name).is_file():
                return d / name
    return None


def _flat_tar(p: Path, role, class_names, label_file, error) -> Source:
    if role == "train":
        raise error(f"{p} is a flat tar of images without classes; pass it as --val-data "
                    f"(with labels), or a tar of per-class tars (or a class-folder tree) "
                    f"as --data")
    listing, stopped = list_tar(p, error)
    images = sorted({os.path.basename(n) for n, _ in listing
                     if scan.is_image_name(os.path.basename(n))})
    label_file = Path(label_file) if label_file else find_labels_beside(p)
    if label_file is None:
        raise ValidationLayoutError(
            f"validation tar {p} has no label file; expected one of "
            f"{', '.join(LABEL_FILE_NAMES)} beside it (or pass --val-labels)")
    if not label_file.is_file():
        raise ValidationLayoutError(f"label file {label_file} for {p} does not exist")
    labels = labels_from_file(label_file, images, class_names, where=f" in {p}",
                              truncated=stopped is not None)
    by_name = dict(zip(images, labels))
    return Source(kind=KIND_FLAT_TAR, path=str(p), class_names=tuple(class_names),
                  stream_fn=partial(_stream_image_tar, p, partial(_label_by_name, by_name)),
                  labels_from=str(label_file),
                  stamp=f"{_stamp(p)}|{_stamp(label_file)}", note=stopped)


def _label_by_name(by_name: dict[str, int], name: str) -> int:
    return by_name.get(os.path.basename(name), -1)


def _label_by_folder(root: str, index: dict[str, int], name: str) -> int:
    rel = name[len(root):] if name.startswith(root) else name
    return index.get(rel.split("/", 1)[0], -1) if "/" in rel else -1


def _common_dir(names: Sequence[str]) -> str:
    """The deepest folder (``a/b/``, or '') holding every name of ``names``."""
    dirs = [n.rsplit("/", 1)[0] if "/" in n else "" for n in names]
    if not dirs or any(d == "" for d in dirs):
        return ""
    common = os.path.commonpath(dirs)
    return common + "/" if common else ""


def _tar_of_folders(p: Path, root: str, names: Sequence[str], stopped: str | None, role,
                    class_names) -> Source:
    """A tar of a class-folder tree (``[<prefix>/]<wnid>/**/<file>``): the class is
    the folder right below the deepest folder holding every image (``root``)."""
    found = sorted({n[len(root):].split("/", 1)[0] for n in names if "/" in n[len(root):]})
    if role == "val":
        found = _train_classes(found, class_names, lambda c: f"{p}: class folder {root}{c}")
    index = {c: i for i, c in enumerate(found)}
    return Source(kind=KIND_TAR_OF_FOLDERS, path=str(p), class_names=tuple(found),
                  class_words=_words_beside([p.parent], found),
                  stream_fn=partial(_stream_image_tar, p, partial(_label_by_folder, root, index)),
                  stamp=_stamp(p), note=stopped)


def _stream_image_tar(p: Path, label_of: Callable[[str], int],
                      end: StreamEnd) -> Iterator[Member]:
    """The members of a tar of images, in archive order, labelled by ``label_of(member
    name)`` (-1: none, the pack lists the member as skipped)."""

    def visit(tf, m):
        member = _read_member(tf, m, f"{p}!{m.name}", label_of(m.name))
        end.members += 1
        yield member

    return _stream_tar(p, end, visit)


# ------------------------------------------------------------------ probes

def sample_members(path: str | os.PathLike, n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """Up to ``n`` images of the training input ``path`` as ``(key, bytes)``, for the
    probes: spread over the classes of a listed kind (a seeded sample); for an
    uncompressed tar of per-class tars, the first images of 8 inner tars spread over
    the archive, reached by seeks (:func:`_sample_by_seeks`: about ``n`` images'
    bytes are read); for a compressed one, at most ``max(1, n // 8)`` images from each
    of the first inner tars (only the start of the archive is read, but whole inner
    tars of it; an archive of fewer classes gives more per class).

    Raises:
      SourceError: see :func:`open_source`; no image found.
    """
    p = Path(path).expanduser().absolute()
    if (p.is_file() and (_looks_like_tar(p) or not zipfile.is_zipfile(p))
            and _tar_kind(p, SourceError) == KIND_TAR_OF_TARS):
        if not _compressed(p):
            sampled = _sample_by_seeks(p, n)
            if sampled:
                return sampled
        # No header pass: the labels do not matter here, only the first inner tars.
        src = Source(kind=KIND_TAR_OF_TARS, path=str(p), class_names=(),
                     stream_fn=partial(_stream_tar_of_tars, p, _AnyClass()))
    else:
        src = open_source(p)
    out: list[tuple[str, bytes]] = []
    if src.kind in (KIND_FOLDERS, KIND_KAGGLE):
        root = Path(src.path)
        return [(str(f), f.read_bytes()) for f in scan.sample_images(root, n, seed)]
    if src.items is not None:
        import numpy as np

        # A seeded walk over the members until n images: nothing listed is copied.
        for i in np.random.default_rng(seed).permutation(len(src.items)):
            if len(out) >= n:
                break
            k, _ = src.items[int(i)]
            if scan.is_image_name(os.path.basename(k)):
                out.append((k, src.read(k, int(i))))
    else:
        per_tar: dict[str, int] = {}
        spare: list[tuple[str, bytes]] = []
        cap = max(1, n // 8)
        for m in src.stream(StreamEnd()):
            inner = m.key.split("!", 1)[-1].split("/", 1)[0]  # the per-class tar
            if m.data is not None and per_tar.get(inner, 0) < cap:
                per_tar[inner] = per_tar.get(inner, 0) + 1
                out.append((m.key, m.data))
            elif m.data is not None and len(spare) < n:
                spare.append((m.key, m.data))  # for an archive of few classes
            if len(out) >= n:
                break
        out += spare[:n - len(out)]
    if not out:
        raise SourceError(f"no image files ({', '.join(scan.IMAGE_SUFFIXES)}) in {path}")
    return out


def _sample_by_seeks(p: Path, n: int, tars: int = 8) -> list[tuple[str, bytes]]:
    """Up to ``n`` images of an uncompressed tar of per-class tars: the first
    ``ceil(n / tars)`` images of ``tars`` inner tars evenly spaced over the archive,
    found by walking headers with seeks (the outer tar's, then each inner tar's).
    Stops quietly at damage (what was read is returned)."""
    out: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(p, "r:") as tf:
            inners = [m for m in iter(tf.next, None) if m.isfile() and inner_tar_wnid(m.name)]
            k = min(len(inners), tars)
            picks = [inners[round(i * (len(inners) - 1) / max(1, k - 1))] for i in range(k)]
            per = -(-n // max(1, k))
            for m in picks:
                with tarfile.open(fileobj=tf.extractfile(m), mode="r:") as inner:
                    got = 0
                    while got < per and (im := inner.next()) is not None:
                        if im.isfile() and scan.is_image_name(os.path.basename(im.name)):
                            out.append((f"{p}!{m.name}/{im.name}", inner.extractfile(im).read()))
                            got += 1
    except ARCHIVE_ERRORS:
        pass
    return out[:n]


class _AnyClass(dict):
    """A class index where every wnid is class 0 (sampling needs no labels)."""

    def __contains__(self, key) -> bool:
        return True

    def __getitem__(self, key) -> int:
        return 0


def image_count(src: Source) -> tuple[int | None, int | None]:
    """``(images, bytes)`` of a source when known without reading the images: listed
    kinds count their image entries (bytes None); a tar of tars gives None images and
    the sum of its inner tars' sizes less their end padding (from the header
    listing); each image there also carries a 512-byte header and on average 256
    bytes of padding."""
    if src.items is not None:
        return sum(1 for k, _ in src.items if scan.is_image_name(os.path.basename(k))), None
    listing, _ = list_tar(Path(src.path))
    # Less each inner tar's own end blocks and padding (two 512-byte blocks, on
    # average half a 10,240-byte record): negligible for ImageNet's 140 MB inner
    # tars, not for tiny ones.
    return None, sum(max(0, size - 1024 - 5120) for _, size in listing)
