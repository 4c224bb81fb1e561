"""The accelerator side: memory the compiled train step needs, memory available, and
the images/s the train step consumes on synthetic input.

* Step memory: ``trainers.train.compiled_step_memory`` (XLA's
  ``compile().memory_analysis()``: arguments + outputs + temporaries - aliased bytes)
  at a given per-device batch, with nothing executed or allocated.
* Memory available: the device's ``memory_stats()['bytes_limit']`` (what XLA's
  allocator may use: JAX preallocates 75% of the GPU by default, and this is the limit
  the step must fit in); on CPU, where there is none, a budget in bytes (a fraction of
  free RAM, or ``--memory-budget``).
* Step rate: ``trainers.train.measure_step_rate`` on all local devices (compile and
  warm-up steps excluded, clock read after ``block_until_ready``): the rate the input
  pipeline must sustain.
* Rate curve (:func:`step_rate_curve`): the same at a few per-device batches, from
  which the planner takes the throughput knee (the smallest batch within a few
  percent of the best images/s).
"""

from __future__ import annotations

import time

import psutil

from trainers import train as tr
from probes.records import AcceleratorReport, StepMemory, StepRate


def device_memory_limit(budget_bytes: int | None = None, *, ram_fraction: float = 0.5) -> tuple[int, str]:
    """Bytes one device may use and where the figure comes from.

    ``budget_bytes`` (the user's ``--memory-budget``) wins; else the first local
    device's ``memory_stats()['bytes_limit']``; else (CPU) ``ram_fraction`` of the
    available RAM divided by the local device count (fake CPU devices share RAM).
    """
    import jax

    if budget_bytes:
        return int(budget_bytes), "user-budget"
    dev = jax.local_devices()[0]
    stats = None
    try:
        stats = dev.memory_stats()
    except Exception:  # noqa: BLE001 - backends without stats
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), "bytes_limit"
    avail = psutil.virtual_memory().available
    return int(avail * ram_fraction / jax.local_device_count()), "cpu-ram-budget"


def step_memory(config: tr.TrainConfig, per_device_batch: int) -> StepMemory | None:
    """Compiled memory of the train step at ``per_device_batch`` (None when the
    backend gives no analysis)."""
    t0 = time.perf_counter()
    got = tr.compiled_step_memory(config, per_device_batch)
    if got is None:
        return None
    return StepMemory(per_device_batch=per_device_batch, argument=got["argument"],
                      output=got["output"], temp=got["temp"], alias=got["alias"],
                      total=got["total"], compile_s=time.perf_counter() - t0)


def step_rate(config: tr.TrainConfig, *, steps: int = 10, warmup: int = 2) -> StepRate:
    """Measure the train step's images/s on synthetic input on all local devices."""
    import jax

    got = tr.measure_step_rate(config, steps=steps, warmup=warmup)
    n = jax.local_device_count()
    return StepRate(per_device_batch=config.per_device_batch,
                    global_batch=int(got["global_batch"]), images_per_s=got["images_per_s"],
                    images_per_s_per_device=got["images_per_s"] / n,
                    step_s=got["step_s"], compile_s=got["compile_s"],
                    steps=steps)


def step_rate_curve(config: tr.TrainConfig, batches: tuple[int, ...], *,
                    steps: int = 5) -> tuple[StepRate, ...]:
    """:func:`step_rate` at each per-device batch of ``batches`` (ascending), the
    model of ``config``; each point compiles the step once. Returns one
    ``StepRate`` per batch, in ascending batch order."""
    import dataclasses

    return tuple(step_rate(dataclasses.replace(config, per_device_batch=b), steps=steps,
                           warmup=1) for b in sorted(set(batches)))


def probe_accelerator(config: tr.TrainConfig, *, budget_bytes: int | None = None,
                      memory_batches: tuple[int, ...] = (), rate_steps: int = 10,
                      measure_rate: bool = True,
                      curve_batches: tuple[int, ...] = ()) -> AcceleratorReport:
    """Measure the accelerator for ``config`` (its ``per_device_batch`` is the batch
    whose step rate is measured).

    Args:
      config: the model and batch to measure.
      budget_bytes: per-device memory budget overriding the device's own limit.
      memory_batches: per-device batches whose compiled memory is recorded.
      rate_steps: steps timed for the step rate.
      measure_rate: False to skip the step-rate measurement.
      curve_batches: per-device batches of the rate curve (:func:`step_rate_curve`,
        ``rate_steps`` steps each); the point at ``config.per_device_batch`` is the
        step rate (not measured twice).
    """
    import jax

    limit, source = device_memory_limit(budget_bytes)
    mems = tuple(m for m in (step_memory(config, b) for b in memory_batches) if m is not None)
    curve = step_rate_curve(config, curve_batches, steps=rate_steps) if curve_batches else ()
    rate = next((r for r in curve if r.per_device_batch == config.per_device_batch), None)
    if rate is None and measure_rate:
        rate = step_rate(config, steps=rate_steps)
    dev = jax.local_devices()[0]
    return AcceleratorReport(
        backend=jax.default_backend(), device_kind=dev.device_kind,
        local_devices=jax.local_device_count(), memory_limit_bytes=limit,
        memory_source=source,
        model=f"{config.arch}/w{config.width}/{config.image_size}px/{config.dtype}",
        step_memory=mems, step_rate=rate, rate_curve=curve)

