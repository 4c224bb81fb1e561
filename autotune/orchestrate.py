"""What ``autotune probe`` and ``autotune train --auto`` do, in order: resolve the data,
probe (or reuse a fresh probe), plan, pack, train; and the multi-host ordering of
those steps (process 0 creates the run folder, plans and packs first; every process
runs process 0's plan on the same packed data).

The CLI parses arguments into a :class:`TrainRequest`, calls these functions and
renders the records they hand back through ``show``; decisions belong to
``autotune.planner``, measurements to ``probes``, execution to ``trainers``. Errors
meant for the user are :class:`SetupError` (one line, naming the value).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from autotune import planner, results
from autotune.planner import Plan, PlanRequest
from autotune.presets import Preset
from autotune.probe_report import ProbeReport, utc_now
from autotune.results import RunRecord
from trainers.options import LoopOptions, TrainConfig, pack_resize_side
from trainers.summaries import PackResult, TrainSummary

Say = Callable[[str], None]
Show = Callable[[object], None]
Progress = Callable[..., object]


class SetupError(ValueError):
    """A bad input found while setting a run up (data folder, overrides, resume
    folder, hosts that disagree); the message is one line naming the value."""


@dataclass(frozen=True)
class TrainRequest:
    """What ``autotune train --auto`` was asked (the CLI's arguments, parsed).

    Attributes:
      data: training folder, or None for the built-in synthetic data set.
      preset: the preset record.
      results_root: where run folders go.
      plan_request: the user's overrides for the planner.
      val_data: a separate validation input (folder, ``ILSVRC2012_img_val.tar``, the
        Kaggle folder or zip).
      val_labels: its label file (default: looked for beside it).
      reprobe: probe even when a fresh probe exists.
      budget_bytes: per-device memory budget (bytes) or None.
      partitions: data partitions (see ``trainers.input_pipeline``).
      loop_overrides: LoopOptions fields the user set (on_bad_record,
        checkpoint_every_s, max_steps, partitions).
      argv: the command line, saved in ``run.json`` (to find an unfinished run).
    """

    data: str
    preset: Preset
    results_root: Path
    plan_request: PlanRequest
    val_data: str | None = None
    val_labels: str | None = None
    reprobe: bool = False
    budget_bytes: int | None = None
    partitions: int | None = None
    loop_overrides: dict = dataclasses.field(default_factory=dict)
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class Session:
    """A run ready to train: its folder, plan, data and the trainer's settings."""

    run: Path
    plan: Plan
    record: RunRecord

    @property
    def config(self) -> TrainConfig:
        return self.record.config

    @property
    def options(self) -> LoopOptions:
        return self.record.options


# ---------------------------------------------------------------- inputs

def resolve_preset(name: str | None) -> Preset:
    """The preset ``name`` (default: ``resnet50`` on GPU, ``cpu-small`` on CPU), checked
    against this run's device count (a preset's fixed global batch must split).

    Raises:
      SetupError: unknown preset, or a global batch the devices cannot split.
    """
    import jax

    from autotune.presets import UnknownPresetError, default_preset_name, get_preset

    name = name or default_preset_name(jax.default_backend())
    try:
        preset = get_preset(name)
    except UnknownPresetError as exc:
        raise SetupError(str(exc)) from None
    try:
        preset.per_device_for(jax.device_count())
    except ValueError as exc:
        raise SetupError(f"--preset {name}: {exc}") from None
    return preset


def memory_budget(text: str | None) -> int | None:
    """``--memory-budget`` in bytes (``8GiB``, ``512MB`` ...), or None when not given.

    Raises:
      SetupError: not a size.
    """
    from autotune.batch_search import parse_memory_budget

    if not text:
        return None
    try:
        return parse_memory_budget(text)
    except ValueError as exc:
        raise SetupError(f"--memory-budget {text}: {exc}") from None


def resolve_data(data: str | None, progress: Progress) -> str:
    """The absolute training input, checked (its kind detected, class folders present,
    none empty, an archive readable: ``trainers.sources.open_source``) before minutes
    of probing; with no ``data``, the built-in synthetic data set (generated once into
    the cache).

    Raises:
      SetupError: missing, not a readable input kind (names the path and why).
    """
    if data:
        from trainers.sources import open_source
        from trainers.scan import DataFolderError

        path = Path(data).expanduser()
        if not path.exists():
            raise SetupError(f"--data {data}: no such folder or archive (expected "
                             f"<root>/<wnid>/*.JPEG, a tar of per-class tars or the Kaggle "
                             f"folder or zip)")
        try:
            open_source(path)
        except DataFolderError as exc:
            raise SetupError(f"--data {data}: {exc}") from None
        return str(path.resolve())
    from trainers.synthetic import ensure_synthetic_dataset

    return str(ensure_synthetic_dataset(progress=progress))


def run_probe(data_path: str, preset: Preset, *, budget_bytes: int | None = None,
              quick: bool = False, skip_disk: bool = False, read_threads: int | None = None,
              decode_s: float | None = None, progress: Say | None = None,
              search_batch: bool = False) -> ProbeReport:
    """Run every probe on ``data_path`` for ``preset``: host, data set, decode + augment
    against threads, disk (page cache bypassed), the largest per-device batch and the
    train step's images/s (at a few per-device batches when the batch is searched).

    Args:
      data_path: ImageNet-layout image folder.
      preset: recipe whose model the accelerator figures are for.
      budget_bytes: per-device memory budget overriding the device's limit (bytes).
      quick: shorter measurements (used by ``train --auto``).
      skip_disk: leave the disk probe out.
      read_threads: queue depth of the disk's parallel random-read figure (default:
        the decode knee, the threads the pipeline will really read with).
      decode_s: measuring seconds per decode thread count.
      progress: called with a line before each stage.
      search_batch: search the batch (and time the rate curve) even where the preset
        fixes one (``--batch auto / max / N``: the plan then says what it would choose).

    Raises:
      FileNotFoundError / ValueError: bad data folder (named in the message).
    """
    from probes import decode, disk, host
    from probes.dataset import dataset_stats

    say = progress or (lambda s: None)
    t0 = time.perf_counter()
    say("host: cores, RAM, disk space, JAX devices, NVML")
    host_report = host.probe_host(data_path, jax_in_child=False)
    say("dataset: counting images")
    stats = dataset_stats(data_path)
    say("decode: JPEG decode + augmentation vs threads")
    decode_report = decode.probe_decode(
        data_path, image_size=preset.image_size, min_crop_scale=preset.min_crop_scale,
        resizes=(pack_resize_side(preset.pack_image_size),),
        sample=100 if quick else 200, seconds_per_point=decode_s or (0.5 if quick else 1.5))
    disk_report = None
    if not skip_disk:
        say("disk: sequential and random reads, page cache bypassed")
        disk_report = disk.probe_disk(
            data_path, record_bytes=max(4096, stats.median_bytes),
            dataset_bytes=stats.total_bytes,
            queue_depth=read_threads or max(1, decode_report.knee_threads),
            duration_s=0.5 if quick else 2.0, file_bytes=(64 << 20) if quick else None)
    search, acc = _probe_accelerator(preset, stats.num_classes, budget_bytes, quick, say,
                                     search_batch)
    return ProbeReport(created_utc=utc_now(), data_path=str(data_path), preset=preset.name,
                       host=host_report, dataset=stats, disk=disk_report,
                       decode=decode_report, accelerator=acc, batch_search=search,
                       seconds=time.perf_counter() - t0)


def _probe_accelerator(preset: Preset, num_classes: int, budget_bytes: int | None,
                       quick: bool, say: Say, search_batch: bool = False):
    """``(batch search or None, AcceleratorReport)``: the largest per-device batch by
    compiled memory analysis (real steps in child processes where the analysis is
    unavailable), unless the preset fixes the batch (and ``search_batch`` is False);
    then the step rate at it, and with a search the rate curve at its halvings
    (``autotune.batch_search.knee_batches``) for the throughput knee
    (:func:`_measure_rates`: a searched batch whose real steps run out of memory
    steps down)."""
    import jax

    from autotune import batch_search as bs
    from probes import accelerator
    from trainers import train as tr

    config = TrainConfig(arch=preset.arch, width=preset.width, small_images=preset.small_images,
                         image_size=preset.image_size, num_classes=num_classes,
                         per_device_batch=32, dtype=preset.dtype, blurpool=preset.blurpool)
    batch = None if search_batch else preset.per_device_for(jax.device_count())
    limit, _ = accelerator.device_memory_limit(budget_bytes)
    search = None
    if batch is None:
        say("accelerator: largest per-device batch by compiled memory analysis")

        def analysis(b):
            return (tr.compiled_step_memory(config, b) or {}).get("total")

        try:
            search = bs.find_max_batch(
                analysis, limit, multiple=8, max_batch=preset.max_per_device_batch,
                prefetch_bytes_per_image=2 * preset.image_size ** 2 * 3)
            if budget_bytes is not None and jax.default_backend() == "cpu":
                search = _verify_on_cpu(search, analysis, config, say)
        except bs.MemoryAnalysisUnavailable:
            # Known on some JAX GPU versions: real steps in child processes, so an
            # out-of-memory kills only the child.
            from probes.step_child import fits_in_child

            say("accelerator: memory analysis unavailable; bisecting over real steps in "
                "child processes")
            cpu_budget = limit if jax.default_backend() == "cpu" else None
            search = bs.find_max_batch_by_trial(
                lambda b: fits_in_child(config, b, budget_bytes=cpu_budget), start=32,
                multiple=8, max_batch=preset.max_per_device_batch)
        batch = search.per_device_batch
    return _measure_rates(search, batch, config, budget_bytes, quick, say)


#: Step-downs the probe takes when real steps at the searched batch run out of memory.
OOM_STEP_DOWNS = 3


def _measure_rates(search, batch: int, config: TrainConfig, budget_bytes: int | None,
                   quick: bool, say: Say):
    """``(search, AcceleratorReport)``: the step rate at ``batch`` (with a search, the
    rate curve at its halvings). The curve runs real steps at the searched batch in
    this process; when they run out of device memory, the search steps down
    (``autotune.batch_search.ran_out_of_memory``: 7/8) and the rates are measured
    again, at most :data:`OOM_STEP_DOWNS` times, instead of the probe ending there.

    Raises:
      autotune.batch_search.NoBatchFits: no step-down left (the smallest multiple).
      Exception: the rate run's error when it is not an out-of-memory (or there is no
        search, or the step-downs are spent).
    """
    from autotune import batch_search as bs
    from probes import accelerator
    from trainers.loop import is_out_of_memory

    step_downs = 0
    while True:
        config = dataclasses.replace(config, per_device_batch=batch)
        curve = bs.knee_batches(batch) if search else ()
        say(f"accelerator: train-step images/s at per-device batch "
            f"{', '.join(map(str, curve)) if curve else batch}")
        try:
            return search, accelerator.probe_accelerator(
                config, budget_bytes=budget_bytes, memory_batches=() if search else (batch,),
                rate_steps=5 if quick else 10, curve_batches=curve)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory steps down
            if search is None or step_downs == OOM_STEP_DOWNS or not is_out_of_memory(exc):
                raise
        step_downs += 1
        search = bs.ran_out_of_memory(search)
        say(f"accelerator: real steps at per-device batch {batch} ran out of memory; "
            f"stepping down to {search.per_device_batch}")
        batch = search.per_device_batch


#: Real steps per verification trial on CPU: the peak over 3 steps of one batch varied
#: by up to 19% between runs (Eigen's scratch depends on how its thread pool schedules
#: the convolutions), over 10 steps by 1-4% (``bench/RESULTS.md``, "Largest batch").
VERIFY_STEPS = 10


def _verify_on_cpu(search, analysis, config: TrainConfig, say: Say):
    """``search`` checked by real steps (``autotune.batch_search.verify_max_batch``,
    each trial ``probes.step_child.run_steps_in_child``: the steps' own resident
    memory), for a CPU run given a ``--memory-budget``: there the runtime's scratch
    outside XLA's buffer analysis (Eigen's convolution packing) measured 1.05-1.30x the
    analysis, and the analysis pick was 21-36% above the largest batch that fits
    (``bench/RESULTS.md``, "Largest batch"). Not on GPU: the probe's own process holds
    the device's preallocated memory, so a child could not measure there; the GPU
    check's ``batch_trials`` stage holds the pick to ``peak_bytes_in_use``."""
    from autotune import batch_search as bs
    from probes.step_child import run_steps_in_child

    def measured(b: int):
        say(f"accelerator: real steps at per-device batch {b} (a child process) to check "
            "the analysis against the budget")
        r = run_steps_in_child(config, b, steps=VERIFY_STEPS)
        return r.peak_bytes if r.ok else None

    return bs.verify_max_batch(search, analysis, measured)


def searches_batch(req: TrainRequest) -> bool:
    """Whether the batch is searched (and the noise scale measured): the preset fixes
    no batch, or ``--batch`` was given (``auto``, ``max`` or N: the plan says what it
    would have chosen)."""
    r = req.plan_request
    return (req.preset.per_device_batch is None and req.preset.global_batch is None) or bool(
        r.batch_policy or r.per_device_batch)


def probe_or_reuse(req: TrainRequest, say: Say) -> ProbeReport:
    """A probe of ``req.data`` under 24 h old for the same preset on this host, or a new
    quick one. A fresh probe without a batch search is reused unless the plan needs one
    (:func:`searches_batch`) to choose the batch: a batch given as a number
    (``--batch N``) does not, and its "the plan would have chosen" line then names only
    the candidates the probe measured."""
    search = searches_batch(req)
    fresh = None if req.reprobe else results.find_fresh_probe(req.results_root, req.data,
                                                              req.preset.name)
    if fresh is not None:
        report = ProbeReport.load(fresh)
        if (report.batch_search is not None or not search
                or req.plan_request.per_device_batch):
            say(f"reusing the probe of {fresh.parent.name} (under 24 h old; --reprobe to "
                f"measure again)")
            return report
    return run_probe(req.data, req.preset, budget_bytes=req.budget_bytes, quick=True,
                     progress=say, search_batch=search)


def add_noise_scale(report: ProbeReport, req: TrainRequest, plan: Plan, packed: str,
                    num_classes: int, say: Say, workdir: Path | None = None) -> ProbeReport:
    """The report with the gradient noise scale measured on the packed data
    (``probes.noise_scale``): the probe's batch and steps from
    ``planner.choose_noise_probe``, its learning rate by the preset's rule at that
    global batch, the plan's schedule and input pipeline otherwise. Every process
    calls it (the run's steps are collectives); ``workdir`` is the throwaway run's
    folder, one every host sees (default: a temporary folder)."""
    import jax

    from probes.noise_scale import measure_noise_scale

    devices = jax.device_count()
    cands = planner.batch_candidates(report, all_devices=devices)
    train_images = int(report.dataset.num_images * (1 - (0 if req.val_data else plan.val_fraction)))
    per, steps, why = planner.choose_noise_probe(cands, all_devices=devices,
                                                 train_images=train_images,
                                                 backend=report.accelerator.backend)
    lr, warmup, _ = planner.choose_learning_rate(req.preset, per * devices)
    config = dataclasses.replace(planner.train_config(plan, req.preset, num_classes),
                                 per_device_batch=per, learning_rate=lr.learning_rate,
                                 warmup_epochs=warmup)
    say(f"noise scale: {why}")
    noise = measure_noise_scale(config, packed, planner.loop_options(plan), steps=steps,
                                devices=devices,
                                workdir=str(workdir) if workdir is not None else None)
    say(f"noise scale: B_simple {noise.b_simple if noise.b_simple is not None else '-'} "
        f"({noise.note or f'{noise.averaged_steps} steps averaged, {noise.seconds:.0f} s'})")
    return dataclasses.replace(report, noise_scale=noise)


# ---------------------------------------------------------------- pack

def packed_dir_for(data: str, plan: Plan, val_data: str | None) -> Path:
    """Cache folder of the packed form of ``data`` under the plan's pack options."""
    from trainers.synthetic import default_cache_dir

    return default_cache_dir() / "packed" / (
        f"{Path(data).name}-{planner.pack_cache_key(plan, data, val_data)}")


def pack_for_plan(data: str, plan: Plan, progress: Progress, val_data: str | None = None,
                  val_labels: str | None = None) -> tuple[str, PackResult]:
    """Pack ``data`` as the plan says into the cache (resumes an interrupted pack,
    reuses a finished one, replaces one of an older state of ``data``).

    On several hosts: when every host sees the cache folder (a shared file system,
    :func:`_shared_folder`), process 0 prepares it, every process packs its share of
    the shards (``trainers.pack.pack_folder(process_index=, process_count=)``: the
    result is byte-identical to a one-host pack) and the last to finish writes the
    metadata. Otherwise process 0 packs first and each other host then packs the same
    shards on its own disk."""
    import jax

    from trainers.pack import pack_folder, load_pack_result, prepare_pack

    packed = str(packed_dir_for(data, plan, val_data))
    opts = planner.pack_options(plan, separate_val=bool(val_data))
    kw = dict(val_source=val_data, val_labels=val_labels)

    def pack(**share):
        return pack_folder(data, packed, opts, progress=progress, replace_stale=not share,
                           **kw, **share)

    if jax.process_count() == 1:
        return packed, pack()
    from jax.experimental import multihost_utils

    sync = multihost_utils.sync_global_devices
    if not _shared_folder(Path(packed)):
        result = pack() if jax.process_index() == 0 else None
        sync("autotune: packed")
        return packed, result or pack()
    if jax.process_index() == 0:
        prepare_pack(data, packed, opts, replace_stale=True, **kw)
    sync("autotune: pack folder ready")
    result = pack(process_index=jax.process_index(), process_count=jax.process_count())
    sync("autotune: shards packed")
    if not result.complete and jax.process_index() == 0:
        result = pack()  # every shard is there: writes the metadata, reads nothing
    sync("autotune: packed")
    return packed, result if result.complete else load_pack_result(packed)


def _shared_folder(folder: Path) -> bool:
    """Whether every process sees ``folder`` as the same folder: process 0 writes a
    file with a fresh token there, every process looks for it (a collective: every
    process calls it at the same point)."""
    import secrets

    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from trainers.distributed import broadcast_text

    token = broadcast_text(secrets.token_hex(8) if jax.process_index() == 0 else "", 64)
    folder.mkdir(parents=True, exist_ok=True)
    mark = folder / f".shared-{token}"
    if jax.process_index() == 0:
        mark.write_text(token)
    multihost_utils.sync_global_devices("autotune: shared folder written")
    seen = np.asarray(multihost_utils.process_allgather(np.int32(mark.is_file())))
    multihost_utils.sync_global_devices("autotune: shared folder checked")
    if jax.process_index() == 0:
        mark.unlink(missing_ok=True)
    return bool(seen.all())


# ---------------------------------------------------------------- multi-host

def shared_run_dir(root: Path) -> Path:
    """The run folder, created by process 0 and its name broadcast to every process
    (orbax needs one checkpoint folder on a file system all hosts see)."""
    import jax

    from trainers.distributed import broadcast_text

    name = results.new_run_dir(root).name if jax.process_index() == 0 else ""
    return Path(root) / broadcast_text(name, 512)


def check_hosts_agree(plan: Plan, pack_result: PackResult, packed: str) -> None:
    """Every process must train the same plan on the same packed data: compare each
    host's (train records, shards, classes, local devices, plan digest) with process
    0's (a collective; nothing on a single process).

    Raises:
      SetupError: naming the first process that differs, the value and process 0's.
    """
    import jax

    from trainers.distributed import all_gather_ints

    if jax.process_count() == 1:
        return
    train = pack_result.split("train")
    names = ("train records", "train shards", "classes", "local devices", "plan digest")
    mine = (sum(train.shard_lengths), len(train.shard_lengths), pack_result.num_classes,
            jax.local_device_count(), zlib.crc32(plan.to_json(None).encode()) & 0x7FFFFFFF)
    rows = all_gather_ints(mine)
    for p, row in enumerate(rows[1:], start=1):
        for name, got, want in zip(names, row, rows[0]):
            if got != want:
                raise SetupError(f"process {p} differs from process 0: {name} {got:,} vs "
                                 f"{want:,} (packed data {packed}); every host must see the "
                                 f"same data set, plan and device count")


def plan_for_all_hosts(report: ProbeReport, req: TrainRequest) -> Plan:
    """Process 0's plan on every process (hosts may measure slightly differently, and
    the batch and shards must agree).

    Raises:
      SetupError: an override the planner rejects, or ``--partitions`` that does not
        fit the hosts and shards.
    """
    import jax

    from trainers.distributed import broadcast_text

    request = dataclasses.replace(req.plan_request, num_hosts=jax.process_count(),
                                  local_devices=jax.local_device_count())
    try:
        plan = planner.make_plan(report, req.preset, request)
    except ValueError as exc:
        raise SetupError(str(exc)) from None
    if req.partitions and (req.partitions % jax.process_count()
                           or req.partitions > plan.num_shards):
        raise SetupError(f"--partitions {req.partitions}: must be a multiple of the "
                         f"{jax.process_count()} processes and at most the "
                         f"{plan.num_shards} shards")
    return Plan.from_json(broadcast_text(plan.to_json(None)))


# ---------------------------------------------------------------- runs

def new_session(req: TrainRequest, *, say: Say, show: Show, progress: Progress) -> Session:
    """Set up a new run: run folder, probe (or reuse), plan, pack, the noise scale on
    the packed data when the batch is searched on several devices (then the plan
    again, with it, and a new pack only if the pack settings moved), the trainer's
    settings; process 0 writes ``probe.json``, ``plan.json``, ``pack.json``,
    ``bad_images.json`` and ``run.json``. ``show`` receives the plan and the pack
    result as they are ready (for rendering).

    Raises:
      SetupError: see :func:`plan_for_all_hosts` and :func:`check_hosts_agree`.
    """
    import jax

    primary = jax.process_index() == 0
    run = shared_run_dir(req.results_root)
    report = probe_or_reuse(req, say)
    plan = plan_for_all_hosts(report, req)
    packed, pack_result = pack_for_plan(req.data, plan, progress, req.val_data, req.val_labels)
    if searches_batch(req) and report.noise_scale is None and jax.device_count() > 1:
        scratch = run / "noise-probe"  # in the run folder: every host sees it
        report = add_noise_scale(report, req, plan, packed, pack_result.num_classes, say,
                                 workdir=scratch)
        key = planner.pack_cache_key(plan, req.data, req.val_data)
        plan = plan_for_all_hosts(report, req)  # a collective: every host is done with it
        if primary:
            shutil.rmtree(scratch, ignore_errors=True)
        if planner.pack_cache_key(plan, req.data, req.val_data) != key:
            packed, pack_result = pack_for_plan(req.data, plan, progress, req.val_data,
                                                req.val_labels)
    if primary:
        report.save(run / results.PROBE)
        plan.save(run / results.PLAN)
    show(plan)
    if primary:
        pack_result.save(run / results.PACK)
        results.save_json(run / results.BAD_IMAGES, [b.to_dict() for b in pack_result.bad_images])
    check_hosts_agree(plan, pack_result, packed)
    show(pack_result)
    record = RunRecord(
        data=req.data, packed=packed,
        config=planner.train_config(plan, req.preset, pack_result.num_classes),
        options=planner.loop_options(plan, partitions=req.partitions, **req.loop_overrides),
        argv=tuple(req.argv))
    if primary:
        record.save(run / results.RUN)
    return Session(run=run, plan=plan, record=record)


def resume_session(run: str | Path) -> Session:
    """The run in folder ``run``, to continue from its last checkpoint.

    Raises:
      SetupError: not a run folder.
    """
    run = Path(run)
    if not (run / results.PLAN).is_file() or not (run / results.RUN).is_file():
        raise SetupError(f"--resume {run}: not a run folder (no {results.PLAN} and "
                         f"{results.RUN})")
    return Session(run=run, plan=Plan.load(run / results.PLAN),
                   record=RunRecord.load(run / results.RUN))


def unfinished_run(req_root: Path, argv: list[str]) -> Path | None:
    """The unfinished run the same command left (single host only), or None."""
    import jax

    if jax.process_count() > 1:
        return None
    return results.find_unfinished_run(req_root, argv)


def train(session: Session, callback: Callable[[object], None],
          on_step_down: Callable[[TrainConfig, TrainConfig], None] | None = None
          ) -> TrainSummary:
    """Train the session's run (resuming from its checkpoints); process 0 writes
    ``metrics.jsonl`` (every record ``callback`` receives) and ``summary.json``.
    An out-of-memory step-down follows the planner's rule (``planner.step_down``);
    ``on_step_down(old, new)`` hears of it."""
    import jax

    from trainers.loop import train_and_evaluate

    primary = jax.process_index() == 0
    writer = results.MetricsWriter(session.run / results.METRICS) if primary else None

    def record(r):
        if writer:
            writer.write(r)
        callback(r)

    def on_oom(cfg: TrainConfig) -> TrainConfig | None:
        new = planner.step_down(cfg, session.plan)
        if new is not None and on_step_down is not None:
            on_step_down(cfg, new)
        return new

    try:
        summary = train_and_evaluate(session.config, session.record.packed, str(session.run),
                                     session.options, callback=record, on_oom=on_oom)
    finally:
        if writer:
            writer.close()
    if primary:
        summary.save(session.run / results.SUMMARY)
    return summary


def stall_report(data: str, preset: Preset, report: ProbeReport, steps: int,
                 progress: Progress, say: Say):
    """``probe --stall``: plan, pack, then time a short training run three ways
    (``probes.stall.measure_stall``). Returns the report with its ``stall`` field."""
    from probes.stall import measure_stall

    import jax

    plan = planner.make_plan(report, preset, PlanRequest(local_devices=jax.local_device_count()))
    packed, pack_result = pack_for_plan(data, plan, progress)
    say(f"stall: {steps} steps each with synthetic, cached and cold input")
    stall = measure_stall(planner.train_config(plan, preset, pack_result.num_classes), packed,
                          planner.loop_options(plan), steps=steps)
    return dataclasses.replace(report, stall=stall)
