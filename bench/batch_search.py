"""The largest per-device batch: memory-analysis bisection against brute force.

    python bench/batch_search.py                          # ResNet-50, 224 px, bf16, this device
    python bench/batch_search.py --budget 6GiB            # CPU: against a memory budget
    python bench/batch_search.py --arch resnet_tiny --width 32 --image-size 64 \\
        --dtype float32 --budget 256MiB --json bench/results/batch_search_cpu.json  # ~4 min

Prints, for the model: the batch the compiled-memory search finds (no step executed),
its wall time and compilations; the tool's answer, that pick checked by real steps and
re-searched on the measured / analysed ratio when they do not fit
(``autotune.batch_search.verify_max_batch``: each trial a child process, as in the brute
force), its trials and time; the true largest batch by brute force (doubling then
bisection over real steps, each in a child process so an out-of-memory kills only the
child), its wall time and trials; both picks (analysis alone, verified) against the
truth ("within 5%: yes/no", "above the truth: yes/no") and their speed-ups. Then the
verified pick's measured peak against the budget.

The truth answers the same question as the search. The search keeps a batch ``b`` when
XLA's buffer analysis + the input prefetch term fit the usable budget,
``analysis(b) + prefetch_bytes_per_image * b <= floor(budget * (1 - margin))``. The
brute force keeps ``b`` when real steps at ``b`` ran in a child process and
``measured_peak(b) + prefetch_bytes_per_image * b <= floor(budget * (1 - margin))``,
with the same margin and prefetch term. A batch the verification already measured is
not measured again (unless ``--fresh-truth``): both then answer on the same readings
of the ruler, so the comparison is of the searches, not of two readings of a noisy
ruler (the CPU ruler reads the same batch 1-4% apart in two children,
``bench/results/batch_search_cpu_ruler_noise.json``). The measured peak is
``device.memory_stats()['peak_bytes_in_use']`` on GPU/TPU. On CPU, which has no
memory statistics, it is the analogue for the steps themselves
(``probes.step_child``): the train state and batch arrays' bytes plus the peak growth
of the child's resident memory over the steady-state steps (the kernel's peak reset
after the compile and one warm-up step), so imports, compilation and state
initialisation do not count and the runtime's scratch outside XLA's buffer assignment
does. At the
pick, "fits" means measured peak <= budget; it is never reported as fitting when the
peak is above the budget.

Goals: within 5% of the true largest batch and never above it (issue 15: the
verified pick), zero crashes, >= 3x faster than the doubling-then-bisect search over
real steps (issue 4: the analysis alone; the verification's trials cost what the brute
force's do, so the verified search is faster only by the trials it saves).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

#: The pick may be at most this fraction below the truth (and never above it).
TOLERANCE = 0.05


def usable_budget(budget_bytes: int, margin: float) -> int:
    """The bytes a batch may use, margin taken off: ``floor(budget * (1 - margin))``,
    exactly as ``autotune.batch_search.find_max_batch`` computes it."""
    return int(math.floor(budget_bytes * (1.0 - margin)))


def trial_verdict(batch: int, *, ran: bool, peak_bytes: int | None,
                  prefetch_bytes_per_image: int, usable_bytes: int) -> dict:
    """Whether a real-step trial at ``batch`` fits the usable budget, the search's test
    applied to the measured peak: ``peak + prefetch_bytes_per_image * batch <=
    usable_bytes``. A trial that did not run (out of memory, crash, timeout) or
    measured no peak does not fit.

    Returns ``{'fits', 'prefetch_bytes', 'need_bytes', 'why'}`` (``need_bytes`` None
    without a peak)."""
    prefetch = prefetch_bytes_per_image * batch
    if not ran:
        return {"fits": False, "prefetch_bytes": prefetch, "need_bytes": None,
                "why": "the steps did not run"}
    if peak_bytes is None:
        return {"fits": False, "prefetch_bytes": prefetch, "need_bytes": None,
                "why": "no peak was measured"}
    need = int(peak_bytes) + prefetch
    fits = need <= usable_bytes
    return {"fits": fits, "prefetch_bytes": prefetch, "need_bytes": need,
            "why": "peak + prefetch <= usable budget" if fits
            else "peak + prefetch > usable budget"}


def compare_pick(pick: int, truth: int, tolerance: float = TOLERANCE) -> dict:
    """The search's pick against the true largest batch: ``ratio`` = pick / truth,
    ``within`` = |pick - truth| <= tolerance x truth, ``above`` = pick > truth (the pick
    would exceed the usable budget), ``goal_met`` = within and not above."""
    if truth <= 0:
        raise ValueError(f"bench/batch_search.py: true largest batch ({truth}) must be > 0")
    ratio = pick / truth
    within = abs(pick - truth) <= tolerance * truth
    above = pick > truth
    return {"pick": pick, "truth": truth, "ratio": ratio, "within": within,
            "above": above, "goal_met": within and not above, "tolerance": tolerance}


def verification_verdict(*, ran: bool, peak_bytes: int | None, budget_bytes: int) -> dict:
    """The pick's real run: ``fits`` only when the steps ran and the measured peak is
    <= the budget (never when above it, nor when no peak was measured)."""
    fits = bool(ran and peak_bytes is not None and int(peak_bytes) <= budget_bytes)
    if not ran:
        why = "the steps did not run"
    elif peak_bytes is None:
        why = "no peak was measured"
    else:
        why = "measured peak <= budget" if fits else "measured peak > budget"
    return {"fits": fits, "why": why}


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--budget", help="memory budget per device (CPU), e.g. 6GiB")
    ap.add_argument("--max-batch", type=int, default=2048)
    ap.add_argument("--margin", type=float, default=0.10,
                    help="fraction of the budget held back, by the search and the brute force")
    ap.add_argument("--start", type=int, default=32, help="first batch of the brute force")
    ap.add_argument("--trial-steps", type=int, default=10,
                    help="real steps per trial (the CPU peak over 3 steps varies by up to 19%%)")
    ap.add_argument("--no-brute-force", action="store_true")
    ap.add_argument("--fresh-truth", action="store_true",
                    help="the brute force measures every batch in a new child, also those the "
                         "verification measured (default: it reuses those measurements, so "
                         "both answer on the same readings of the ruler)")
    ap.add_argument("--json", default=None, help="write every trial and the summary here")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = _args(argv)

    import jax

    from autotune.fmt import fmt_bytes
    from autotune.batch_search import (find_max_batch, find_max_batch_by_trial,
                                       parse_memory_budget, verify_max_batch)
    from probes.accelerator import device_memory_limit
    from probes.step_child import run_steps_in_child
    from trainers import train as tr

    def gib(n):
        return fmt_bytes(n, 2)

    config = tr.TrainConfig(arch=args.arch, width=args.width, image_size=args.image_size,
                            dtype=args.dtype,
                            num_classes=args.classes, per_device_batch=8)
    budget = parse_memory_budget(args.budget) if args.budget else None
    limit, source = device_memory_limit(budget)
    usable = usable_budget(limit, args.margin)
    prefetch_per_image = 2 * args.image_size ** 2 * 3
    backend = jax.default_backend()
    print(f"device: {jax.devices()[0].device_kind} ({backend}), memory "
          f"{gib(limit)} ({source}); model {args.arch} w{args.width} {args.image_size} px "
          f"{args.dtype}")
    print(f"usable budget (search and brute force alike): {gib(limit)} x "
          f"{1 - args.margin:.2f} = {gib(usable)}; input prefetch {prefetch_per_image} bytes "
          f"per image (2 x {args.image_size}x{args.image_size}x3 uint8)")
    out: dict = {
        "issue": 4,
        "command": "python bench/batch_search.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "jax": jax.__version__,
                    "backend": backend, "device_kind": jax.devices()[0].device_kind},
        "config": {"arch": args.arch, "width": args.width, "image_size": args.image_size,
                   "dtype": args.dtype, "classes": args.classes, "max_batch": args.max_batch,
                   "multiple": 8, "brute_force_start": args.start,
                   "trial_steps": args.trial_steps},
        "budget_bytes": limit, "budget_source": source, "margin": args.margin,
        "usable_budget_bytes": usable, "prefetch_bytes_per_image": prefetch_per_image,
        "peak_measure": ("state + batch arrays + steady-step RSS growth (VmHWM reset after "
                          "warm-up) in the child" if backend == "cpu"
                         else "device.memory_stats()['peak_bytes_in_use'] in the child"),
    }

    def analysis(b):
        return (tr.compiled_step_memory(config, b) or {}).get("total")

    t0 = time.perf_counter()
    found = find_max_batch(analysis, limit, multiple=8, max_batch=args.max_batch,
                           margin=args.margin, prefetch_bytes_per_image=prefetch_per_image)
    t_search = time.perf_counter() - t0
    print(f"memory-analysis search: per-device batch {found.per_device_batch} in "
          f"{t_search:.1f} s, {found.compilations} compilations, 0 steps run")
    print(f"  {found.reason}")
    out["search"] = {
        "per_device_batch": found.per_device_batch, "seconds": round(t_search, 1),
        "compilations": found.compilations, "predicted_bytes": found.predicted_bytes,
        "prefetch_bytes": found.prefetch_bytes, "limited_by": found.limited_by,
        "evaluations": [{"batch": e.batch, "analysis_bytes": e.bytes,
                         "analysis_plus_prefetch_bytes": e.total_bytes, "fits": e.fits}
                        for e in found.evaluations],
        "reason": found.reason,
    }

    # The tool's answer: the analysis pick checked by real steps (the same child runs
    # and the same test as the brute force), re-searched when they do not fit.
    runs: dict[int, object] = {}

    run_s: dict[int, float] = {}  # seconds of each of those child runs

    def measured(b: int):
        t = time.perf_counter()
        runs[b] = r = run_steps_in_child(config, b, steps=args.trial_steps)
        run_s[b] = time.perf_counter() - t
        print(f"  verification trial: per-device batch {b}: "
              + (f"measured peak {gib(r.peak_bytes)} ({r.peak_source})" if r.ok and
                 r.peak_bytes is not None else f"did not run ({r.error})"), flush=True)
        return r.peak_bytes if r.ok else None

    t0 = time.perf_counter()
    verified = verify_max_batch(found, analysis, measured)
    t_verify = time.perf_counter() - t0
    t_tool = t_search + t_verify
    print(f"verified: per-device batch {verified.per_device_batch} after "
          f"{len(verified.verifications)} real-step trial(s) in {t_verify:.1f} s "
          f"(search + verification {t_tool:.1f} s); calibration {verified.calibration:.2f}")
    out["verified"] = {
        "per_device_batch": verified.per_device_batch, "seconds": round(t_verify, 1),
        "search_plus_verification_s": round(t_tool, 1),
        "compilations": verified.compilations, "calibration": verified.calibration,
        "trials": [{"batch": c.batch, "analysis_bytes": c.analysis_bytes,
                    "measured_bytes": c.measured_bytes, "need_bytes": c.need_bytes,
                    "fits": c.fits, "ratio": c.ratio} for c in verified.verifications],
        "reason": verified.reason,
    }

    if not args.no_brute_force:
        trials: list[dict] = []
        t0 = time.perf_counter()

        def trial(b: int) -> bool:
            t = time.perf_counter()
            reused = b in runs and not args.fresh_truth
            r = runs[b] if reused else run_steps_in_child(config, b, steps=args.trial_steps)
            v = trial_verdict(b, ran=r.ok, peak_bytes=r.peak_bytes,
                              prefetch_bytes_per_image=prefetch_per_image, usable_bytes=usable)
            secs = run_s[b] if reused else time.perf_counter() - t
            trials.append({"batch": b, "ran": r.ok, "oom": r.oom, "peak_bytes": r.peak_bytes,
                           "peak_source": r.peak_source, "prefetch_bytes": v["prefetch_bytes"],
                           "need_bytes": v["need_bytes"], "usable_budget_bytes": usable,
                           "fits": v["fits"], "step_s": r.step_s, "seconds": round(secs, 1),
                           "error": r.error, "reused": reused})
            if v["need_bytes"] is None:
                detail = f"{v['why']} ({r.error or 'no peak'})"
            else:
                rel = "<=" if v["fits"] else ">"
                detail = (f"measured peak {gib(r.peak_bytes)} ({r.peak_source}) + "
                          f"{gib(v['prefetch_bytes'])} prefetch = {gib(v['need_bytes'])} {rel} "
                          f"{gib(usable)} usable")
            print(f"  trial: per-device batch {b}: {detail}: "
                  f"{'fits' if v['fits'] else 'does not fit'} "
                  + ("(the verification's reading)" if reused else f"({secs:.0f} s)"), flush=True)
            return v["fits"]

        # margin=0.0 here: the margin is already in the bytes test of each trial (the
        # same usable budget as the search); the trial search's own margin is a cut of
        # the batch found, which the search does not make.
        truth = find_max_batch_by_trial(trial, start=args.start, multiple=8,
                                        max_batch=args.max_batch, margin=0.0)
        # What the brute force would have taken alone: its reused trials cost a child run.
        t_brute = time.perf_counter() - t0 + sum(run_s[t["batch"]] for t in trials if t["reused"])
        cmp_analysis = compare_pick(found.per_device_batch, truth.per_device_batch)
        cmp = compare_pick(verified.per_device_batch, truth.per_device_batch)
        shared = sum(t["reused"] for t in trials)
        print(f"brute force (doubling then bisection, real steps in child processes): "
              f"{truth.per_device_batch} in {t_brute:.1f} s, {truth.compilations} trials"
              + (f", {shared} of them the verification's readings (--fresh-truth to measure "
                 "those again)" if shared else "")
              + (" (capped at --max-batch: raise it for the truth)"
                 if truth.limited_by == "max_batch" else ""))
        for name, c, secs in (("analysis alone", cmp_analysis, t_search),
                              ("verified (the tool's answer)", cmp, t_tool)):
            print(f"  {name}: pick / truth = {c['pick']} / {c['truth']} = {c['ratio']:.1%}; "
                  f"within 5%: {yes_no(c['within'])}; above the truth: {yes_no(c['above'])}; "
                  f"goal (within 5%, never above): {'met' if c['goal_met'] else 'NOT met'}; "
                  f"{t_brute / secs:.1f}x faster than brute force")
        out["truth"] = {"per_device_batch": truth.per_device_batch,
                        "seconds": round(t_brute, 1), "trials": trials,
                        "limited_by": truth.limited_by,
                        "readings": ("fresh children" if args.fresh_truth else
                                     "shared with the verification")}
        out["comparison_analysis_alone"] = dict(cmp_analysis,
                                                speedup=round(t_brute / t_search, 2))
        out["comparison"] = dict(cmp, speedup=round(t_brute / t_tool, 2))

    pick = verified.per_device_batch
    check = runs[pick]
    ver = verification_verdict(ran=check.ok, peak_bytes=check.peak_bytes, budget_bytes=limit)
    at = trial_verdict(pick, ran=check.ok, peak_bytes=check.peak_bytes,
                       prefetch_bytes_per_image=prefetch_per_image, usable_bytes=usable)
    if check.ok and check.peak_bytes is not None:
        rel = "<=" if ver["fits"] else ">"
        head = (f"{'fits' if ver['fits'] else 'DOES NOT FIT'}: measured peak "
                f"{gib(check.peak_bytes)} ({check.peak_source}) {rel} budget {gib(limit)}")
        tail = (f"; peak + prefetch {gib(at['need_bytes'])} "
                f"{'<=' if at['fits'] else '>'} usable {gib(usable)}")
    else:
        head, tail = f"DOES NOT FIT: {ver['why']} ({check.error})", ""
    print(f"verification at {pick}: {head}{tail}; predicted "
          f"{gib(verified.predicted_bytes or 0)} (buffer analysis)")
    out["verification"] = {"per_device_batch": pick, "ran": check.ok,
                           "peak_bytes": check.peak_bytes, "peak_source": check.peak_source,
                           "budget_bytes": limit, "fits_budget": ver["fits"],
                           "need_bytes": at["need_bytes"], "usable_budget_bytes": usable,
                           "fits_usable": at["fits"],
                           "predicted_bytes": verified.predicted_bytes, "step_s": check.step_s,
                           "error": check.error}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
