"""The training and evaluation input pipelines over packed ArrayRecord shards.

Built on Grain: a :class:`grain.MapDataset` whose element ``k`` is training batch
``k`` of the whole run, turned into an iterator with ``to_iter_dataset(ReadOptions(
num_threads, prefetch_buffer_size))`` so that ``num_threads`` threads each build
whole batches ahead of the step. Everything is a function of ``(seed, k)``: the same
seed gives the same batches whatever the thread count, and resuming at batch ``k``
continues exactly where an uninterrupted run would be (the iterator state saved in
checkpoints is Grain's, which records the next batch index).

Read modes (chosen by the planner from the disk probe):

* ``random``: a global permutation of this host's records every epoch; one read per
  record. Right when random reads at record size are fast enough.
* ``sequential``: every epoch the host's shards are visited in a shuffled order and
  each shard front to back; a window of ``shuffle_window`` consecutive records is
  shuffled in memory (a shuffle buffer that is a pure function of the index, so it
  checkpoints). Each batch's records are read in file order. Right for hard disks and
  network volumes.

Per-host partitioning: the shards are split into ``partitions`` groups (partition
``q`` holds shards ``q, q+P, q+2P, ...``; by default one partition per host) and host
``i`` of ``n`` reads only partitions ``i, i+n, ...``. Each partition has its own
order and supplies its share of every batch, so a run's batches depend on the
partition count, not on how many hosts serve them: 2 hosts x 4 devices and 1 host x 8
devices with ``partitions=2`` see the same global batches. Every partition runs the
same number of steps per epoch (the smallest one's).

Bad records (a damaged shard, a record that does not decode) are named with shard and
record index; ``on_bad_record='skip'`` replaces them with the next good record of the
same batch order and counts them, ``'fail'`` raises :class:`BadRecordError`. Records
are read directly (:mod:`trainers.shard_reader`: one ``preadv`` each, the chunk and
block headers checked, not the data hash); a record that then fails to parse or decode
is read again through ArrayRecord, whose Riegeli chunk hashes name flipped bytes
("chunk data hash mismatch"). Flipped bytes that still parse and decode go unnoticed.
A truncated, missing or replaced shard (it cannot be opened, or holds another record
count than ``pack.json``) makes each of its records bad, each named when read.
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import os
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import grain
import numpy as np
# Imported here, not lazily in the reader threads: two Grain threads importing it at
# once can deadlock inside tensorflow_datasets' lazy imports (seen on Python 3.11).
from tensorflow_datasets.proto import tf_example_pb2

from trainers import preprocess
from trainers.example_wire import WireError, image_and_label
from trainers.preprocess import BadImageError
from trainers.options import READ_BUFFER_GROWTH, AugmentConfig
from trainers.shard_reader import ShardReader


class BadRecordError(RuntimeError):
    """A record that cannot be read or decoded; names the shard file and record."""


@dataclass(frozen=True)
class PipelineConfig:
    """Input pipeline options.

    Attributes:
      host_batch: images per batch on this host (local devices x per-device batch).
      augment: crop/flip settings and the output ``image_size`` (pixels).
      read_mode: ``random`` or ``sequential``.
      shuffle_window: records shuffled together in sequential mode.
      decode_threads: Grain threads building batches.
      prefetch_batches: batches built ahead (Grain's prefetch buffer), host memory.
      cache_decoded: keep decoded images (at their stored resolution) in RAM after
        their first decode, so later epochs only crop and flip.
      seed: seed of the order and the augmentation.
      process_index: this host's index; ``process_count`` hosts in all.
      on_bad_record: ``skip`` (count and replace) or ``fail`` (raise).
      partitions: shard groups (default: one per host); a multiple of the host count.
      decode_workers: worker processes (Grain's ``mp_prefetch``) for when the GIL limits
        threads; each runs ``decode_threads`` threads. 0: threads in this process only.
      epoch_sizes: the training side (pixels) of each epoch, for progressive resizing
        (``TrainConfig.image_size_at``); None: ``augment.image_size`` throughout. The
        batches stay a pure function of their index, so a resume is exact.
    """

    host_batch: int
    augment: AugmentConfig = AugmentConfig()
    read_mode: str = "random"
    shuffle_window: int = 4096
    decode_threads: int = 2
    prefetch_batches: int = 4
    cache_decoded: bool = False
    seed: int = 0
    process_index: int = 0
    process_count: int = 1
    on_bad_record: str = "skip"
    partitions: int | None = None
    decode_workers: int = 0
    epoch_sizes: tuple[int, ...] | None = None

    def augment_for_epoch(self, epoch: int) -> AugmentConfig:
        """The augmentation of ``epoch``: ``augment`` at ``epoch_sizes[epoch]`` pixels
        (the last size past the end)."""
        if not self.epoch_sizes:
            return self.augment
        size = self.epoch_sizes[min(epoch, len(self.epoch_sizes) - 1)]
        if size == self.augment.image_size:
            return self.augment
        return dataclasses.replace(self.augment, image_size=size)

    @property
    def num_partitions(self) -> int:
        return self.partitions or self.process_count

    @property
    def my_partitions(self) -> list[int]:
        """The partitions this host serves: ``process_index::process_count``."""
        return list(range(self.process_index, self.num_partitions, self.process_count))

    def __post_init__(self):
        if self.host_batch < 1:
            raise ValueError(f"host_batch ({self.host_batch}) must be >= 1")
        if self.read_mode not in ("random", "sequential"):
            raise ValueError(f"read_mode {self.read_mode!r}: expected 'random' or 'sequential'")
        if self.decode_threads < 1 or self.prefetch_batches < 1:
            raise ValueError(f"decode_threads ({self.decode_threads}) and prefetch_batches ({self.prefetch_batches}) must be >= 1")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index ({self.process_index}) must be in "
                             f"[0, process_count={self.process_count})")
        if self.on_bad_record not in ("skip", "fail"):
            raise ValueError(f"on_bad_record {self.on_bad_record!r}: expected 'skip' or 'fail'")
        p = self.num_partitions
        if p % self.process_count:
            raise ValueError(f"partitions ({p}) must be a multiple of the host count "
                             f"({self.process_count})")
        if self.host_batch % (p // self.process_count):
            raise ValueError(f"host batch ({self.host_batch}) must be divisible by the "
                             f"partitions per host ({p // self.process_count})")


def host_shards(num_shards: int, process_index: int, process_count: int) -> list[int]:
    """Shard indices read by one host: ``process_index::process_count``.

    Raises:
      ValueError: fewer shards than hosts (a host would read nothing).
    """
    if num_shards < process_count:
        raise ValueError(f"{num_shards} shards cannot feed {process_count} hosts; pack with "
                         f"at least {process_count} shards")
    return list(range(process_index, num_shards, process_count))


def steps_per_epoch(shard_lengths: Sequence[int], host_batch: int, process_count: int = 1,
                    partitions: int | None = None) -> int:
    """Steps per epoch that every partition (and so every host) can run: min over
    partitions of ``partition_records // partition_batch``, where a partition's share
    of a batch is ``host_batch x process_count / partitions``.

    Raises:
      ValueError: a partition has fewer records than its share of one batch.
    """
    parts = partitions or process_count
    share = host_batch * process_count // parts
    per_part = [sum(shard_lengths[i] for i in host_shards(len(shard_lengths), q, parts))
                for q in range(parts)]
    steps = min(per_part) // share
    if steps < 1:
        raise ValueError(f"a host has {min(per_part)} records, fewer than one batch of "
                         f"{share}; use a smaller batch or more data")
    return steps


def check_shard(path: str, expected_records: int) -> str | None:
    """Why the ArrayRecord shard ``path`` cannot serve ``expected_records`` records,
    or None when it can. Opens it (reads its footer and index), nothing more.

    Returns a reason such as ``"is damaged or truncated (65,600 bytes on disk):
    Invalid postscript"``, ``"is missing or unreadable: No such file or directory"``
    or ``"holds 7 records, pack.json lists 8"``.
    """
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        size = os.stat(path).st_size
    except OSError as exc:
        return f"is missing or unreadable: {exc.strerror or exc}"
    try:
        reader = ArrayRecordReader(str(path))
        try:
            got = reader.num_records()
        finally:
            reader.close()
    except Exception as exc:  # noqa: BLE001 - array_record raises RuntimeError / others
        text = " ".join(str(exc).split())  # absl statuses span several lines
        return f"is damaged or truncated ({size:,} bytes on disk): {text}"
    if got != expected_records:
        return f"holds {got} records, pack.json lists {expected_records}"
    return None


#: Descriptors kept free for everything but the shards (checkpoints, logs, sockets).
_SPARE_FILES = 256


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft limit of open files (``RLIMIT_NOFILE``) to ``wanted``,
    at most to the hard limit, when it is lower; returns the soft limit in force.

    Every shard keeps one descriptor open while it is read (ImageNet: 1,024 shards
    per host), and many systems start processes with a soft limit of 1,024 under a
    much higher hard limit; raising the soft limit needs no privilege. Where the
    hard limit is lower, a shard that cannot be opened is read through the library
    (which needs a descriptor too: the run may then fail with "Too many open files",
    naming the shard)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if new > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
                soft = new
            except (ValueError, OSError):
                pass
    return soft


_FROZEN_IN: list[int] = []  # the process ids where _freeze_gc_once has run
_FREEZE_LOCK = threading.Lock()


def _freeze_gc_once() -> None:
    """Once per process, on its first batch: move every object alive now (the imported
    libraries, the model, the run's setup: ~150k objects in a training process) to
    the collector's permanent generation (``gc.freeze()``, Python >= 3.7).

    Why: a batch allocates and drops thousands of small objects (views, tuples,
    lists), and the survivors of the young collections trigger a full collection
    every few batches, which walks every object in the process: 66-99 ms each on the
    development VM, about 2% of a pipeline thread's CPU (``perf``: ``gc_collect_main``,
    ``visit_decref``). Frozen objects are still freed by reference counting; only
    reference cycles among them are no longer collected.
    """
    pid = os.getpid()
    if pid in _FROZEN_IN:
        return
    with _FREEZE_LOCK:  # the pipeline's threads start their first batches together
        if pid not in _FROZEN_IN:
            gc.freeze()
            _FROZEN_IN.append(pid)


#: Per-thread read buffer of :meth:`_Records.read` with ``reuse`` (attribute ``buf``).
_SCRATCH = threading.local()


class _Records:
    """This host's shards as one indexable record space, with errors that name the
    shard and record.

    Every shard is checked when this is built (:func:`check_shard`); the records of
    one that fails are read as errors (so ``skip`` drops and counts them, ``fail``
    stops at the first). The others are read directly, one
    :class:`trainers.shard_reader.ShardReader` per shard (about 17 against 39 us of
    CPU per 110 KB record from the page cache); what it declines (a shard of other
    writer options, a chunk that is not what its index says) is read through one lazily
    opened ``ArrayRecordDataSource`` over exactly the records ``pack.json`` lists,
    which gives the same bytes or its error.
    """

    def __init__(self, paths: Sequence[str], lengths: Sequence[int]):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        self.paths = [str(p) for p in paths]
        self.lengths = [int(n) for n in lengths]
        if len(self.paths) != len(self.lengths):
            raise ValueError(f"{len(self.paths)} shard paths but {len(self.lengths)} lengths")
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.broken: dict[int, str] = {}
        for s, (path, n) in enumerate(zip(self.paths, self.lengths)):
            reason = check_shard(path, n)
            if reason is not None:
                self.broken[s] = reason
        # "path[start:end]" read instructions: no file is opened here, a broken shard
        # never is (ArrayRecordDataSource opens readers on first use).
        self.source = ArrayRecordDataSource([f"{p}[0:{n}]" for p, n in
                                             zip(self.paths, self.lengths)])
        self.direct = [ShardReader(p, n) for p, n in zip(self.paths, self.lengths)]
        raise_open_files_limit(len(self.paths) + _SPARE_FILES)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _shard(self, index: int) -> int:
        return bisect.bisect_right(self.starts, index) - 1

    def where(self, index: int) -> str:
        s = self._shard(index)
        return f"shard {self.paths[s]} record {index - int(self.starts[s])}"

    def read(self, indices: Sequence[int], *, reuse: bool = False
             ) -> list[bytes | bytearray | memoryview | Exception]:
        """Read records in ascending file order, return them in the given order
        (``bytearray`` when read directly, ``bytes`` through the library: the same
        bytes); a record that cannot be read is returned as the exception saying why.

        With ``reuse`` the records read directly are ``memoryview`` slices of one
        buffer per thread, kept and grown across calls (to 1.25x the largest need;
        about host batch x mean record bytes: 14 MiB of records, 17 MiB kept, for 128
        ImageNet images):
        fresh memory for every record (a ``bytearray``, zeroed, then page-faulted in)
        made the batch read cost 85 instead of 35 us per 110 KB record on the
        development VM. The views are valid until this thread's next ``reuse`` read.
        """
        out: list = [None] * len(indices)
        good = []
        total = len(self)
        for i, index in enumerate(indices):
            index = int(index)
            s = self._shard(index)
            if s in self.broken:
                out[i] = OSError(f"the shard {self.broken[s]}")
            else:
                good.append((index, i, s))
        good.sort()
        # One read per record, in file order. ArrayRecordDataSource.__getitems__
        # (a thread pool over the reader's batched read) cost about 4x as much CPU per
        # record as its one-record read (175 against 44 us for a 110 KB record from
        # the page cache), which costs twice the direct read. Parallel reads still
        # happen: every pipeline thread reads its own batch.
        into = self._scratch([(index, s) for index, _, s in good], total) if reuse else None
        for index, i, s in good:
            if 0 <= index < total:  # else the library's error for the index
                out[i] = self.direct[s].read(index - int(self.starts[s]), into)
                if into is not None and out[i] is not None:
                    into = into[len(out[i]):]
            if out[i] is None:
                out[i] = self._library_read(index)
        return out

    def _scratch(self, records: Sequence[tuple[int, int]], total: int) -> memoryview:
        """This thread's read buffer, at least the bytes of ``records`` (``(index,
        shard)`` pairs) that the direct readers know of, as a writable ``memoryview``."""
        need = 0
        for index, s in records:
            if 0 <= index < total:
                need += self.direct[s].length(index - int(self.starts[s])) or 0
        buf = getattr(_SCRATCH, "buf", None)
        if buf is None or len(buf) < need:
            buf = _SCRATCH.buf = np.empty(int(need * READ_BUFFER_GROWTH), np.uint8)  # not zeroed
        return memoryview(buf)

    def _library_read(self, index: int) -> bytes | Exception:
        try:
            return self.source[index]
        except Exception as exc:  # noqa: BLE001 - reported with its location
            return exc

    def bad(self, index: int, reason: str) -> BadRecordError:
        """The error for record ``index``, read but failing to parse or decode for
        ``reason``: reads it again through ArrayRecord, whose chunk hashes the direct
        read did not check; when that read fails, its error ("cannot read: ...
        chunk data hash mismatch") names the damage instead of ``reason``."""
        again = self._library_read(index)
        if isinstance(again, Exception):
            return BadRecordError(f"{self.where(index)}: cannot read: {again}")
        return BadRecordError(f"{self.where(index)}: {reason}")


def parse_example(record: bytes) -> tuple[bytes | memoryview, int]:
    """A serialized ``tf.train.Example`` from ``trainers.pack`` -> ``(jpeg bytes, label)``.

    The JPEG is a ``memoryview`` of ``record`` (:func:`trainers.example_wire.image_and_label`:
    no copy of the image); a record that walk rejects is parsed with
    tensorflow-datasets' bundled protobuf classes (no TensorFlow needed), which give
    the error.

    Raises:
      ValueError: the record is not such an example.
    """
    try:
        return image_and_label(record)
    except WireError:
        pass
    try:
        ex = tf_example_pb2.Example.FromString(bytes(record))
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError is no ValueError
        raise ValueError(f"not a tf.train.Example: {exc}") from None
    feats = ex.features.feature
    if "image" not in feats or "label" not in feats:
        raise ValueError("record has no image/label features")
    return feats["image"].bytes_list.value[0], int(feats["label"].int64_list.value[0])


class _Order:
    """The record order of one epoch on this host (cached for the last epoch seen)."""

    def __init__(self, cfg: PipelineConfig, lengths: Sequence[int], partition: int = 0):
        self.cfg = cfg
        self.partition = partition
        self.lengths = list(lengths)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self._lock = threading.Lock()
        self._cache: dict[int, np.ndarray] = {}

    def __getstate__(self):  # worker processes get a copy without the lock and cache
        d = dict(self.__dict__)
        d.pop("_lock", None)
        d["_cache"] = {}
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def __call__(self, epoch: int) -> np.ndarray:
        with self._lock:
            got = self._cache.get(epoch)
            if got is None:
                got = self._make(epoch)
                self._cache = {epoch: got, **{k: v for k, v in self._cache.items()
                                              if k == epoch - 1}}
            return got

    def _make(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.cfg.seed, epoch, self.partition, 7])
        n = int(self.starts[-1])
        if self.cfg.read_mode == "random":
            return rng.permutation(n)
        shard_order = rng.permutation(len(self.lengths))
        seq = np.concatenate([np.arange(self.starts[s], self.starts[s + 1]) for s in shard_order])
        w = max(1, self.cfg.shuffle_window)
        for start in range(0, n, w):
            seq[start:start + w] = rng.permutation(seq[start:start + w])
        return seq


