"""The training run: packed shards in, a trained model, per-window throughput reports
and a summary out.

:func:`train_and_evaluate` drives the pmap steps of ``trainers.train`` with the input
pipeline of ``trainers.input_pipeline``, fed to the devices by ``trainers.feed`` (a
background thread, ``device_prefetch`` batches ahead). It reports through a callback
(the CLI's live view and ``metrics.jsonl`` writer) with :class:`StepReport` and
:class:`EvalReport` records, and resumes from the newest checkpoint in ``workdir``.

One decision for all hosts. Stop (SIGINT / SIGTERM on any process), timed checkpoints
(process 0's clock) and their step are decided at log steps with
``trainers.distributed.agree``, a collective every process calls at the same step;
the end of the schedule, ``max_steps`` and evaluations fall on steps every host
computes alike. So every host checkpoints and stops at the same step, and a timed
checkpoint (whose orbax save starts with a barrier) can never leave hosts waiting for
each other at different steps.

Two input figures, per window and for the run (DS-Analyzer, Mohan et al., "Analyzing
and Mitigating Data Stalls in DNN Training", VLDB 2021, section 3):

* **data stall** = share of the step time the accelerators sit idle for want of
  input: ``1 - t_synthetic / t_step``, where ``t_synthetic`` is the step time on
  input already on the device (the same compiled step run ``synthetic_steps`` times
  on a copy of the state and the first batch, right after compilation) and
  ``t_step`` the measured step time on real input. JAX dispatch is asynchronous, so
  the time the Python loop waits is not the time the devices wait.
* **host wait** = share of wall time the training thread spent blocked waiting for
  the next device batch (``DeviceFeed.wait_s``); reported separately.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from trainers.records import Record
from trainers import distributed
from trainers import input_pipeline as ip
from trainers import pack as pack_lib
from trainers import train as tr
from trainers.feed import DeviceFeed, replicated_sharding
from trainers.noise_scale import NoiseScaleEMA
from trainers.options import AugmentConfig
from trainers.stopping import StopSignals
from trainers.summaries import EvalReport, OomEvent, StepReport, TrainSummary
from trainers.options import LoopOptions


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
                                 image_size=config.eval_size,
                                 crop_fraction=config.eval_crop_fraction,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count(), threads=threads):
        bad += int(batch["bad"])
        out = jax.device_get(p_eval(state, tr.shard_batch(batch, n_local)))
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
        On several hosts every process must run out of memory (they run the same
        program) and meet at a barrier first; otherwise the run ends with the error.
      step_hook: called with the step number before each step (fault injection in
        tests).
      eval_at_end: evaluate on the held-out split when the run ends (probes skip it).

    Returns:
      TrainSummary (with the OOM step-downs it survived).

    Raises:
      ValueError: the batch does not fit the data (fewer records than one batch per
        host) or the shards cannot feed the hosts.
      DeviceOutOfMemory: out of memory and ``on_oom`` gave no smaller config (or not
        every host ran out of memory).
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
            first_line = str(exc).splitlines()[0]
            new = on_oom(config) if on_oom else None
            if new is None:
                raise DeviceOutOfMemory(step, first_line) from exc
            if not distributed.barrier(f"autotune-oom-{len(events)}", timeout_s=120.0):
                raise DeviceOutOfMemory(step, f"{first_line} (on process {jax.process_index()} "
                                        f"only: the other processes did not run out of memory "
                                        f"within 120 s, so the step-down cannot be taken by all; "
                                        f"rerun with a smaller --batch)") from exc
            from trainers.checkpoint import Checkpointer

            last = Checkpointer(Path(workdir) / "checkpoints").latest_step() or 0
            resumed = last * config.per_device_batch // new.per_device_batch
            event = OomEvent(step=step, resumed_step=resumed,
                             old_per_device_batch=config.per_device_batch,
                             new_per_device_batch=new.per_device_batch,
                             old_learning_rate=config.learning_rate,
                             new_learning_rate=new.learning_rate,
                             message=first_line[:300])
            events.append(event)
            emit(event)
            config = new


def _raise_if_peer_lost(exc: BaseException) -> None:
    """On a multi-host run, a collective that failed because another process stopped
    responding ends this process at once with one line naming it (exit code
    ``trainers.distributed.EXIT_PEER_LOST``): a normal exit would wait in JAX's
    shutdown barrier for the lost process."""
    from trainers.input_pipeline import BadRecordError
    from trainers.distributed import EXIT_PEER_LOST, exit_now, lost_processes

    if jax.process_count() == 1 or isinstance(exc, (BadRecordError, ValueError)):
        return
    lost = lost_processes()
    if lost:
        exit_now(EXIT_PEER_LOST,
                 f"autotune: process {jax.process_index()} of {jax.process_count()}: a "
                 f"collective failed ({str(exc).splitlines()[0][:200]}); process(es) "
                 f"{', '.join(map(str, lost))} stopped responding; exiting with code "
                 f"{EXIT_PEER_LOST}. Every process resumes from the last checkpoint when the "
                 f"same command is run again (or with --resume RUN).")


@dataclass(frozen=True)
class _Layout:
    """Sizes of one attempt of the run."""

    n_local: int
    n_global: int
    n_hosts: int
    host_batch: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int


def _layout(config: tr.TrainConfig, result, options: LoopOptions) -> _Layout:
    n_local, n_global, n_hosts = jax.local_device_count(), jax.device_count(), jax.process_count()
    host_batch = n_local * config.per_device_batch
    spe = ip.steps_per_epoch(result.split("train").shard_lengths, host_batch, n_hosts,
                             options.partitions)
    total = max(1, int(round(config.epochs * spe)))
    return _Layout(n_local=n_local, n_global=n_global, n_hosts=n_hosts, host_batch=host_batch,
                   global_batch=n_global * config.per_device_batch, steps_per_epoch=spe,
                   total_steps=total, epochs=int(math.ceil(total / spe)))


class _Decisions:
    """Stop and checkpoint, decided by every host at the same log step.

    Each host offers ``(signal number, its process index + 1 if signalled, checkpoint
    request)``; :func:`trainers.distributed.agree` returns the maxima to all. Only
    process 0 raises checkpoint requests (a counter, bumped when
    ``checkpoint_every_s`` have passed since its last checkpoint), so the timed
    checkpoint follows one clock.
    """

    def __init__(self, signals: StopSignals, every_s: float):
        self.signals = signals
        self.every_s = every_s
        self.primary = jax.process_index() == 0
        self.requested = self.handled = 0
        self.last_checkpoint = time.perf_counter()
        self.stop_reason = ""

    def checkpointed(self) -> None:
        self.last_checkpoint = time.perf_counter()

    def decide(self) -> tuple[bool, bool]:
        """``(checkpoint_now, stop_now)``, the same on every host (a collective)."""
        if (self.primary and self.every_s and self.requested == self.handled
                and time.perf_counter() - self.last_checkpoint > self.every_s):
            self.requested += 1
        signum = self.signals.signum if self.signals.event.is_set() else 0
        sig, who, req = distributed.agree(
            [signum, jax.process_index() + 1 if signum else 0, self.requested])
        checkpoint = req > self.handled
        self.handled = max(self.handled, req)
        if sig and not self.stop_reason:
            import signal as _signal

            self.stop_reason = f"{_signal.Signals(sig).name} on process {who - 1}"
        return checkpoint, bool(sig)


class _Meter:
    """Step time, host wait and data stall per log window and for the run, and the
    gradient noise scale's moving averages (``trainers.noise_scale``; only with more
    than one device: the per-device and the global batch must differ)."""

    def __init__(self, feed: DeviceFeed, global_batch: int, per_device_batch: int = 0):
        self.feed = feed
        self.global_batch = global_batch
        self.noise = (NoiseScaleEMA(per_device_batch, global_batch)
                      if 0 < per_device_batch < global_batch else None)
        self.synthetic_s = float("nan")
        self.run_time = self.run_wait = 0.0
        self.run_steps = 0
        self.skipped = 0
        self.restart()

    def restart(self) -> None:
        """Start a window now (after compilation, an evaluation or a checkpoint)."""
        self.t0 = time.perf_counter()
        self.wait0 = self.feed.wait_s
        self.metrics: list = []

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation) out of the window's wall time."""
        self.t0 += seconds

    def report(self, step: int, layout: _Layout, bad: int, t_start: float) -> StepReport:
        """Fetch the window's metrics (blocks on the device) and close the window."""
        ms = jax.device_get(self.metrics)
        now = time.perf_counter()
        n = len(ms)
        wall, wait = now - self.t0, self.feed.wait_s - self.wait0
        self.run_time += wall
        self.run_wait += wait
        self.run_steps += n
        self.skipped += int(round(sum(float(m["nonfinite"][0]) for m in ms)))
        self._fold_noise(ms)
        noise = self.noise_figures()
        sps = wall / n
        report = StepReport(
            step=step, total_steps=layout.total_steps, epoch=step / layout.steps_per_epoch,
            images_per_s=n * self.global_batch / wall, step_s=sps, wait_s=wait / n,
            data_stall_pct=stall_pct(self.synthetic_s, sps),
            loss=float(np.mean([m["loss"][0] for m in ms])),
            accuracy=float(np.mean([m["accuracy"][0] for m in ms])),
            learning_rate=float(ms[-1]["learning_rate"][0]), bad_records=bad,
            elapsed_s=now - t_start, eta_s=sps * (layout.total_steps - step),
            host_wait_pct=100.0 * wait / wall, synthetic_step_s=self.synthetic_s,
            skipped_steps=self.skipped, noise_scale=noise["noise_scale"],
            noise_grad_sq=noise["noise_grad_sq"], noise_trace_sigma=noise["noise_trace_sigma"])
        self.restart()
        return report

    def _fold_noise(self, ms: list) -> None:
        """Each step's ``grad_sq_per_device`` / ``grad_sq_mean`` into the averages
        (steps skipped as non-finite are left out)."""
        if self.noise is None:
            return
        for m in ms:
            if "grad_sq_mean" in m and not float(m["nonfinite"][0]):
                self.noise.update(float(m["grad_sq_per_device"][0]), float(m["grad_sq_mean"][0]))

    def noise_figures(self) -> dict:
        """``noise_scale``, ``noise_grad_sq``, ``noise_trace_sigma`` (NaN without
        estimates) and ``noise_steps``."""
        nan = float("nan")
        e = self.noise
        if e is None or not e.steps:
            return {"noise_scale": nan, "noise_grad_sq": nan, "noise_trace_sigma": nan,
                    "noise_steps": 0}
        return {"noise_scale": e.b_simple, "noise_grad_sq": e.grad_sq,
                "noise_trace_sigma": e.trace_sigma, "noise_steps": e.steps}


