"""Pack training images, as downloaded, into ArrayRecord shards that
tensorflow-datasets can read.

Input: anything :func:`trainers.sources.open_source` reads: ``<root>/<wnid>/**/<file>``
trees, ``ILSVRC2012_img_train.tar`` and ImageNet-21k tars of per-class tars, Kaggle's
folder or zip; validation also from ``ILSVRC2012_img_val.tar`` or a flat folder with
labels (class index = position of the wnid in sorted order, the order
tensorflow-datasets ``imagenet2012`` uses). Output: a folder readable with
``tfds.builder_from_directory(out)`` (``dataset_info.json``, ``features.json`` and
``autotune_images-<split>.array_record-XXXXX-of-YYYYY`` shards, one serialized
``tf.train.Example`` per record with ``image`` (JPEG bytes), ``label`` (int64) and
``file_name``), written without TensorFlow.

Nothing is lost: every input member is either packed or listed, with its path and the
reason, in ``PackResult.bad_images`` (and ``bad_images.json``), so
``input_images == packed + skipped`` always.

Records are serialized deterministically (sorted protobuf map keys), so the same
inputs and options give byte-identical shards in any process, with threads or worker
processes, and across hosts: a listed shard is written whole, members in order, by one
worker (:func:`_write_listed_shard`: the parent only schedules shards and adds up their
summaries), and an archive stream's results come back in member order
(:meth:`_Workers.ordered`).

Which member goes to which shard:

* listed inputs (folders, zips): a seeded global shuffle cut into ``num_shards``
  shards (:func:`_assign`, :func:`_chunks`);
* archive streams (tars): :func:`stream_shard`, a function of the member's position in
  the archive: groups of ``archive_group_shards`` shards filled by dealing consecutive
  members over them. Chosen over a listing pass because a tar can only be read in
  order (a ``.tar.gz`` cannot seek at all) and over one shard at a time because each
  shard then mixes the classes of a whole group; the readers' shuffle does the rest.

Several processes (``process_index`` of ``process_count``) write disjoint shards
(listed) or groups (streamed) of one shared folder; the assignment above does not
depend on their number, so the union is byte-identical to a one-process pack.

Crash safety: each shard is written to a temporary name, synced to the disk, renamed
when complete and only then given a sidecar JSON that lists what went into it
(:func:`_seal_shard`; a sidecar lost or cut short by a power loss only means that
shard is written again); the data set's metadata and the ``pack.json`` summary are
written last (by the process that finds every shard complete). A shard's bytes go to
the disk while it is written and leave the page cache behind it
(:class:`_WriteBehind`). A rerun after an interruption keeps the complete shards (same
inputs and options give the same assignment) and redoes the rest, so the result is
identical to an uninterrupted run. An archive is re-read from its start on a rerun (streams cannot
seek), but only the incomplete groups are decoded and written; its fingerprint is its
path, size and mtime, so resuming never reads a 150 GB tar an extra time.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import random
import re
import shutil
import stat
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from trainers.example_wire import image_and_label
from trainers.records import RecordError, write_text_atomic
from trainers import preprocess, scan, sources
from trainers.listing import Listing
from trainers.summaries import BadImage, PackResult, SplitSummary
from trainers.options import PackOptions

DATASET_NAME = "autotune_images"
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
PACK_SUMMARY = "pack.json"
#: In the fingerprint: 2 since the numpy assignment of members to shards, 3 since the
#: assignment by hashed keys (:func:`_assign`; a partial pack made before must not be
#: resumed with the new assignment).
FORMAT_VERSION = 3
#: Larger input files are skipped unread ("file too large"): a JPEG within
#: ``preprocess.MAX_PIXELS`` is far smaller, and reading a stray multi-gigabyte file
#: whole would only exhaust memory.
MAX_FILE_BYTES = 512 * 1024 * 1024
#: Partial files an interrupted pack leaves: shards being written (``*.tmp``) and the
#: temporaries of ``write_text_atomic`` (``.<name>.<random>``).
_TEMP_NAME = re.compile(rf"{DATASET_NAME}-.+\.tmp|\.(fingerprint\.txt|bad_images\.json|"
                        rf"{re.escape(PACK_SUMMARY)}|{DATASET_NAME}-.+\.json)\.\w+")


class PackError(RuntimeError):
    """The input folder cannot be packed (missing, empty, no class folders...)."""


def scan_image_folder(root: str | os.PathLike) -> tuple[tuple[str, ...], Listing]:
    """List ``<root>/<class>/<file>`` as ``(class_names, listing of (path, label))``:
    :func:`trainers.scan.scan_class_folders` with every entry of a class folder,
    images or not, so that nothing is dropped silently (packing lists what it cannot
    use with the reason). Order: by class, then by file name.

    Raises:
      PackError: ``root`` is missing, is not a folder, has no class folders, or a
        class folder is empty.
    """
    return scan.scan_class_folders(root, error=PackError)


def _features(class_names: Sequence[str]):
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(names=list(class_names)),
        "file_name": tfds.features.Text(),
    })


def _not_regular(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def _example_serializer(feats) -> Callable[[dict], bytes]:
    """``serialize(example) -> bytes``: tensorflow-datasets' ``serialize_example`` with
    deterministic protobuf serialization.

    ``FeaturesDict.serialize_example`` writes the ``tf.train.Example`` feature map in
    an order that changes from process to process (protobuf map order is unspecified,
    and upb's hash is seeded per process), so a shard written by a resumed pack would
    differ in bytes from the same shard written by an uninterrupted one. Sorted map
    keys (``SerializeToString(deterministic=True)``) make the bytes a function of the
    inputs only; readers parse either form the same.
    """
    from tensorflow_datasets.core import example_serializer

    serializer = example_serializer.ExampleSerializer(feats.get_serialized_info())

    def serialize(example: dict) -> bytes:
        proto = serializer.get_tf_example(feats.encode_example(example))
        return proto.SerializeToString(deterministic=True)

    return serialize


_SMALL_VARINTS = tuple(bytes((i,)) for i in range(128))


def _varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf varint: 7 bits a byte, low bits first."""
    if n < 128:
        return _SMALL_VARINTS[n]
    if n < 16384:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n >= 128:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, length: int) -> bytes:
    """The key and length of a length-delimited protobuf field."""
    return bytes([number << 3 | 2]) + _varint(length)


def _ld(number: int, payload: bytes) -> bytes:
    return _field(number, len(payload)) + payload


#: The constant parts of :func:`example_record`: the ``file_name`` map entry's key
#: with the tag of its value, and the ``image`` one's.
_KEY_FILE_NAME = _ld(1, b"file_name") + b"\x12"
_KEY_IMAGE = _ld(1, b"image") + b"\x12"
_LABEL_ENTRIES: dict[int, bytes] = {}


def _label_entry(label: int) -> bytes:
    """The ``label`` map entry of a record (cached: one per class)."""
    entry = _LABEL_ENTRIES.get(label)
    if entry is None:
        entry = _ld(1, _ld(1, b"label") + _ld(2, _ld(3, _ld(1, _varint(label)))))
        if len(_LABEL_ENTRIES) < 100_000:
            _LABEL_ENTRIES[label] = entry
    return entry


def _name_entry(file_name: str) -> bytes:
    """The ``file_name`` map entry of a record, with its tag and length (the
    ``0a L(e1) ...`` part of :func:`example_record`)."""
    name = file_name.encode()
    n = len(name)
    if n < 124:  # every length of the name entry is one byte
        head = _KEY_FILE_NAME + bytes((n + 4, 0x0A, n + 2, 0x0A, n)) + name
    else:
        v = _varint
        a = v(n)
        b = v(n + 1 + len(a))
        c = v(n + 2 + len(a) + len(b))
        head = _KEY_FILE_NAME + c + b"\x0a" + b + b"\x0a" + a + name
    return b"\x0a" + _varint(len(head)) + head


def example_record(image: bytes, label: int, file_name: str) -> bytes:
    """One record as the pack stores it: a serialized ``tf.train.Example`` with
    ``file_name`` (bytes), ``image`` (JPEG bytes) and ``label`` (int64 >= 0), written
    by hand (protobuf wire format: ``Example.features`` = 1, ``Features.feature`` = 1,
    a map entry's key = 1 and value = 2, ``Feature.bytes_list`` = 1 /
    ``int64_list`` = 3 packed, ``value`` = 1) with the map keys sorted: byte-identical
    to tensorflow-datasets' ``FeaturesDict.serialize_example`` serialized
    deterministically (:func:`_example_serializer`; the tests compare them), without
    importing TensorFlow, and with one copy of the image, so that worker processes
    serialize too.

    Layout (``L(x)``: the varint length of ``x``)::

      0a L(features) | 0a L(e1) <key file_name> 12 L(f1) 0a L(b1) 0a L(name) name
                     | 0a L(e2) <key image> 12 L(f2) 0a L(b2) 0a L(image) image
                     | <label entry: constant per label>

    The map keys' bytes are constants and the label entry is cached per class: one
    ``join`` of a few small parts per record (the file name entry, the image
    entry's head, the image, the label entry)."""
    v = _varint
    name_entry = _name_entry(file_name)
    size = len(image)
    vs = v(size)
    bytes_list = size + 1 + len(vs)              # BytesList: 0a L(image) image
    vb = v(bytes_list)
    feature = bytes_list + 1 + len(vb)           # Feature: 0a L(bytes_list) ...
    vf = v(feature)
    entry = len(_KEY_IMAGE) + len(vf) + feature  # map entry: key, 12 L(feature) ...
    ve = v(entry)
    label_entry = _label_entry(label)
    total = len(name_entry) + 1 + len(ve) + entry + len(label_entry)
    return b"".join((b"\x0a", v(total), name_entry, b"\x0a", ve, _KEY_IMAGE, vf, b"\x0a", vb,
                     b"\x0a", vs, image, label_entry))


def measure_decode_speedup(paths: Sequence[str], options: PackOptions,
                           repeats: int = 3) -> float | None:
    """Full-decode time of ``paths`` as they are / as packed with ``options`` (the
    pack-time resize), one thread, best of ``repeats``. None when nothing decodes."""
    pairs = []
    for p in paths:
        data, _ = _read_image_file(p)
        if data is None:
            continue
        try:
            pairs.append((data, packed_bytes(data, options.resize_shorter, options.quality)))
        except preprocess.BadImageError:
            continue
    if not pairs:
        return None

    def best(which: int) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for pair in pairs:
                preprocess.decode_image(pair[which])
            times.append(time.perf_counter() - t)
        return min(times)

    return best(0) / max(best(1), 1e-9)


