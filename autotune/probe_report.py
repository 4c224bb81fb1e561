"""The probe report: everything ``autotune probe`` measured, in one record.

:func:`run_probe` calls each probe (``probes/``) and the batch search
(``autotune.batch_search`` over the compiled step memory the accelerator probe
measures), and returns a :class:`ProbeReport` that the pure planner turns into a plan.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from autotune.batch_search import BatchSearchResult
from autotune.presets import Preset
from trainers.records import Record
from probes.records import AcceleratorReport
from probes.records import DecodeReport
from probes.records import DiskReport
from probes.records import HostReport
from probes.records import StallReport


@dataclass(frozen=True)
class DatasetStats(Record):
    """The input folder at a glance.

    Attributes:
      path: the folder.
      num_classes: class folders.
      num_images: files under the class folders.
      total_bytes: estimated bytes of all files (mean of a sample x count, exact for
        small folders).
      median_bytes / mean_bytes: file size statistics of the sample.
      sampled: files whose size was read.
    """

    path: str
    num_classes: int
    num_images: int
    total_bytes: int
    median_bytes: int
    mean_bytes: float
    sampled: int


@dataclass(frozen=True)
class ProbeReport(Record):
    """All measurements of one ``autotune probe``.

    Attributes:
      created_utc: ISO time of the probe.
      data_path: the images measured.
      preset: the recipe the accelerator figures are for.
      host, dataset, disk, decode, accelerator: each probe's record (disk may be None
        when skipped).
      batch_search: the largest per-device batch found (None when the preset fixes it
        and it fits).
      seconds: wall time of the probe.
      stall: data-stall attribution (``autotune probe --stall``), else None.
    """

    created_utc: str
    data_path: str
    preset: str
    host: HostReport
    dataset: DatasetStats
    disk: DiskReport | None
    decode: DecodeReport
    accelerator: AcceleratorReport
    batch_search: BatchSearchResult | None
    seconds: float
    stall: StallReport | None = None


def dataset_stats(root: str | os.PathLike, *, sample: int = 2000, seed: int = 0) -> DatasetStats:
    """Count the images of an ImageNet-layout folder and estimate its bytes from a
    sample of ``sample`` file sizes.

    Raises:
      FileNotFoundError: no folder; ValueError: no class folders or no files.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"data folder {root} has no class folders (expected <root>/<wnid>/*.JPEG)")
    files: list[str] = []
    for c in classes:
        with os.scandir(c) as it:
            files.extend(e.path for e in it if e.is_file())
    if not files:
        raise ValueError(f"data folder {root} has class folders but no files")
    pick = files if len(files) <= sample else random.Random(seed).sample(files, sample)
    sizes = [os.stat(f).st_size for f in pick]
    mean = statistics.fmean(sizes)
    return DatasetStats(path=str(root), num_classes=len(classes), num_images=len(files),
                        total_bytes=int(round(mean * len(files))),
                        median_bytes=int(statistics.median(sizes)), mean_bytes=mean,
                        sampled=len(pick))


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_probe(data_path: str, preset: Preset, *, budget_bytes: int | None = None,
              quick: bool = False, skip_disk: bool = False, read_threads: int | None = None,
              decode_s: float | None = None,
              progress: Callable[[str], None] | None = None) -> ProbeReport:
    """Run every probe on ``data_path`` for ``preset``.

    Args:
      data_path: ImageNet-layout image folder.
      preset: recipe whose model the accelerator figures are for.
      budget_bytes: per-device memory budget overriding the device's limit
        (``--memory-budget``; on CPU the default is half the free RAM).
      quick: shorter measurements (used by ``train --auto``).
      skip_disk: leave the disk probe out.
      read_threads: queue depth of the disk's parallel random-read figure (default:
        the decode knee, the threads the pipeline will really read with).
      decode_s: measuring time per decode thread count.
      progress: called with a line before each stage.

    Raises:
      FileNotFoundError / ValueError: bad data folder (named in the message).
    """
    from autotune import batch_search as bs
    from probes import accelerator, decode, disk, host
    from trainers import train as tr

    say = progress or (lambda s: None)
    t0 = time.perf_counter()
    say("host: cores, RAM, disk space, JAX devices, NVML")
    host_report = host.probe_host(data_path, jax_in_child=False)
    say("dataset: counting images")
    stats = dataset_stats(data_path)
    say("decode: JPEG decode + augmentation vs threads")
    decode_report = decode.probe_decode(
        data_path, image_size=preset.image_size, min_crop_scale=preset.min_crop_scale,
        sample=100 if quick else 200,
        seconds_per_point=decode_s or (0.5 if quick else 1.5))
    disk_report = None
    if not skip_disk:
        say("disk: sequential and random reads, page cache bypassed")
        disk_report = disk.probe_disk(
            data_path, record_bytes=max(4096, stats.median_bytes),
            dataset_bytes=stats.total_bytes,
            queue_depth=read_threads or max(1, decode_report.knee_threads),
            duration_s=0.5 if quick else 2.0,
            file_bytes=(64 << 20) if quick else None)
    config = tr.TrainConfig(arch=preset.arch, width=preset.width,
                            small_images=preset.small_images, image_size=preset.image_size,
                            num_classes=stats.num_classes,
                            per_device_batch=32, dtype=preset.dtype)
    import jax

    fixed = preset.per_device_for(jax.device_count())
    limit, _ = accelerator.device_memory_limit(budget_bytes)
    image_bytes = preset.image_size ** 2 * 3
    search = None
    if fixed is None:
        say("accelerator: largest per-device batch by compiled memory analysis")
        try:
            search = bs.find_max_batch(
                lambda b: (tr.compiled_step_memory(config, b) or {}).get("total"),
                limit, multiple=8, max_batch=preset.max_per_device_batch,
                prefetch_bytes_per_image=2 * image_bytes)
            batch = search.per_device_batch
        except bs.MemoryAnalysisUnavailable:
            # Known on some JAX GPU versions: fall back to real steps in child
            # processes, so an out-of-memory kills only the child.
            from probes.step_child import fits_in_child

            say("accelerator: memory analysis unavailable; bisecting over real steps in "
                "child processes")
            cpu_budget = limit if jax.default_backend() == "cpu" else None
            search = bs.find_max_batch_by_trial(
                lambda b: fits_in_child(config, b, budget_bytes=cpu_budget), start=32,
                multiple=8, max_batch=preset.max_per_device_batch)
            batch = search.per_device_batch
    else:
        batch = fixed
    config = dataclasses.replace(config, per_device_batch=batch)
    say(f"accelerator: train-step images/s at per-device batch {batch}")
    acc = accelerator.probe_accelerator(config, budget_bytes=budget_bytes,
                                        memory_batches=() if search else (batch,),
                                        rate_steps=5 if quick else 10)
    return ProbeReport(created_utc=utc_now(), data_path=str(data_path), preset=preset.name,
                       host=host_report, dataset=stats, disk=disk_report,
                       decode=decode_report, accelerator=acc, batch_search=search,
                       seconds=time.perf_counter() - t0)
