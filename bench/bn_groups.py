"""Held-out top-1 with batch-norm statistics synchronised over all devices, pooled in
groups, or per device (``TrainConfig.bn_group_devices``), same recipe and data order.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python bench/bn_groups.py --data ../shared/data/imagenette/train --groups 0 2 1

The recipe is ``cpu-small``'s (global batch 128, 0.4 x 128 / 256, cosine, 0.5 warmup
epochs, label smoothing 0.1, 32 px), 10% of each class held out by the seeded split,
images packed at shorter side 48 px. Raw points go to ``bench/results/bn_groups_cpu.json``.
Each variant trains in its own process: a second training run in one process on 8 fake
CPU devices hung twice here at its first all-reduce (XLA's CPU rendezvous gave up after
40 s with 4 of 8 or 1 of 2 participants arrived) while other jobs loaded the 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--groups", type=int, nargs="+", default=[0, 2, 1])
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--global-batch", type=int, default=128)
    ap.add_argument("--packed", help=argparse.SUPPRESS)  # child: the packed folder
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "bn_groups_cpu.json"))
    args = ap.parse_args()
    if args.packed:
        print(json.dumps(_train(args, args.groups[0])), flush=True)
        return
    from trainers.options import PackOptions
    from trainers.pack import pack_folder

    tmp = Path(tempfile.mkdtemp(prefix="bn_groups_"))
    pack_folder(args.data, tmp / "packed", PackOptions(num_shards=4, val_fraction=0.1,
                                                        resize_shorter=48, pack_threads=2))
    points = []
    for k in args.groups:
        out = subprocess.run([sys.executable, __file__, "--data", args.data, "--groups", str(k),
                              "--epochs", str(args.epochs), "--global-batch",
                              str(args.global_batch), "--packed", str(tmp / "packed")],
                             capture_output=True, text=True, check=True)
        point = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(point), flush=True)
        points.append(point)
    Path(args.out).write_text(json.dumps({
        "command": " ".join(sys.argv), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "data": args.data, "points": points}, indent=2))


def _train(args, k: int) -> dict:
    """One variant: ``bn_group_devices = k``; returns its point."""
    import jax

    from autotune.presets import get_preset
    from trainers.loop import train_and_evaluate
    from trainers.options import LoopOptions, TrainConfig

    preset = get_preset("cpu-small")
    n = jax.device_count()
    per_device = args.global_batch // n
    config = TrainConfig(
        arch=preset.arch, width=preset.width, small_images=True, image_size=32,
        num_classes=10, per_device_batch=per_device, epochs=args.epochs,
        learning_rate=preset.base_lr * args.global_batch / preset.base_batch,
        warmup_epochs=preset.warmup_epochs, weight_decay=preset.weight_decay,
        label_smoothing=preset.label_smoothing, min_crop_scale=preset.min_crop_scale,
        log_every_steps=50, bn_group_devices=k)
    t0 = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix=f"bn_groups_run{k}_")
    s = train_and_evaluate(config, args.packed, workdir,
                           LoopOptions(decode_threads=1, cache_decoded=True,
                                       eval_every_epochs=0, checkpoint_every_s=0))
    ev = s.final_eval
    return {"bn_group_devices": k, "devices": n, "per_device_batch": per_device,
            "global_batch": args.global_batch, "epochs": args.epochs,
            "learning_rate": config.learning_rate, "top1": ev.top1, "top5": ev.top5,
            "eval_count": ev.count, "images_per_s": s.images_per_s,
            "wall_s": time.perf_counter() - t0}


if __name__ == "__main__":
    main()
