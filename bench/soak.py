"""Soak test: train the ``cpu-tiny`` recipe under repeated random SIGKILL / restart
cycles and check that every run ends with exactly the parameters of an uninterrupted
run (issue 8, "nothing lost, nothing hangs").

    python bench/soak.py                       # 30 minutes
    python bench/soak.py --minutes 3 --steps 120

What it does:

1. writes a small ImageNet-layout folder of JPEGs (``--classes`` x ``--per-class``
   images) and packs it (``trainers.pack``) into ``--workdir``;
2. runs one uninterrupted reference run in a child process
   (``trainers.loop.train_and_evaluate`` with the ``cpu-tiny`` preset's model and
   recipe, ``--steps`` steps, a checkpoint every ``--checkpoint-every`` seconds);
3. for ``--minutes``: rounds of the same run in a fresh folder, each child process
   killed with SIGKILL at a random moment and restarted until the run completes.
   Kills land anywhere: during start-up, restore or compilation (a random delay after
   the spawn, ``--early-fraction`` of the kills) or while training and checkpointing
   (a random delay of up to ``--kill-within`` seconds after the child's first step
   report). Every restart resumes from the newest checkpoint; the work since it is
   redone;
   The children share JAX's persistent compilation cache (``--no-compile-cache`` to
   compile at every start), so a restart costs seconds rather than a compilation;
4. compares each round's final checkpoint (parameters, batch statistics, optimizer
   state, step) with the reference's, bit for bit.

The time budget is checked between rounds and between kills; the round running when it
runs out is finished without further kills, so the soak lasts a little longer than
``--minutes``. Exit code 0 when every round matched, 1 otherwise.

Output: one line per kill, one per round, and a summary with the kills survived, the
kills that caught a checkpoint mid-write (an ``*.orbax-checkpoint-tmp`` folder left
behind) and the rounds that matched.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

PRESET = "cpu-tiny"


# ----------------------------------------------------------------- the child: one run

def _config(num_classes: int, steps_per_epoch: int, steps: int, devices: int):
    """The ``cpu-tiny`` preset as a TrainConfig for ``steps`` steps (learning rate by
    the preset's linear rule: base_lr x global_batch / base_batch)."""
    from autotune.presets import get_preset
    from trainers import train as tr

    p = get_preset(PRESET)
    global_batch = p.global_batch or 32
    return tr.TrainConfig(
        arch=p.arch, width=p.width, small_images=p.small_images, image_size=p.image_size,
        num_classes=num_classes, per_device_batch=p.per_device_for(devices) or 32,
        epochs=steps / steps_per_epoch, optimizer=p.optimizer,
        learning_rate=p.base_lr * global_batch / p.base_batch, warmup_epochs=p.warmup_epochs,
        weight_decay=p.weight_decay, label_smoothing=p.label_smoothing, dtype=p.dtype,
        min_crop_scale=p.min_crop_scale, log_every_steps=1, momentum=p.momentum,
        nesterov=p.nesterov)


def _steps_per_epoch(packed: str, devices: int) -> tuple[int, int]:
    """(classes, steps per epoch) of the packed set at the preset's global batch."""
    from autotune.presets import get_preset
    from trainers import input_pipeline as ip
    from trainers.pack import load_pack_result

    res = load_pack_result(packed)
    return res.num_classes, ip.steps_per_epoch(res.split("train").shard_lengths,
                                               get_preset(PRESET).global_batch or 32)


def child(packed: str, run_dir: str, steps: int, devices: int, every: float) -> None:
    """One (possibly resumed) run; prints ``{"step": k}`` per step and
    ``{"done": ..., "steps": ..., "resumed_from": ...}`` at the end."""
    from trainers.loop import train_and_evaluate
    from trainers.summaries import StepReport
    from trainers.options import LoopOptions

    classes, spe = _steps_per_epoch(packed, devices)
    config = _config(classes, spe, steps, devices)

    def report(r):
        if isinstance(r, StepReport):
            print(json.dumps({"step": r.step}), flush=True)

    s = train_and_evaluate(config, packed, run_dir,
                           LoopOptions(decode_threads=1, prefetch_batches=2, device_prefetch=1,
                                       eval_every_epochs=0, checkpoint_every_s=every),
                           callback=report, eval_at_end=False)
    print(json.dumps({"done": s.status, "steps": s.steps,
                      "resumed_from": s.resumed_from_step}), flush=True)


# ----------------------------------------------------------------- the parent

def _write_images(root: Path, classes: int, per_class: int, seed: int = 0) -> None:
    """``root/<wnid>/<i>.JPEG``: 48x40 class-tinted noise, JPEG quality 90."""
    import numpy as np
    import simplejpeg

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (40, 48, 3)).astype(np.uint8)
            img[..., c % 3] += np.uint8(120 + 40 * (c // 3))
            (d / f"n{c:08d}_{i}.JPEG").write_bytes(simplejpeg.encode_jpeg(img, quality=90))


class _Child:
    """A child run with its stdout read by a thread into a queue of JSON records."""

    def __init__(self, args, run_dir: Path, log):
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={args.devices}"}
        if args.compile_cache:  # restarts load the compiled steps instead of compiling
            env.update(JAX_COMPILATION_CACHE_DIR=str(args.compile_cache),
                       JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                       JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(args.packed), str(run_dir),
             "--steps", str(args.steps), "--devices", str(args.devices),
             "--checkpoint-every", str(args.checkpoint_every)],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        self.last_step = None
        self.spawned = time.monotonic()
        self.first_step_after: float | None = None  # seconds from spawn to the first report
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                pass
        self.lines.put(None)  # end of output

    def next_record(self, timeout: float):
        """The next record, None at the end of output; raises queue.Empty on timeout."""
        rec = self.lines.get(timeout=timeout)
        if rec and "step" in rec:
            self.last_step = rec["step"]
            if self.first_step_after is None:
                self.first_step_after = time.monotonic() - self.spawned
        return rec

    def wait_until(self, end: float, first_step: bool = False) -> str | bool:
        """Read records until the monotonic time ``end`` (returns ``"time"``), the end
        of the output (``False``: nothing left to kill) or, with ``first_step``, the
        first step report (``"step"``)."""
        while True:
            try:
                rec = self.next_record(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                return "time"
            if rec is None or "done" in rec:
                self.lines.put(rec)  # leave the end for drain()
                return False
            if first_step and "step" in rec:
                return "step"

    def drain(self) -> dict | None:
        """Read to the end; return the final ``done`` record (None if it died)."""
        done = None
        while (rec := self.next_record(timeout=3600)) is not None:
            done = rec if "done" in rec else done
        self.proc.wait()
        return done


def _final_state(run_dir: Path, packed: str, steps: int, devices: int):
    """(step, flat list of numpy leaves of the whole train state) of the newest
    checkpoint in ``run_dir``."""
    import jax
    import numpy as np

    from trainers import train as tr
    from trainers.checkpoint import Checkpointer

    classes, spe = _steps_per_epoch(packed, devices)
    config = _config(classes, spe, steps, devices)
    abstract = tr.create_train_state(jax.random.PRNGKey(0), config, tr.create_model(config),
                                     tr.create_learning_rate_fn(config, spe))
    ck = Checkpointer(run_dir / "checkpoints")
    try:
        state, it, extra, step = ck.restore(abstract)
    finally:
        ck.close()
    leaves = jax.tree_util.tree_leaves((state.params, state.batch_stats, state.opt_state,
                                        state.step))
    return step, it, [np.asarray(jax.device_get(x)) for x in leaves]


def _same(a, b) -> tuple[bool, str]:
    import numpy as np

    if a[0] != b[0]:
        return False, f"final step {a[0]} != {b[0]}"
    if a[1] != b[1]:
        return False, f"iterator state {a[1]} != {b[1]}"
    for i, (x, y) in enumerate(zip(a[2], b[2])):
        if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y):
            diff = float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
            return False, f"leaf {i} {x.shape} differs (max |diff| {diff:g})"
    return True, f"{len(a[2])} leaves bit-identical"


def _mid_checkpoint(run_dir: Path) -> bool:
    ck = run_dir / "checkpoints"
    return ck.is_dir() and any(p.name.endswith(".orbax-checkpoint-tmp") for p in ck.iterdir())


def soak(args) -> int:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="autotune-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "children.log", "a")
    rng = random.Random(args.seed)
    from trainers.pack import pack_folder
    from trainers.options import PackOptions

    images = work / "images"
    if not images.is_dir():
        _write_images(images, args.classes, args.per_class)
    args.packed = work / "packed"
    args.compile_cache = None if args.no_compile_cache else work / "jax-cache"
    pack_folder(images, args.packed, PackOptions(num_shards=4, pack_threads=2))
    _, spe = _steps_per_epoch(str(args.packed), args.devices)
    print(f"soak: {args.steps} steps of {PRESET} ({spe} steps/epoch, {args.devices} CPU "
          f"device(s)), checkpoint every {args.checkpoint_every} s, kills for "
          f"{args.minutes} min; logs in {work}", flush=True)

    ref_dir = work / "reference"
    shutil.rmtree(ref_dir, ignore_errors=True)
    t0 = time.monotonic()
    ref = _Child(args, ref_dir, log)
    first_step_at = done = None
    while (rec := ref.next_record(timeout=3600)) is not None:
        if first_step_at is None and "step" in rec:
            first_step_at = time.monotonic() - t0
        done = rec if "done" in rec else done
    ref.proc.wait()
    if ref.proc.returncode != 0 or not done or done["done"] != "completed":
        print(f"soak: the reference run failed (exit {ref.proc.returncode}); see {log.name}")
        return 1
    ref_s = time.monotonic() - t0
    startup = first_step_at or 5.0
    reference = _final_state(ref_dir, str(args.packed), args.steps, args.devices)
    print(f"reference: {done['steps']} steps in {ref_s:.1f} s (first step after "
          f"{startup:.1f} s)", flush=True)

    startups: list[float] = []
    deadline = time.monotonic() + args.minutes * 60
    kills = mid_ckpt = rounds = matched = 0
    soak_t0 = time.monotonic()
    while time.monotonic() < deadline or rounds == 0:
        rounds += 1
        run_dir = work / f"round-{rounds:03d}"
        shutil.rmtree(run_dir, ignore_errors=True)
        round_kills = restarts = 0
        while True:
            c = _Child(args, run_dir, log)
            restarts += 1
            kill = time.monotonic() < deadline
            if kill and rng.random() < args.early_fraction:
                where = "start-up"  # import, restore, compile (or later, if quick)
                kill = c.wait_until(c.spawned + rng.uniform(0, startup * 1.2))
            elif kill:
                where = "training"  # steps and timer checkpoints
                kill = c.wait_until(time.monotonic() + 3600, first_step=True) == "step" and \
                    c.wait_until(time.monotonic() + rng.uniform(0, args.kill_within)) == "time"
            if c.first_step_after is not None:  # start-up with a warm compilation cache
                startups.append(c.first_step_after)
                startup = sorted(startups)[len(startups) // 2]
            if kill and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGKILL)
                c.proc.wait()
                kills += 1
                round_kills += 1
                caught = _mid_checkpoint(run_dir)
                mid_ckpt += caught
                print(f"  round {rounds}: kill {round_kills} during {where} at step "
                      f"{c.last_step}{' (checkpoint mid-write)' if caught else ''}", flush=True)
                continue
            done = c.drain()
            if c.proc.returncode == 0 and done and done["done"] == "completed":
                break
            print(f"soak: round {rounds}: child exited {c.proc.returncode} without finishing; "
                  f"see {log.name}", flush=True)
            return 1
        ok, detail = _same(_final_state(run_dir, str(args.packed), args.steps, args.devices),
                           reference)
        matched += ok
        print(f"round {rounds}: {round_kills} kills, {restarts} starts, final state "
              f"{'MATCHES' if ok else 'DIFFERS'}: {detail}", flush=True)
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    minutes = (time.monotonic() - soak_t0) / 60
    if startups:
        print(f"start-up to the first step report (warm compilation cache): median "
              f"{startup:.1f} s over {len(startups)} starts")
    print(f"\nsoak summary: {minutes:.1f} min, {rounds} rounds of {args.steps} steps, "
          f"{kills} SIGKILLs survived ({mid_ckpt} with a checkpoint mid-write), "
          f"{matched}/{rounds} rounds bit-identical to the uninterrupted run", flush=True)
    return 0 if matched == rounds else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="time spent killing (default 30)")
    ap.add_argument("--steps", type=int, default=400, help="steps of each run (default 400)")
    ap.add_argument("--checkpoint-every", type=float, default=1.0,
                    help="seconds between the loop's checkpoints (default 1)")
    ap.add_argument("--kill-within", type=float, default=6.0,
                    help="kill at most this many seconds after the child's first step (default 6)")
    ap.add_argument("--early-fraction", type=float, default=0.25,
                    help="fraction of kills aimed at start-up / restore / compile (default 0.25)")
    ap.add_argument("--devices", type=int, default=1, help="fake CPU devices per child (default 1)")
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    ap.add_argument("--workdir", help="folder for data, runs and logs (default: a new temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep each round's run folder")
    ap.add_argument("--no-compile-cache", action="store_true",
                    help="compile from scratch at every restart (default: JAX's persistent "
                         "compilation cache in the work folder, shared by all runs)")
    ap.add_argument("--child", nargs=2, metavar=("PACKED", "RUN_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.steps, args.devices, args.checkpoint_every)
        return 0
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())