def packed_bytes(data: bytes, resize_shorter: int | None,
                 quality: int = PackOptions().quality) -> bytes:
    """The JPEG bytes the pack stores for an image file's bytes ``data``.

    With ``resize_shorter`` and a shorter side above it: decoded (at the smallest DCT
    scale that stays above the target), resized so the shorter side is
    ``resize_shorter`` pixels (:func:`trainers.preprocess.resize_shorter_side`) and
    re-encoded at ``quality``. Otherwise ``data`` itself when it is a JPEG that the
    readers decode to RGB as it is (:func:`_jpeg_ok`); anything else (CMYK/YCCK, PNG
    named .JPEG, ...) is converted to JPEG once here, so readers never need Pillow nor
    the slow paths of the decoders. Every scan of the image is decoded either way
    (entropy-decoded by the check of a JPEG kept as it is, fully decoded when it is
    resized or converted), which catches truncated and corrupt files.

    Raises:
      trainers.preprocess.BadImageError: ``data`` is not a decodable image.
    """
    h, w = preprocess.image_header(data)
    if resize_shorter is not None and min(h, w) > resize_shorter:
        factor = resize_shorter / min(h, w)
        img = preprocess.decode_image(data, min_height=int(h * factor) + 1,
                                      min_width=int(w * factor) + 1)
        return preprocess.encode_jpeg(preprocess.resize_shorter_side(img, resize_shorter),
                                      quality)
    if data[:3] == b"\xff\xd8\xff" and _jpeg_ok(data):
        return data  # every scan entropy-decoded without a warning: catches truncation
    img = preprocess.decode_image(data)  # Pillow's turn (or the reason it is bad)
    return preprocess.encode_jpeg(img, quality)


def _prepare(path: str, resize_shorter: int | None, quality: int) -> tuple[bytes | None, str | None, int]:
    """Read and verify one file. Returns (jpeg bytes to store, reason if bad, bytes in).

    Never raises for one odd file (it is listed with the exception instead), except
    MemoryError."""
    try:
        data, reason = _read_image_file(path)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop the pack
        return None, f"cannot process: {type(exc).__name__}: {exc}", 0
    if data is None:
        return None, reason, 0
    return _prepare_data(data, resize_shorter, quality)


#: ``os.open`` flags of :func:`_read_image_file`: never blocks on a FIFO (it opens at
#: once and fstat then names it), never leaks the descriptor into a child.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _read_image_file(path: str) -> tuple[bytes | None, str | None]:
    """``(bytes, None)`` of an image file, or ``(None, why not)``: not an image by
    its name (:func:`trainers.scan.not_an_image`), unreadable, not a regular file
    (a folder, a FIFO, a device...) or over :data:`MAX_FILE_BYTES`.

    One ``open`` (non-blocking, so that a FIFO never blocks), ``fstat`` on the
    descriptor for the checks, and one ``read`` of the whole file in the usual case
    (more when the file system returns a short read or the file grew)."""
    reason = scan.not_an_image(os.path.basename(path))
    if reason is not None:
        return None, reason
    try:
        fd = os.open(path, _OPEN_FLAGS)  # follows links: a dangling one fails here
    except OSError as exc:
        link = " (dangling symbolic link)" if os.path.islink(path) else ""
        return None, f"unreadable: {exc.strerror or exc}{link}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, f"not a regular file: {_not_regular(st.st_mode)}"
        size = st.st_size
        if size > MAX_FILE_BYTES:
            return None, f"file too large: {size:,} bytes > {MAX_FILE_BYTES:,}"
        data = os.read(fd, size + 1)
        if len(data) != size:  # a short read, or the file changed: read to its end
            parts, total = [data], len(data)
            while part := os.read(fd, 1 << 20):
                parts.append(part)
                total += len(part)
                if total > MAX_FILE_BYTES:
                    return None, f"file too large: over {MAX_FILE_BYTES:,} bytes"
            data = b"".join(parts)
        return data, None
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    finally:
        os.close(fd)


def _jpeg_ok(data: bytes) -> bool:
    """Whether the JPEG ``data`` can be stored as it is: libjpeg-turbo decodes it to RGB
    at full size without a warning (a reader's decode succeeds: ``simplejpeg``, which
    :func:`trainers.preprocess.decode_image` tries first, and the region decoder of
    :func:`trainers.preprocess.decode_crop`), and it is a greyscale, YCbCr or RGB JPEG
    (CMYK/YCCK, which only the whole-image decode turns into RGB, are converted by
    :func:`packed_bytes` instead).

    With ``trainers._jpegcrop`` built, ``_jpegcrop.check``: the header, the colour
    space and subsampling, and every scan entropy-decoded to DCT coefficients with
    libjpeg's corrupt-data warnings as errors, but no IDCT, upsampling or colour
    conversion (which cannot fail); the same verdict as the full decode
    (tests/test_jpeg_check.py) at 0.7-0.8x of its CPU (bench/jpeg_check.py).
    Without it, the simplejpeg full decode (its pixels thrown away)."""
    check = getattr(preprocess._jpegcrop, "check", None)
    if check is not None:
        try:
            check(data)
            return True
        except ValueError:
            return False
    try:
        if preprocess.simplejpeg.decode_jpeg_header(data)[2] in ("CMYK", "YCCK"):
            return False
        preprocess.simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True,
                                          fastupsample=True)
        return True
    except (ValueError, RuntimeError):
        return False


def _assign(items: Listing, options: PackOptions,
            has_val_folder: bool) -> tuple[Listing, Listing]:
    """Seeded, stratified hold-out and shuffled assignment to shards (deterministic).

    With ``options.val_fraction > 0`` and no separate validation input, each class
    ``c`` of ``n_c`` members holds out ``round(n_c x val_fraction)`` of them (Python's
    round), the first in a seeded order within the class; the train and held-out
    members are then each put in a seeded order. Every order sorts members by
    :func:`_order_keys` of their listing position (integer arithmetic only, no
    library random stream): the result depends on the listing and the seed only,
    never on the process count or index, a resume, or the numpy version (numpy's
    ``Generator`` streams are not guaranteed across versions, NEP 19, and a pack
    resumed or packed on another host with another assignment would duplicate and
    drop members).

    Returns:
      ``(train, held_out)``: views of ``items`` (index arrays, ``uint32`` below 4 G
      members: 4 bytes per member, no key copied).
    """
    n = len(items)
    dtype = np.uint32 if n < 2 ** 32 else np.uint64
    if options.val_fraction > 0 and not has_val_folder and n:
        labels = items.labels
        order = np.lexsort((_order_keys(n, options.seed, 0), labels)).astype(dtype)
        sizes = np.bincount(labels[order]) if n else np.zeros(0, np.int64)
        sizes = sizes[sizes > 0]  # class sizes, in label order
        del labels
        held_n = np.array([int(round(c * options.val_fraction)) for c in sizes.tolist()],
                          np.int64)
        starts = np.cumsum(sizes) - sizes
        pos = np.arange(n) - np.repeat(starts, sizes)  # position within the class
        held = pos < np.repeat(held_n, sizes)
        train, val = order[~held], order[held]
    else:
        train, val = np.arange(n, dtype=dtype), np.zeros(0, dtype=dtype)
    train = train[np.argsort(_order_keys(n, options.seed, 1)[train], kind="stable")]
    val = val[np.argsort(_order_keys(n, options.seed, 2)[val], kind="stable")]
    return items.take(train), items.take(val)


def _order_keys(n: int, seed: int, stream: int) -> np.ndarray:
    """``uint64 [n]``: a seeded sort key per listing position ``0..n-1``, for the
    orders of :func:`_assign` (``stream`` 0: within the classes, 1: train, 2: held
    out). The SplitMix64 finaliser (Steele, Lea & Flood 2014, "Fast splittable
    pseudorandom number generators"; Java's ``SplittableRandom``) of position +
    a per-seed, per-stream offset: a bijection of 64-bit integers, so the keys are
    distinct and the sort has no ties; exact integer arithmetic, the same on every
    numpy version and platform."""
    offset = int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:8], "little")
    with np.errstate(over="ignore"):
        x = np.arange(n, dtype=np.uint64) + np.uint64(offset)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _chunks(items: Listing, n: int) -> list[Listing]:
    """``items`` cut into ``n`` consecutive parts (at most one per member, at least
    one) whose sizes differ by at most one: views, nothing copied."""
    n = max(1, min(n, len(items))) if items else 1
    base, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        out.append(items[start:start + size])
        start += size
    return out


def _fingerprint(src, val, options: PackOptions, workers: "_Workers | None" = None) -> str:
    """16 hex digits naming a pack's inputs and the options that change its bytes:
    each listed file's path, label, size and mtime (a zip's members by name and
    label), streamed into the hash one member at a time (nothing kept); for an
    archive its path, size and mtime (and its label file's), so a 150 GB tar is never
    read twice to fingerprint it. The listed files' lines are made in chunks of
    :attr:`_Workers.STAT_CHUNK` (:func:`_stat_lines`); with worker processes
    (``workers``) there, in parallel (:meth:`_Workers.stat_lines`), and hashed here
    in order: the same digest (1M files: 3.1 s when the workers only stat'ed and
    the lines were made here, 2 cores)."""
    h = hashlib.sha256()
    opts = {k: v for k, v in options.to_dict().items() if k not in PackOptions.EXECUTION_ONLY}
    h.update(json.dumps([FORMAT_VERSION, src.path, opts]).encode())
    for s in (src, val):
        if s is None:
            continue
        h.update(f"{s.kind}\0{s.stamp}\0{s.labels_from}\n".encode())
        items = s.items or ()
        if s.zip_path is not None:
            for path, label in items:
                h.update(f"{path}\0{label}\n".encode())
            continue
        if workers is not None and workers.procs:
            lines = workers.stat_lines(items)
        else:
            n = _Workers.STAT_CHUNK
            lines = (_stat_lines(items[lo:lo + n]) for lo in range(0, len(items), n))
        for chunk in lines:
            h.update(chunk)
    return h.hexdigest()[:16]


def _file_stat(path: str) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a listed file (links followed); ``(-1, 0)`` when it
    cannot be stat'ed (the fingerprint's "missing")."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, 0
    return st.st_size, st.st_mtime_ns