#: In ``skip`` mode a batch gives up after this many bad records (or the batch size,
#: if larger): a data set that bad is damaged beyond skipping.
_MAX_BAD_PER_BATCH = 64


class TrainBatches(grain.MapDataset):
    """Element ``k``: training batch ``k`` of the run, a dict with
    ``image: uint8 [host_batch, S, S, 3]`` (``S``: the side of batch ``k``'s epoch,
    ``PipelineConfig.augment_for_epoch``), ``label: int32 [host_batch]`` and
    ``bad: int32 []`` (records skipped while building it).

    Length = ``epochs x steps_per_epoch``.
    """

    def __init__(self, paths: Sequence[str], lengths: Sequence[int], cfg: PipelineConfig,
                 steps_per_epoch: int, epochs: int):
        super().__init__()
        self.cfg = cfg
        p = cfg.num_partitions
        self.parts = []  # (partition, records, order) for this host's partitions
        for q in cfg.my_partitions:
            shards = host_shards(len(paths), q, p)
            lens = [lengths[i] for i in shards]
            self.parts.append((q, _Records([paths[i] for i in shards], lens), _Order(cfg, lens, q)))
        self.share = cfg.host_batch // len(self.parts)
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.steps_per_epoch * self.epochs

    def __str__(self) -> str:
        return f"TrainBatches(steps={len(self)}, mode={self.cfg.read_mode})"

    def _augment(self, q: int, records: _Records, index: int, rec,
                 rng: np.random.Generator, out: np.ndarray,
                 augment: AugmentConfig | None = None) -> int:
        """Decode and augment one record straight into ``out`` (``batch[i]``,
        ``uint8 [S, S, 3]``: the image is written there once, not copied in after);
        returns its label. ``out`` is untouched when the record is bad.

        Raises:
          BadRecordError: the record cannot be read, parsed or decoded.
        """
        if isinstance(rec, Exception):
            raise BadRecordError(f"{records.where(index)}: cannot read: {rec}")
        try:
            data, label = parse_example(rec)
        except Exception as exc:  # noqa: BLE001
            raise records.bad(index, f"not a valid example: {exc}") from None
        augment = augment or self.cfg.augment
        try:
            if self.cfg.cache_decoded:
                img = self._cache.get((q, index))
                if img is None:
                    img = preprocess.decode_image(data)
                    self._cache[(q, index)] = img
                preprocess.augment_decoded(img, rng, augment, out=out)
            else:
                preprocess.train_preprocess(data, rng, augment, out=out)
            return label
        except BadImageError as exc:
            raise records.bad(index, exc.reason) from None

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.slice(k)
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} outside [0, {len(self)})")
        _freeze_gc_once()
        epoch, step = divmod(int(k), self.steps_per_epoch)
        augment = self.cfg.augment_for_epoch(epoch)
        size = augment.image_size
        images = np.empty((self.cfg.host_batch, size, size, 3), np.uint8)
        labels = np.empty((self.cfg.host_batch,), np.int32)
        b = self.share
        bad = 0
        limit = max(self.cfg.host_batch, _MAX_BAD_PER_BATCH)
        for j, (q, records, order_fn) in enumerate(self.parts):
            order = order_fn(epoch)
            idx = order[step * b:(step + 1) * b]
            rng = np.random.default_rng([self.cfg.seed, int(k), q, 11])
            recs = records.read(idx, reuse=True)  # views valid until this thread's next batch
            spare = (step + 1) * b  # replacements come from beyond this batch, in order
            for i, (index, rec) in enumerate(zip(idx, recs), start=j * b):
                while True:
                    try:
                        labels[i] = self._augment(q, records, int(index), rec, rng, images[i],
                                                  augment)
                        break
                    except BadRecordError as exc:
                        if self.cfg.on_bad_record == "fail":
                            raise
                        bad += 1
                        if bad > limit:
                            raise BadRecordError(
                                f"batch {k}: {bad} bad records while building it (more than "
                                f"{limit}); the data set is badly damaged, repack it. "
                                f"Last: {exc}") from None
                        index = int(order[spare % len(order)])
                        spare += 1
                        rec = records.read([index])[0]
        return {"image": images, "label": labels, "bad": np.int32(bad)}


