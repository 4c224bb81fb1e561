"""A tiny training run in its own process, for the kill-and-resume and multi-host
tests: ``python tests/tiny_run.py PACKED WORKDIR [--steps N] [--every SECS]``.

Prints one JSON line ``{"loss": [...], "status": ...}`` at the end."""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("packed")
    ap.add_argument("workdir")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--every", type=float, default=0.0)
    ap.add_argument("--per-device-batch", type=int, default=2)
    ap.add_argument("--partitions", type=int)
    args = ap.parse_args()
    from trainers.distributed import initialize

    initialize(heartbeat_timeout_seconds=10)
    from trainers import train as tr
    from trainers.loop import LoopOptions, StepReport, train_and_evaluate

    config = tr.TrainConfig(arch="resnet_tiny", width=4, small_images=True, image_size=16,
                            num_classes=3, per_device_batch=args.per_device_batch,
                            epochs=args.epochs, learning_rate=0.05, warmup_epochs=0,
                            log_every_steps=1, min_crop_scale=0.5)
    losses = []

    def cb(r):
        if isinstance(r, StepReport):
            losses.append(r.loss)
            print(json.dumps({"step": r.step}), flush=True)

    summary = train_and_evaluate(config, args.packed, args.workdir,
                                 LoopOptions(threads=1, checkpoint_every_secs=args.every,
                                             eval_every_epochs=0, partitions=args.partitions),
                                 callback=cb)
    print(json.dumps({"loss": losses, "status": summary.status, "steps": summary.steps,
                      "params": summary.params_sha256}), flush=True)


if __name__ == "__main__":
    main()
