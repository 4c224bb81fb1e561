"""The planner: pure functions from a probe report to a plan (no I/O, no JAX).

One small function per decision, each returning its value and a :class:`Decision`
(name, value shown, reason with the numbers); :func:`make_plan` composes them. The
planner also owns what follows from a plan: the trainer's settings
(:func:`train_config`, :func:`loop_options`, :func:`pack_options`,
:func:`pack_cache_key`, pure renames with no policy in them) and the out-of-memory
step-down (:func:`step_down`). The rules:

* **Batch** (:func:`choose_per_device_batch`): by throughput, by the data, and only
  then by memory: the smallest of three candidates (:func:`batch_candidates`), each
  shown with its numbers: the largest that fits (the batch search), the throughput
  knee (:func:`choose_throughput_knee`: the smallest measured batch within 3% of the
  best images/s) and the critical batch of this data and model
  (:func:`choose_critical_batch`: the global batch at most 1 x the gradient noise
  scale ``B_simple`` measured on the user's data, McCandlish et al. 2018). The
  command line can force ``--batch max`` or ``--batch N`` (the reason then says what
  the plan would have chosen, and :func:`batch_warnings` warns past the critical
  batch); a preset with a fixed batch keeps it unless ``--batch auto``. Every batch
  but ``--batch N`` (refused instead) is capped so an epoch of the training images has
  at least 2 steps (:func:`choose_data_batch_cap`). Global batch
  = per-device x local devices x hosts, with the local device count given in the
  :class:`PlanRequest`. The step rate at the chosen batch comes from the probe's
  rate curve (:func:`step_rate_at`).
* **Learning rate** (:func:`choose_learning_rate`):
  ``autotune.lr_rules.scale_learning_rate`` (linear rule with warmup, Goyal et al.
  2017; LARS above 8k; square root for Adam); warmup capped by the preset's.
* **Batch-norm groups** (:func:`choose_bn_group`): the preset's, else per-device
  statistics when a device's batch holds at least :data:`BN_MIN_BATCH` (32, Goyal et
  al.'s per-worker BN batch) images, else the fewest devices of one host that
  together hold 32; running statistics averaged once per step either way.
* **Step rate**: the train step's measured images/s per host: what the input
  pipeline must deliver, with a 10% margin.
* **Pack-time resize** (:func:`choose_pack_resize`, MXNet im2rec / FFCV habit): when
  the training side is <= 64 px (decoding a full photo for a 32 px crop wastes most of
  the work: DCT scaling stops at 1/8), or when full-size decode cannot feed the step
  rate and the resize decodes faster; the shorter side becomes ``ceil8(1.5 x S)`` for
  small images, else ``ceil8(S x 256 / 224)``. The decode speed-up
  (:func:`resize_speedup`) is the one the decode probe measured on the user's images
  stored that way (its ``variants``), else modelled as the pixel ratio capped at 4x.
* **Decode threads** (:func:`choose_decode_threads`): the fewest threads whose
  measured decode + augmentation rate (x the resize speed-up) covers the step rate
  with a 10% margin; on a CPU backend at most half the cores, since the step computes
  on the same cores.
* **Worker processes** (:func:`choose_decode_workers`): when the decode curve's
  parallel efficiency at the chosen thread count is below 50% on a host with >= 4
  cores (GIL-bound threads), the same count runs as Grain worker processes (assumed
  90% efficient); not when threads or the decoded cache were asked for.
* **Cache decoded images** (:func:`choose_cache_decoded`): when the decoded data set
  at its stored resolution takes at most 25% of the available RAM of a host, and no
  worker processes decode (the cache lives in the training process).
* **Page cache** (:func:`fits_page_cache`, the one rule): a host's share of the
  stored data set is at most half its RAM.
* **Read mode** (:func:`choose_read_mode`): ``random`` when random reads at record
  size (queue depth = the pipeline's threads) deliver >= 1.2 x the step rate, or when
  the data set fits in the page cache (the disk then matters only for the first
  epoch); else ``sequential``, with a shuffle window of 4,096 records
  (:func:`choose_shuffle_window`).
* **Shards** (:func:`shard_count`): at least ``hosts x threads x 4`` (parallel
  reading, per-host partitions), each at least ``bandwidth x access latency x 19``
  bytes so that the seek on opening a shard costs under 5% of reading it; near
  256 MiB between those bounds.
* **Prefetch** (:func:`choose_prefetch`): ``threads + 2`` host batches (each thread
  builds a whole batch, so fewer would idle threads), within 5% of RAM less each
  thread's read buffer (host batch x mean stored record x 1.25); 2 batches on the
  device (double buffering).
* **Pack threads** (:func:`choose_pack_threads`): the probe's usable cores.
* **Pack worker processes** (:func:`choose_pack_workers`): one per usable core on two
  or more cores (the pack's file reads, serialisation and writes hold the GIL between
  decodes; each worker writes whole shards), threads on one core.
* **Bottleneck** (:func:`predict_throughput`): the slowest of compute, decode and
  (when the data set does not fit in the page cache) disk.
* **Out of memory** (:func:`step_down`): the next smaller per-device batch and the
  learning rate rescaled by the plan's rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

from autotune.batch_search import NoBatchFits, next_smaller_batch
from autotune.lr_rules import LrDecision, rescale_after_batch_change, scale_learning_rate
from autotune.presets import Preset
from autotune.probe_report import ProbeReport
from trainers.options import (READ_BUFFER_GROWTH, LoopOptions, PackOptions, TrainConfig,
                              pack_resize_side, read_buffer_bytes)
from trainers.records import Record
from autotune.fmt import fmt_bytes

#: Input capacity must exceed the step rate by this factor.
DECODE_MARGIN = 1.10
#: Random reads must exceed the step rate by this factor to be chosen.
RANDOM_READ_MARGIN = 1.20
#: Shard opening overhead budget: size >= bandwidth x latency x 19 keeps it < 5%.
SEEK_FACTOR = 19
TARGET_SHARD_BYTES = 256 << 20
#: The decoded cache may take this fraction of a host's available RAM.
CACHE_RAM_FRACTION = 0.25
#: A host's share of the stored data set stays in the page cache when it is at most
#: this fraction of the host's RAM (the rest for the process itself).
PAGE_CACHE_RAM_FRACTION = 0.5
#: Below this parallel efficiency at the chosen thread count, decode threads are taken
#: to be GIL-bound and worker processes are used instead.
GIL_EFFICIENCY = 0.5
#: Assumed efficiency of decode worker processes (inter-process copies).
PROCESS_EFFICIENCY = 0.9
#: Modelled decode speed-up of a pack-time resize is at most this (fixed per-image
#: costs: header parsing, Python, the crop's resize); a measured one is not capped.
MAX_RESIZE_SPEEDUP = 4.0
PREFETCH_RAM_FRACTION = 0.05
#: Batches on the device ahead of the step (double buffering).
DEVICE_PREFETCH = 2
#: Records shuffled together when shards are read front to back.
SHUFFLE_WINDOW = 4096
#: Batch-norm statistics over fewer images than this are pooled across devices:
#: Goyal et al. 2017 (arXiv:1706.02677, section 5.1) compute them per worker over
#: n = 32 images; NVIDIA DeepLearningExamples ResNet-50 v1.5 per GPU (>= 112 images).
BN_MIN_BATCH = 32
GIVEN = "given on the command line"
#: The throughput knee: the smallest per-device batch within this fraction of the best
#: measured images/s.
KNEE_WITHIN = 0.03
#: The critical global batch is this multiple of the measured noise scale B_simple.
CRITICAL_BATCH_MULTIPLE = 1.0
CRITICAL_BATCH_SOURCE = (
    "McCandlish et al. 2018: steps and examples trade off as (S/S_min - 1)(E/E_min - 1) = 1 "
    "(eq. 2.11), B_crit = E_min/S_min ~ B_noise (sec. 2.3) with B_simple its measured proxy "
    "(eq. 2.9), so at B = B_crit a run needs 2x the fewest steps and 2x the fewest "
    "examples; far below it is step-inefficient, far above compute-inefficient: at a fixed "
    "epoch budget, fewer useful steps. 1x, not more: the noise scale grows as the loss "
    "falls, and the probe measures it early, so 1x of the early value is the safe side")
#: Steps of the noise-scale probe on an accelerator and on a CPU.
NOISE_PROBE_STEPS = 200
NOISE_PROBE_STEPS_CPU = 60


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
      num_hosts: processes (machines) in the run (>= 1).
      epochs: overrides the preset's epochs.
      per_device_batch: overrides the batch search / preset (``--batch N``).
      batch_policy: ``max`` (``--batch max``: the largest that fits), ``auto``
        (``--batch auto``: the smallest of the three candidates even where the
        preset fixes a batch) or None (the preset's fixed batch, else ``auto``).
      decode_threads: overrides the decode thread choice.
      read_mode: overrides the read-mode choice (``random`` or ``sequential``).
      num_shards: overrides the shard count.
      pack_resize: overrides the pack-time resize (0: keep originals).
      cache_decoded: overrides the cache choice.
      local_devices: accelerators on each host of this run (>= 1), e.g.
        ``jax.local_device_count()``; the plan's ``local_devices`` and global batch
        come from it. ``None``: the probe's device count (the probe ran here).

    Raises:
      ValueError: a value out of range (the message names it).
    """

    num_hosts: int = 1
    epochs: float | None = None
    per_device_batch: int | None = None
    decode_threads: int | None = None
    read_mode: str | None = None
    num_shards: int | None = None
    pack_resize: int | None = None
    cache_decoded: bool | None = None
    local_devices: int | None = None
    batch_policy: str | None = None

    RENAMED = {"threads": "decode_threads"}

    def __post_init__(self):
        for name in ("num_hosts", "local_devices", "per_device_batch", "decode_threads",
                     "num_shards"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} ({value}) must be >= 1")
        if self.batch_policy not in (None, "auto", "max"):
            raise ValueError(f"batch policy {self.batch_policy!r}: expected auto or max")
        if self.batch_policy and self.per_device_batch:
            raise ValueError(f"batch policy {self.batch_policy!r} and per-device batch "
                             f"{self.per_device_batch} both given: one or the other")
        if self.read_mode not in (None, "random", "sequential"):
            raise ValueError(f"read mode {self.read_mode!r}: expected random or sequential")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs ({self.epochs}) must be > 0")