def make_train_iterator(paths: Sequence[str], lengths: Sequence[int], cfg: PipelineConfig,
                        epochs: int, steps_per_epoch: int, *, start_step: int = 0):
    """A Grain iterator over the run's training batches, starting at batch ``start_step``.

    Args:
      paths, lengths: every shard file of the split and their record counts; the
        host reads only its partitions' shards.
      cfg: pipeline options.
      epochs: epochs in the run.
      steps_per_epoch: steps every host runs per epoch (:func:`steps_per_epoch`).
      start_step: first batch to produce (resume).

    Returns:
      An iterator of the dicts of :class:`TrainBatches` with ``get_state()`` /
      ``set_state()`` (Grain's; the state records the next batch index).
    """
    ds = TrainBatches(paths, lengths, cfg, steps_per_epoch, epochs)
    if cfg.decode_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags
            flags.FLAGS.mark_as_parsed()
        # Batches are a pure function of their index: resuming is slicing.
        ids = ds.slice(slice(int(start_step), None)) if start_step else ds
        ids = ids.to_iter_dataset(grain.ReadOptions(num_threads=cfg.decode_threads,
                                                    prefetch_buffer_size=cfg.prefetch_batches))
        return iter(ids.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=cfg.decode_workers, per_worker_buffer_size=max(1, cfg.prefetch_batches // cfg.decode_workers))))
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.decode_threads,
                                                   prefetch_buffer_size=cfg.prefetch_batches)))
    if start_step:
        it.set_state({**it.get_state(), "next_index": int(start_step)})
    return it


