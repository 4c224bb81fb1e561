"""Pack an ImageNet-layout folder of JPEGs into ArrayRecord shards that
tensorflow-datasets can read.

Input: ``<root>/<wnid>/<file>`` (class index = position of the wnid in sorted order,
the order tensorflow-datasets ``imagenet2012`` uses). Output: a folder readable with
``tfds.builder_from_directory(out)`` (``dataset_info.json``, ``features.json`` and
``autotune_images-<split>.array_record-XXXXX-of-YYYYY`` shards, one serialized
``tf.train.Example`` per record with ``image`` (JPEG bytes), ``label`` (int64) and
``file_name``), written without TensorFlow.

Nothing is lost: every input file is either packed or listed, with its path and the
reason, in ``PackResult.bad_images`` (and ``bad_images.json``), so
``input_images == packed + skipped`` always.

Records are serialized deterministically (sorted protobuf map keys), so the same
inputs and options give byte-identical shards in any process.

Crash safety: each shard is written to a temporary name and renamed when complete,
with a sidecar JSON that lists what went into it; the data set's metadata and the
``pack.json`` summary are written last. A rerun after an interruption keeps the
complete shards (same inputs and options give the same assignment of images to
shards) and redoes the rest, so the result is identical to an uninterrupted run.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import hashlib
import io
import json
import os
import random
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from trainers.records import RecordError, write_text_atomic
from trainers import preprocess, scan
from trainers.summaries import BadImage, PackResult, SplitSummary
from trainers.options import PackOptions

DATASET_NAME = "autotune_images"
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
PACK_SUMMARY = "pack.json"
FORMAT_VERSION = 1
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


def scan_image_folder(root: str | os.PathLike) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    """List ``<root>/<class>/<file>`` as ``(class_names, [(path, label), ...])``:
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
    re-encoded at ``quality``. Otherwise ``data`` itself when it is a JPEG that
    libjpeg-turbo decodes to RGB; anything else (CMYK, PNG named .JPEG, ...) is
    converted to JPEG once here, so readers never need Pillow. The image is fully
    decoded either way, which catches truncated files.

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
    img = preprocess.decode_image(data)  # full decode: catches truncation
    if data[:3] == b"\xff\xd8\xff" and _simplejpeg_ok(data):
        return data
    return preprocess.encode_jpeg(img, quality)


def _prepare(path: str, resize_shorter: int | None, quality: int) -> tuple[bytes | None, str | None, int]:
    """Read and verify one file. Returns (jpeg bytes to store, reason if bad, bytes in).

    Never raises for one odd file (it is listed with the exception instead), except
    MemoryError."""
    try:
        return _prepare_file(path, resize_shorter, quality)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop the pack
        return None, f"cannot process: {type(exc).__name__}: {exc}", 0


def _prepare_file(path: str, resize_shorter: int | None,
                  quality: int) -> tuple[bytes | None, str | None, int]:
    data, reason = _read_image_file(path)
    if data is None:
        return None, reason, 0
    try:
        return packed_bytes(data, resize_shorter, quality), None, len(data)
    except preprocess.BadImageError as exc:
        return None, exc.reason, len(data)


def _read_image_file(path: str) -> tuple[bytes | None, str | None]:
    """``(bytes, None)`` of an image file, or ``(None, why not)``: not an image by
    its name (:func:`trainers.scan.not_an_image`), unreadable, not a regular file
    (opening a FIFO would block forever) or over :data:`MAX_FILE_BYTES`."""
    reason = scan.not_an_image(os.path.basename(path))
    if reason is not None:
        return None, reason
    try:
        st = os.stat(path)  # follows links: a dangling one fails here
    except OSError as exc:
        link = " (dangling symbolic link)" if os.path.islink(path) else ""
        return None, f"unreadable: {exc.strerror or exc}{link}"
    if not stat.S_ISREG(st.st_mode):
        return None, f"not a regular file: {_not_regular(st.st_mode)}"
    if st.st_size > MAX_FILE_BYTES:
        return None, f"file too large: {st.st_size:,} bytes > {MAX_FILE_BYTES:,}"
    try:
        with open(path, "rb") as f:
            return f.read(), None
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"


def _simplejpeg_ok(data: bytes) -> bool:
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB", min_factor=8)
        return True
    except (ValueError, RuntimeError):
        return False


def _assign(items: list[tuple[str, int]], options: PackOptions, has_val_folder: bool):
    """Seeded, stratified hold-out and shuffled assignment to shards (deterministic)."""
    rng = random.Random(options.seed)
    train, val = [], []
    if options.val_fraction > 0 and not has_val_folder:
        by_class: dict[int, list] = {}
        for it in items:
            by_class.setdefault(it[1], []).append(it)
        for label in sorted(by_class):
            group = by_class[label][:]
            rng.shuffle(group)
            n_val = int(round(len(group) * options.val_fraction))
            val.extend(group[:n_val])
            train.extend(group[n_val:])
    else:
        train = items[:]
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def _chunks(items: list, n: int) -> list[list]:
    n = max(1, min(n, len(items))) if items else 1
    base, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        out.append(items[start:start + size])
        start += size
    return out