@dataclass(frozen=True)
class Plan(Record):
    """What ``autotune train --auto`` will run, with the reasons.

    Throughputs are per host unless named ``global``; bytes are bytes. The trainer
    settings follow from the fields by name (:func:`loop_options`,
    :func:`pack_options`): ``shuffle_window`` is the window used when reading
    sequentially (filled in either mode), ``cache_decoded`` is already off when
    ``decode_workers`` decode, ``pack_threads`` are the threads of the pack step,
    ``pack_workers`` its worker processes (0: threads only),
    ``archive_shard_records`` the records per shard of a streamed archive,
    ``resize_speedup`` is the decode speed-up credited to ``pack_resize`` (1.0
    without it). ``noise_scale`` is the measured gradient noise scale ``B_simple``
    and ``critical_batch`` the global batch the data can use (None: not measured);
    ``warnings`` are shown with the plan (a global batch past the critical batch).
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
    pack_threads: int = 2
    resize_speedup: float = 1.0
    pack_workers: int = 0
    archive_shard_records: int = PackOptions().archive_shard_records
    bn_group_devices: int = 1
    noise_scale: float | None = None
    critical_batch: int | None = None
    warnings: tuple[str, ...] = ()

    def decision(self, name: str) -> Decision:
        for d in self.decisions:
            if d.name == name:
                return d
        raise KeyError(name)


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def _given(name: str, value: Any) -> Decision:
    return Decision(name, str(value), GIVEN)


def fits_page_cache(dataset_bytes: float, ram_bytes: float, num_hosts: int = 1) -> bool:
    """The one page-cache rule: each host reads its ``1 / num_hosts`` share of the
    stored data set, which stays in the page cache after the first epoch when it is at
    most half the host's RAM (:data:`PAGE_CACHE_RAM_FRACTION`; the other half for the
    training process: decoded cache, prefetch, the model's host copies)."""
    return dataset_bytes / max(1, num_hosts) <= PAGE_CACHE_RAM_FRACTION * ram_bytes


# ---------------------------------------------------------------- batch and rate

def _step_memory(report: ProbeReport, batch: int):
    return next((m for m in report.accelerator.step_memory if m.per_device_batch == batch),
                None)


def step_bytes_at(report: ProbeReport, batch: int) -> int | None:
    """Bytes the compiled step needs at per-device ``batch``: the batch search's
    prediction when it chose that batch, else the probe's compiled memory there."""
    search = report.batch_search
    if search is not None and search.per_device_batch == batch:
        return search.predicted_bytes
    mem = _step_memory(report, batch)
    return mem.total if mem else None


class BatchCandidates(NamedTuple):
    """The three per-device batches the plan takes the smallest of (None: not known),
    each with its :class:`Decision`; ``critical_global`` is the global batch the data
    can use (:func:`critical_batch`), ``noise_scale`` the measured ``B_simple``;
    ``data`` the largest per-device batch the training images allow
    (:func:`choose_data_batch_cap`), a cap on every batch, None when unknown."""

    fit: int | None
    knee: int | None
    critical: int | None
    critical_global: int | None
    noise_scale: float | None
    decisions: tuple[Decision, ...]
    data: int | None = None


#: An epoch holds at least this many steps at the largest batch the data allows (one
#: would leave no margin for the hold-out's per-class rounding and uneven partitions).
DATA_MIN_STEPS = 2