def eval_batches(paths: Sequence[str], lengths: Sequence[int], *, batch: int, image_size: int,
                 process_index: int = 0, process_count: int = 1,
                 threads: int = 2, crop_fraction: float = 0.875) -> Iterator[dict]:
    """Evaluation batches: every record of the split exactly once across hosts
    (host ``i`` takes records ``i, i+n, ...``), the centre ``image_size`` square of
    the image resized to shorter side ``image_size / crop_fraction``, padded to full
    batches. Yields ``image uint8 [batch, S, S, 3]``, ``label int32 [batch]``,
    ``mask bool [batch]`` (False on padding) and ``bad int32 []``.
    """
    records = _Records(paths, lengths)
    mine = np.arange(process_index, len(records), process_count)

    def load(chunk):
        _freeze_gc_once()
        images = np.zeros((batch, image_size, image_size, 3), np.uint8)
        labels = np.zeros((batch,), np.int32)
        mask = np.zeros((batch,), bool)
        bad = 0
        recs = records.read(chunk, reuse=True) if len(chunk) else []  # used in this call only
        for i, (index, rec) in enumerate(zip(chunk, recs)):
            try:
                if isinstance(rec, Exception):
                    raise rec
                data, label = parse_example(rec)
                preprocess.eval_preprocess(data, image_size, crop_fraction,
                                           out=images[i])  # in place
                labels[i], mask[i] = label, True
            except Exception:  # noqa: BLE001 - counted, evaluation goes on
                images[i] = 0  # padding stays zero whatever failed
                bad += 1
        return {"image": images, "label": labels, "mask": mask, "bad": np.int32(bad)}

    # Every host runs the same number of eval steps (collectives must match): pad with
    # empty chunks up to the largest host's count.
    per_host = -(-len(records) // process_count)
    n_steps = max(1, -(-per_host // batch))
    chunks = [mine[i * batch:(i + 1) * batch] for i in range(n_steps)]
    ds = grain.MapDataset.source(chunks).map(load)
    yield from ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4))
