"""The largest per-device batch: memory-analysis bisection against brute force.

    python bench/batch_search.py                          # ResNet-50, 224 px, bf16, this device
    python bench/batch_search.py --budget 6GiB            # CPU: against a memory budget
    python bench/batch_search.py --arch resnet18 --image-size 112 --budget 3GiB --max-batch 256

Prints, for the model: the batch the compiled-memory search finds (no step executed),
its wall time and compilations; the true largest batch by brute force (doubling then
bisection over real steps, each in a child process so an out-of-memory kills only
the child), its wall time and trials; whether the pick is within 5% of the truth,
and the speed-up. Then one verification run at the pick: predicted bytes against the
measured peak (``peak_bytes_in_use`` on GPU, peak RSS growth on CPU).

Goal (issue 4): within 5% of the true largest batch, zero crashes, >= 3x faster than
the doubling-then-bisect search over real steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--budget", help="memory budget per device (CPU), e.g. 6GiB")
    ap.add_argument("--max-batch", type=int, default=2048)
    ap.add_argument("--margin", type=float, default=0.10)
    ap.add_argument("--no-brute-force", action="store_true")
    args = ap.parse_args()

    import jax

    from autotune.fmt import fmt_bytes as format_bytes
    from autotune.batch_search import (find_max_batch, find_max_batch_by_trial,
                                       parse_memory_budget)
    from probes.accelerator import device_memory_limit
    from probes.step_child import fits_in_child, run_steps_in_child
    from trainers import train as tr

    config = tr.TrainConfig(arch=args.arch, width=args.width, image_size=args.image_size,
                            dtype=args.dtype,
                            num_classes=args.classes, per_device_batch=8)
    budget = parse_memory_budget(args.budget) if args.budget else None
    limit, source = device_memory_limit(budget)
    cpu = jax.default_backend() == "cpu"
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), memory "
          f"{format_bytes(limit)} ({source}); model {args.arch} {args.image_size} px {args.dtype}")

    t0 = time.perf_counter()
    found = find_max_batch(lambda b: (tr.compiled_step_memory(config, b) or {}).get("total"),
                           limit, multiple=8, max_batch=args.max_batch, margin=args.margin,
                           prefetch_bytes_per_image=2 * args.image_size ** 2 * 3)
    t_search = time.perf_counter() - t0
    print(f"memory-analysis search: per-device batch {found.per_device_batch} in "
          f"{t_search:.1f} s, {found.compilations} compilations, 0 steps run")
    print(f"  {found.reason}")

    if not args.no_brute_force:
        t0 = time.perf_counter()
        # margin 0: the true largest batch that runs; CPU: fits the same budget.
        def trial(b: int) -> bool:
            t = time.perf_counter()
            ok = fits_in_child(config, b, budget_bytes=limit if cpu else None)
            print(f"  trial: per-device batch {b}: {'fits' if ok else 'does not fit'} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
            return ok

        truth = find_max_batch_by_trial(trial, start=32, multiple=8, max_batch=args.max_batch,
                                        margin=0.0)
        t_brute = time.perf_counter() - t0
        ratio = found.per_device_batch / truth.per_device_batch
        print(f"brute force (doubling then bisection, real steps in child processes): "
              f"{truth.per_device_batch} in {t_brute:.1f} s, {truth.compilations} trials")
        verdict = ("ABOVE the true largest: it would run out of memory" if ratio > 1 else
                   "within 5% of it" if ratio >= 0.95 else "more than 5% below it")
        print(f"  found / true = {found.per_device_batch} / {truth.per_device_batch} = "
              f"{ratio:.1%}: {verdict}; search {t_brute / t_search:.1f}x faster than brute "
              f"force; steps run by the search: 0")
        if cpu:
            print("  (CPU: 'fits' = peak RSS growth of the child within the budget, which also "
                  "counts compiler and runtime memory that XLA's buffer analysis does not)")

    check = run_steps_in_child(config, found.per_device_batch, steps=3)
    print(f"verification at {found.per_device_batch}: ok={check.ok}, predicted "
          f"{format_bytes(found.predicted_bytes or 0)}, measured peak "
          f"{format_bytes(check.peak_bytes or 0)} ({check.peak_source or check.error})")


if __name__ == "__main__":
    main()
