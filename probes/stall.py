"""Where the training time goes: the DS-Analyzer method (Mohan et al., "Analyzing and
Mitigating Data Stalls in DNN Training", VLDB 2021, section 3).

A short training run is timed three ways with the same model, batch and pipeline:

1. **synthetic**: the same batch over and over, already on the device: compute only
   (``trainers.train.measure_step_rate``);
2. **cached**: real input from the packed shards after they were read once, so every
   read hits the page cache: compute + preprocessing;
3. **cold**: real input after the shards were evicted from the page cache
   (``posix_fadvise(DONTNEED)``): compute + preprocessing + fetch.

With per-image times ``t_s <= t_c <= t_d`` (seconds per image, the inverse of the
measured images/s): preprocessing stall = ``(t_c - t_s) / t_d``, fetch stall =
``(t_d - t_c) / t_d``, compute share = ``t_s / t_d`` (negative differences, from
noise, count as 0). The bottleneck is the largest of the three.
"""

from __future__ import annotations

import dataclasses
import tempfile

from probes.disk import drop_page_cache
from probes.records import StallReport


def attribute(synthetic_ips: float, cached_ips: float, cold_ips: float, *, steps: int = 0,
              cache_dropped: bool = True) -> StallReport:
    """Split the cold run's time per image into compute, preprocessing stall and fetch
    stall (see the module docstring).

    Raises:
      ValueError: a rate that is not positive.
    """
    for name, v in (("synthetic", synthetic_ips), ("cached", cached_ips), ("cold", cold_ips)):
        if not v > 0:
            raise ValueError(f"{name} images/s ({v}) must be > 0")
    t_s, t_c, t_d = 1 / synthetic_ips, 1 / cached_ips, 1 / cold_ips
    t_c = max(t_c, t_s)
    t_d = max(t_d, t_c)
    shares = {"compute": t_s / t_d, "preprocessing": (t_c - t_s) / t_d,
              "fetch": (t_d - t_c) / t_d}
    return StallReport(synthetic_images_per_s=synthetic_ips, cached_images_per_s=cached_ips,
                       cold_images_per_s=cold_ips, compute_pct=100 * shares["compute"],
                       prep_stall_pct=100 * shares["preprocessing"],
                       fetch_stall_pct=100 * shares["fetch"],
                       bottleneck=max(shares, key=shares.get), steps=steps,
                       cache_dropped=cache_dropped)


def warm_page_cache(paths, block: int = 1 << 20) -> int:
    """Read ``paths`` once so later reads hit the page cache. Returns bytes read."""
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(block):
                n += len(chunk)
    return n


def measure_stall(config, packed_dir: str, options, *, steps: int = 30) -> StallReport:
    """Run the three timings for ``config`` (a ``trainers.train.TrainConfig``) on the
    packed data set with loop ``options`` (``trainers.loop.LoopOptions``, its
    ``cache_decoded`` turned off so every step decodes) and attribute the stall.

    Each real-input run trains ``steps`` steps from scratch in a temporary folder. The
    compile step is excluded from every figure, and so is the first log window: the
    batches the pipeline built ahead while the step compiled are used up there, and a
    compilation that takes longer (the first run, a cold compile cache) would
    otherwise make its run look faster. The rate is over the later windows.
    """
    from trainers import pack as pack_lib
    from trainers import train as tr
    from trainers.loop import train_and_evaluate

    shards = pack_lib.shard_paths(packed_dir, "train")
    synthetic = tr.measure_step_rate(config, steps=max(3, steps // 3))["images_per_s"]
    opts = dataclasses.replace(options, cache_decoded=False, max_steps=steps,
                               eval_every_epochs=0, checkpoint_every_s=0,
                               synthetic_steps=0)  # the synthetic rate is timed above
    log_every = max(1, steps // 3)
    cfg = dataclasses.replace(config, log_every_steps=log_every)

    def run() -> float:
        windows = []
        with tempfile.TemporaryDirectory(prefix="autotune-stall-") as work:
            s = train_and_evaluate(cfg, packed_dir, work, opts, eval_at_end=False,
                                   callback=lambda r: windows.append(r)
                                   if hasattr(r, "images_per_s") else None)
        if len(windows) < 2:
            return s.images_per_s
        steps_in = [b.step - a.step for a, b in zip(windows, windows[1:])]  # later windows
        seconds = sum(n * r.step_s for n, r in zip(steps_in, windows[1:]))
        return sum(steps_in) * s.global_batch / seconds

    warm_page_cache(shards)
    cached = run()
    dropped = drop_page_cache(shards)
    cold = run()
    return attribute(synthetic, cached, cold, steps=steps, cache_dropped=dropped)
