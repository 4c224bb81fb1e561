"""Training images/s per device: synthetic input (compute only) and packed real JPEGs,
with the GPU utilisation NVML saw and the data stall.

    python bench/train_throughput.py                                  # ResNet-50 bf16, batch found by the search
    python bench/train_throughput.py --data ../shared/data/imagenet-samples --steps 200
    python bench/train_throughput.py --preset cpu-small --data ../shared/data/imagenette/train

For the GPU check of issue 6 (goal: >= 3,000 img/s per H100 from synthetic input;
anchors: ~2,500 img/s per A100 with AMP from NVIDIA, ~7,100 img/s per H100 in the MLPerf
entry). The batch is the planner's: the largest that fits by compiled memory analysis
(resnet50 presets) or the preset's fixed batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


class _NvmlSampler(threading.Thread):
    """GPU utilisation every 0.5 s while the run lasts (``probes.gpu.sample_utilisation``)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self):
        from probes.gpu import sample_utilisation

        while not self.stop.wait(0.5):
            got = sample_utilisation()
            vals = [s.gpu_utilisation_percent for s in got if s.gpu_utilisation_percent is not None]
            if vals:
                self.samples.append(statistics.fmean(vals))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=None)
    ap.add_argument("--data", help="image folder to pack and train on (else synthetic only)")
    ap.add_argument("--batch", type=int, help="per-device batch (default: the planner's)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()

    import jax

    from autotune import batch_search as bs
    from autotune.presets import default_preset_name, get_preset
    from probes.accelerator import device_memory_limit
    from trainers import train as tr
    from trainers.loop import train_and_evaluate
    from trainers.options import LoopOptions
    from trainers.pack import pack_folder
    from trainers.options import PackOptions
    from trainers.synthetic import default_cache_dir

    preset = get_preset(args.preset or default_preset_name(jax.default_backend()))
    n = jax.local_device_count()
    config = tr.TrainConfig(arch=preset.arch, width=preset.width, small_images=preset.small_images,
                            image_size=preset.image_size, num_classes=1000, dtype=preset.dtype,
                            per_device_batch=8, min_crop_scale=preset.min_crop_scale)
    batch = args.batch or preset.per_device_for(jax.device_count())
    if batch is None:
        limit, _ = device_memory_limit()
        found = bs.find_max_batch(lambda b: (tr.compiled_step_memory(config, b) or {}).get("total"),
                                  limit, max_batch=preset.max_per_device_batch,
                                  prefetch_bytes_per_image=2 * preset.image_size ** 2 * 3)
        batch = found.per_device_batch
        print(f"batch search: {found.reason}")
    config = dataclasses.replace(config, per_device_batch=batch)
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}; {preset.arch} "
          f"{preset.image_size} px {preset.dtype}; per-device batch {batch}")

    sampler = _NvmlSampler()
    sampler.start()
    syn = tr.measure_step_rate(config, steps=max(10, args.steps // 5), warmup=3)
    util_syn = statistics.fmean(sampler.samples) if sampler.samples else None
    sampler.samples.clear()
    print(f"synthetic: {syn['images_per_s']:,.0f} img/s = {syn['images_per_s'] / n:,.0f} img/s per "
          f"device, {syn['step_s'] * 1e3:,.1f} ms/step, GPU utilisation "
          f"{'n/a' if util_syn is None else f'{util_syn:.0f}%'}")

    if args.data:
        packed = default_cache_dir() / "bench-packed" / os.path.basename(os.path.normpath(args.data))
        res = pack_folder(args.data, packed, PackOptions(num_shards=16, pack_threads=args.threads))
        config = dataclasses.replace(config, num_classes=res.num_classes, epochs=10_000,
                                     warmup_epochs=0, log_every_steps=10)
        with tempfile.TemporaryDirectory() as work:
            s = train_and_evaluate(config, str(packed), work,
                                   LoopOptions(decode_threads=args.threads, prefetch_batches=args.threads + 2,
                                               max_steps=args.steps, eval_every_epochs=0,
                                               checkpoint_every_s=0), eval_at_end=False)
        util = statistics.fmean(sampler.samples) if sampler.samples else None
        print(f"packed real JPEGs ({res.packed:,} images, {args.threads} decode threads): "
              f"{s.images_per_s:,.0f} img/s = {s.images_per_s_per_device:,.0f} img/s per device, "
              f"data stall {s.data_stall_pct:.1f}%, GPU utilisation "
              f"{'n/a' if util is None else f'{util:.0f}%'}")
    sampler.stop.set()


if __name__ == "__main__":
    main()