def choose_data_batch_cap(train_images: int | None, *, all_devices: int
                          ) -> tuple[int | None, Decision]:
    """The largest per-device batch that still gives an epoch of :data:`DATA_MIN_STEPS`
    steps on about ``train_images`` training images over ``all_devices`` devices:
    ``floor(train_images / (2 x all_devices))``, rounded down to a multiple of 8 from
    8 up, at least 1 (a batch larger than the data stops the run at its first epoch).
    ``(None, decision)`` when the image count is unknown."""
    if not train_images:
        return None, Decision("batch_data", "-", "training images unknown")
    per = max(1, train_images // (DATA_MIN_STEPS * all_devices))
    per = per // 8 * 8 if per >= 8 else per
    return per, Decision("batch_data", str(per),
                         f"about {train_images:,} training images / ({DATA_MIN_STEPS} steps "
                         f"x {all_devices} devices) -> at most {per} per device"
                         + (" (rounded down to a multiple of 8)" if per >= 8 else ""))


def choose_throughput_knee(curve: Sequence[Any], *, max_batch: int | None = None,
                           within: float = KNEE_WITHIN) -> tuple[int | None, Decision]:
    """The throughput knee: the smallest measured per-device batch whose images/s is
    within ``within`` (3%) of the best of the rate curve (``StepRate`` points of the
    accelerator probe), among points at most ``max_batch`` (the largest that fits).
    Beyond the knee a larger batch buys under 3% more images/s and only makes the
    global batch (and its learning rate) larger. ``(None, decision)`` without a curve.
    """
    pts = sorted((p for p in curve if max_batch is None or p.per_device_batch <= max_batch),
                 key=lambda p: p.per_device_batch)
    if not pts:
        return None, Decision("batch_knee", "-", "no images/s curve measured (the preset "
                                                  "fixes the batch, or an older probe)")
    best = max(pts, key=lambda p: p.images_per_s)
    knee = next(p for p in pts if p.images_per_s >= (1 - within) * best.images_per_s)
    curve_text = ", ".join(f"{p.per_device_batch}: {_fmt(p.images_per_s)}" for p in pts)
    return knee.per_device_batch, Decision(
        "batch_knee", str(knee.per_device_batch),
        f"images/s by per-device batch ({curve_text}); best {_fmt(best.images_per_s)} at "
        f"{best.per_device_batch}; the smallest within {within:.0%} of it is "
        f"{knee.per_device_batch} ({_fmt(knee.images_per_s)} img/s, "
        f"{knee.images_per_s / best.images_per_s:.1%} of the best)")


def critical_batch(noise_scale: float) -> int:
    """The largest global batch this data and model use well:
    :data:`CRITICAL_BATCH_MULTIPLE` x ``B_simple``, at least 1 (see
    :data:`CRITICAL_BATCH_SOURCE`)."""
    return max(1, int(math.floor(CRITICAL_BATCH_MULTIPLE * noise_scale)))


def choose_critical_batch(noise, *, all_devices: int) -> tuple[int | None, int | None, Decision]:
    """The per-device batch that keeps the global batch at or below the critical
    batch (:func:`critical_batch` of the noise probe's ``B_simple``, a
    ``probes.records.NoiseScaleReport``): ``floor(critical / all_devices)``, rounded
    down to a multiple of 8 from 8 up, at least 1. Returns ``(per_device or None,
    critical global batch or None, decision)``."""
    if noise is None or noise.b_simple is None:
        why = noise.note if noise is not None else "not measured (one device, a fixed " \
                                                      "preset batch, or an older probe)"
        return None, None, Decision("batch_critical", "-", f"gradient noise scale: {why}")
    crit = critical_batch(noise.b_simple)
    per = max(1, crit // all_devices)
    per = per // 8 * 8 if per >= 8 else per
    return per, crit, Decision(
        "batch_critical", str(per),
        f"gradient noise scale B_simple = tr(Sigma)/|G|^2 = {noise.trace_sigma:.4g} / "
        f"{noise.grad_sq:.4g} = {noise.b_simple:,.0f} images (averaged over "
        f"{noise.averaged_steps} steps at per-device {noise.per_device_batch} x "
        f"{noise.devices} devices); critical global batch {CRITICAL_BATCH_MULTIPLE:g} x "
        f"{noise.b_simple:,.2f} = {crit:,}, rounded down (McCandlish et al. 2018, eqs. 2.9-2.12: at B_crit ~ B_simple a "
        f"run needs 2x the fewest steps and 2x the fewest examples; the noise scale grows "
        f"as the loss falls, so 1x its early value is the safe side); / {all_devices} devices -> {per} "
        f"per device" + (" (rounded down to a multiple of 8)" if per >= 8 else "")
        + ("; even 1 per device exceeds it" if per * all_devices > crit else ""))


def batch_candidates(report: ProbeReport, *, all_devices: int,
                     train_images: int | None = None) -> BatchCandidates:
    """The largest that fits (the batch search), the throughput knee
    (:func:`choose_throughput_knee`) and the critical batch
    (:func:`choose_critical_batch`) for ``all_devices`` devices over all hosts, and the
    cap of the data (:func:`choose_data_batch_cap`, from ``train_images``)."""
    search = report.batch_search
    fit = search.per_device_batch if search is not None else None
    fit_dec = Decision("batch_fit", str(fit) if fit else "-",
                       search.reason if search is not None else "no batch search (the preset "
                                                                  "fixes the batch)")
    knee, knee_dec = choose_throughput_knee(report.accelerator.rate_curve, max_batch=fit)
    crit, crit_global, crit_dec = choose_critical_batch(report.noise_scale,
                                                        all_devices=all_devices)
    noise = report.noise_scale.b_simple if report.noise_scale is not None else None
    data, data_dec = choose_data_batch_cap(train_images, all_devices=all_devices)
    return BatchCandidates(fit=fit, knee=knee, critical=crit, critical_global=crit_global,
                           noise_scale=noise, decisions=(fit_dec, knee_dec, crit_dec, data_dec),
                           data=data)


def recommended_batch(c: BatchCandidates) -> tuple[int | None, str]:
    """The smallest of the known candidates, capped by the data (``c.data``), and a
    sentence naming each: ``(batch or None when no candidate is known, reason)``."""
    known = {name: b for name, b in (("largest that fits", c.fit), ("throughput knee", c.knee),
                                     ("critical batch", c.critical)) if b is not None}
    if not known:
        return None, "no candidate measured"
    if c.data is not None and c.data < min(known.values()):
        known["the data's cap"] = c.data  # named only where it binds
    b = min(known.values())
    limits = [name for name, v in known.items() if v == b]
    return b, (f"smallest of " + ", ".join(f"{name} {v}" for name, v in known.items())
               + f" -> {b} ({' and '.join(limits)})")


def choose_per_device_batch(report: ProbeReport, preset: Preset, *, all_devices: int,
                            requested: int | None = None, policy: str | None = None,
                            train_images: int | None = None) -> tuple[int, Decision]:
    """The per-device batch: the command line's (``requested``; ``policy='max'``: the
    largest that fits), else the smallest of :func:`batch_candidates` when the batch
    is searched (the preset fixes none, or ``policy='auto'``), else the preset's fixed
    one for ``all_devices`` (devices over all hosts), else the step rate's batch. A
    forced batch's reason says what the plan would have chosen and why. Every batch
    but a requested one is capped by the data (:func:`choose_data_batch_cap` of about
    ``train_images``).

    Raises:
      ValueError: the preset's fixed batch needs more memory than the device has;
        ``--batch max`` without a batch search; ``--batch N`` larger than the data
        allows.
    """
    c = batch_candidates(report, all_devices=all_devices, train_images=train_images)
    rec, rec_why = recommended_batch(c)
    would = f"; the plan would have chosen {rec}: {rec_why}" if rec is not None else ""
    if requested:
        if c.data is not None and requested > c.data:
            raise ValueError(f"--batch {requested}: {requested} x {all_devices} devices is more "
                             f"than about {train_images:,} training images allow for "
                             f"{DATA_MIN_STEPS} steps an epoch; use --batch {c.data} or less")
        return requested, Decision("per_device_batch", str(requested),
                                   f"{GIVEN} (--batch {requested}){would}")
    if policy == "max":
        if c.fit is None:
            raise ValueError("--batch max: the probe has no batch search; rerun with --reprobe")
        b, cap = _data_capped(c.fit, c)
        return b, Decision("per_device_batch", str(b),
                           f"the largest that fits, forced (--batch max){cap}{would}")
    fixed = preset.per_device_for(all_devices)
    if rec is not None and (fixed is None or policy == "auto"):
        return rec, Decision("per_device_batch", str(rec), rec_why)
    acc = report.accelerator
    batch, cap = _data_capped(fixed or acc.step_rate.per_device_batch, c)
    mem = _step_memory(report, batch)
    fit = (f"; the compiled step needs {fmt_bytes(mem.total, unit='MiB')} of {fmt_bytes(acc.memory_limit_bytes, unit='MiB')} "
           f"({acc.memory_source})" if mem else "")
    if mem and mem.total > acc.memory_limit_bytes:
        raise ValueError(f"per-device batch {batch} needs {mem.total:,} bytes, more than "
                         f"the {acc.memory_limit_bytes:,} available; use a smaller batch")
    return batch, Decision("per_device_batch", str(batch),
                           f"fixed by preset {preset.name}{cap}{fit}")


def _data_capped(batch: int, c: BatchCandidates) -> tuple[int, str]:
    """``batch`` capped by the data (``c.data``) and the words saying so ('' if not)."""
    if c.data is None or batch <= c.data:
        return batch, ""
    return c.data, f", capped at {c.data} by the data ({batch} would leave an epoch " \
                   f"under {DATA_MIN_STEPS} steps)"


def batch_warnings(global_batch: int, c: BatchCandidates) -> tuple[str, ...]:
    """A warning when ``global_batch`` exceeds the critical batch of the data
    (:func:`critical_batch`): past it, more images per step buy few fewer steps."""
    if c.critical_global is None or global_batch <= c.critical_global:
        return ()
    return (f"global batch {global_batch:,} is {global_batch / c.critical_global:.1f}x the "
            f"critical batch {c.critical_global:,} of this data and model (gradient noise "
            f"scale B_simple {c.noise_scale:,.0f}): past it each step buys little more than "
            f"a smaller batch's, so the same epochs give fewer useful steps and lower "
            f"accuracy (McCandlish et al. 2018); --batch {max(1, c.critical or 1)} or leave "
            f"the batch to the plan",)


def noise_vs_batch(noise_scale: float, global_batch: int) -> tuple[str, str] | None:
    """How a run's current noise scale (``StepReport.noise_scale``) compares with its
    global batch: ``('above', text)`` when the critical batch
    (:func:`critical_batch`) has grown past the batch in use (a larger batch would
    now be used well), ``('below', text)`` when the batch in use exceeds it, ``('ok',
    text)`` otherwise; None when not measured (NaN)."""
    if noise_scale is None or not math.isfinite(noise_scale) or noise_scale <= 0:
        return None
    crit = critical_batch(noise_scale)
    head = f"B_simple {noise_scale:,.0f} -> critical batch {crit:,}"
    if crit > global_batch:
        return "above", (f"{head} > global batch {global_batch:,} in use: the data would now "
                         f"use a larger batch well")
    if global_batch > crit:
        return "below", (f"{head} < global batch {global_batch:,} in use: the batch is past "
                         f"what the data can use now")
    return "ok", f"{head} = global batch {global_batch:,}"


def choose_noise_probe(c: BatchCandidates, *, all_devices: int, train_images: int,
                       backend: str) -> tuple[int, int, Decision]:
    """The per-device batch and steps of the noise-scale probe: the smallest of the
    largest that fits and the knee (the batch the run would use without the data's
    limit), at most ``train_images / (steps x all_devices)`` so the probe sees at most
    one epoch, rounded down to a multiple of 8 from 8 up; :data:`NOISE_PROBE_STEPS`
    steps on an accelerator, :data:`NOISE_PROBE_STEPS_CPU` on a CPU. Returns
    ``(per_device_batch, steps, decision)``."""
    steps = NOISE_PROBE_STEPS_CPU if backend == "cpu" else NOISE_PROBE_STEPS
    base = min(b for b in (c.fit, c.knee, 1 << 30) if b is not None)
    epoch_cap = max(1, train_images // (steps * all_devices))
    per = max(1, min(base, epoch_cap))
    per = per // 8 * 8 if per >= 8 else per
    return per, steps, Decision(
        "noise_probe", f"{steps} steps at {per} x {all_devices}",
        f"{steps} steps ({'CPU' if backend == 'cpu' else 'accelerator'}) at per-device "
        f"min(fits/knee {base if base < 1 << 30 else '-'}, one epoch {train_images:,} / "
        f"({steps} x {all_devices}) = {epoch_cap}) = {per}")


def step_rate_at(report: ProbeReport, batch: int) -> float:
    """Images/s of the train step (this host) at per-device ``batch``: the rate curve's
    point there, else linear interpolation between its neighbours (clamped to the
    curve's ends), else the probe's one step rate."""
    pts = sorted((p.per_device_batch, p.images_per_s) for p in report.accelerator.rate_curve)
    if not pts:
        return report.accelerator.step_rate.images_per_s
    if batch <= pts[0][0]:
        return pts[0][1]
    for (b0, r0), (b1, r1) in zip(pts, pts[1:]):
        if b0 <= batch <= b1:
            return r0 + (r1 - r0) * (batch - b0) / (b1 - b0)
    return pts[-1][1]


def choose_global_batch(per_device_batch: int, local_devices: int,
                        num_hosts: int) -> tuple[int, Decision]:
    """``per_device_batch x local_devices x num_hosts``."""
    g = per_device_batch * local_devices * num_hosts
    return g, Decision("global_batch", str(g), f"{per_device_batch} per device x "
                                               f"{local_devices} devices x {num_hosts} hosts")


def choose_learning_rate(preset: Preset, global_batch: int) -> tuple[LrDecision, float, Decision]:
    """The preset's optimizer scaled to ``global_batch``; the rule's warmup (5 epochs
    for the 90-epoch recipe) capped by the preset's own, so short schedules do not
    spend most of their epochs warming up, except under LARS, whose warmup is MLPerf's
    (5 or 25 epochs) with its own schedule. Returns ``(lr, warmup_epochs, decision)``."""
    lr = scale_learning_rate(preset.optimizer, global_batch, base_lr=preset.base_lr,
                             base_batch=preset.base_batch)
    lars = bool(lr.schedule_name) and preset.optimizer != "lars"
    warmup = lr.warmup_epochs if lars else min(lr.warmup_epochs, preset.warmup_epochs)
    schedule = lr.schedule_name or preset.schedule
    return lr, warmup, Decision(
        "learning_rate", f"{lr.learning_rate:.4g}",
        f"{lr.rule} rule: {lr.formula}, {warmup:g} warmup epochs, then the {schedule} "
        f"schedule ({lr.source})" + (f"; {lr.note}" if lr.note else ""))


def choose_bn_group(preset: Preset, per_device_batch: int,
                    local_devices: int) -> tuple[int, Decision]:
    """Devices whose batch statistics each batch norm pools (``TrainConfig.
    bn_group_devices``: 1 per device, k devices of one host, 0 all): the preset's
    when it fixes one; else 1 when ``per_device_batch >= BN_MIN_BATCH`` (no
    all-reduce per BN layer on the step's critical path, and Goyal et al.'s
    per-worker statistics); else the fewest devices dividing ``local_devices`` that
    hold 32 images together (all local devices when even they hold fewer)."""
    def group_text(k: int) -> str:
        return "per device" if k == 1 else ("all devices" if k == 0 else
                                            f"groups of {k} devices")
    if preset.bn_group_devices is not None:
        k = preset.bn_group_devices
        return k, Decision("bn_group", group_text(k),
                           f"fixed by preset {preset.name} ({preset.source or 'its recipe'})")
    if per_device_batch >= BN_MIN_BATCH:
        return 1, Decision("bn_group", "per device",
                           f"{per_device_batch} images per device >= {BN_MIN_BATCH} (Goyal "
                           f"et al. 2017 sec. 5.1: per-worker statistics over 32): no "
                           f"all-reduce per BN layer; running statistics averaged each step")
    k = next((k for k in range(1, local_devices + 1)
              if local_devices % k == 0 and k * per_device_batch >= BN_MIN_BATCH),
             local_devices)
    return k, Decision("bn_group", group_text(k),
                       f"{per_device_batch} images per device < {BN_MIN_BATCH}: statistics "
                       f"pooled over {k} x {per_device_batch} = {k * per_device_batch} images "
                       f"of one host (Goyal et al. 2017 sec. 5.1: 32 per BN batch)")


# ---------------------------------------------------------------- decode

def stored_pixels(mean_pixels: float, resize: int | None) -> float:
    """Mean pixels per image as stored: a 4:3 image of shorter side ``resize``
    (``resize^2 x 4/3``), never more than the originals."""
    return mean_pixels if not resize else min(mean_pixels, resize * resize * 4 / 3)


def originals_rate(decode) -> float:
    """Best measured images/s on the original bytes: the decode probe's
    ``originals`` variant, else (older reports) the best point of its curve."""
    v = decode.variant(None, False)
    return v.best_images_per_s if v is not None else decode.best.images_per_s


def resize_speedup(resize: int, *, mean_pixels: float, originals_ips: float,
                   resized_ips: float | None = None) -> tuple[float, str]:
    """Decode speed-up of storing the shorter side at ``resize`` px.

    Measured when the decode probe timed the sample stored that way
    (``resized_ips``, its best images/s): ``resized_ips / originals_ips``. Else
    modelled: the pixel ratio (originals / stored, at least 1) capped at
    :data:`MAX_RESIZE_SPEEDUP`.

    Returns ``(speedup, reason)``.
    """
    if resized_ips is not None and originals_ips > 0:
        s = resized_ips / originals_ips
        return s, (f"shorter side {resize} px: measured on the sample, {_fmt(resized_ips)} "
                   f"img/s vs {_fmt(originals_ips)} for the originals, decode speed-up "
                   f"{s:.2f}x")
    stored = stored_pixels(mean_pixels, resize)
    ratio = max(1.0, mean_pixels / stored) if mean_pixels else 1.0
    s = min(ratio, MAX_RESIZE_SPEEDUP)
    return s, (f"shorter side {resize} px: ~{stored:,.0f} px/image instead of "
               f"{mean_pixels:,.0f} (pixel ratio {ratio:.1f}x), predicted decode speed-up "
               f"{s:.1f}x (capped at {MAX_RESIZE_SPEEDUP:g}x: per-image costs that do not "
               f"shrink with the pixels)")


def choose_pack_resize(*, image_size: int, mean_pixels: float, originals_ips: float,
                       step_ips: float, resized_ips: float | None = None,
                       requested: int | None = None,
                       eval_image_size: int | None = None) -> tuple[int | None, float, Decision]:
    """The shorter side to store at pack time (None: the original bytes) and the
    decode speed-up credited to it. The side is ``requested`` or
    :func:`pack_resize_side` of the larger of the training and evaluation sides (an
    evaluation at 256 px needs a 296 px shorter side for its 0.875 centre crop);
    ``resized_ips`` is the probe's best images/s on the
    sample stored at that side, if measured. Resize when training at <= 64 px, or when
    the originals' best decode rate is below ``step_ips x DECODE_MARGIN`` and the
    resize decodes faster (:func:`resize_speedup`). Returns ``(resize, speedup,
    decision)``."""
    need = step_ips * DECODE_MARGIN
    side = requested or pack_resize_side(max(image_size, eval_image_size or 0))
    speedup, how = resize_speedup(side, mean_pixels=mean_pixels, originals_ips=originals_ips,
                                  resized_ips=resized_ips)
    if requested is not None:
        resize, why = requested or None, GIVEN
    elif image_size <= 64:
        resize, why = side, (f"training at {image_size} px: decoding {mean_pixels:,.0f}-pixel "
                             f"photos wastes most of the work (DCT scaling stops at 1/8)")
    elif originals_ips >= need or speedup <= 1.0:
        resize, why = None, (f"full-size decode ({_fmt(originals_ips)} img/s at best) "
                             + (f"covers the step rate {_fmt(step_ips)} img/s x {DECODE_MARGIN}"
                                if originals_ips >= need else
                                f"is short of {_fmt(need)} img/s, but a resize would not "
                                f"decode faster ({how})") + ": keep the original bytes")
    else:
        resize, why = side, (f"full-size decode peaks at {_fmt(originals_ips)} img/s < "
                             f"{_fmt(need)} img/s needed (step rate {_fmt(step_ips)} x "
                             f"{DECODE_MARGIN})")
    if not resize:
        return None, 1.0, Decision("pack_resize", "none", why)
    return resize, speedup, Decision("pack_resize", f"{resize} px", f"{why}; {how}")


def decode_thread_cap(points: Sequence[Any], *, cpu_backend: bool, usable_cores: int) -> int:
    """Most decode threads to consider: half the usable cores on a CPU backend (the
    step computes on the same cores), else the largest measured thread count."""
    return max(1, usable_cores // 2) if cpu_backend else max(p.threads for p in points)


def choose_decode_threads(points: Sequence[Any], *, speedup: float, step_ips: float,
                          cpu_backend: bool, usable_cores: int,
                          requested: int | None = None) -> tuple[int, Decision]:
    """The fewest measured thread counts (within :func:`decode_thread_cap`) whose rate
    x ``speedup`` covers ``step_ips x DECODE_MARGIN``; else the fastest of them."""
    if requested:
        return requested, _given("decode_threads", requested)
    cap = decode_thread_cap(points, cpu_backend=cpu_backend, usable_cores=usable_cores)
    candidates = [p for p in points if p.threads <= cap]
    ok = [p for p in candidates if p.images_per_s * speedup >= step_ips * DECODE_MARGIN]
    if not ok:
        p = max(candidates, key=lambda q: q.images_per_s)
        return p.threads, Decision(
            "decode_threads", str(p.threads),
            f"no thread count covers the step rate {_fmt(step_ips)} img/s; {p.threads} threads "
            f"give the most, {_fmt(p.images_per_s * speedup)} img/s: the run will be "
            f"decode-bound")
    p = ok[0]
    rate = p.images_per_s * speedup
    return p.threads, Decision(
        "decode_threads", str(p.threads),
        f"{p.threads} threads: {_fmt(p.images_per_s)} img/s measured"
        + (f" x {speedup:.1f} (resize)" if speedup > 1 else "")
        + f" = {_fmt(rate)} img/s covers the step rate {_fmt(step_ips)} img/s with "
          f"{rate / step_ips - 1:.0%} margin"
        + (f" (CPU backend: at most {cap} of {usable_cores} cores for decode)"
           if cpu_backend else ""))


def choose_decode_workers(points: Sequence[Any], *, threads: int, usable_cores: int,
                          cpu_backend: bool, threads_given: bool = False,
                          cache_given: bool = False) -> tuple[int, Decision]:
    """Worker processes where the GIL limits threads: on a non-CPU backend with >= 4
    usable cores whose decode curve's parallel efficiency at ``threads`` (> 1) is
    below :data:`GIL_EFFICIENCY`, run ``min(threads, cores)`` Grain worker processes
    (mp_prefetch). Not when the threads or the decoded cache (which lives in this
    process) were given on the command line."""
    point = next((p for p in points if p.threads == threads), None)
    if threads_given or cache_given:
        return 0, Decision("decode_workers", "0", "threads only: "
                           + ("decode threads" if threads_given else "the decoded cache")
                           + " given on the command line")
    if (cpu_backend or point is None or threads <= 1 or usable_cores < 4
            or point.efficiency >= GIL_EFFICIENCY):
        eff = f"{point.efficiency:.0%} parallel efficiency at {threads} threads" if point else \
            f"no measurement at {threads} threads"
        return 0, Decision("decode_workers", "0", f"threads only: {eff}, {usable_cores} cores"
                           + (", CPU backend" if cpu_backend else ""))
    workers = min(threads, usable_cores)
    base = points[0].images_per_s
    return workers, Decision(
        "decode_workers", str(workers),
        f"threads scale poorly ({point.efficiency:.0%} parallel efficiency at {threads} "
        f"threads, below {GIL_EFFICIENCY:.0%}: the GIL): {workers} worker processes x "
        f"{_fmt(base)} img/s (1 thread) x {PROCESS_EFFICIENCY} expected")


def decode_rate(*, thread_ips: float, one_thread_ips: float, workers: int,
                speedup: float) -> float:
    """Expected decode images/s: the curve's rate at the chosen threads
    (``thread_ips``) x ``speedup``; with worker processes at least ``one_thread_ips x
    speedup x workers x PROCESS_EFFICIENCY``."""
    rate = thread_ips * speedup
    if workers:
        rate = max(rate, one_thread_ips * speedup * workers * PROCESS_EFFICIENCY)
    return rate


def choose_cache_decoded(*, num_images: int, num_hosts: int, stored_pixels: float,
                         ram_available: float, decode_workers: int = 0,
                         requested: bool | None = None) -> tuple[bool, Decision]:
    """Keep decoded images in RAM after the first epoch when a host's share,
    ``num_images / hosts x stored pixels x 3`` bytes, is at most
    :data:`CACHE_RAM_FRACTION` of its available RAM and no worker processes decode
    (the cache lives in the training process)."""
    if requested is not None:
        return requested, _given("cache_decoded", requested)
    decoded = num_images / num_hosts * stored_pixels * 3
    fits = decoded <= CACHE_RAM_FRACTION * ram_available
    size = (f"decoded data set {fmt_bytes(decoded, unit='MiB')} per host {'<=' if fits else '>'} "
            f"{CACHE_RAM_FRACTION:.0%} of {fmt_bytes(ram_available, unit='MiB')} available RAM")
    if fits and decode_workers:
        return False, Decision("cache_decoded", "no", f"{size}, but {decode_workers} worker "
                               f"processes decode and the cache lives in this process")
    return fits, Decision("cache_decoded", "yes" if fits else "no",
                          size + ("; later epochs only crop and flip" if fits else ""))


# ---------------------------------------------------------------- storage

def record_bytes_stored(mean_bytes: float, mean_pixels: float, stored_px: float) -> float:
    """Mean record bytes as stored: the files' mean scaled by the stored pixel share."""
    return mean_bytes * (stored_px / mean_pixels if mean_pixels else 1.0)


def read_rates(disk, record_bytes: float) -> tuple[float | None, float | None]:
    """``(random, sequential)`` images/s of the disk at ``record_bytes`` per record:
    random = record-size reads per second at the pipeline's queue depth; sequential =
    bandwidth / record bytes. ``(None, None)`` without disk figures."""
    if disk is None:
        return None, None
    return (disk.random_record_qd.iops,
            disk.sequential.mb_per_s * 1e6 / max(record_bytes, 1.0))


def choose_read_mode(*, random_ips: float | None, sequential_ips: float | None,
                     step_ips: float, in_page_cache: bool, dataset_bytes: float,
                     record_bytes: float, queue_depth: int = 0,
                     requested: str | None = None) -> tuple[str, Decision]:
    """``random`` when random reads cover ``RANDOM_READ_MARGIN x step_ips``, or the
    data set fits in the page cache (:func:`fits_page_cache`), or there are no disk
    figures; else ``sequential``."""
    if requested:
        return requested, _given("read_mode", requested)
    if random_ips is None:
        return "random", Decision("read_mode", "random", "no disk figures: global shuffle by "
                                                         "default")
    head = (f"random reads deliver {_fmt(random_ips)} img/s (record {record_bytes / 1e3:,.0f} "
            f"kB, depth {queue_depth}); sequential {_fmt(sequential_ips)} img/s; need "
            f"{_fmt(step_ips)} img/s")
    if random_ips >= RANDOM_READ_MARGIN * step_ips:
        mode, tail = "random", f" -> random covers it x {RANDOM_READ_MARGIN}: global shuffle"
    elif in_page_cache:
        mode, tail = "random", (f" -> random is short, but the data set ({fmt_bytes(dataset_bytes, unit='MiB')}) "
                                f"fits in the page cache: the disk matters only for the first "
                                f"epoch")
    else:
        mode, tail = "sequential", (" -> sequential: shards front to back with an in-memory "
                                    "shuffle window")
    return mode, Decision("read_mode", mode, head + tail)


def choose_shuffle_window(read_mode: str) -> tuple[int, Decision]:
    """:data:`SHUFFLE_WINDOW` records shuffled together when reading sequentially (the
    same figure in random mode, where the pipeline does not use it)."""
    use = ("shards are read front to back: records are shuffled within a window"
           if read_mode == "sequential" else "random reads shuffle globally: used only if "
                                              "reads are sequential")
    return SHUFFLE_WINDOW, Decision("shuffle_window", str(SHUFFLE_WINDOW),
                                    f"{SHUFFLE_WINDOW} records; {use}")


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
        parts.append(f"at most {fmt_bytes(dataset_bytes, unit='MiB')} / {fmt_bytes(min_bytes, unit='MiB')} = {n_max} so each "
                     f"shard >= {seq_bytes_per_s / 1e6:,.0f} MB/s x {latency_s * 1e3:.2f} ms "
                     f"x 19 (opening a shard < 5% of reading it)")
    elif read_mode == "random":
        parts.append("random reads seek per record anyway: no upper bound")
    else:
        parts.append("no disk figures: no upper bound")
    parts.append(f"~256 MiB shards: {fmt_bytes(dataset_bytes, unit='MiB')} / 256 MiB -> {target}")
    if n_max is None:
        n = max(target, n_min)
    elif n_min <= n_max:
        n = min(max(target, n_min), n_max)
    else:
        n = n_max
        parts.append("the bounds conflict: the seek bound wins on this disk")
    n = max(hosts, min(n, num_images))
    return n, "; ".join(parts) + f" -> {n} shards"


def choose_num_shards(dataset_bytes: int, *, num_images: int, hosts: int, threads: int,
                      read_mode: str, disk, requested: int | None = None) -> tuple[int, Decision]:
    """:func:`shard_count` with the disk's sequential bandwidth and 4 KiB latency."""
    if requested:
        return requested, _given("num_shards", requested)
    n, why = shard_count(
        dataset_bytes, num_images=num_images, hosts=hosts, threads=threads, read_mode=read_mode,
        seq_bytes_per_s=disk.sequential.mb_per_s * 1e6 if disk else None,
        latency_s=disk.random_4k.p50_ms / 1e3 if disk else None)
    return n, Decision("num_shards", str(n), why)


def choose_prefetch(*, threads: int, per_device_batch: int, local_devices: int,
                    image_size: int, ram_available: float,
                    record_bytes: float = 0.0) -> tuple[int, Decision]:
    """Host batches in flight: ``threads + 2`` (each thread builds a whole batch),
    with batches of ``per_device_batch x local_devices x image_size^2 x 3`` bytes, in
    what is left of :data:`PREFETCH_RAM_FRACTION` of the available RAM (bytes) once
    each thread's read buffer is counted (:func:`trainers.options.read_buffer_bytes`
    of the host batch at ``record_bytes``, the mean stored record; 0: not counted), at
    least 2; :data:`DEVICE_PREFETCH` more on the device."""
    host_batch = per_device_batch * local_devices
    batch_bytes = host_batch * image_size ** 2 * 3
    buffers = threads * read_buffer_bytes(host_batch, record_bytes)
    budget = PREFETCH_RAM_FRACTION * ram_available
    want = threads + 2
    cap = max(2, int(max(0.0, budget - buffers) // max(1, batch_bytes)))
    n = min(want, cap)
    held = (f"; each thread also keeps a read buffer of "
            f"{fmt_bytes(buffers / threads, unit='MiB')} ({host_batch} records x "
            f"{record_bytes / 1e3:,.0f} KB x {READ_BUFFER_GROWTH})" if buffers > 0 else "")
    return n, Decision(
        "prefetch", f"{n} host batches, {DEVICE_PREFETCH} on device",
        f"{threads} threads + 2 = {want} batches of {fmt_bytes(batch_bytes, unit='MiB')} in flight (each thread "
        f"builds a whole batch){held}"
        + (f", capped at {cap} by 5% of RAM ({fmt_bytes(budget, unit='MiB')}"
           + (f" less the buffers' {fmt_bytes(buffers, unit='MiB')}" if buffers > 0 else "")
           + f"; {cap} threads busy at most)" if cap < want else "")
        + f"; {DEVICE_PREFETCH} on the device for double buffering")


def choose_pack_threads(usable_cores: int) -> tuple[int, Decision]:
    """Pack with one thread per usable core (the pack runs before training, alone)."""
    n = max(1, usable_cores)
    return n, Decision("pack_threads", str(n), f"the {usable_cores} usable cores: the pack "
                                               f"runs alone, before training")


def choose_archive_shard_records(num_images: int, num_shards: int,
                                 streamed: bool) -> tuple[int, Decision | None]:
    """Records per shard of a streamed archive (a tar, whose length the pack does not
    know up front, so it cuts shards by record count): the plan's images / its shards,
    rounded up, so that an archive gives about ``num_shards`` shards as a folder does.
    ``num_images`` is the probe's estimate for an archive. No decision (None) for other
    inputs, where the setting is unused."""
    n = max(1, math.ceil(num_images / max(1, num_shards)))
    if not streamed:
        return n, None
    return n, Decision("archive_shard_records", str(n),
                       f"about {num_images:,} images (estimated from the archive's bytes) / "
                       f"{num_shards:,} shards")


def choose_pack_workers(usable_cores: int, knee_threads: int, best_images_per_s: float,
                        ceiling_images_per_s: float) -> tuple[int, Decision]:
    """Worker processes of the pack step (0: ``pack_threads`` threads of one process).

    One spawned process per usable core whenever there are two or more. Each listed
    shard is read, checked, serialised and written whole by one worker, and an
    archive's members go to the workers in batches, so processes copy little; their
    Python per image (file reads, record serialisation, writes) runs in parallel,
    where threads of one process take turns at the GIL for it. On the 2-core VM
    (``bench/pack_scale.py --compare-workers``, ``bench/RESULTS.md``) two processes beat
    two threads on small files, full-size files and a tar of per-class tars alike.
    The decode probe's thread curve (``knee_threads``) is quoted: it measures the
    training decode, which releases the GIL, not the pack's per-file work. With one
    core, threads (no start-up of a second interpreter).
    """
    cores = max(1, usable_cores)
    numbers = (f"decode probe: threads scale to {knee_threads} of {cores} usable cores, "
               f"{_fmt(best_images_per_s)} img/s at best vs a {_fmt(ceiling_images_per_s)} "
               f"img/s ceiling")
    if cores == 1:
        return 0, Decision("pack_workers", "0", f"one usable core: threads of one process "
                                                f"({numbers})")
    return cores, Decision("pack_workers", str(cores),
                           f"one worker process per usable core: the pack's file reads, "
                           f"record serialisation and writes hold the GIL between decodes, "
                           f"which threads of one process share ({numbers})")


def predict_throughput(*, step_ips: float, decode_ips: float, disk_ips: float | None,
                       cache_decoded: bool,
                       cached_ips: float | None = None) -> tuple[str, float, Decision]:
    """The bottleneck and predicted images/s per host: the slowest of compute
    (``step_ips``), decode and disk (``disk_ips``, None when the page cache holds the
    data set). With the decoded cache and a decode that keeps up with the step, later
    epochs only crop and flip: compute, or the measured cached path (``cached_ips``)
    if slower. The prediction never exceeds ``step_ips``."""
    limits = {"compute": step_ips, "decode": decode_ips}
    if disk_ips is not None:
        limits["disk"] = disk_ips
    if cache_decoded and decode_ips >= step_ips:
        steady = {"compute": step_ips}
        if cached_ips is not None:
            steady["decoded cache"] = cached_ips
        limits.update(steady)
        bottleneck = min(steady, key=steady.get)
    else:
        bottleneck = min(limits, key=limits.get)
    predicted = min(limits[bottleneck], step_ips)
    return bottleneck, predicted, Decision(
        "bottleneck", bottleneck, ", ".join(f"{k} {_fmt(v)} img/s" for k, v in limits.items())
        + f" per host -> predicted {_fmt(predicted)} img/s per host")


# ---------------------------------------------------------------- the plan

class _Decode(NamedTuple):
    resize: int | None
    speedup: float
    threads: int
    workers: int
    cache: bool
    stored_px: float
    step_ips: float
    decode_ips: float
    cached_ips: float | None


class _Storage(NamedTuple):
    record_bytes: float
    mode: str
    window: int
    shards: int
    shard_bytes: int
    rand_ips: float | None
    seq_ips: float | None
    disk_ips: float | None


def _decode_plan(report: ProbeReport, preset: Preset, request: PlanRequest,
                 dec: list[Decision], step_ips: float) -> _Decode:
    """Pack resize, decode threads and workers, decoded cache (appends to ``dec``);
    ``step_ips``: the train step's images/s at the plan's batch."""
    d, cpu = report.decode, report.accelerator.backend == "cpu"
    resized = d.variant(request.pack_resize or pack_resize_side(preset.pack_image_size), False)
    resize, speedup, why = choose_pack_resize(
        image_size=preset.image_size, mean_pixels=d.mean_pixels, originals_ips=originals_rate(d),
        step_ips=step_ips, resized_ips=resized.best_images_per_s if resized else None,
        requested=request.pack_resize, eval_image_size=preset.eval_image_size)
    dec.append(why)
    threads, why = choose_decode_threads(d.points, speedup=speedup, step_ips=step_ips,
                                         cpu_backend=cpu, usable_cores=d.usable_cores,
                                         requested=request.decode_threads)
    dec.append(why)
    workers, why = choose_decode_workers(
        d.points, threads=threads, usable_cores=d.usable_cores, cpu_backend=cpu,
        threads_given=bool(request.decode_threads), cache_given=bool(request.cache_decoded))
    dec.append(why)
    stored_px = stored_pixels(d.mean_pixels, resize)
    cached = d.variant(resize, True)
    cache, why = choose_cache_decoded(
        num_images=report.dataset.num_images, num_hosts=request.num_hosts,
        stored_pixels=stored_px, ram_available=report.host.ram_available_bytes,
        decode_workers=workers, requested=request.cache_decoded)
    dec.append(why)
    return _Decode(resize=resize, speedup=speedup, threads=threads, workers=workers,
                   cache=cache, stored_px=stored_px, step_ips=step_ips,
                   decode_ips=decode_rate(thread_ips=d.rate_at(threads),
                                          one_thread_ips=d.points[0].images_per_s,
                                          workers=workers, speedup=speedup),
                   cached_ips=cached.rate_at(threads) if cached else None)


def _storage_plan(report: ProbeReport, request: PlanRequest, p: _Decode,
                  dec: list[Decision]) -> _Storage:
    """Read mode, shuffle window, shards (appends to ``dec``)."""
    stats, disk, hosts = report.dataset, report.disk, request.num_hosts
    record_bytes = record_bytes_stored(stats.mean_bytes, report.decode.mean_pixels,
                                       p.stored_px)
    dataset_bytes = int(record_bytes * stats.num_images)
    in_cache = fits_page_cache(dataset_bytes, report.host.ram_total_bytes, hosts)
    rand_ips, seq_ips = read_rates(disk, record_bytes)
    mode, why = choose_read_mode(random_ips=rand_ips, sequential_ips=seq_ips,
                                 step_ips=p.step_ips, in_page_cache=in_cache,
                                 dataset_bytes=dataset_bytes, record_bytes=record_bytes,
                                 queue_depth=disk.queue_depth if disk else 0,
                                 requested=request.read_mode)
    dec.append(why)
    window, why = choose_shuffle_window(mode)
    dec.append(why)
    shards, why = choose_num_shards(dataset_bytes, num_images=stats.num_images, hosts=hosts,
                                    threads=p.threads, read_mode=mode, disk=disk,
                                    requested=request.num_shards)
    dec.append(why)
    disk_ips = None if disk is None or in_cache else (rand_ips if mode == "random" else seq_ips)
    return _Storage(record_bytes=record_bytes, mode=mode, window=window, shards=shards,
                    shard_bytes=dataset_bytes // shards, rand_ips=rand_ips, seq_ips=seq_ips,
                    disk_ips=disk_ips)


def make_plan(report: ProbeReport, preset: Preset, request: PlanRequest = PlanRequest()) -> Plan:
    """Turn measurements into a plan (pure): the decisions of this module in order.

    Raises:
      ValueError: inconsistent request or report (e.g. a fixed batch that does not
        fit, no train-step rate in the report).
    """
    acc, hosts = report.accelerator, request.num_hosts
    if acc.step_rate is None:
        raise ValueError("the probe report has no train-step rate; rerun `autotune probe`")
    devices = request.local_devices or acc.local_devices
    # the hold-out of a separate validation input is not known here: the lower count
    train_images = int(report.dataset.num_images * (1 - preset.val_fraction))
    cands = batch_candidates(report, all_devices=devices * hosts, train_images=train_images)
    dec: list[Decision] = list(cands.decisions)
    batch, why = choose_per_device_batch(report, preset, all_devices=devices * hosts,
                                         requested=request.per_device_batch,
                                         policy=request.batch_policy,
                                         train_images=train_images)
    dec.append(why)
    global_batch, why = choose_global_batch(batch, devices, hosts)
    dec.append(why)
    lr, warmup, why = choose_learning_rate(preset, global_batch)
    dec.append(why)
    bn_group, why = choose_bn_group(preset, batch, devices)
    dec.append(why)
    p = _decode_plan(report, preset, request, dec, step_rate_at(report, batch))
    s = _storage_plan(report, request, p, dec)
    prefetch, why = choose_prefetch(threads=p.threads, per_device_batch=batch,
                                    local_devices=devices, image_size=preset.image_size,
                                    ram_available=report.host.ram_available_bytes,
                                    record_bytes=s.record_bytes)
    dec.append(why)
    pack_threads, why = choose_pack_threads(report.decode.usable_cores)
    dec.append(why)
    shard_records, why = choose_archive_shard_records(
        report.dataset.num_images, s.shards, getattr(report.dataset, "estimated", False))
    dec += [why] if why else []
    best = max((pt.images_per_s for pt in report.decode.points), default=0.0)
    pack_workers, why = choose_pack_workers(report.decode.usable_cores,
                                            report.decode.knee_threads, best,
                                            report.decode.ceiling_images_per_s)
    dec.append(why)
    bottleneck, predicted, why = predict_throughput(
        step_ips=p.step_ips, decode_ips=p.decode_ips, disk_ips=s.disk_ips,
        cache_decoded=p.cache, cached_ips=p.cached_ips)
    dec.append(why)
    return Plan(
        preset=preset.name, data_path=report.data_path, num_classes=report.dataset.num_classes,
        image_size=preset.image_size, epochs=request.epochs or preset.epochs,
        per_device_batch=batch, local_devices=devices, num_hosts=hosts,
        global_batch=global_batch, lr=lr, warmup_epochs=warmup, decode_threads=p.threads,
        prefetch_batches=prefetch, device_prefetch=DEVICE_PREFETCH, read_mode=s.mode,
        shuffle_window=s.window, num_shards=s.shards, shard_bytes=s.shard_bytes,
        pack_resize=p.resize, cache_decoded=p.cache, val_fraction=preset.val_fraction,
        step_images_per_s=p.step_ips, decode_images_per_s=p.decode_ips,
        random_read_images_per_s=s.rand_ips, sequential_read_images_per_s=s.seq_ips,
        predicted_images_per_s=predicted, predicted_global_images_per_s=predicted * hosts,
        bottleneck=bottleneck, decisions=tuple(dec), step_bytes=step_bytes_at(report, batch),
        decode_workers=p.workers, pack_threads=pack_threads, resize_speedup=p.speedup,
        pack_workers=pack_workers, archive_shard_records=shard_records,
        bn_group_devices=bn_group, noise_scale=cands.noise_scale,
        critical_batch=cands.critical_global, warnings=batch_warnings(global_batch, cands))


# ---------------------------------------------------------------- plan -> trainer

def train_config(plan: Plan, preset: Preset, num_classes: int) -> TrainConfig:
    """The :class:`trainers.options.TrainConfig` of ``plan``: the model and recipe
    from ``preset``, the batch, epochs, learning rate and batch-norm groups from the
    plan, the classes from the packed data.

    The learning-rate rule's schedule and optimizer settings (LARS: MLPerf's ``poly``
    schedule, momentum, no Nesterov, weight decay) replace the preset's; a warmup
    ``from the base rate`` (Goyal et al.) starts at ``base_lr / peak``. When the plan's
    epochs differ from the preset's, the epoch-valued milestones (step decays and the
    progressive-resize ramp) scale with them (FFCV's configs place the ramp at the same
    fraction of each schedule, Budgeted Training style); the warmup does not.
    """
    lr = plan.lr
    stretch = plan.epochs / preset.epochs
    if lr.schedule_name:
        start = 0.0
    elif preset.warmup_from_base_lr:
        start = min(1.0, preset.base_lr / lr.learning_rate)
    else:
        start = preset.warmup_start_fraction
    return TrainConfig(
        arch=preset.arch, width=preset.width, small_images=preset.small_images,
        image_size=plan.image_size, num_classes=num_classes,
        per_device_batch=plan.per_device_batch, epochs=plan.epochs,
        optimizer=lr.optimizer, learning_rate=lr.learning_rate,
        warmup_epochs=plan.warmup_epochs,
        weight_decay=preset.weight_decay if lr.weight_decay is None else lr.weight_decay,
        label_smoothing=preset.label_smoothing, dtype=preset.dtype,
        min_crop_scale=preset.min_crop_scale, log_every_steps=preset.log_every_steps,
        momentum=preset.momentum if lr.momentum is None else lr.momentum,
        nesterov=preset.nesterov if lr.nesterov is None else lr.nesterov,
        schedule=lr.schedule_name or preset.schedule, warmup_start_fraction=start,
        decay_epochs=tuple(e * stretch for e in preset.decay_epochs),
        decay_factor=preset.decay_factor,
        end_learning_rate=lr.end_learning_rate if lr.end_learning_rate is not None else 1e-4,
        poly_power=lr.poly_power if lr.poly_power is not None else 2.0,
        bn_group_devices=plan.bn_group_devices, zero_init_last_bn=preset.zero_init_last_bn,
        blurpool=preset.blurpool, eval_image_size=preset.eval_image_size,
        eval_crop_fraction=preset.eval_crop_fraction, eval_flip=preset.eval_flip,
        progressive_min_size=preset.progressive_min_size,
        progressive_start_epoch=preset.progressive_start_epoch * stretch,
        progressive_end_epoch=preset.progressive_end_epoch * stretch)


def loop_options(plan: Plan, **overrides: Any) -> LoopOptions:
    """The :class:`trainers.options.LoopOptions` of ``plan``, field by field under
    the same names; ``overrides`` sets the run's bookkeeping (``on_bad_record``,
    ``checkpoint_every_s``, ``max_steps``, ``partitions``...)."""
    return LoopOptions(**{**dict(
        decode_threads=plan.decode_threads, prefetch_batches=plan.prefetch_batches,
        device_prefetch=plan.device_prefetch, read_mode=plan.read_mode,
        shuffle_window=plan.shuffle_window, cache_decoded=plan.cache_decoded,
        decode_workers=plan.decode_workers), **overrides})


def pack_options(plan: Plan, *, separate_val: bool = False,
                 pack_threads: int | None = None) -> PackOptions:
    """The :class:`trainers.options.PackOptions` of ``plan``: its shards (records per
    shard of an archive), resize, pack threads (``pack_threads`` overrides them) and
    worker processes; no held-out
    fraction when a separate validation input is packed (``separate_val``)."""
    return PackOptions(num_shards=plan.num_shards,
                       val_fraction=0.0 if separate_val else plan.val_fraction,
                       resize_shorter=plan.pack_resize,
                       pack_threads=pack_threads or plan.pack_threads,
                       pack_workers=plan.pack_workers,
                       archive_shard_records=plan.archive_shard_records)


def pack_cache_key(plan: Plan, data: str, val_data: str | None = None) -> str:
    """12 hex digits naming the packed form of ``data`` (and ``val_data``) under the
    plan's pack settings: SHA-256 of ``[data, val_data, num_shards, pack_resize,
    val_fraction]`` as JSON."""
    key = json.dumps([data, val_data, plan.num_shards, plan.pack_resize, plan.val_fraction])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def step_down(config: TrainConfig, plan: Plan) -> TrainConfig | None:
    """The run's settings after an out-of-memory error: the next smaller per-device
    batch (``autotune.batch_search.next_smaller_batch``: 7/8, a multiple of 8, or of 1
    at 8 and below) and the learning rate rescaled for the global batch over the
    plan's ``local_devices x num_hosts`` by the plan's rule
    (``autotune.lr_rules.rescale_after_batch_change``). None when the batch cannot
    shrink (1). Pass ``functools.partial(step_down, plan=plan)`` as ``on_oom``."""
    b = config.per_device_batch
    try:
        new_b = next_smaller_batch(b, multiple=8 if b > 8 else 1)
    except NoBatchFits:
        return None
    devices = plan.local_devices * plan.num_hosts
    lr = rescale_after_batch_change(config.learning_rate, b * devices, new_b * devices,
                                    plan.lr.rule)
    return dataclasses.replace(config, per_device_batch=new_b, learning_rate=lr)
