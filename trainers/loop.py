"""The training run: packed shards in, a trained model, per-window throughput reports
and a summary out.

:func:`train_and_evaluate` drives the pmap steps of ``trainers.train`` with the input
pipeline of ``trainers.input_pipeline``. It reports through a callback (the CLI's
live view and ``metrics.jsonl`` writer) with :class:`StepReport` and
:class:`EvalReport` records, checkpoints on a timer and at a clean stop (SIGINT /
SIGTERM), and resumes from the newest checkpoint in ``workdir``.

Data stall = time the loop waits in ``next(batches)`` / wall time of the window
(the DS-Analyzer definition of a fetch stall as seen by the training loop, Mohan et
al., VLDB 2021).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import jax_utils

from autotune.records import Record
from trainers import input_pipeline as ip
from trainers import pack as pack_lib
from trainers import train as tr
from trainers.preprocess import AugmentConfig


@dataclass(frozen=True)
class LoopOptions(Record):
    """How the run is executed (the input pipeline and the bookkeeping).

    Attributes:
      threads: input pipeline threads (decode + augment).
      prefetch: batches prepared ahead on the host.
      device_prefetch: batches put on the devices ahead of the step (2 = double
        buffering).
      read_mode: ``random`` or ``sequential`` (see ``trainers.input_pipeline``).
      shuffle_window: records shuffled together in sequential mode.
      cache_decoded: keep decoded images in RAM after the first epoch.
      on_bad_record: ``skip`` or ``fail``.
      eval_every_epochs: evaluate every this many epochs (0: only at the end).
      checkpoint_every_secs: seconds between checkpoints (0: only at the end / stop).
      max_steps: stop after this many steps (None: the whole schedule); for probes
        and tests.
      partitions: shard groups with their own order (default: one per host); the
        same value gives the same batches on any number of hosts that divides it.
      workers: decode worker processes (0: threads only), see the input pipeline.
    """

    threads: int = 2
    prefetch: int = 4
    device_prefetch: int = 2
    read_mode: str = "random"
    shuffle_window: int = 4096
    cache_decoded: bool = False
    on_bad_record: str = "skip"
    eval_every_epochs: int = 1
    checkpoint_every_secs: float = 600.0
    max_steps: int | None = None
    partitions: int | None = None
    workers: int = 0


@dataclass(frozen=True)
class StepReport(Record):
    """Throughput and training metrics over the last window of steps.

    Attributes:
      step: steps done (global).
      total_steps: steps in the schedule.
      epoch: epochs done (fractional).
      images_per_s: global images/s over the window (all hosts).
      step_seconds: mean wall seconds per step over the window.
      wait_seconds: mean seconds per step the loop waited for input.
      data_stall_pct: 100 x wait / wall over the window.
      loss, accuracy: training loss and top-1 on the last step's batch.
      learning_rate: at the last step.
      bad_records: records skipped so far on this host.
      elapsed_seconds: since the run (or the resume) started, compile included.
      eta_seconds: remaining steps x mean step seconds.
    """

    step: int
    total_steps: int
    epoch: float
    images_per_s: float
    step_seconds: float
    wait_seconds: float
    data_stall_pct: float
    loss: float
    accuracy: float
    learning_rate: float
    bad_records: int
    elapsed_seconds: float
    eta_seconds: float


@dataclass(frozen=True)
class EvalReport(Record):
    """Held-out accuracy after ``epoch`` epochs (``count`` examples, all hosts)."""

    step: int
    epoch: float
    top1: float
    top5: float
    loss: float
    count: int
    bad_records: int
    seconds: float


@dataclass(frozen=True)
class OomEvent(Record):
    """The run ran out of device memory and continued at a smaller batch.

    Attributes:
      step: step at which the error surfaced.
      resumed_step: step the run continued from (the last checkpoint, converted to the
        new batch by images seen).
      old_per_device_batch / new_per_device_batch: the step-down.
      old_learning_rate / new_learning_rate: the rescaled peak learning rate.
      message: the first line of the allocator's error.
    """

    step: int
    resumed_step: int
    old_per_device_batch: int
    new_per_device_batch: int
    old_learning_rate: float
    new_learning_rate: float
    message: str


class DeviceOutOfMemory(RuntimeError):
    """The train step could not allocate device memory (XLA ``RESOURCE_EXHAUSTED``)."""

    def __init__(self, step: int, message: str):
        super().__init__(f"out of device memory at step {step}: {message}")
        self.step = step
        self.message = message


def is_out_of_memory(exc: BaseException) -> bool:
    """True for XLA's out-of-memory errors (``RESOURCE_EXHAUSTED`` / "Out of memory")."""
    text = str(exc)
    return isinstance(exc, DeviceOutOfMemory) or (
        "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text)


@dataclass(frozen=True)
class TrainSummary(Record):
    """The end of a run.

    Attributes:
      status: ``completed``, ``stopped`` (signal, checkpoint written) or
        ``max_steps``.
      steps, epochs: done in total (resumed runs included).
      resumed_from_step: step of the checkpoint the run started from (0: fresh).
      wall_seconds: of this process's run, compile included.
      compile_seconds: first step (compilation) wall time.
      images_per_s: mean global images/s after compilation.
      images_per_s_per_device: the same per device.
      data_stall_pct: mean over the run after compilation.
      final_eval: the last evaluation (None when there is no held-out split).
      bad_records: records skipped while training on this host.
      num_devices, num_hosts, global_batch: the layout (after any OOM step-down).
      per_device_batch: the batch the run ended with.
      peak_bytes_in_use: device 0's ``memory_stats()['peak_bytes_in_use']`` after the
        first measured window (None where the backend has no stats), to compare with
        the compiled memory analysis the batch was chosen by.
      oom_events: out-of-memory step-downs the run survived.
      params_sha256: digest of this host's final parameters and batch statistics
        (identical across hosts, and across an interrupted and an uninterrupted run).
    """

    status: str
    steps: int
    epochs: float
    resumed_from_step: int
    wall_seconds: float
    compile_seconds: float
    images_per_s: float
    images_per_s_per_device: float
    data_stall_pct: float
    final_eval: EvalReport | None
    bad_records: int
    num_devices: int
    num_hosts: int
    global_batch: int
    steps_per_epoch: int
    checkpoint_step: int | None
    per_device_batch: int = 0
    learning_rate: float = 0.0
    peak_bytes_in_use: int | None = None
    oom_events: tuple[OomEvent, ...] = ()
    params_sha256: str = ""


class _StopFlag:
    """Set by SIGINT / SIGTERM: the loop checkpoints and returns at the next step."""

    def __init__(self):
        self.event = threading.Event()
        self.signal_name = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.event.is_set():  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        self.event.set()

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _evaluate(p_eval, state, packed_dir: str, config: tr.TrainConfig, n_local: int,
              threads: int, step: int, epoch: float) -> EvalReport | None:
    result = pack_lib.load_pack_result(packed_dir)
    if not any(s.name == "validation" for s in result.splits):
        return None
    t0 = time.perf_counter()
    paths = pack_lib.shard_paths(packed_dir, "validation")
    lengths = result.split("validation").shard_lengths
    totals = {"top1": 0.0, "top5": 0.0, "loss": 0.0, "count": 0.0}
    bad = 0
    for batch in ip.eval_batches(paths, lengths, batch=n_local * config.per_device_batch,
                                 image_size=config.image_size,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count(), threads=threads):
        bad += int(batch["bad"])
        out = p_eval(state, tr.shard_batch(batch, n_local))
        out = jax.device_get(jax_utils.unreplicate(out))
        for k in totals:
            totals[k] += float(out[k])
    n = max(1.0, totals["count"])
    return EvalReport(step=step, epoch=epoch, top1=totals["top1"] / n, top5=totals["top5"] / n,
                      loss=totals["loss"] / n, count=int(totals["count"]), bad_records=bad,
                      seconds=time.perf_counter() - t0)


def train_and_evaluate(config: tr.TrainConfig, packed_dir: str, workdir: str,
                       options: LoopOptions = LoopOptions(), *,
                       callback: Callable[[Record], None] | None = None,
                       on_oom: Callable[[tr.TrainConfig], tr.TrainConfig | None] | None = None,
                       step_hook: Callable[[int], None] | None = None,
                       eval_at_end: bool = True) -> TrainSummary:
    """Train ``config`` on the packed data set in ``packed_dir``; checkpoints go to
    ``workdir/checkpoints`` and a rerun with the same ``workdir`` resumes.

    Args:
      config: model, optimizer and schedule (learning rate already scaled).
      packed_dir: output of ``trainers.pack.pack_folder`` (``train`` split, optional
        ``validation``).
      workdir: run folder.
      options: input pipeline and bookkeeping.
      callback: receives each :class:`StepReport`, :class:`EvalReport` and
        :class:`OomEvent`.
      on_oom: called with the config when the step runs out of device memory; returns
        the config to continue with (smaller batch, rescaled learning rate: the
        planner's rule) or None to give up. The run then continues from the last
        checkpoint, its step converted to the new batch by images seen, recompiled.
      step_hook: called with the step number before each step (fault injection in
        tests).
      eval_at_end: evaluate on the held-out split when the run ends (probes skip it).

    Returns:
      TrainSummary (with the OOM step-downs it survived).

    Raises:
      ValueError: the batch does not fit the data (fewer records than one batch per
        host) or the shards cannot feed the hosts.
      DeviceOutOfMemory: out of memory and ``on_oom`` gave no smaller config.
      trainers.input_pipeline.BadRecordError: a damaged record with
        ``on_bad_record='fail'``.
    """
    emit = callback or (lambda r: None)
    t_start = time.perf_counter()
    events: list[OomEvent] = []
    while True:
        try:
            summary = _train_once(config, packed_dir, workdir, options, emit, step_hook, t_start,
                                  eval_at_end)
            return dataclasses.replace(summary, oom_events=tuple(events))
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled here
            if not is_out_of_memory(exc):
                _raise_if_peer_lost(exc)
                raise
            step = getattr(exc, "step", -1)
            new = on_oom(config) if on_oom else None
            if new is None:
                raise DeviceOutOfMemory(step, str(exc).splitlines()[0]) from exc
            from trainers.checkpoint import Checkpointer

            last = Checkpointer(Path(workdir) / "checkpoints").latest_step() or 0
            resumed = last * config.per_device_batch // new.per_device_batch
            event = OomEvent(step=step, resumed_step=resumed,
                             old_per_device_batch=config.per_device_batch,
                             new_per_device_batch=new.per_device_batch,
                             old_learning_rate=config.learning_rate,
                             new_learning_rate=new.learning_rate,
                             message=str(exc).splitlines()[0][:300])
            events.append(event)
            emit(event)
            config = new


def _raise_if_peer_lost(exc: BaseException) -> None:
    """On a multi-host run, turn a failed collective into an error that names the
    process that stopped responding (instead of an opaque transport error)."""
    from trainers.input_pipeline import BadRecordError
    from trainers.distributed import PeerLostError, lost_processes

    if jax.process_count() == 1 or isinstance(exc, (BadRecordError, ValueError)):
        return
    lost = lost_processes()
    if lost:
        raise PeerLostError(
            f"process {jax.process_index()} of {jax.process_count()}: a collective failed "
            f"({str(exc).splitlines()[0][:200]}); process(es) {lost} stopped responding; "
            f"rerun the same command to continue from the last checkpoint") from exc


def _train_once(config: tr.TrainConfig, packed_dir: str, workdir: str, options: LoopOptions,
                emit, step_hook, t_start: float, eval_at_end: bool = True) -> TrainSummary:
    """One attempt of the run (see :func:`train_and_evaluate`); raises
    :class:`DeviceOutOfMemory` when the step cannot allocate."""
    from trainers.checkpoint import Checkpointer

    result = pack_lib.load_pack_result(packed_dir)
    if result.num_classes != config.num_classes:
        raise ValueError(f"config has {config.num_classes} classes, the packed data set "
                         f"{packed_dir} has {result.num_classes}")
    n_local = jax.local_device_count()
    n_global = jax.device_count()
    n_hosts = jax.process_count()
    host_batch = n_local * config.per_device_batch
    global_batch = n_global * config.per_device_batch
    train_split = result.split("train")
    spe = ip.steps_per_epoch(train_split.shard_lengths, host_batch, n_hosts, options.partitions)
    total_steps = max(1, int(round(config.epochs * spe)))
    epochs_int = int(math.ceil(total_steps / spe))
    all_paths = pack_lib.shard_paths(packed_dir, "train")

    lr_fn = tr.create_learning_rate_fn(config, spe)
    model = tr.create_model(config)
    state = tr.create_train_state(jax.random.PRNGKey(config.seed), config, model, lr_fn)
    ckpt = Checkpointer(Path(workdir) / "checkpoints")
    start_step = 0
    bad_total = 0
    if ckpt.latest_step() is not None:
        state, iter_state, extra, start_step = ckpt.restore(state)
        bad_total = int(extra.get("bad_records", 0))
        saved_gb = int(extra.get("global_batch", global_batch))
        if saved_gb != global_batch:  # after an OOM step-down: same images seen
            start_step = start_step * saved_gb // global_batch
            state = state.replace(step=start_step)
    state = jax_utils.replicate(state)

    cfg = ip.PipelineConfig(
        host_batch=host_batch,
        augment=AugmentConfig(image_size=config.image_size, min_scale=config.min_crop_scale),
        read_mode=options.read_mode, shuffle_window=options.shuffle_window,
        threads=options.threads, prefetch=options.prefetch,
        cache_decoded=options.cache_decoded, seed=config.seed,
        process_index=jax.process_index(), process_count=n_hosts,
        on_bad_record=options.on_bad_record, partitions=options.partitions,
        workers=options.workers)
    batches = ip.make_train_iterator(all_paths, train_split.shard_lengths, cfg, epochs_int,
                                     spe, start_step=start_step)
    p_train = tr.make_p_train_step(config, lr_fn)
    p_eval = tr.make_p_eval_step(config)

    def device_batches():
        for b in batches:
            yield tr.shard_batch(b, n_local), int(b["bad"])

    last_stop = (total_steps if options.max_steps is None
                 else min(total_steps, start_step + options.max_steps))
    status = "completed"
    step = start_step
    window_t0 = None
    window_wait = 0.0
    window_steps = 0
    run_wait = run_time = 0.0
    run_images = 0
    compile_s = 0.0
    pending = None
    last_eval = None
    last_ckpt_t = time.perf_counter()
    last_ckpt_step = start_step if start_step else None
    bad_lock = [bad_total]
    peak = None

    def bad_counter(it):
        for b, bad in it:
            bad_lock[0] += bad
            yield b

    dev_iter = jax_utils.prefetch_to_device(bad_counter(device_batches()),
                                            options.device_prefetch)

    def save(step_now):
        nonlocal last_ckpt_step
        if step_now == last_ckpt_step:
            return
        ckpt.save(step_now, state, {"next_batch": int(step_now)},
                  {"bad_records": int(bad_lock[0]), "global_batch": global_batch,
                   "config": config.to_dict()})
        last_ckpt_step = step_now

    with _StopFlag() as stop:
        while step < last_stop:
            t_wait = time.perf_counter()
            try:
                batch = next(dev_iter)
            except StopIteration:
                break
            t_got = time.perf_counter()
            try:
                if step_hook is not None:
                    step_hook(step)
                state, metrics = p_train(state, batch)
                if step == start_step:
                    jax.block_until_ready(metrics)
            except Exception as exc:  # noqa: BLE001
                if is_out_of_memory(exc):
                    raise DeviceOutOfMemory(step, str(exc).splitlines()[0]) from exc
                raise
            step += 1
            if step == start_step + 1:
                compile_s = time.perf_counter() - t_wait
                window_t0 = time.perf_counter()
                window_wait, window_steps = 0.0, 0
            else:
                window_wait += t_got - t_wait
                window_steps += 1
            log_now = (step % config.log_every_steps == 0 or step == last_stop) and window_steps
            if log_now:
                try:
                    m = jax.device_get(jax_utils.unreplicate(metrics))  # blocks on the device
                except Exception as exc:  # noqa: BLE001 - async errors surface here
                    if is_out_of_memory(exc):
                        raise DeviceOutOfMemory(step, str(exc).splitlines()[0]) from exc
                    raise
                if peak is None:
                    peak = _peak_bytes()
                now = time.perf_counter()
                wall = now - window_t0
                run_wait += window_wait
                run_time += wall
                run_images += window_steps * global_batch
                sps = wall / window_steps
                emit(StepReport(
                    step=step, total_steps=total_steps, epoch=step / spe,
                    images_per_s=window_steps * global_batch / wall, step_seconds=sps,
                    wait_seconds=window_wait / window_steps,
                    data_stall_pct=100.0 * window_wait / wall, loss=float(m["loss"]),
                    accuracy=float(m["accuracy"]), learning_rate=float(m["learning_rate"]),
                    bad_records=bad_lock[0], elapsed_seconds=now - t_start,
                    eta_seconds=sps * (total_steps - step)))
                window_t0, window_wait, window_steps = now, 0.0, 0
            end_of_epoch = step % spe == 0
            if end_of_epoch and options.eval_every_epochs and \
                    (step // spe) % options.eval_every_epochs == 0 and step != total_steps:
                jax.block_until_ready(state)  # steps in flight belong to the window
                t_e = time.perf_counter()
                last_eval = _evaluate(p_eval, state, packed_dir, config, n_local,
                                      options.threads, step, step / spe)
                if last_eval:
                    emit(last_eval)
                if window_t0 is not None:
                    window_t0 += time.perf_counter() - t_e  # evaluation is not step time
            if options.checkpoint_every_secs and \
                    time.perf_counter() - last_ckpt_t > options.checkpoint_every_secs:
                save(step)
                last_ckpt_t = time.perf_counter()
                if window_t0 is not None:
                    window_t0 = time.perf_counter()
                    window_wait, window_steps = 0.0, 0
            if stop.event.is_set():
                status = "stopped"
                break
    jax.block_until_ready(state)
    digest = params_digest(state)
    if status == "completed" and step < total_steps:
        status = "max_steps"
    save(step)
    if eval_at_end and (step >= total_steps or status == "max_steps"):
        last_eval = _evaluate(p_eval, state, packed_dir, config, n_local, options.threads,
                              step, step / spe) or last_eval
        if last_eval:
            emit(last_eval)
    ckpt.close()
    ips = run_images / run_time if run_time else float("nan")
    return TrainSummary(
        status=status, steps=step, epochs=step / spe, resumed_from_step=start_step,
        wall_seconds=time.perf_counter() - t_start, compile_seconds=compile_s,
        images_per_s=ips, images_per_s_per_device=ips / n_global,
        data_stall_pct=100.0 * run_wait / run_time if run_time else float("nan"),
        final_eval=last_eval, bad_records=bad_lock[0], num_devices=n_global,
        num_hosts=n_hosts, global_batch=global_batch, steps_per_epoch=spe,
        checkpoint_step=last_ckpt_step, per_device_batch=config.per_device_batch,
        learning_rate=config.learning_rate, peak_bytes_in_use=peak, params_sha256=digest)


def params_digest(replicated_state) -> str:
    """SHA-256 of the first local device's parameters and batch statistics (bytes of
    every leaf in tree order)."""
    import hashlib

    state = jax.device_get(jax_utils.unreplicate(replicated_state))
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves((state.params, state.batch_stats)):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def _peak_bytes() -> int | None:
    """Device 0's peak bytes in use, where the backend keeps statistics."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None