def _fingerprint(source: str, items, val_items, options: PackOptions) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, source, options.to_dict()]).encode())
    for path, label in list(items) + list(val_items or []):
        try:
            st = os.stat(path)
            h.update(f"{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0{label}\0missing\n".encode())
    return h.hexdigest()[:16]


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
                progress: Callable[[int, int, int], None] | None = None,
                replace_stale: bool = False) -> PackResult:
    """Pack ``source`` (``<root>/<wnid>/*``) into ArrayRecord shards in ``out_dir``.

    Args:
      source: ImageNet-layout training folder.
      out_dir: output folder; created; an existing complete pack with the same inputs
        and options is returned as is, an interrupted one is resumed.
      options: shards, resize, hold-out fraction, threads.
      val_source: optional separate validation folder in the same layout (its
        classes must be a subset of the train classes).
      progress: ``progress(done, total, bad_so_far)`` after each image.
      replace_stale: when ``out_dir`` holds a complete pack made from other inputs
        (files added, removed, or with another size or mtime, e.g. after the data
        set was copied again) or options, delete its files and pack anew instead of
        raising. For cache folders the tool owns, never for a user's ``--out``.

    Returns:
      PackResult (also saved as ``out_dir/pack.json``; skipped files also in
      ``out_dir/bad_images.json``).

    Raises:
      PackError: bad input folder, or no image could be packed.
      OSError: writing failed (for example the disk is full: ``errno.ENOSPC``); the
        message names the file, the bytes written to it, an estimate of the bytes
        still to write and the bytes free there. Complete shards survive for the
        rerun; the partial shard is deleted.
    """
    t0 = time.perf_counter()
    source = str(Path(source).resolve())
    out = Path(out_dir)
    class_names, items = scan_image_folder(source)
    val_items: list[tuple[str, int]] = []
    if val_source is not None:
        from trainers.validation import scan_validation

        val_items = scan_validation(val_source, class_names)
    fp = _fingerprint(source, items, val_items, options)
    previous = _open_out_dir(out, fp, replace_stale)
    if previous is not None:
        return previous

    train, val = _assign(items, options, has_val_folder=val_source is not None)
    if val_source is not None:
        val = val_items
    n_val_shards = max(1, round(options.num_shards * len(val) / max(1, len(train)))) if val else 0
    plan = [("train", c) for c in _chunks(train, options.num_shards)]
    plan += [("validation", c) for c in _chunks(val, n_val_shards)] if val else []
    feats = _features(class_names)
    shards = _ShardWriter(out, fp, options, _example_serializer(feats), progress,
                          total=len(items) + len(val_items))
    shards.write_all(plan)

    packed = sum(r for v in shards.info.values() for r, *_ in v)
    bad_all = shards.bad
    if packed == 0:
        raise PackError(f"no image in {source} could be packed; {len(bad_all)} files skipped, "
                        f"first: {bad_all[0].path}: {bad_all[0].reason}" if bad_all else
                        f"no image in {source} could be packed")
    splits = tuple(SplitSummary(name=s, num_examples=sum(r for r, *_ in v),
                                shard_lengths=tuple(r for r, *_ in v),
                                num_bytes=sum(b for _, b, *_ in v))
                   for s, v in shards.info.items() if v)
    with _writing(out / "dataset_info.json", out):
        _write_tfds_metadata(out, feats, splits)
    result = PackResult(
        out_dir=str(out), source=source, class_names=class_names, input_images=shards.total,
        packed=packed, skipped=len(bad_all), bad_images=tuple(bad_all), splits=splits,
        bytes_in=sum(x[2] for v in shards.info.values() for x in v),
        bytes_out=sum(x[3] for v in shards.info.values() for x in v),
        resize_shorter=options.resize_shorter, options=options,
        seconds=time.perf_counter() - t0, resumed_shards=shards.resumed,
        decode_speedup=(measure_decode_speedup([p for p, _ in train[:32]], options)
                        if options.resize_shorter else None))
    assert result.input_images == result.packed + result.skipped, result
    with _writing(out / "bad_images.json", out):
        write_text_atomic(out / "bad_images.json",
                          json.dumps([b.to_dict() for b in bad_all], indent=1) + "\n")
    with _writing(out / PACK_SUMMARY, out):
        result.save(out / PACK_SUMMARY)  # last: its presence marks the pack complete
    return result


