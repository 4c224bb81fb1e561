"""The gradient noise scale of this model on this data: a short real training run.

McCandlish et al. 2018, "An Empirical Model of Large-Batch Training": the simple noise
scale ``B_simple = tr(Sigma) / |G|^2`` approximates the critical batch, past which a
larger batch buys few fewer steps. The data-parallel step already has what the
estimate needs: ``trainers.train.train_step`` returns the mean squared norm of the
per-device gradients and the squared norm of the averaged gradient, and
``trainers.loop`` keeps their moving averages (``trainers.noise_scale``). This probe
only runs the trainers' loop (its step, its input pipeline, on the packed data) for
the first ``steps`` steps in a temporary folder and reads the figures back; the
planner decides what to do with them.

Two batch sizes are needed (``B_small`` per device, ``B_big`` global), so on one
device there is nothing to measure: the report says so.

The estimate assumes each device's gradient depends on its own examples only. Batch
normalisation whose statistics are shared across devices breaks that: the gradient
through the shared mean and variance centres every device's gradient on the others'
(they come out anti-correlated), ``|G_small|^2`` exceeds ``(B_big / B_small) x
|G_big|^2`` and the estimate of ``|G|^2`` turns negative. Measured on Imagenette
(cpu-small, 16 x 8 devices, the same warmup; ``bench/results/batch_recipe_cpu*.json``):
with statistics over all 8 devices ``B_simple`` read 606 and 2,202 after 10 and 20
steps and the averaged ``|G|^2`` was negative from step 30 on; with per-device
statistics it read 119 and 147, rising to 223 at step 60. So the probe runs with
per-device statistics where the trainer has the option
(``TrainConfig.bn_group_devices = 1``).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time

from probes.records import NoiseScaleReport


def _finite(x: float) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def measure_noise_scale(config, packed_dir: str, options, *, steps: int,
                        devices: int, workdir: str | None = None) -> NoiseScaleReport:
    """Train ``config`` (a ``trainers.options.TrainConfig``, learning rate already
    scaled) for ``steps`` steps on the packed data set with loop ``options``
    (``trainers.options.LoopOptions``) and return the noise scale at the end.

    Args:
      config: model, per-device batch, schedule; its ``epochs`` set the learning-rate
        schedule the first steps follow (the run's own).
      packed_dir: output of ``trainers.pack.pack_folder``.
      options: the run's input pipeline settings.
      steps: steps to train (the first is the compilation; a few hundred on an
        accelerator, fewer on a CPU).
      devices: devices over all hosts (``jax.device_count()``); with one, nothing is
        measured.
      workdir: an empty folder for the throwaway run's checkpoint, the same for every
        process (on several hosts, one every host sees); default: a temporary folder
        (one host).

    Raises:
      ValueError: ``steps`` < 2.
    """
    from trainers.loop import train_and_evaluate
    from trainers.noise_scale import EMA_DECAY

    if steps < 2:
        raise ValueError(f"noise-scale probe: steps ({steps}) must be >= 2")
    b, gb = config.per_device_batch, config.per_device_batch * devices
    base = dict(per_device_batch=b, global_batch=gb, devices=devices,
                learning_rate=config.learning_rate, ema_decay=EMA_DECAY)
    if devices < 2:
        return NoiseScaleReport(steps=0, averaged_steps=0, b_simple=None, grad_sq=None,
                                trace_sigma=None, per_window=(), seconds=0.0,
                                note="one device: the per-device and the global batch are "
                                     "the same, so the noise scale cannot be estimated", **base)
    opts = dataclasses.replace(options, max_steps=steps, eval_every_epochs=0,
                               checkpoint_every_s=0, synthetic_steps=0)
    if "bn_group_devices" in {f.name for f in dataclasses.fields(config)}:
        config = dataclasses.replace(config, bn_group_devices=1)  # independent gradients
    cfg = dataclasses.replace(config, log_every_steps=max(1, min(config.log_every_steps,
                                                                 steps // 5 or 1)))
    windows: list[float] = []
    t0 = time.perf_counter()
    def collect(r) -> None:
        if hasattr(r, "noise_scale"):
            windows.append(r.noise_scale)

    if workdir is not None:
        s = train_and_evaluate(cfg, packed_dir, workdir, opts, eval_at_end=False,
                               callback=collect)
    else:
        with tempfile.TemporaryDirectory(prefix="autotune-noise-") as work:
            s = train_and_evaluate(cfg, packed_dir, work, opts, eval_at_end=False,
                                   callback=collect)
    return NoiseScaleReport(steps=s.steps, averaged_steps=s.noise_steps,
                            b_simple=_finite(s.noise_scale), grad_sq=_finite(s.noise_grad_sq),
                            trace_sigma=_finite(s.noise_trace_sigma), per_window=tuple(windows),
                            seconds=time.perf_counter() - t0,
                            note="" if _finite(s.noise_scale) else
                            "the averaged |G|^2 was not positive: gradient noise dominated "
                            "every step (the critical batch is at least the global batch)",
                            **base)