def _stat_lines(chunk: Listing) -> bytes:
    """The fingerprint's lines of the listed files ``chunk``, in order: ``path NUL
    label NUL size NUL mtime_ns`` (:func:`_file_stat`), or ``path NUL label NUL
    missing`` for a file that cannot be stat'ed, each ending in a newline, UTF-8 (a
    worker's task). In C when the extension is built (``_jpegcrop.stat_lines``: the
    same bytes, 1M files in fewer seconds); anything it declines is done here."""
    fast = getattr(preprocess._jpegcrop, "stat_lines", None)
    if fast is not None:
        got = fast(chunk)
        if got is not None:
            return got
    out = []
    for path, label in chunk:
        size, mtime_ns = _file_stat(path)
        out.append(f"{path}\0{label}\0missing\n" if size < 0 else
                   f"{path}\0{label}\0{size}\0{mtime_ns}\n")
    return "".join(out).encode()


def is_packed(out_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` holds a complete packed data set (its ``pack.json`` is
    written last, after every shard and the metadata)."""
    return (Path(out_dir) / PACK_SUMMARY).is_file()


def load_pack_result(out_dir: str | os.PathLike) -> PackResult:
    """Read the ``pack.json`` of a complete packed data set.

    Raises:
      PackError: ``out_dir`` is not a complete packed data set.
    """
    path = Path(out_dir) / PACK_SUMMARY
    if not path.is_file():
        raise PackError(f"{out_dir} is not a complete packed data set (no {PACK_SUMMARY}); "
                        f"run `autotune pack` to (re)build it")
    try:
        return PackResult.load(path)
    except RecordError as exc:
        raise PackError(f"{path} is damaged: {exc}") from exc


def pack_folder(source: str | os.PathLike, out_dir: str | os.PathLike,
                options: PackOptions = PackOptions(), *,
                val_source: str | os.PathLike | None = None,
                val_labels: str | os.PathLike | None = None,
                progress: Callable[[int, int | None, int], None] | None = None,
                replace_stale: bool = False, process_index: int = 0,
                process_count: int = 1) -> PackResult:
    """Pack ``source`` into ArrayRecord shards in ``out_dir``.

    Args:
      source: the training input as downloaded: a class-folder tree (images at any
        depth below ``<wnid>/``), ``ILSVRC2012_img_train.tar``, an ImageNet-21k tar
        of per-class tars, Kaggle's folder or zip (:func:`trainers.sources.open_source`).
      out_dir: output folder; created; an existing complete pack with the same inputs
        and options is returned as is, an interrupted one is resumed.
      options: shards, resize, hold-out fraction, threads, worker processes.
      val_source: optional separate validation input (class folders, a flat folder or
        ``ILSVRC2012_img_val.tar`` with labels, the Kaggle folder or zip); its classes
        must be train classes.
      val_labels: the validation label file (default: looked for beside it).
      progress: ``progress(done, total, bad_so_far)`` after each member (from the
        worker threads, one call at a time; with worker processes, from this thread
        every 0.1 s and at each shard's end, so ``done`` goes up in steps); ``total``
        is None while unknown (archives are streamed).
      replace_stale: when ``out_dir`` holds a complete pack made from other inputs
        or options, delete its files and pack anew instead of raising. For cache
        folders the tool owns, never for a user's ``--out``.
      process_index, process_count: this process's share of a pack run by several
        processes or hosts on one shared ``out_dir``: shard ``i`` of a listed input
        (group ``g`` of an archive) is written by process ``i % process_count``. The
        assignment of members to shards does not depend on ``process_count``, so the
        result is byte-identical to a one-process pack. The process that finds every
        shard complete writes the metadata; ``process_count=1`` over the same folder
        afterwards also finishes it (writing no shard twice).

    Returns:
      PackResult (also saved as ``out_dir/pack.json``; skipped files also in
      ``out_dir/bad_images.json``); with several processes, possibly a partial
      result (``complete=False``, nothing saved) while others still pack.

    Raises:
      PackError: bad input (missing, empty, not an archive, unknown layout, no class
        folders), no image could be packed, or a bad process index.
      trainers.validation.ValidationLayoutError: bad validation input or labels.
      OSError: writing failed (for example the disk is full: ``errno.ENOSPC``); the
        message names the file, the bytes written to it, an estimate of the bytes
        still to write and the bytes free there. Complete shards survive for the
        rerun; the partial shard is deleted.
    """
    t0 = time.perf_counter()
    if not 0 <= process_index < process_count:
        raise PackError(f"process index {process_index} is not in 0..{process_count - 1}")
    out = Path(out_dir)
    with contextlib.ExitStack() as stack:
        workers = None
        if options.pack_workers > 0 and not is_packed(out):
            # The worker processes start (interpreter, imports: about 0.3 s each) while
            # this one lists and fingerprints the input.
            workers = stack.enter_context(_Workers(options, start=True))
        src, val, fp, previous = _open_pack(source, out, options, val_source, val_labels,
                                            replace_stale, clean=process_count == 1,
                                            workers=workers)
        if previous is not None:
            return previous
        shards = _ShardWriter(out, fp, options, progress,
                              owner=lambda i: i % process_count == process_index)
        splits = _split_plans(src, val, options)
        if all(p.chunks is not None for p in splits.values()):
            shards.total = sum(len(c) for p in splits.values() for c in p.chunks)
        kept = _every_shard_kept(shards, splits)
        if kept is not None:  # only the metadata is missing: no archive is read again
            shards.resumed = kept
        else:
            workers = workers or stack.enter_context(_Workers(options))
            listed = {s: p for s, p in splits.items() if p.chunks is not None}
            if listed:
                shards.write_listed(listed, workers)
            streamed = {s: p for s, p in splits.items() if p.chunks is None}
            if streamed:
                shards.write_streamed(streamed, workers)
    if is_packed(out) and _read_fingerprint(out) == fp:
        return load_pack_result(out)  # another process finished it meanwhile
    infos = {s: _split_info(out, fp, s, p) for s, p in splits.items()}
    if any(i is None for i in infos.values()):
        return _partial_result(out, src, options, shards, t0)
    with _finalize_lock(out, force=process_count == 1) as mine:
        if not mine:
            return _partial_result(out, src, options, shards, t0)
        if is_packed(out) and _read_fingerprint(out) == fp:
            return load_pack_result(out)  # finished by the holder before us
        return _finalize(out, src, val, options, splits, infos, shards.resumed, t0)


def prepare_pack(source: str | os.PathLike, out_dir: str | os.PathLike,
                 options: PackOptions = PackOptions(), *,
                 val_source: str | os.PathLike | None = None,
                 val_labels: str | os.PathLike | None = None,
                 replace_stale: bool = False) -> PackResult | None:
    """Make ``out_dir`` ready for :func:`pack_folder` with these arguments, writing no
    shard: the complete pack already there (returned), else the files of another pack
    removed (``replace_stale``) and the fingerprint written. One process calls it
    before several pack their shares into the same folder (``pack_folder(...,
    process_index=i, process_count=n)``), so that none removes another's files.

    Raises:
      PackError, trainers.validation.ValidationLayoutError: see :func:`pack_folder`.
    """
    return _open_pack(source, Path(out_dir), options, val_source, val_labels,
                      replace_stale, clean=True)[3]


def _open_pack(source, out: Path, options: PackOptions, val_source, val_labels,
               replace_stale: bool, clean: bool, workers: "_Workers | None" = None):
    """``(source, validation source or None, fingerprint, complete pack or None)``;
    ``workers``: worker processes already started, to stat the listed files."""
    from trainers.validation import ValidationLayoutError

    src = sources.open_source(source, error=PackError)
    val = None
    if val_source is not None:
        val = sources.open_source(val_source, role="val", class_names=src.class_names,
                                  label_file=val_labels, error=ValidationLayoutError)
    fp = _fingerprint(src, val, options, workers)
    return src, val, fp, _open_out_dir(out, fp, replace_stale, clean=clean)


def _every_shard_kept(shards: "_ShardWriter", splits: dict[str, "_SplitPlan"]) -> int | None:
    """The number of shards (with records) when every shard of every split is
    complete (sidecar, and the file at its pending or final name with the sidecar's
    size), else None: a pack whose metadata alone is missing (a killed finish, or the
    merge step after several processes) is finished without reading its input."""
    count = 0
    for split, plan in splits.items():
        infos = _split_info(shards.out, shards.fp, split, plan)
        if infos is None:
            return None
        if plan.chunks is not None:
            paths = [_listed_path(shards.out, split, i, len(infos)) for i in range(len(infos))]
            if any(shards.kept(p) is None for p in paths):
                return None
            count += len(paths)
            continue
        full = [i for i, info in enumerate(infos) if info["records"]]
        for k, i in enumerate(full):
            sizes = {_size(str(_pending_path(shards.out, split, i))),
                     _size(str(_listed_path(shards.out, split, k, len(full))))}
            if infos[i]["num_bytes"] not in sizes:
                return None
        count += len(full)
    return count


class _SplitPlan:
    """How one split is written: ``chunks`` (listed input: the items of each shard,
    decided up front) or ``stream`` (archive input: members dealt to shards as they
    come, :func:`stream_shard`) with ``select(member)`` choosing the members of this
    split. ``source`` reads listed items from a zip."""

    def __init__(self, source, chunks=None, stream=None, select=None):
        self.source, self.chunks, self.stream, self.select = source, chunks, stream, select


def _split_plans(src, val, options: PackOptions) -> dict[str, _SplitPlan]:
    """The train and validation splits of ``src`` (and ``val``): listed inputs are
    shuffled and cut into shards as before (:func:`_assign`, :func:`_chunks`); a
    streamed train input holds out members by a seeded hash of their name
    (:func:`held_out`), since a stream cannot be split per class up front."""
    plans: dict[str, _SplitPlan] = {}
    hold = options.val_fraction > 0 and val is None
    if src.streamed:
        plans["train"] = _SplitPlan(src, stream=src.stream,
                                    select=lambda m: not (hold and held_out(m.key, options)))
        if hold:
            plans["validation"] = _SplitPlan(src, stream=src.stream,
                                             select=lambda m: held_out(m.key, options))
        train_n = None
    else:
        train, heldout = _assign(src.items, options, has_val_folder=val is not None)
        plans["train"] = _SplitPlan(src, chunks=_chunks(train, options.num_shards))
        if heldout:
            plans["validation"] = _SplitPlan(src, chunks=_chunks(
                heldout, _val_shards(options, len(heldout), len(train))))
        train_n = len(train)
    if val is not None and val.streamed:
        plans["validation"] = _SplitPlan(val, stream=val.stream, select=lambda m: True)
    elif val is not None and val.items:
        plans["validation"] = _SplitPlan(val, chunks=_chunks(
            val.items, _val_shards(options, len(val.items), train_n)))
    return plans


def _val_shards(options: PackOptions, n_val: int, n_train: int | None) -> int:
    """Validation shards: in proportion to the train split's (1 when its size is not
    known, for a streamed train input; at least 1)."""
    if n_train is None:
        return max(1, -(-n_val // options.archive_shard_records))
    return max(1, round(options.num_shards * n_val / max(1, n_train)))


def held_out(key: str, options: PackOptions) -> bool:
    """Whether archive member ``key`` (``<archive>!<member>``) is held out for
    validation: the SHA-256 of the seed and the member's name (not the archive's
    path), as a fraction of 2**64, is below ``options.val_fraction``."""
    name = key.split("!", 1)[-1]
    digest = hashlib.sha256(f"{options.seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < options.val_fraction


def stream_shard(j: int, split: str, options: PackOptions) -> int:
    """The shard of the ``j``-th member (0-based, archive order) of a streamed split.

    Members come in groups of ``G x R`` (``archive_group_shards`` x
    ``archive_shard_records``); group ``g`` fills shards ``g*G .. g*G+G-1``, dealing
    each round of ``G`` consecutive members over them in a seeded order. A function of
    ``j``, the split and the options only: any number of processes agree on it, and it
    needs neither the archive's length nor a listing.
    """
    G, R = options.archive_group_shards, options.archive_shard_records
    g, pos = divmod(j, G * R)
    rnd, slot = divmod(pos, G)
    order = list(range(G))
    random.Random(f"{options.seed}/{split}/{g}/{rnd}").shuffle(order)
    return g * G + order[slot]


def _partial_result(out: Path, src, options: PackOptions, shards: "_ShardWriter",
                    t0: float) -> PackResult:
    """What this process wrote when others still pack (not saved)."""
    return PackResult(out_dir=str(out), source=src.path, class_names=src.class_names,
                      input_images=shards.done, packed=shards.records,
                      skipped=len(shards.bad), bad_images=tuple(shards.bad), splits=(),
                      bytes_in=0, bytes_out=0, resize_shorter=options.resize_shorter,
                      options=options, seconds=time.perf_counter() - t0,
                      resumed_shards=shards.resumed, kind=src.kind, complete=False)


@contextlib.contextmanager
def _finalize_lock(out: Path, force: bool):
    """Yields True when this process may write the data set's metadata.

    It holds an exclusive ``flock`` on ``out/.finalize.lock`` (taken without waiting:
    a process that finds it held leaves the metadata to its holder). The kernel drops
    the lock when the holder exits, killed or not, so a process that died while
    finishing never blocks the others, and a later run of any process count finishes
    the pack; the file itself stays, empty and harmless. Where the file system has no
    ``flock`` (some parallel file systems mounted without it), ``.finalize.excl`` is
    created exclusively instead (removed after), and ``force`` (a one-process run)
    takes over one a killed process left."""
    import errno
    import fcntl

    lock = out / ".finalize.lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        yield False
        return
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        with _exclusive_lock_file(out / ".finalize.excl", force) as mine:
            yield mine
        return
    try:
        yield True
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def _exclusive_lock_file(lock: Path, force: bool):
    """:func:`_finalize_lock` without ``flock``: the lock is the file's existence."""
    if force:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        yield False
        return
    os.close(fd)
    try:
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def _split_info(out: Path, fp: str, split: str, plan: _SplitPlan) -> list[dict] | None:
    """The sidecars of every shard of ``split`` in shard order, or None while one is
    missing (another process still writes it). A streamed split also needs its
    stream marker (how many members, where a damaged archive stopped)."""
    if plan.chunks is not None:
        n = len(plan.chunks)
        paths = [_listed_path(out, split, i, n) for i in range(n)]
    else:
        marker = _read_sidecar(_marker_path(out, split))
        if marker is None or marker.get("fingerprint") != fp:
            return None
        paths = [_pending_path(out, split, i) for i in range(marker["shards"])]
    infos = []
    for path in paths:
        info = _read_sidecar(_sidecar(path))
        if info is None or info.get("fingerprint") != fp:
            return None
        infos.append(info)
    return infos


def _finalize(out: Path, src, val, options: PackOptions, splits: dict[str, _SplitPlan],
              infos: dict[str, list[dict]], resumed: int, t0: float) -> PackResult:
    """Every shard is complete: name a streamed split's non-empty shards
    ``-XXXXX-of-YYYYY``, write the tfds metadata, ``bad_images.json`` and, last,
    ``pack.json``."""
    summaries, bad, stopped = [], [], []
    for split, plan in splits.items():
        kept = infos[split]
        if plan.chunks is None:
            kept = _name_streamed_shards(out, split, kept)
            marker = _read_sidecar(_marker_path(out, split))
            if marker.get("stopped") and marker["stopped"] not in stopped:
                stopped.append(marker["stopped"])
        bad += [BadImage(**b) for i in infos[split] for b in i["bad"]]
        if kept:
            summaries.append(SplitSummary(name=split, num_examples=sum(i["records"] for i in kept),
                                          shard_lengths=tuple(i["records"] for i in kept),
                                          num_bytes=sum(i["num_bytes"] for i in kept)))
    packed = sum(s.num_examples for s in summaries)
    if packed == 0:
        raise PackError((f"{stopped[0]}; " if stopped else "") + (
            f"no image in {src.path} could be packed; {len(bad)} files skipped, "
            f"first: {bad[0].path}: {bad[0].reason}" if bad else
            f"no image in {src.path} could be packed"))
    for line in stopped:  # the table repeats it; one line on the CLI
        warnings.warn(line, ArchiveEndedEarly, stacklevel=3)
    feats = _features(src.class_names)
    with _writing(out / "dataset_info.json", out):
        _write_tfds_metadata(out, feats, summaries)
    every = [i for v in infos.values() for i in v]
    first = [k for k, _ in src.items[:32] if os.path.isfile(k)] if src.items else []
    result = PackResult(
        out_dir=str(out), source=src.path, class_names=src.class_names,
        input_images=sum(i["records"] + len(i["bad"]) for i in every), packed=packed,
        skipped=len(bad), bad_images=tuple(bad), splits=tuple(summaries),
        bytes_in=sum(i["bytes_in"] for i in every), bytes_out=sum(i["bytes_out"] for i in every),
        resize_shorter=options.resize_shorter, options=options,
        seconds=time.perf_counter() - t0, resumed_shards=resumed,
        decode_speedup=(measure_decode_speedup(first, options)
                        if options.resize_shorter and first else None),
        kind=src.kind + (f" + {val.kind}" if val is not None else "") + (
            f" (labels from {val.labels_from})" if val is not None and val.labels_from else ""),
        class_words=src.class_words, stopped=tuple(stopped),
        val_source=val.path if val is not None else None)
    assert result.input_images == result.packed + result.skipped, result
    with _writing(out / "bad_images.json", out):
        write_text_atomic(out / "bad_images.json",
                          json.dumps([b.to_dict() for b in bad], indent=1) + "\n")
    with _writing(out / PACK_SUMMARY, out):
        result.save(out / PACK_SUMMARY)  # last: its presence marks the pack complete
    return result


def _name_streamed_shards(out: Path, split: str, infos: list[dict]) -> list[dict]:
    """Rename the non-empty shards of a streamed split to their final names (numbered
    in shard order, empty ones left out) and return their sidecars. Safe to repeat
    after an interruption: a shard already renamed is left as it is."""
    kept = [(i, info) for i, info in enumerate(infos) if info["records"] > 0]
    for k, (i, _) in enumerate(kept):
        pending = _pending_path(out, split, i)
        if pending.is_file():
            os.replace(pending, _listed_path(out, split, k, len(kept)))
    return [info for _, info in kept]


def _listed_path(out: Path, split: str, i: int, n: int) -> Path:
    return out / f"{DATASET_NAME}-{split}.array_record-{i:05d}-of-{n:05d}"


def _pending_path(out: Path, split: str, i: int) -> Path:
    """A streamed split's shard before the count is known (renamed at the end)."""
    return out / f"{DATASET_NAME}-{split}.shard-{i:05d}"


def _marker_path(out: Path, split: str) -> Path:
    return out / f"{DATASET_NAME}-{split}.stream.json"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _open_out_dir(out: Path, fp: str, replace_stale: bool, clean: bool = True
                  ) -> PackResult | None:
    """Make ``out`` ready for the pack with fingerprint ``fp``: returns the complete
    pack already there when it has that fingerprint; else removes what another pack
    (``replace_stale``) or an interrupted run left (partial files only when ``clean``:
    with several processes another one may be writing them), and writes the
    fingerprint.

    Raises:
      PackError: ``out`` holds a complete different pack and not ``replace_stale``.
    """
    if is_packed(out):
        prev = load_pack_result(out)
        if _read_fingerprint(out) == fp:
            return prev
        if not replace_stale:
            raise PackError(f"{out} already holds a different packed data set (from "
                            f"{prev.source}); choose another --out or delete it")
        # No longer complete; its files go below, as an interrupted pack's do.
        (out / PACK_SUMMARY).unlink()
    out.mkdir(parents=True, exist_ok=True)
    if _read_fingerprint(out) not in (None, fp):
        # Leftovers of an interrupted pack with other inputs/options: start over.
        for p in out.iterdir():
            if p.is_file():
                p.unlink()
    for p in out.iterdir() if clean else ():  # partial files of a killed run
        if p.is_file() and _TEMP_NAME.fullmatch(p.name):
            with contextlib.suppress(OSError):
                p.unlink()
    if _read_fingerprint(out) != fp:
        with _writing(out / "fingerprint.txt", out):
            write_text_atomic(out / "fingerprint.txt", fp + "\n")
    return None


def _prepare_batch(jobs: list[tuple[str, object, int, str]], resize_shorter: int | None,
                   quality: int) -> list[tuple[bytes | None, str | None, int, int]]:
    """:func:`_prepare_one` for each job ``(kind, value, label, file name)`` (the
    archive stream's batches; listed shards go whole to :func:`_write_listed_shard`).
    Runs in a worker thread or a spawned worker process (this module imports no JAX
    and no TensorFlow at import time)."""
    return [_prepare_one(kind, value, label, name, resize_shorter, quality)
            for kind, value, label, name in jobs]


def _prepare_one(kind: str, value, label: int, name: str, resize_shorter: int | None,
                 quality: int) -> tuple[bytes | None, str | None, int, int]:
    """``(record or None, reason if skipped, bytes in, image bytes stored)`` of one
    member of an archive stream: kind ``"bytes"`` (value: its bytes) or ``"skip"``
    (value: the reason). The record is :func:`example_record`. (Files and zip
    members are read by :func:`_write_members`.)"""
    if kind == "skip":
        data, reason, nbytes = None, value, 0
    else:
        data, reason, nbytes = _prepare_data(value, resize_shorter, quality)
    return ((None, reason, 0, 0) if data is None else
            (example_record(data, label, name), None, nbytes, len(data)))


class _ShardTask(NamedTuple):
    """One listed shard for a worker (thread or process): its file, its members
    (``chunk``: ``(key, label)`` pairs in shard order; any iterable that pickles),
    the zip they are read from (None: files), the options that change the bytes,
    the output folder, the pack's fingerprint (for the sidecar), for a zip where
    each member of the chunk lies in it (:data:`trainers.sources.ZIP_ENTRY`), and how
    many members ahead files are opened (:func:`_files_ahead`)."""

    path: Path
    chunk: Sequence
    zip_path: str | None
    resize_shorter: int | None
    quality: int
    out: Path
    fp: str
    zip_dir: object = None  # with a zip: the chunk's sources.ZIP_ENTRY array
    ahead: int | None = None  # files opened ahead (None: PREFETCH_AHEAD)


def _write_listed_shard(task: _ShardTask, tally: "_ThreadTally | None" = None) -> dict:
    """Read, verify and serialize every member of one listed shard and write the
    shard (``.tmp``): the same bytes whoever runs it. Runs in a worker thread
    (``tally``: the threads' shared counts) or a spawned worker process (the counts
    set up by :func:`_init_worker`). The shard is only closed here: the caller seals it
    (:func:`_seal_shard`: sync, rename, sidecar) while this worker goes on with the
    next one, so the disk's flushes do not stop a core.

    Returns ``{"closed": {"tmp", "path", "out", "info": sidecar}}``;
    ``{"stopped": True}`` when the pack stops (another shard failed, or an
    interrupt); ``{"failed": (errno or None, text), "records": n, "bytes_out": n,
    "tmp": path}`` when writing failed. Either way a partial file is deleted. Raises
    what cannot be one member's fault (MemoryError, an interrupt)."""
    tally = _PROCESS_TALLY if tally is None else tally
    if tally.flush():
        return {"stopped": True}
    sh = _Shard(task.path, eager=False)
    try:
        _guarded(sh, sh._open)
        if _write_members(sh, task, tally):
            sh.discard()
            return {"stopped": True}
        _guarded(sh, sh.close)
    except _ShardWriteFailed as failed:
        sh.discard()
        return _failed(failed.exc, sh.records, sh.bytes_out, sh.tmp)
    except BaseException:
        sh.discard()
        raise
    tally.flush()
    return {"closed": {"tmp": str(sh.tmp), "path": str(task.path), "out": str(task.out),
                       "info": sh.sidecar(task.fp)}}


def _failed(exc: BaseException, records: int, bytes_out: int, tmp: Path) -> dict:
    """The summary of a shard whose writing failed with ``exc``."""
    return {"failed": (getattr(exc, "errno", None), getattr(exc, "strerror", None) or str(exc)),
            "records": records, "bytes_out": bytes_out, "tmp": str(tmp)}


def _seal_shard(closed: dict) -> dict:
    """Make a shard closed by :func:`_write_listed_shard` complete: sync it, rename
    it into place, then write its sidecar, in that order (a sidecar only ever vouches
    for records on the disk). Returns ``{"info": sidecar}``, or the ``{"failed": ...}``
    summary (the partial file deleted) when the sync or the rename fails.

    Raises:
      OSError: the sidecar could not be written (:func:`_writing` names it).
    """
    tmp, path, info = Path(closed["tmp"]), Path(closed["path"]), closed["info"]
    try:
        _fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return _failed(exc, info["records"], info["bytes_out"], tmp)
    _write_sidecar(path, Path(closed["out"]), info)
    return {"info": info}


def _write_sidecar(path: Path, out: Path, info: dict) -> None:
    """Write the sidecar of the complete shard ``path`` (a file of ``out``), not
    fsynced: after a power loss a sidecar may be missing, empty or cut short, and
    each of those reads as "not complete" (:func:`_read_sidecar`), so the shard is
    only written again. What must reach the disk first, the shard's records, was
    synced before its rename (:func:`_fsync_file`). One disk flush per shard instead
    of two."""
    with _writing(_sidecar(path), out):
        write_text_atomic(_sidecar(path), json.dumps(info), durable=False)


#: Members ahead of the one being checked whose file the shard loop opens and asks the
#: kernel to read (``posix_fadvise`` WILLNEED: ``_jpegcrop.pack_files``, or
#: ``_jpegcrop.prefetch`` on the general path): a file not in the page cache is then
#: read while the ones before it are checked (about 2 ms of checks for small files at
#: 32, longer than a read from an SSD or a virtual disk), instead of stopping the worker.
PREFETCH_AHEAD = 32

#: Members, and image bytes, at most per call of ``_jpegcrop.pack_files`` (one batch of
#: the shard loop): the pack looks at its stop flag and its counts once a batch (every
#: 2 MiB of images: about 400 small files of 5 KB, 25 ms; or 19 full-size ones), and a
#: batch's records are held at once (2 MiB a worker; 8 MiB measured 15 MiB more peak
#: RSS over a pack's processes).
FAST_BATCH, FAST_BATCH_BYTES = 1024, 2 << 20


def _files_ahead(threads: int) -> int:
    """Members ahead of the one being checked whose file each of ``threads`` shard
    loops of one process holds open (``_jpegcrop.pack_files``): :data:`PREFETCH_AHEAD`,
    or fewer so that all of them hold at most a quarter of the process's descriptor
    limit (``RLIMIT_NOFILE``, soft; often 1,024): a file the Python path must open
    then never meets "too many open files" and is listed as skipped. At least 1."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return PREFETCH_AHEAD
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return PREFETCH_AHEAD
    return max(1, min(PREFETCH_AHEAD, soft // (4 * max(1, threads))))


def _write_members(sh: "_Shard", task: _ShardTask, tally) -> bool:
    """The per-member loop of :func:`_write_listed_shard`: each member of
    ``task.chunk`` read, verified, serialized (:func:`example_record`) and written to
    ``sh`` (open), or listed as skipped, in order, with the same records and counts as
    :meth:`_Shard.add`. The hot loop of a pack. Files stored as they are go in
    batches through ``_jpegcrop.pack_files`` (open :data:`PREFETCH_AHEAD` members
    ahead, read, check and serialize in C: one Python call per :data:`FAST_BATCH`
    members; ``task.ahead`` instead of :data:`PREFETCH_AHEAD` for threads); a member
    it leaves (None) takes the general path here (a file:
    :func:`_prepare`; a zip member: :func:`_read_zip_entry`), which names the reason
    or converts it. The write-behind looks at the shard every half window.
    Returns True when the pack is stopping (``tally``). Raises
    :class:`_ShardWriteFailed` when a write fails."""
    zip_path, resize, quality = task.zip_path, task.resize_shorter, task.quality
    zdir = task.zip_dir
    write, bad = sh.writer.write, sh.bad
    ext = preprocess._jpegcrop
    fast = None  # files stored as they are: read, check, serialize in C, in batches
    if zip_path is None and resize is None:
        fast = getattr(ext, "pack_files", None)
    max_pixels, suffixes = preprocess.MAX_PIXELS, scan.IMAGE_SUFFIXES
    files_ahead = PREFETCH_AHEAD if task.ahead is None else task.ahead
    records = bytes_in = bytes_out = 0
    behind, step = sh.behind.poll, _WriteBehind.WINDOW // 2
    look = step  # bytes_out at the next look of the write-behind
    members = list(task.chunk)
    ahead = None  # the general path's files: asked for PREFETCH_AHEAD members on
    if zip_path is None and fast is None:
        ahead = getattr(ext, "prefetch", None)
        if ahead is not None:
            for key, _ in members[:PREFETCH_AHEAD]:
                ahead(key)
    last = len(members) - PREFETCH_AHEAD
    k, n = 0, len(members)
    try:
        while k < n:
            if fast is not None:
                got, image_bytes = fast(members, k, FAST_BATCH, files_ahead, FAST_BATCH_BYTES,
                                        suffixes, MAX_FILE_BYTES, max_pixels)
            else:
                got, image_bytes = (None,), 0
                if ahead is not None and k < last:
                    ahead(members[k + PREFETCH_AHEAD][0])
            skipped = 0
            for i, record in enumerate(got):
                if record is None:  # the general path: converts it or names the reason
                    key, label = members[k + i]
                    if zip_path is None:
                        data, reason, nbytes = _prepare(key, resize, quality)
                    else:  # read here: the workers read a zip in parallel
                        raw, reason = _read_zip_entry(zip_path, key, zdir[k + i])
                        data, reason, nbytes = ((None, reason, 0) if raw is None else
                                                _prepare_data(raw, resize, quality))
                    if data is None:
                        bad.append(BadImage(path=key, reason=reason or "unknown"))
                        skipped += 1
                        continue
                    record = example_record(data, label, key[key.rfind("/") + 1:])
                    bytes_in += nbytes
                    bytes_out += len(data)
                try:
                    write(record)
                except (OSError, RuntimeError) as exc:
                    # the batch's C-made records written before this one
                    done = sum(len(image_and_label(r)[0]) for r in got[:i] if r is not None)
                    bytes_in += done
                    bytes_out += done
                    raise _ShardWriteFailed(sh, exc) from exc
                records += 1
            bytes_in += image_bytes
            bytes_out += image_bytes
            k += len(got)
            if bytes_out >= look:
                behind()
                look = bytes_out + step
            if tally.add_many(len(got), skipped):
                return True
        return False
    finally:
        sh.records += records
        sh.bytes_in += bytes_in
        sh.bytes_out += bytes_out


class _ThreadTally:
    """Members done and skipped by the pack's worker threads, and whether to stop:
    ``progress(done, total, bad)`` is called after each batch of members from the
    thread that did it, one call at a time (under a lock), so the counts it sees only
    go up."""

    def __init__(self, progress, total: int | None, done: int, bad: int):
        self.progress, self.total, self.done, self.bad = progress, total, done, bad
        self.lock, self.stop = threading.Lock(), False

    def add_many(self, done: int, bad: int) -> bool:
        """Count ``done`` members, ``bad`` of them skipped; True when the pack is
        stopping."""
        with self.lock:
            self.done += done
            self.bad += bad
            if self.progress is not None:
                self.progress(self.done, self.total, self.bad)
        return self.stop

    def flush(self) -> bool:
        return self.stop


#: Members a worker process counts before adding them to the shared counts (and
#: looking at the stop event): the parent's progress steps by about this much.
_FLUSH_EVERY = 64


class _ProcessTally:
    """A worker process's side of the counts shared with the parent (``done``,
    ``bad``: ``multiprocessing.Value``; ``stop``: ``multiprocessing.Event``), added
    to every :data:`_FLUSH_EVERY` members and at each shard's end."""

    def __init__(self, done, bad, stop):
        self.shared_done, self.shared_bad, self.event = done, bad, stop
        self.n = self.b = 0
        self.stop = False

    def add_many(self, done: int, bad: int) -> bool:
        """Count ``done`` members, ``bad`` of them skipped; True when the pack is
        stopping (looked at when the counts are added to the shared ones)."""
        self.n += done
        self.b += bad
        if self.n >= _FLUSH_EVERY:
            self.flush()
        return self.stop

    def flush(self) -> bool:
        """Add the counts to the shared ones; True when the pack is stopping."""
        if self.n:
            with self.shared_done.get_lock():
                self.shared_done.value += self.n
            if self.b:
                with self.shared_bad.get_lock():
                    self.shared_bad.value += self.b
            self.n = self.b = 0
        self.stop = self.event.is_set()
        return self.stop


_PROCESS_TALLY: _ProcessTally | None = None


def _init_worker(done, bad, stop) -> None:
    """A spawned worker process's initializer: the counts shared with the parent."""
    global _PROCESS_TALLY
    _PROCESS_TALLY = _ProcessTally(done, bad, stop)


_ZIPS: dict[str, "object"] = {}


def _read_zip_member(zip_path: str, key: str) -> tuple[bytes | None, str | None]:
    """``(bytes, None)`` of zip member ``key`` (``<zip>!<member>``), or ``(None, why
    not)``. Each process opens the zip once (its threads share it: ``zipfile``
    serialises their reads)."""
    import zipfile

    reason = scan.not_an_image(os.path.basename(key))
    if reason is not None:
        return None, reason
    try:
        if zip_path not in _ZIPS:
            _ZIPS[zip_path] = zipfile.ZipFile(zip_path)
        zf = _ZIPS[zip_path]
        info = zf.getinfo(key[len(zip_path) + 1:])
        if info.file_size > MAX_FILE_BYTES:
            return None, f"file too large ({info.file_size:,} bytes)"
        return zf.read(info), None
    except (KeyError, ValueError, *sources.ARCHIVE_ERRORS) as exc:
        return None, f"cannot read: {type(exc).__name__}: {exc}"


#: ``zip path -> descriptor`` this process reads zip members through (:func:`_read_zip_entry`).
_ZIP_FDS: dict[str, int] = {}


def _read_zip_entry(zip_path: str, key: str, entry) -> tuple[bytes | None, str | None]:
    """:func:`_read_zip_member` from the member's :data:`trainers.sources.ZIP_ENTRY`
    ``entry``, without ``zipfile`` (whose ``ZipInfo`` per member of the whole zip
    costs each worker process ~635 bytes a member: ~775 MiB for the 1.28 M member
    Kaggle zip): :func:`trainers.sources.zip_member_bytes` (two ``os.pread``, inflated
    when deflated, checked against the central directory's CRC-32 and size) through
    one descriptor per process. Encrypted members and other compression methods go to
    :func:`_read_zip_member` (``zipfile``'s read or its error)."""
    reason = scan.not_an_image(os.path.basename(key))
    if reason is not None:
        return None, reason
    size = int(entry["size"])
    if size > MAX_FILE_BYTES:
        return None, f"file too large ({size:,} bytes)"
    try:
        fd = _ZIP_FDS.get(zip_path)
        if fd is None:
            fd = _ZIP_FDS[zip_path] = os.open(zip_path, _OPEN_FLAGS)
        return sources.zip_member_bytes(fd, entry), None
    except NotImplementedError:
        return _read_zip_member(zip_path, key)
    except sources.zipfile.BadZipFile as exc:
        msg = str(exc)
        if msg.startswith("Bad CRC-32"):
            msg = f"BadZipFile: Bad CRC-32 or size for {key[len(zip_path) + 1:]}"
        return None, f"cannot read: {msg}"
    except (OSError, zlib.error) as exc:
        return None, f"cannot read: {type(exc).__name__}: {exc}"


def _prepare_data(data: bytes, resize_shorter: int | None,
                  quality: int) -> tuple[bytes | None, str | None, int]:
    """``(jpeg bytes to store, reason if bad, bytes in)`` for image bytes ``data`` (a
    file's, a zip member's or an archive stream's): :func:`packed_bytes`, with a bad
    image or any other error of one member (but MemoryError) as its reason."""
    try:
        return packed_bytes(data, resize_shorter, quality), None, len(data)
    except preprocess.BadImageError as exc:
        return None, exc.reason, len(data)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - one odd member must not stop the pack
        return None, f"cannot process: {type(exc).__name__}: {exc}", len(data)


class _Workers:
    """The pack's workers: ``pack_threads`` threads, or ``pack_workers`` spawned
    processes (``spawn`` re-imports the caller's main module in each: a script that
    packs with worker processes must do so under ``if __name__ == "__main__":``,
    the standard rule of Python's multiprocessing).

    Listed shards go whole to one worker each (:meth:`run_shards`): the worker reads,
    verifies, serializes and writes the shard, and only its summary comes back.
    Archive members come from one stream: :meth:`ordered` runs them in batches with a
    bounded number in flight (memory stays flat on any input size) and yields the
    results in member order. Either way the shards' bytes do not depend on the
    worker kind or count."""

    #: Seconds between the parent's looks at the worker processes' counts.
    POLL_S = 0.1

    def __init__(self, options: PackOptions, start: bool = False):
        """``start``: start the worker processes now (each runs :func:`_worker_ready`),
        not at the first task, so that their start overlaps the caller's own work."""
        self.options = options
        self.procs = options.pack_workers > 0
        if self.procs:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            self.shared = (ctx.Value("q", 0), ctx.Value("q", 0), ctx.Event())
            self.pool = cf.ProcessPoolExecutor(options.pack_workers, mp_context=ctx,
                                               initializer=_init_worker, initargs=self.shared)
            self.batch, n = 16, options.pack_workers
            if start:  # one process is spawned per task submitted while none is idle
                for _ in range(options.pack_workers):
                    self._submit(_worker_ready)
        else:
            self.pool = cf.ThreadPoolExecutor(max(1, options.pack_threads))
            self.batch, n = 4, options.pack_threads
        self.window = 4 * max(1, n)
        # Files held open ahead by each shard loop: its own descriptors in a process.
        self.files_ahead = PREFETCH_AHEAD if self.procs else _files_ahead(n)

    def _submit(self, fn, *args) -> cf.Future:
        """``pool.submit``; a pool whose worker process died (while starting, too) is
        a :class:`PackError` (:func:`_result`)."""
        try:
            return self.pool.submit(fn, *args)
        except cf.process.BrokenProcessPool as exc:
            raise _broken_pool(exc) from None

    def run_shards(self, tasks: list[_ShardTask], progress, total: int | None, done: int,
                   bad: int) -> list[dict | None]:
        """Write the listed shards ``tasks`` (:func:`_write_listed_shard`), the largest
        first (the last ones to start are then the shortest), seal each one here as its
        worker closes it (:func:`_seal_shard`, on 2 threads of this process, while the
        worker writes its next shard), and return their summaries in task order
        (``{"info": sidecar}`` for a complete shard): None for a shard never started
        because another failed. ``progress(done, total, bad)`` counts on from ``done``
        / ``bad``: from the worker threads after each member, or here from the worker
        processes' shared counts every :attr:`POLL_S` seconds and at each shard's end.

        A failed write stops the others (each deletes its partial file); an
        exception (a worker process that died: :class:`PackError`) is raised after
        that."""
        order = sorted(range(len(tasks)), key=lambda i: -len(tasks[i].chunk))
        tally = None
        if self.procs:
            for value in self.shared[:2]:
                value.value = 0
            self.shared[2].clear()
            futures = {self._submit(_write_listed_shard, tasks[i]): i for i in order}
        else:
            tally = _ThreadTally(progress, total, done, bad)
            futures = {self._submit(_write_listed_shard, tasks[i], tally): i for i in order}
        out: list[dict | None] = [None] * len(tasks)
        pending, seen = set(futures), (done, bad)
        seals: set[cf.Future] = set()
        sealer = cf.ThreadPoolExecutor(2, thread_name_prefix="autotune-seal")
        try:
            while pending:
                finished, pending = cf.wait(pending, self.POLL_S if self.procs else None,
                                            return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    if fut.cancelled():
                        continue
                    res = _result(fut)  # raises a failed sidecar write (a seal's)
                    if "closed" in res:  # sealed here while its worker writes the next
                        seal = sealer.submit(_seal_shard, res["closed"])
                        futures[seal] = futures[fut]
                        seals.add(seal)
                        pending.add(seal)
                        continue
                    out[futures[fut]] = res
                    if "failed" in res:  # the closed shards are still sealed (kept)
                        self._stop(tally, pending - seals)
                if self.procs and len(pending - seals) <= self.options.pack_workers:
                    # The last shards run (no task waits): the metadata writer's import
                    # overlaps them instead of following them.
                    _import_in_background("tensorflow_datasets")
                if self.procs and progress is not None:
                    now = (done + self.shared[0].value, bad + self.shared[1].value)
                    if now != seen:
                        progress(now[0], total, now[1])
                        seen = now
        except BaseException:
            self._stop(tally, pending - seals)
            raise
        finally:
            sealer.shutdown(wait=True)
        return out

    #: Listed files per :func:`_stat_lines` task of :meth:`stat_lines`.
    STAT_CHUNK = 4096

    def stat_lines(self, items: Listing) -> Iterable[bytes]:
        """The fingerprint's lines of the files of ``items`` (:func:`_stat_lines`),
        one ``bytes`` per chunk of :attr:`STAT_CHUNK` files, in order, made by the
        worker processes with at most :attr:`window` chunks in flight."""
        chunks = ((None, self._submit(_stat_lines, items[lo:lo + self.STAT_CHUNK]))
                  for lo in range(0, len(items), self.STAT_CHUNK))
        for _, lines in self._in_order(chunks):
            yield lines

    def _stop(self, tally: _ThreadTally | None, pending: set) -> None:
        """Stop the running shards at their next member; cancel those not started."""
        if tally is not None:
            tally.stop = True
        else:
            self.shared[2].set()
        for fut in pending:
            fut.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True, cancel_futures=True)

    def ordered(self, jobs: Iterable[tuple[object, tuple[str, object]]]):
        """``(meta, result)`` for each ``(meta, job)`` of ``jobs``, in order (see
        :func:`_prepare_batch` for jobs and results), :attr:`batch` jobs a task."""
        opts = self.options

        def batches():
            metas, batch = [], []
            for meta, job in jobs:
                metas.append(meta)
                batch.append(job)
                if len(batch) >= self.batch:
                    yield metas, self._submit(_prepare_batch, batch, opts.resize_shorter,
                                              opts.quality)
                    metas, batch = [], []
            if batch:
                yield metas, self._submit(_prepare_batch, batch, opts.resize_shorter,
                                          opts.quality)

        for metas, results in self._in_order(batches()):
            yield from zip(metas, results)

    def _in_order(self, submitted: Iterable[tuple[object, cf.Future]]):
        """``(meta, result)`` of each ``(meta, future)`` of ``submitted`` (which submits
        its task as it is pulled), in order, with at most :attr:`window` tasks in
        flight (:func:`_result`)."""
        import collections

        pending: collections.deque = collections.deque()
        for item in submitted:
            pending.append(item)
            while len(pending) >= self.window:
                meta, fut = pending.popleft()
                yield meta, _result(fut)
        while pending:
            meta, fut = pending.popleft()
            yield meta, _result(fut)


def _result(fut: cf.Future) -> list:
    """A batch's results; a worker process that died (killed, out of memory) is a
    :class:`PackError` (complete shards stay for the rerun)."""
    try:
        return fut.result()
    except cf.process.BrokenProcessPool as exc:
        raise _broken_pool(exc) from None


def _broken_pool(exc: BaseException) -> PackError:
    return PackError(f"a pack worker process ended abruptly ({exc}); out of memory? The "
                     f"complete shards are kept: rerun to resume, with fewer --workers if "
                     f"memory is short")


_BACKGROUND_IMPORTS: set[str] = set()


def _import_in_background(module: str) -> None:
    """Import ``module`` in a daemon thread, once per process: the pack's metadata
    writer (``tensorflow_datasets``, 0.15-0.25 s to import) is imported while the last
    shards are written (on a core a finished worker left idle, if any), not after
    them. The thread only imports
    (Python's import locks make the caller's own ``import`` wait for it); an import
    that fails there fails again, with its traceback, where the module is used."""
    if module in _BACKGROUND_IMPORTS:
        return
    _BACKGROUND_IMPORTS.add(module)

    def run():
        with contextlib.suppress(Exception):
            __import__(module)

    threading.Thread(target=run, name=f"import {module}", daemon=True).start()


def _worker_ready() -> int:
    """A no-op task that makes the pool start a worker process (its imports happen
    while unpickling this function's module); returns its process id."""
    return os.getpid()


class _Shard:
    """One shard being written to ``path + '.tmp'``: records, bytes, skipped members.
    The array_record writer opens at the first record (``eager``: at once, so that a
    listed shard of only bad files still exists, as before)."""

    def __init__(self, path: Path, eager: bool):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.writer = self.behind = None
        self.records = self.bytes_in = self.bytes_out = self.num_bytes = 0
        self.bad: list[BadImage] = []
        if eager:
            self._open()

    def _open(self):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.writer = ArrayRecordWriter(str(self.tmp), "group_size:1,uncompressed")
        self.behind = _WriteBehind(self.tmp)

    def add(self, key: str, result) -> BadImage | None:
        """Write one prepared member (:func:`_prepare_batch`), or list it as skipped
        (returned)."""
        record, reason, nbytes_in, nbytes_out = result
        if record is None:
            self.bad.append(BadImage(path=key, reason=reason or "unknown"))
            return self.bad[-1]
        if self.writer is None:
            self._open()
        self.writer.write(record)
        self.records += 1
        self.bytes_in += nbytes_in
        step = _WriteBehind.WINDOW // 2
        if (self.bytes_out + nbytes_out) // step > self.bytes_out // step:
            self.behind.poll()
        self.bytes_out += nbytes_out
        return None

    def close(self) -> bool:
        """Close the writer: every record is in ``tmp`` (not yet synced); False when
        none was opened."""
        if self.writer is None:
            return False
        self.writer.close()
        self.writer = None
        self.behind.close()
        self.num_bytes = self.tmp.stat().st_size
        return True

    def finish(self) -> None:
        """Close the writer, sync the shard and rename it into place (none without
        records, unless opened eagerly)."""
        if self.close():
            _fsync_file(self.tmp)  # on the disk before its name and sidecar vouch for it
            os.replace(self.tmp, self.path)

    def sidecar(self, fp: str) -> dict:
        """The sidecar's content: what went into the shard."""
        return {"fingerprint": fp, "records": self.records, "num_bytes": self.num_bytes,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "bad": [b.to_dict() for b in self.bad]}

    def write_sidecar(self, out: Path, fp: str) -> dict:
        """Write the sidecar (after :meth:`finish`: a sidecar vouches for a complete
        shard); returns it."""
        info = self.sidecar(fp)
        _write_sidecar(self.path, out, info)
        return info

    def discard(self) -> None:
        _discard(self.writer, self.tmp)
        self.writer = None
        if self.behind is not None:
            self.behind.close()


def _load_sync_file_range():
    """libc's ``sync_file_range(fd, offset, nbytes, flags) -> int`` through ctypes
    (Python's ``os`` does not have it), or None where there is none (not Linux)."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError, ImportError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


class _WriteBehind:
    """Keeps a shard being written out of the page cache: every :attr:`WINDOW` bytes
    that reach the file, their writeback is started, and the window before them is
    waited for and dropped from the page cache (``sync_file_range`` then
    ``posix_fadvise(POSIX_FADV_DONTNEED)``, the streaming-write pattern Linus Torvalds
    described on LKML, "Re: Linux 2.6.29", 2009-03-26).

    Why: a pack writes about as many bytes as it reads (150 GB for ImageNet-1k), once.
    Left in the page cache, those pages push out what the pack still needs (directory
    blocks, input pages) and have to be reclaimed later, and on the development VM
    writing into page-cache memory never used before costs about twice the system CPU
    of writing into memory just freed. Measured there (2-core VM): 4 GB in 16 MiB
    writes to the disk, 1.0 s of system CPU this way against 2.7-4.8 s without
    (``bench/write_behind.py``); a pack of 100,000 full-size files (11 GB), 7.9 s of
    system CPU against 17.3-18.0 s and 61.4-61.5 s against 65.0-66.2 s of wall time
    (``bench/results/pack_write_behind_paired.json``).
    The cost: the first epoch after a pack reads its shards from the disk, as every
    epoch does once a data set is larger than memory.

    Works on its own descriptor of the file (``path``, opened read-only): the writer's
    own buffering is untouched; only the bytes the writer has handed to the kernel
    (the file's size) are flushed. Does nothing where ``sync_file_range`` is missing
    (not Linux); errors of either call are ignored (it is only advice: the writer's
    own ``close`` reports a failed write)."""

    #: Bytes written between two looks (bytes).
    WINDOW = 32 << 20
    _SYNC = None  # libc's sync_file_range, loaded at the first shard
    _WRITE, _WAIT_ALL = 2, 7  # SYNC_FILE_RANGE_WRITE; WAIT_BEFORE | WRITE | WAIT_AFTER

    def __init__(self, path: Path):
        if _WriteBehind._SYNC is None:
            _WriteBehind._SYNC = _load_sync_file_range() or False
        self.fd = -1
        if _WriteBehind._SYNC:
            with contextlib.suppress(OSError):
                self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.started = self.dropped = 0  # file bytes whose writeback was started / dropped

    def poll(self) -> None:
        """Start the writeback of the bytes written since the last look, if a window
        of them; wait for and drop the bytes started at the look before."""
        if self.fd < 0:
            return
        try:
            size = os.fstat(self.fd).st_size
        except OSError:
            return
        if size - self.started < self.WINDOW:
            return
        sync = _WriteBehind._SYNC
        sync(self.fd, self.started, size - self.started, self._WRITE)
        if self.started > self.dropped:
            n = self.started - self.dropped
            if sync(self.fd, self.dropped, n, self._WAIT_ALL) == 0:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(self.fd, self.dropped, n, os.POSIX_FADV_DONTNEED)
            self.dropped = self.started
        self.started = size

    def close(self) -> None:
        """Start the writeback of the rest (not waited for) and close the descriptor."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                size = os.fstat(self.fd).st_size
                if size > self.started:
                    _WriteBehind._SYNC(self.fd, self.started, size - self.started,
                                       self._WRITE)
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class _ShardWriteFailed(Exception):
    """Writing a shard failed (the cause is ``__cause__``)."""

    def __init__(self, shard: _Shard, exc: BaseException):
        super().__init__(str(exc))
        self.shard, self.exc = shard, exc


def _guarded(shard: _Shard, fn, *args):
    """``fn(*args)``, with a write failure (array_record raises RuntimeError) raised
    as :class:`_ShardWriteFailed` naming ``shard``."""
    try:
        return fn(*args)
    except (OSError, RuntimeError) as exc:
        raise _ShardWriteFailed(shard, exc) from exc


class _ShardWriter:
    """Writes this process's shards of one pack (or keeps those a previous run
    completed): ``done`` members handled, ``records`` written, ``bad`` skipped,
    ``resumed`` shards kept; ``owner(i)`` says whether shard ``i`` (listed) or group
    ``i`` (streamed) is this process's."""

    def __init__(self, out: Path, fp: str, options: PackOptions,
                 progress: Callable[[int, int | None, int], None] | None,
                 owner: Callable[[int], bool]):
        self.out, self.fp, self.options = out, fp, options
        self.progress, self.owner = progress, owner
        self.total: int | None = None
        self.done = self.resumed = self.records = 0
        self.bad: list[BadImage] = []

    def tick(self, n: int = 1) -> None:
        self.done += n
        if self.progress:
            self.progress(self.done, self.total, len(self.bad))

    def kept(self, path: Path) -> dict | None:
        """The sidecar of a shard a previous run completed, else None. The sidecar is
        written after the shard's rename, so a shard it describes was complete; the
        size check catches one damaged since."""
        info = _read_sidecar(_sidecar(path))
        if info is None or info.get("fingerprint") != self.fp:
            return None
        if info["num_bytes"] == 0 and info["records"] == 0 and not path.exists():
            return info  # a streamed shard that received no image
        if not path.is_file() or path.stat().st_size != info["num_bytes"]:
            return None
        return info

    def write_listed(self, plans: dict[str, _SplitPlan], workers: _Workers) -> None:
        """Write (or keep) this process's shards of the listed splits ``plans``: one
        task per shard to the workers (:meth:`_Workers.run_shards`), which write the
        shards themselves; here only their summaries are added up.

        Raises:
          OSError: a shard's write failed (see :func:`_write_error`); the partial
            shards are deleted, the complete ones kept for the rerun.
        """
        opts, tasks = self.options, []
        for split, plan in plans.items():
            n = len(plan.chunks)
            for i, chunk in enumerate(plan.chunks):
                path = _listed_path(self.out, split, i, n)
                if not self.owner(i):
                    continue
                info = self.kept(path)
                if info is None:
                    zdir = plan.source.zip_dir
                    tasks.append(_ShardTask(path, chunk, plan.source.zip_path,
                                            opts.resize_shorter, opts.quality, self.out, self.fp,
                                            None if zdir is None else zdir[chunk.positions()],
                                            workers.files_ahead))
                    continue
                self.bad.extend(BadImage(**b) for b in info["bad"])
                self.records += info["records"]
                self.resumed += 1
                self.tick(len(chunk))
        if not tasks:
            return
        summaries = workers.run_shards(tasks, self.progress, self.total, self.done, len(self.bad))
        failed = None
        for task, summary in zip(tasks, summaries):
            if summary is not None and "info" in summary:
                self.records += summary["info"]["records"]
                self.bad.extend(BadImage(**b) for b in summary["info"]["bad"])
                self.done += len(task.chunk)
            elif summary is not None and "failed" in summary and failed is None:
                failed = summary
        if failed is not None:
            still = sum(_size(key) for task, summary in zip(tasks, summaries)
                        if summary is None or "info" not in summary for key, _ in task.chunk)
            code, text = failed["failed"]
            raise _write_error(
                OSError(code, text) if code is not None else RuntimeError(text),
                Path(failed["tmp"]), self.out,
                f"{failed['records']} records, {failed['bytes_out']:,} bytes of images written "
                f"to it; about {still:,} bytes still to write (input size of this and the "
                f"other unfinished shards' images)")

    def write_streamed(self, plans: dict[str, _SplitPlan], workers: _Workers) -> None:
        """Write (or keep) this process's groups of the streamed splits; splits that
        share one stream (train and its held-out members) are written in one pass."""
        by_source: dict[int, list[tuple[str, _SplitPlan]]] = {}
        for split, plan in plans.items():
            by_source.setdefault(id(plan.source), []).append((split, plan))
        for group in by_source.values():
            _StreamPass(self, group).run(workers)


class _StreamPass:
    """One pass over an archive stream feeding one or more splits (see
    :func:`stream_shard`): members of groups this process does not own, or that a
    previous run completed, are read past; the others go to the workers in order and
    their shards are written group by group."""

    def __init__(self, shards: _ShardWriter, splits: list[tuple[str, _SplitPlan]]):
        self.w, self.splits = shards, splits
        self.source = splits[0][1].source
        self.count = {s: 0 for s, _ in splits}  # members of each split so far
        self.wanted: dict[tuple[str, int], bool] = {}
        self.open: dict[str, tuple[int, dict[int, _Shard]]] = {}

    def _want(self, split: str, g: int) -> bool:
        """Whether group ``g`` is to be written here (owned and not already complete)."""
        if (split, g) not in self.wanted:
            G = self.w.options.archive_group_shards
            infos = [self.w.kept(_pending_path(self.w.out, split, i))
                     for i in range(g * G, g * G + G)]
            done = all(i is not None for i in infos) and self.w.owner(g)
            if done:
                self.w.resumed += sum(1 for i in infos if i["records"])
                self.w.records += sum(i["records"] for i in infos)
                self.w.bad.extend(BadImage(**b) for i in infos for b in i["bad"])
            self.wanted[(split, g)] = self.w.owner(g) and not done
        return self.wanted[(split, g)]

    def _jobs(self, end):
        opts = self.w.options
        for m in self.source.stream(end):
            split = next((s for s, p in self.splits if p.select(m)), self.splits[0][0])
            j = self.count[split]
            self.count[split] += 1
            shard = stream_shard(j, split, opts)
            if not self._want(split, shard // opts.archive_group_shards):
                self.w.tick()
                continue
            if m.reason is None and m.label < 0:
                m = dataclasses.replace(m, reason="no label for this file")
            yield (split, shard, m.key), (("skip", m.reason, m.label, m.name) if m.reason
                                         else ("bytes", m.data, m.label, m.name))

    def run(self, workers: _Workers) -> None:
        """Stream, write, then record each split's stream marker."""
        from trainers.sources import StreamEnd

        end = StreamEnd()
        try:
            for (split, shard, key), result in workers.ordered(self._jobs(end)):
                sh = self._shard(split, shard)
                if _guarded(sh, sh.add, key, result):
                    self.w.bad.append(sh.bad[-1])
                self.w.tick()
            for split in list(self.open):
                self._close_group(split)
        except _ShardWriteFailed as failed:
            for _, group in self.open.values():
                for sh in group.values():
                    sh.discard()
            raise _write_error(failed.exc, failed.shard.tmp, self.w.out,
                               f"{failed.shard.records} records written to it; the rest of "
                               f"{self.source.path} is still to pack") from failed.exc
        stopped = end.stopped or self.source.note
        G, R = self.w.options.archive_group_shards, self.w.options.archive_shard_records
        for split, n in self.count.items():
            path = _marker_path(self.w.out, split)
            with _writing(path, self.w.out):
                write_text_atomic(path, json.dumps({
                    "fingerprint": self.w.fp, "members": n, "shards": -(-n // (G * R)) * G,
                    "stopped": stopped}))

    def _shard(self, split: str, shard: int) -> _Shard:
        """The open shard ``shard`` of ``split``; a new group closes the previous one."""
        G = self.w.options.archive_group_shards
        g = shard // G
        if split in self.open and self.open[split][0] != g:
            self._close_group(split)
        group = self.open.setdefault(split, (g, {}))[1]
        if shard not in group:
            group[shard] = _Shard(_pending_path(self.w.out, split, shard), eager=False)
        return group[shard]

    def _close_group(self, split: str) -> None:
        """Finish every shard of the open group of ``split`` (empty ones get a sidecar
        saying so) and write their sidecars."""
        g, group = self.open.pop(split)
        G = self.w.options.archive_group_shards
        for i in range(g * G, g * G + G):
            sh = group.get(i) or _Shard(_pending_path(self.w.out, split, i), eager=False)
            _guarded(sh, sh.finish)
        for i in range(g * G, g * G + G):
            sh = group.get(i) or _Shard(_pending_path(self.w.out, split, i), eager=False)
            self.w.records += sh.write_sidecar(self.w.out, self.w.fp)["records"]


class ArchiveEndedEarly(UserWarning):
    """A damaged archive ended early; what was read before is packed (the message
    names the archive, the member and the byte offset)."""


def _read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _fsync_file(path: Path) -> None:
    """``fsync`` the file at ``path``: its bytes are on the disk when this returns.

    A shard is renamed into place and vouched for by its sidecar only after this, so
    that after a power loss (or a preempted VM whose page cache is gone) a resumed pack
    never keeps a shard whose name and sidecar reached the disk before its records
    (ext4's default ``data=ordered`` happened to order them; XFS and others do not).

    Raises:
      OSError: the file cannot be opened or synced (a failed write-back: EIO, ENOSPC).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(writer, tmp: Path) -> None:
    """Drop a failed shard: close its writer (errors ignored) and delete the partial
    file, which frees the space it took on a full disk."""
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.close()
    with contextlib.suppress(OSError):
        tmp.unlink()


def _write_error(exc: BaseException, path: Path, out: Path, detail: str) -> OSError:
    """An OSError naming ``path``, the cause, ``detail`` and the bytes free in ``out``.

    array_record reports a full disk as ``RuntimeError("write() failed: No space left
    on device; ...")``; the errno is recovered from the text for such errors."""
    code = getattr(exc, "errno", None)
    text = getattr(exc, "strerror", None) or str(exc)
    if code is None:
        low = text.lower()
        code = (errno.ENOSPC if "no space left" in low else
                errno.EDQUOT if "quota exceeded" in low else errno.EIO)
    try:
        free = f"{shutil.disk_usage(out).free:,} bytes free there"
    except OSError:
        free = "free space unknown"
    return OSError(code, f"writing {path} failed: {text}; {detail}; {free}")


@contextlib.contextmanager
def _writing(path: Path, out: Path):
    """Re-raise a failed metadata write as an OSError naming the file (see
    :func:`_write_error`); the files written before it survive for the rerun."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        raise _write_error(exc, path, out, "the data set stays unfinished (no "
                           f"{PACK_SUMMARY}); rerun the pack when there is space") from exc


def _read_fingerprint(out: Path) -> str | None:
    try:
        return (out / "fingerprint.txt").read_text().strip()
    except FileNotFoundError:
        return None


def _write_tfds_metadata(out: Path, feats, splits: Iterable[SplitSummary]) -> None:
    import tensorflow_datasets as tfds

    split_infos = []
    for s in splits:
        template = tfds.core.ShardedFileTemplate(
            data_dir=out, template=FILENAME_TEMPLATE, dataset_name=DATASET_NAME,
            split=s.name, filetype_suffix="array_record")
        split_infos.append(tfds.core.SplitInfo(name=s.name, shard_lengths=list(s.shard_lengths),
                                               num_bytes=s.num_bytes, filename_template=template))
    tfds.folder_dataset.write_metadata(
        data_dir=out, features=feats, split_infos=split_infos,
        filename_template=FILENAME_TEMPLATE, check_data=False,
        description="Packed by autotune from an ImageNet-layout JPEG folder.")


def shard_paths(out_dir: str | os.PathLike, split: str) -> list[str]:
    """The shard files of ``split`` in a packed data set, in shard order."""
    result = load_pack_result(out_dir)
    s = result.split(split)
    n = len(s.shard_lengths)
    return [str(Path(out_dir) / f"{DATASET_NAME}-{split}.array_record-{i:05d}-of-{n:05d}")
            for i in range(n)]