def _open_out_dir(out: Path, fp: str, replace_stale: bool) -> PackResult | None:
    """Make ``out`` ready for the pack with fingerprint ``fp``: returns the complete
    pack already there when it has that fingerprint; else removes what another pack
    (``replace_stale``) or an interrupted run left, and writes the fingerprint.

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
    for p in out.iterdir():  # partial files of an interrupted run (killed mid-write)
        if p.is_file() and _TEMP_NAME.fullmatch(p.name):
            with contextlib.suppress(OSError):
                p.unlink()
    with _writing(out / "fingerprint.txt", out):
        write_text_atomic(out / "fingerprint.txt", fp + "\n")
    return None


class _ShardWriter:
    """Writes the shards of one pack (or keeps those a previous run completed) and
    gathers what went into them: ``info[split]`` = ``[(records, num_bytes, bytes_in,
    bytes_out), ...]`` per shard, ``bad`` (skipped files), ``resumed`` (shards kept)."""

    def __init__(self, out: Path, fp: str, options: PackOptions,
                 serialize: Callable[[dict], bytes],
                 progress: Callable[[int, int, int], None] | None, total: int):
        self.out, self.fp, self.options, self.serialize = out, fp, options, serialize
        self.progress, self.total = progress, total
        self.done = self.resumed = 0
        self.bad: list[BadImage] = []
        self.info: dict[str, list[tuple[int, int, int, int]]] = {"train": [], "validation": []}

    def _tick(self) -> None:
        if self.progress:
            self.progress(self.done, self.total, len(self.bad))

    def write_all(self, plan: list[tuple[str, list[tuple[str, int]]]]) -> None:
        """Write (or keep) every shard of ``plan`` (``[(split, [(path, label), ...])]``)."""
        counts = {"train": 0, "validation": 0}
        pool = cf.ThreadPoolExecutor(max(1, self.options.pack_threads))
        try:
            for shard_no, (split, chunk) in enumerate(plan):
                idx = counts[split]
                counts[split] += 1
                n_split = sum(1 for s, _ in plan if s == split)
                final = self.out / f"{DATASET_NAME}-{split}.array_record-{idx:05d}-of-{n_split:05d}"
                if not self._keep(final, split, chunk):
                    self._write(final, split, chunk, pool, plan[shard_no:])
        finally:
            pool.shutdown(wait=True)

    def _keep(self, final: Path, split: str, chunk: list) -> bool:
        """Keep a shard a previous run completed. The sidecar is written after the
        shard's rename, so a shard it describes was complete; the size check catches
        one damaged since."""
        info = _read_sidecar(final.with_name(final.name + ".json"))
        if (info is None or info.get("fingerprint") != self.fp or not final.is_file()
                or final.stat().st_size != info.get("num_bytes")):
            return False
        self.bad.extend(BadImage(**b) for b in info["bad"])
        self.info[split].append((info["records"], info["num_bytes"], info["bytes_in"],
                                 info["bytes_out"]))
        self.done += len(chunk)
        self.resumed += 1
        self._tick()
        return True

    def _write(self, final: Path, split: str, chunk: list, pool: cf.Executor,
               rest: list) -> None:
        """Write one shard to a temporary name, rename it, then write its sidecar
        (``rest``: this and the later shards of the plan, sized for the error)."""
        from array_record.python.array_record_module import ArrayRecordWriter

        tmp = final.with_name(final.name + ".tmp")
        records = bytes_in = bytes_out = 0
        bad: list[BadImage] = []
        writer = None
        opts = self.options
        try:
            writer = ArrayRecordWriter(str(tmp), "group_size:1,uncompressed")
            results = pool.map(lambda it: _prepare(it[0], opts.resize_shorter, opts.quality),
                               chunk)
            for (path, label), (data, reason, nbytes) in zip(chunk, results):
                self.done += 1
                if data is None:
                    bad.append(BadImage(path=path, reason=reason or "unknown"))
                    self.bad.append(bad[-1])
                else:
                    writer.write(self.serialize({
                        "image": io.BytesIO(data), "label": label,
                        "file_name": os.path.basename(path)}))
                    records += 1
                    bytes_in += nbytes
                    bytes_out += len(data)
                self._tick()
            writer.close()
            writer = None
        except (OSError, RuntimeError) as exc:  # array_record raises RuntimeError
            _discard(writer, tmp)
            still = sum(_size(p) for _, c in rest for p, _ in c)
            raise _write_error(
                exc, tmp, self.out,
                f"{records} records, {bytes_out:,} bytes of images written to it; about "
                f"{still:,} bytes still to write (input size of this and the later "
                f"shards' images)") from exc
        num_bytes = tmp.stat().st_size
        os.replace(tmp, final)
        sidecar = final.with_name(final.name + ".json")
        with _writing(sidecar, self.out):
            write_text_atomic(sidecar, json.dumps({
                "fingerprint": self.fp, "records": records, "num_bytes": num_bytes,
                "bytes_in": bytes_in, "bytes_out": bytes_out,
                "bad": [b.to_dict() for b in bad]}))
        self.info[split].append((records, num_bytes, bytes_in, bytes_out))


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

