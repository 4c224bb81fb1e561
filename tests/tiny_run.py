"""A tiny training run in its own process, for the kill-and-resume and multi-host
tests: ``python tests/tiny_run.py PACKED WORKDIR [--epochs E] [--every SECS] ...``.

Prints ``{"step": N}`` at every log step (the tests' kill points) and one JSON line
with the summary at the end. ``--nan-batch K --nan-process P`` turns the K-th batch
of the run into float32 on every process and puts a NaN into device 0's images on
process P (fault injection: one device's NaN)."""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _inject_nan(batch_index: int, process: int) -> None:
    import numpy as np

    import jax
    from trainers import feed

    real = feed.to_device_layout
    seen = [0]

    def poisoned(batch, num_devices):
        arrays, scalars = real(batch, num_devices)
        seen[0] += 1
        if seen[0] == batch_index:
            arrays["image"] = arrays["image"].astype(np.float32)
            if jax.process_index() == process:
                arrays["image"][0, 0, 0, 0, 0] = np.nan
        return arrays, scalars

    feed.to_device_layout = poisoned


def _write_cache_on_every_process() -> None:
    """Test speed only: JAX writes its persistent compilation cache from process 0
    alone (``jax._src.compiler._cache_write``), and process 1's keys differ (its local
    devices), so every launch of process 1 compiled everything again (about 15 s on 2
    cores, while process 0 waited in a barrier). Here each process writes its own
    entries. Leaves JAX as it is where its internals differ from these."""
    import inspect

    try:
        from jax._src import compilation_cache, compiler, distributed

        write, put = compiler._cache_write, compilation_cache.put_executable_and_time
        signature = inspect.signature(write)
    except (ImportError, AttributeError, TypeError, ValueError):
        return

    def write_too(*args, **kwargs):
        write(*args, **kwargs)
        if distributed.global_state.process_id == 0:
            return
        try:
            a = signature.bind(*args, **kwargs).arguments
            if not a["host_callbacks"]:
                put(a["cache_key"], a["module_name"], a["executable"], a["backend"],
                    int(a["compile_time_secs"]))
        except Exception:  # noqa: BLE001 - other internals, or a failed write: no entry
            pass

    compiler._cache_write = write_too


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("packed")
    ap.add_argument("workdir")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--every", type=float, default=0.0)
    ap.add_argument("--per-device-batch", type=int, default=2)
    ap.add_argument("--partitions", type=int)
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--peer-timeout", type=float, default=20.0)
    ap.add_argument("--synthetic-steps", type=int, default=2)
    ap.add_argument("--nan-batch", type=int)
    ap.add_argument("--nan-process", type=int, default=0)
    args = ap.parse_args()
    from trainers.distributed import initialize

    initialize(peer_timeout_s=args.peer_timeout, connect_timeout_s=120)
    _write_cache_on_every_process()
    from trainers import train as tr
    from trainers.loop import train_and_evaluate
    from trainers.summaries import StepReport
    from trainers.options import LoopOptions

    if args.nan_batch:
        _inject_nan(args.nan_batch, args.nan_process)
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
                                 LoopOptions(decode_threads=1, checkpoint_every_s=args.every,
                                             eval_every_epochs=0, partitions=args.partitions,
                                             max_steps=args.max_steps,
                                             synthetic_steps=args.synthetic_steps),
                                 callback=cb)
    print(json.dumps({"loss": losses, "status": summary.status, "steps": summary.steps,
                      "params": summary.params_sha256, "skipped": summary.skipped_steps,
                      "checkpoint_step": summary.checkpoint_step,
                      "stop_reason": summary.stop_reason}), flush=True)
    return 0 if summary.status in ("completed", "max_steps") else 3


if __name__ == "__main__":
    sys.exit(main())