def stall_pct(synthetic_step_s: float, step_s: float) -> float:
    """Data stall in percent: ``100 x (1 - t_synthetic / t_step)``, at least 0; NaN
    when either time is unknown (DS-Analyzer, Mohan et al. 2021)."""
    if not (synthetic_step_s > 0 and step_s > 0):
        return float("nan")
    return max(0.0, 100.0 * (1.0 - synthetic_step_s / step_s))


def _synthetic_step_seconds(p_train, state, batch, steps: int) -> float:
    """Seconds per step of the compiled step on ``batch`` (already on the devices),
    run on a copy of ``state`` that is then dropped: the accelerators' time with no
    input pipeline. Two untimed steps first; the clock is read after blocking."""
    if steps <= 0:
        return float("nan")
    copy = jax.tree_util.tree_map(lambda x: x.copy(), state)
    for _ in range(2):
        copy, metrics = p_train(copy, batch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        copy, metrics = p_train(copy, batch)
    jax.block_until_ready((copy, metrics))
    return (time.perf_counter() - t0) / steps


def _run_step(p_train, state, batch, step: int, step_hook):
    try:
        if step_hook is not None:
            step_hook(step)
        return p_train(state, batch)
    except Exception as exc:  # noqa: BLE001
        if is_out_of_memory(exc):
            raise DeviceOutOfMemory(step, str(exc).splitlines()[0]) from exc
        raise


def _restore(ckpt, state, global_batch: int):
    """``(state, start_step, bad_records, skipped_steps)`` from the newest checkpoint
    (the step converted by images seen after an OOM step-down), or the fresh state."""
    if ckpt.latest_step() is None:
        return state, 0, 0, 0
    state, _, extra, start = ckpt.restore(state)
    saved_gb = int(extra.get("global_batch", global_batch))
    if saved_gb != global_batch:  # after an OOM step-down: same images seen
        start = start * saved_gb // global_batch
        state = state.replace(step=start)
    return state, start, int(extra.get("bad_records", 0)), int(extra.get("skipped_steps", 0))


def _train_once(config: tr.TrainConfig, packed_dir: str, workdir: str, options: LoopOptions,
                emit, step_hook, t_start: float, eval_at_end: bool = True) -> TrainSummary:
    """One attempt of the run (see :func:`train_and_evaluate`); raises
    :class:`DeviceOutOfMemory` when the step cannot allocate."""
    from trainers.checkpoint import Checkpointer

    result = pack_lib.load_pack_result(packed_dir)
    if result.num_classes != config.num_classes:
        raise ValueError(f"config has {config.num_classes} classes, the packed data set "
                         f"{packed_dir} has {result.num_classes}")
    lay = _layout(config, result, options)
    lr_fn = tr.create_learning_rate_fn(config, lay.steps_per_epoch)
    state = tr.create_train_state(jax.random.PRNGKey(config.seed), config,
                                  tr.create_model(config), lr_fn)
    ckpt = Checkpointer(Path(workdir) / "checkpoints")
    state, start_step, bad0, skipped0 = _restore(ckpt, state, lay.global_batch)
    state = jax.device_put(state, replicated_sharding())
    cfg = ip.PipelineConfig(
        host_batch=lay.host_batch,
        augment=AugmentConfig(image_size=config.image_size, min_scale=config.min_crop_scale),
        read_mode=options.read_mode, shuffle_window=options.shuffle_window,
        decode_threads=options.decode_threads, prefetch_batches=options.prefetch_batches,
        cache_decoded=options.cache_decoded, seed=config.seed,
        process_index=jax.process_index(), process_count=lay.n_hosts,
        on_bad_record=options.on_bad_record, partitions=options.partitions,
        decode_workers=options.decode_workers, epoch_sizes=_epoch_sizes(config, lay.epochs))
    batches = ip.make_train_iterator(pack_lib.shard_paths(packed_dir, "train"),
                                     result.split("train").shard_lengths, cfg, lay.epochs,
                                     lay.steps_per_epoch, start_step=start_step)
    p_train = tr.make_p_train_step(config, lr_fn)
    p_eval = tr.make_p_eval_step(config)
    last_stop = (lay.total_steps if options.max_steps is None
                 else min(lay.total_steps, start_step + options.max_steps))
    run = _RunState(step=start_step, bad=bad0, checkpoint_step=start_step or None)
    with DeviceFeed(batches, depth=options.device_prefetch) as feed, StopSignals() as signals:
        # The noise scale needs independent per-device gradients: per-device batch-norm
        # statistics (trainers.noise_scale); with groups of devices it is not tracked.
        meter = _Meter(feed, lay.global_batch, config.per_device_batch
                       if getattr(config, "bn_group_devices", 1) == 1 else 0)
        meter.skipped = skipped0
        decisions = _Decisions(signals, options.checkpoint_every_s)

        def save(step_now: int) -> None:
            if step_now == run.checkpoint_step:
                return
            ckpt.save(step_now, run.state, {"next_batch": int(step_now)},
                      {"bad_records": int(run.bad), "global_batch": lay.global_batch,
                       "skipped_steps": int(meter.skipped), "config": config.to_dict()})
            run.checkpoint_step = step_now
            decisions.checkpointed()

        run.state = state
        status = _steps(run, feed, meter, decisions, save, p_train, p_eval, config, lay,
                        options, packed_dir, last_stop, start_step, emit, step_hook, t_start)
        jax.block_until_ready(run.state)
        digest = params_digest(run.state)
        if status == "completed" and run.step < lay.total_steps:
            status = "max_steps"
        save(run.step)
        last_eval = run.last_eval
        if eval_at_end and (run.step >= lay.total_steps or status == "max_steps"):
            last_eval = _evaluate(p_eval, run.state, packed_dir, config, lay.n_local,
                                  options.decode_threads, run.step, run.step / lay.steps_per_epoch
                                  ) or last_eval
            if last_eval:
                emit(last_eval)
    ckpt.close()
    ips = meter.run_steps * lay.global_batch / meter.run_time if meter.run_time else float("nan")
    step_s = meter.run_time / meter.run_steps if meter.run_steps else float("nan")
    return TrainSummary(
        status=status, steps=run.step, epochs=run.step / lay.steps_per_epoch,
        resumed_from_step=start_step, wall_s=time.perf_counter() - t_start,
        compile_s=run.compile_s, images_per_s=ips,
        images_per_s_per_device=ips / lay.n_global,
        data_stall_pct=stall_pct(meter.synthetic_s, step_s), final_eval=last_eval,
        bad_records=run.bad, num_devices=lay.n_global, num_hosts=lay.n_hosts,
        global_batch=lay.global_batch, steps_per_epoch=lay.steps_per_epoch,
        checkpoint_step=run.checkpoint_step, per_device_batch=config.per_device_batch,
        learning_rate=config.learning_rate, peak_bytes_in_use=run.peak, params_sha256=digest,
        host_wait_pct=100.0 * meter.run_wait / meter.run_time if meter.run_time else float("nan"),
        synthetic_images_per_s=(lay.global_batch / meter.synthetic_s
                                if meter.synthetic_s > 0 else float("nan")),
        skipped_steps=meter.skipped,
        stop_reason=decisions.stop_reason if status == "stopped" else "",
        **meter.noise_figures())


def _epoch_sizes(config: tr.TrainConfig, epochs: int) -> tuple[int, ...] | None:
    """The training side of each epoch under progressive resizing
    (``TrainConfig.image_size_at``), None without it."""
    if config.progressive_min_size is None:
        return None
    return tuple(config.image_size_at(e) for e in range(epochs))


@dataclass
class _RunState:
    """What the step loop changes: the replicated train state and the counters."""

    step: int
    bad: int
    checkpoint_step: int | None
    state: object = None
    compile_s: float = 0.0
    peak: int | None = None
    last_eval: EvalReport | None = None
    image_shape: tuple | None = None

    def new_shape(self, batch) -> bool:
        """True when ``batch``'s images have another shape than the last batch's (a
        progressive-resize step: the step recompiles) and not on the first batch."""
        shape = tuple(batch["image"].shape)
        changed = self.image_shape is not None and shape != self.image_shape
        self.image_shape = shape
        return changed


def _steps(run: _RunState, feed: DeviceFeed, meter: _Meter, decisions: _Decisions, save,
           p_train, p_eval, config: tr.TrainConfig, lay: _Layout, options: LoopOptions,
           packed_dir: str, last_stop: int, start_step: int, emit, step_hook,
           t_start: float) -> str:
    """The step loop; returns ``completed`` or ``stopped``. Every branch that needs a
    collective (log step decisions, evaluation) is taken on a step every host
    computes alike."""
    spe = lay.steps_per_epoch
    while run.step < last_stop:
        try:
            batch, scalars = next(feed)
        except StopIteration:
            break
        run.bad += int(scalars.get("bad", 0))
        # A new image side (progressive resizing) recompiles the step: timed as
        # compilation and measured again for the stall reference, like the first.
        compiles = run.new_shape(batch) or run.step == start_step
        if compiles and run.step != start_step:
            jax.block_until_ready(run.state)  # steps in flight belong to the window
            if meter.metrics:  # close the window at the old size before compiling
                emit(meter.report(run.step, lay, run.bad, t_start))
        t0 = time.perf_counter()
        run.state, metrics = _run_step(p_train, run.state, batch, run.step, step_hook)
        run.step += 1
        if compiles:  # compilation: time it, then the stall reference
            jax.block_until_ready(metrics)
            run.compile_s += time.perf_counter() - t0
            meter.synthetic_s = _synthetic_step_seconds(p_train, run.state, batch,
                                                        options.synthetic_steps)
            meter.restart()
        else:
            meter.metrics.append(metrics)
        log_now = (run.step % config.log_every_steps == 0 or run.step == last_stop)
        if log_now and meter.metrics:
            try:
                emit(meter.report(run.step, lay, run.bad, t_start))
            except Exception as exc:  # noqa: BLE001 - async errors surface here
                if is_out_of_memory(exc):
                    raise DeviceOutOfMemory(run.step, str(exc).splitlines()[0]) from exc
                raise
            if run.peak is None:
                run.peak = _peak_bytes()
        if log_now:
            checkpoint, stop = decisions.decide()
            if checkpoint or stop:
                save(run.step)
                meter.restart()
            if stop:
                return "stopped"
        if (run.step % spe == 0 and options.eval_every_epochs
                and (run.step // spe) % options.eval_every_epochs == 0
                and run.step != lay.total_steps):
            jax.block_until_ready(run.state)  # steps in flight belong to the window
            t_e = time.perf_counter()
            run.last_eval = _evaluate(p_eval, run.state, packed_dir, config, lay.n_local,
                                      options.decode_threads, run.step, run.step / spe)
            if run.last_eval:
                emit(run.last_eval)
            meter.pause(time.perf_counter() - t_e)
    return "completed"


def params_digest(replicated_state) -> str:
    """SHA-256 of the parameters and batch statistics of the replicated train state
    (bytes of every leaf in tree order, as read from the first local device)."""
    import hashlib

    state = jax.device_get(replicated_state)
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
