"""The planner: a pure function from a probe report to a plan (no I/O, no JAX).

Every choice comes with its reason and its numbers (:class:`Decision`). The rules:

* **Batch**: the preset's fixed per-device batch, or the largest that fits from the
  batch search; global batch = per-device x devices x hosts.
* **Learning rate**: ``autotune.lr_rules.scale_learning_rate`` (linear rule with
  warmup, Goyal et al. 2017; LARS above 8k; square root for Adam).
* **Step rate**: the train step's measured images/s per host: what the input
  pipeline must deliver.
* **Decode threads**: the fewest threads whose measured decode + augmentation rate
  covers the step rate with a 10% margin; on a CPU backend at most half the cores,
  since the step computes on the same cores.
* **Pack-time resize** (MXNet im2rec / FFCV habit): when the training side is
  <= 64 px (decoding a full photo for a 32 px crop wastes most of the work: DCT
  scaling stops at 1/8), or when full-size decode cannot feed the step rate; the
  shorter side becomes ``ceil8(1.5 x image_size)`` for small images, else
  ``ceil8(image_size x 256 / 224)``; the predicted decode speed-up is the pixel ratio.
* **Worker processes**: when the decode curve's parallel efficiency at the chosen
  thread count is below 50% on a host with >= 4 cores (GIL-bound threads), the same
  count runs as Grain worker processes (assumed 90% efficient).
* **Cache decoded images**: when the decoded data set at its stored resolution
  takes at most 25% of the available RAM of a host.
* **Read mode**: ``random`` when random reads at record size (queue depth = the
  pipeline's threads) deliver >= 1.2 x the step rate, or when the data set fits in the
  page cache (the disk then matters only for the first epoch); else ``sequential``.
* **Shards**: at least ``hosts x threads x 4`` (parallel reading, per-host
  partitions), each at least ``bandwidth x access latency x 19`` bytes so that the
  seek on opening a shard costs under 5% of reading it; near 256 MiB between those
  bounds.
* **Prefetch**: ``threads + 2`` host batches (each thread builds a whole batch, so
  fewer would idle threads), within 5% of RAM; 2 batches on the device (double
  buffering).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autotune.lr_rules import LrDecision, scale_learning_rate
from autotune.presets import Preset
from autotune.probe_report import ProbeReport
from trainers.records import Record

#: Input capacity must exceed the step rate by this factor.
DECODE_MARGIN = 1.10
#: Random reads must exceed the step rate by this factor to be chosen.
RANDOM_READ_MARGIN = 1.20
#: Shard opening overhead budget: size >= bandwidth x latency x 19 keeps it < 5%.
SEEK_FACTOR = 19
TARGET_SHARD_BYTES = 256 << 20
CACHE_RAM_FRACTION = 0.25
#: Below this parallel efficiency at the chosen thread count, decode threads are taken
#: to be GIL-bound and worker processes are used instead.
GIL_EFFICIENCY = 0.5
#: Assumed efficiency of decode worker processes (inter-process copies).
PROCESS_EFFICIENCY = 0.9
#: Decode speed-up credited to a pack-time resize is at most this (fixed per-image
#: costs: header parsing, Python, the crop's resize).
MAX_RESIZE_SPEEDUP = 4.0
PREFETCH_RAM_FRACTION = 0.05


@dataclass(frozen=True)
class Decision(Record):
    """One plan choice: ``name``, its ``value`` as shown, and ``reason`` with numbers."""

    name: str
    value: str
    reason: str


@dataclass(frozen=True)
class PlanRequest(Record):
    """What the user asked for beyond the preset.

    Attributes:
      num_hosts: processes (machines) in the run.
      epochs: overrides the preset's epochs.
      per_device_batch: overrides the batch search / preset.
      decode_threads: overrides the decode thread choice.
      read_mode: overrides the read-mode choice.
      num_shards: overrides the shard count.
      pack_resize: overrides the pack-time resize (0: keep originals).
      cache_decoded: overrides the cache choice.
    """

    num_hosts: int = 1
    epochs: float | None = None
    per_device_batch: int | None = None
    decode_threads: int | None = None
    read_mode: str | None = None
    num_shards: int | None = None
    pack_resize: int | None = None
    cache_decoded: bool | None = None

    RENAMED = {"threads": "decode_threads"}


@dataclass(frozen=True)
class Plan(Record):
    """What ``autotune train --auto`` will run, with the reasons.

    Throughputs are per host unless named ``global``; bytes are bytes.
    """

    preset: str
    data_path: str
    num_classes: int
    image_size: int
    epochs: float
    per_device_batch: int
    local_devices: int
    num_hosts: int
    global_batch: int
    lr: LrDecision
    warmup_epochs: float
    decode_threads: int
    prefetch_batches: int
    device_prefetch: int
    read_mode: str
    shuffle_window: int
    num_shards: int
    shard_bytes: int
    pack_resize: int | None
    cache_decoded: bool
    val_fraction: float
    step_images_per_s: float
    decode_images_per_s: float
    random_read_images_per_s: float | None
    sequential_read_images_per_s: float | None
    predicted_images_per_s: float
    predicted_global_images_per_s: float
    bottleneck: str
    decisions: tuple[Decision, ...]
    step_bytes: int | None = None
    decode_workers: int = 0

    def decision(self, name: str) -> Decision:
        for d in self.decisions:
            if d.name == name:
                return d
        raise KeyError(name)


def _ceil8(x: float) -> int:
    return int(math.ceil(x / 8.0) * 8)


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def pack_resize_side(image_size: int) -> int:
    """Shorter side stored at pack time: ``ceil8(1.5 x S)`` for S <= 64 px, else
    ``ceil8(S x 256 / 224)`` (256 for 224 px: the ImageNet eval resize)."""
    return _ceil8(1.5 * image_size) if image_size <= 64 else _ceil8(image_size * 256 / 224)


def shard_count(dataset_bytes: int, *, num_images: int, hosts: int, threads: int,
                read_mode: str, seq_bytes_per_s: float | None,
                latency_s: float | None) -> tuple[int, str]:
    """Number of shards and the arithmetic (see the module docstring).

    Lower bound ``hosts x threads x 4`` (parallel reading, per-host partitions);
    upper bound (sequential mode) ``dataset / (bandwidth x latency x 19)`` so that
    opening a shard costs under 5% of reading it; ~256 MiB shards between the bounds.
    In random mode every record read is a seek anyway, so there is no upper bound.
    When the bounds conflict in sequential mode the seek bound wins. Never more
    shards than images, never fewer than hosts.

    Returns ``(num_shards, reason)``.
    """
    n_min = hosts * threads * 4
    target = max(1, math.ceil(dataset_bytes / TARGET_SHARD_BYTES))
    parts = [f"at least hosts x readers x 4 = {hosts} x {threads} x 4 = {n_min} for parallel "
             f"reading"]
    n_max = None
    if read_mode == "sequential" and seq_bytes_per_s and latency_s:
        min_bytes = seq_bytes_per_s * latency_s * SEEK_FACTOR
        n_max = max(1, int(dataset_bytes // max(1.0, min_bytes)))
        parts.append(f"at most {_mib(dataset_bytes)} / {_mib(min_bytes)} = {n_max} so each "
                     f"shard >= {seq_bytes_per_s / 1e6:,.0f} MB/s x {latency_s * 1e3:.2f} ms "
                     f"x 19 (opening a shard < 5% of reading it)")
    elif read_mode == "random":
        parts.append("random reads seek per record anyway: no upper bound")
    else:
        parts.append("no disk figures: no upper bound")
    parts.append(f"~256 MiB shards: {_mib(dataset_bytes)} / 256 MiB -> {target}")
    if n_max is None:
        n = max(target, n_min)
    elif n_min <= n_max:
        n = min(max(target, n_min), n_max)
    else:
        n = n_max
        parts.append("the bounds conflict: the seek bound wins on this disk")
    n = max(hosts, min(n, num_images))
    return n, "; ".join(parts) + f" -> {n} shards"


def make_plan(report: ProbeReport, preset: Preset, request: PlanRequest = PlanRequest()) -> Plan:
    """Turn measurements into a plan (pure).

    Raises:
      ValueError: inconsistent request (e.g. a batch not divisible, unknown read mode).
    """
    dec: list[Decision] = []
    acc = report.accelerator
    host = report.host
    stats = report.dataset
    hosts = request.num_hosts
    devices = acc.local_devices
    cpu = acc.backend == "cpu"
    epochs = request.epochs or preset.epochs
    if acc.step_rate is None:
        raise ValueError("the probe report has no train-step rate; rerun `autotune probe`")

    # Batch.
    if request.per_device_batch:
        batch = request.per_device_batch
        dec.append(Decision("per_device_batch", str(batch), "given on the command line"))
    elif report.batch_search is not None:
        batch = report.batch_search.per_device_batch
        dec.append(Decision("per_device_batch", str(batch), report.batch_search.reason))
    else:
        batch = preset.per_device_for(devices * hosts) or acc.step_rate.per_device_batch
        mem = next((m for m in acc.step_memory if m.per_device_batch == batch), None)
        fit = (f"; the compiled step needs {_mib(mem.total)} of {_mib(acc.memory_limit_bytes)} "
               f"({acc.memory_source})" if mem else "")
        dec.append(Decision("per_device_batch", str(batch), f"fixed by preset {preset.name}{fit}"))
        if mem and mem.total > acc.memory_limit_bytes:
            raise ValueError(f"per-device batch {batch} needs {mem.total:,} bytes, more than "
                             f"the {acc.memory_limit_bytes:,} available; use a smaller batch")
    global_batch = batch * devices * hosts
    # Bytes the compiled step needs at this batch (compared with the measured peak).
    step_bytes = None
    if report.batch_search is not None and report.batch_search.per_device_batch == batch:
        step_bytes = report.batch_search.predicted_bytes
    else:
        step_bytes = next((m.total for m in acc.step_memory if m.per_device_batch == batch), None)
    dec.append(Decision("global_batch", str(global_batch),
                        f"{batch} per device x {devices} devices x {hosts} hosts"))
    lr = scale_learning_rate(preset.optimizer, global_batch, base_lr=preset.base_lr,
                             base_batch=preset.base_batch)
    # The rule's warmup (5 epochs for the 90-epoch recipe) is capped by the preset's
    # own, so short schedules do not spend most of their epochs warming up.
    warmup = min(lr.warmup_epochs, preset.warmup_epochs)
    dec.append(Decision("learning_rate", f"{lr.learning_rate:.4g}",
                        f"{lr.rule} rule: {lr.formula}, {warmup:g} warmup epochs "
                        f"({lr.source})" + (f"; {lr.note}" if lr.note else "")))

    # Step rate (per host).
    rate = acc.step_rate
    # Images/s per host; measured at the planned batch (the probe measures the batch it
    # found), and per-image cost changes little with the batch beyond that.
    step_ips = rate.images_per_s
    need = step_ips * DECODE_MARGIN

    # Pack-time resize.
    mean_px = report.decode.mean_pixels
    small = preset.image_size <= 64
    full_best = report.decode.best.images_per_s
    resize = None
    speedup = 1.0
    if request.pack_resize is not None:
        resize = request.pack_resize or None
        why = "given on the command line"
    else:
        side = pack_resize_side(preset.image_size)
        stored_px = min(mean_px, side * side * 4 / 3)
        if small:
            resize = side
            why = (f"training at {preset.image_size} px: decoding {mean_px:,.0f}-pixel photos "
                   f"wastes most of the work (DCT scaling stops at 1/8)")
        elif full_best < need and stored_px < mean_px:
            resize = side
            why = (f"full-size decode peaks at {_fmt(full_best)} img/s < {_fmt(need)} img/s "
                   f"needed (step rate {_fmt(step_ips)} x {DECODE_MARGIN})")
        else:
            why = (f"full-size decode ({_fmt(full_best)} img/s at best) covers the step rate "
                   f"{_fmt(step_ips)} img/s x {DECODE_MARGIN}: keep the original bytes")
    if resize:
        stored_px = min(mean_px, resize * resize * 4 / 3)
        ratio = max(1.0, mean_px / stored_px) if mean_px else 1.0
        speedup = min(ratio, MAX_RESIZE_SPEEDUP)
        why += (f"; shorter side {resize} px: ~{stored_px:,.0f} px/image instead of "
                f"{mean_px:,.0f} (pixel ratio {ratio:.1f}x), predicted decode speed-up "
                f"{speedup:.1f}x (capped at {MAX_RESIZE_SPEEDUP:g}x: per-image costs that do "
                f"not shrink with the pixels)")
    else:
        stored_px = mean_px
    dec.append(Decision("pack_resize", f"{resize} px" if resize else "none", why))

    # Record size as stored.
    record_bytes = stats.mean_bytes * (stored_px / mean_px if mean_px else 1.0)
    dataset_bytes = int(record_bytes * stats.num_images)

    # Cache of decoded images.
    decoded_bytes = stats.num_images / hosts * stored_px * 3
    ram = host.ram_available_bytes
    if request.cache_decoded is not None:
        cache = request.cache_decoded
        dec.append(Decision("cache_decoded", str(cache), "given on the command line"))
    else:
        cache = decoded_bytes <= CACHE_RAM_FRACTION * ram
        dec.append(Decision("cache_decoded", "yes" if cache else "no",
                            f"decoded data set {_mib(decoded_bytes)} per host "
                            f"{'<=' if cache else '>'} {CACHE_RAM_FRACTION:.0%} of "
                            f"{_mib(ram)} available RAM"
                            + ("; later epochs only crop and flip" if cache else "")))

    # Decode threads.
    points = report.decode.points
    cap = max(1, report.decode.usable_cores // 2) if cpu else max(p.threads for p in points)
    if request.decode_threads:
        threads = request.decode_threads
        dec.append(Decision("decode_threads", str(threads), "given on the command line"))
    else:
        candidates = [p for p in points if p.threads <= cap]
        ok = [p for p in candidates if p.images_per_s * speedup >= need]
        if ok:
            p = ok[0]
            threads = p.threads
            dec.append(Decision("decode_threads", str(threads),
                                f"{threads} threads: {_fmt(p.images_per_s)} img/s measured"
                                + (f" x {speedup:.1f} (resize)" if speedup > 1 else "")
                                + f" = {_fmt(p.images_per_s * speedup)} img/s covers the step "
                                  f"rate {_fmt(step_ips)} img/s with "
                                  f"{p.images_per_s * speedup / step_ips - 1:.0%} margin"
                                + (f" (CPU backend: at most {cap} of "
                                   f"{report.decode.usable_cores} cores for decode)" if cpu else "")))
        else:
            p = max(candidates, key=lambda q: q.images_per_s)
            threads = p.threads
            dec.append(Decision("decode_threads", str(threads),
                                f"no thread count covers the step rate {_fmt(step_ips)} img/s; "
                                f"{threads} threads give the most, {_fmt(p.images_per_s * speedup)}"
                                f" img/s: the run will be decode-bound"))
    decode_rate = report.decode.rate_at(threads) * speedup

    # Worker processes where the GIL limits threads: on a multi-core host whose decode
    # curve scales poorly with threads, run the same count as processes (Grain's
    # mp_prefetch), assuming near-linear scaling across processes.
    workers = 0
    point = next((p for p in points if p.threads == threads), None)
    cores = report.decode.usable_cores
    if (request.decode_threads is None and not cpu and point is not None and threads > 1
            and point.efficiency < GIL_EFFICIENCY and cores >= 4):
        workers = min(threads, cores)
        base = report.decode.points[0].images_per_s * speedup
        decode_rate = max(decode_rate, base * workers * PROCESS_EFFICIENCY)
        dec.append(Decision("decode_workers", str(workers),
                            f"threads scale poorly ({point.efficiency:.0%} parallel efficiency at "
                            f"{threads} threads, below {GIL_EFFICIENCY:.0%}: the GIL): {workers} "
                            f"worker processes x {_fmt(base)} img/s x {PROCESS_EFFICIENCY} = "
                            f"{_fmt(base * workers * PROCESS_EFFICIENCY)} img/s expected"))

    # Read mode.
    disk = report.disk
    rand_ips = seq_ips = None
    if disk is not None:
        rand_ips = disk.random_record_qd.iops  # one read per record
        seq_ips = disk.sequential.mb_per_s * 1e6 / max(record_bytes, 1.0)
    fits_cache = dataset_bytes / hosts <= 0.5 * host.ram_total_bytes
    if request.read_mode:
        if request.read_mode not in ("random", "sequential"):
            raise ValueError(f"read mode {request.read_mode!r}: expected random or sequential")
        mode = request.read_mode
        dec.append(Decision("read_mode", mode, "given on the command line"))
    elif rand_ips is None:
        mode = "random"
        dec.append(Decision("read_mode", mode, "no disk figures: global shuffle by default"))
    else:
        head = (f"random reads deliver {_fmt(rand_ips)} img/s (record {record_bytes / 1e3:,.0f} kB, "
                f"depth {disk.queue_depth}); sequential {_fmt(seq_ips)} img/s; need "
                f"{_fmt(step_ips)} img/s")
        if rand_ips >= RANDOM_READ_MARGIN * step_ips:
            mode = "random"
            tail = f" -> random covers it x {RANDOM_READ_MARGIN}: global shuffle"
        elif fits_cache:
            mode = "random"
            tail = (f" -> random is short, but the data set ({_mib(dataset_bytes)}) fits in "
                    f"the page cache: the disk matters only for the first epoch")
        else:
            mode = "sequential"
            tail = " -> sequential: shards front to back with an in-memory shuffle window"
        dec.append(Decision("read_mode", mode, head + tail))
    window = 4096 if mode == "sequential" else 0

    # Shards.
    if request.num_shards:
        shards = request.num_shards
        dec.append(Decision("num_shards", str(shards), "given on the command line"))
    else:
        shards, why = shard_count(
            dataset_bytes, num_images=stats.num_images, hosts=hosts, threads=threads,
            read_mode=mode, seq_bytes_per_s=disk.sequential.mb_per_s * 1e6 if disk else None,
            latency_s=disk.random_4k.p50_ms / 1e3 if disk else None)
        dec.append(Decision("num_shards", str(shards), why))
    shard_bytes = dataset_bytes // max(1, shards)

    # Prefetch.
    batch_bytes = batch * devices * preset.image_size ** 2 * 3
    pf = threads + 2
    pf_cap = max(2, int(PREFETCH_RAM_FRACTION * ram // max(1, batch_bytes)))
    prefetch = min(pf, pf_cap)
    dec.append(Decision("prefetch", f"{prefetch} host batches, 2 on device",
                        f"{threads} threads + 2 = {pf} batches of {_mib(batch_bytes)} in flight "
                        f"(each thread builds a whole batch)"
                        + (f", capped at {pf_cap} by 5% of RAM ({pf_cap} threads busy at most)"
                           if pf_cap < pf else "")
                        + "; 2 on the device for double buffering"))

    # Prediction.
    limits = {"compute": step_ips, "decode": decode_rate}
    if disk is not None and not fits_cache:
        limits["disk"] = rand_ips if mode == "random" else seq_ips
    bottleneck = min(limits, key=limits.get)
    if cache:
        # After epoch 1 the decode runs from RAM; the first epoch still decodes.
        limits_after = {k: v for k, v in limits.items() if k == "compute"}
        bottleneck = min(limits_after, key=limits_after.get) if decode_rate >= step_ips else bottleneck
    predicted = min(limits[bottleneck], step_ips)
    dec.append(Decision("bottleneck", bottleneck,
                        ", ".join(f"{k} {_fmt(v)} img/s" for k, v in limits.items())
                        + f" per host -> predicted {_fmt(predicted)} img/s per host"))
    return Plan(
        preset=preset.name, data_path=report.data_path, num_classes=stats.num_classes,
        image_size=preset.image_size, epochs=epochs, per_device_batch=batch, warmup_epochs=warmup,
        local_devices=devices, num_hosts=hosts, global_batch=global_batch, lr=lr,
        decode_threads=threads, prefetch_batches=prefetch, device_prefetch=2,
        read_mode=mode, shuffle_window=window, num_shards=shards, shard_bytes=shard_bytes,
        pack_resize=resize, cache_decoded=cache, val_fraction=preset.val_fraction,
        step_images_per_s=step_ips, decode_images_per_s=decode_rate,
        random_read_images_per_s=rand_ips, sequential_read_images_per_s=seq_ips,
        predicted_images_per_s=predicted, predicted_global_images_per_s=predicted * hosts,
        bottleneck=bottleneck, decisions=tuple(dec), step_bytes=step_bytes,
        decode_workers=workers)
