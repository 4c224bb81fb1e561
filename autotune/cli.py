"""``autotune``: probe the machine, plan, pack, train, report.

The CLI is thin: it parses, calls library functions, renders. Bad arguments end in
one line naming the value and what is expected, exit code 2, no traceback.

    autotune probe [--data DIR]                 measure this machine on this data
    autotune plan  [--probe FILE]               show the plan for a probe report
    autotune pack  --data DIR --out DIR         pack a folder into ArrayRecord shards
    autotune train --auto [--data DIR]          probe (or reuse one), plan, pack, train
    autotune report RUN [RUN2]                  render a saved run, or compare two
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

from autotune import results

EXIT_USAGE = 2
#: A signal stopped the run after every process wrote the same checkpoint.
EXIT_STOPPED = 3


class UsageError(Exception):
    """A bad argument: printed as one line, exit code 2."""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="ImageNet-layout training folder <root>/<wnid>/*.JPEG "
                                  "(default: a built-in synthetic JPEG data set)")
    p.add_argument("--preset", help="training recipe (default: resnet50 on GPU, cpu-small on CPU)")
    p.add_argument("--memory-budget", help="per-device memory budget, e.g. 8GiB (default: the "
                                           "device's limit; on CPU half the free RAM)")
    p.add_argument("--results", help="results folder (default: ./results or $AUTOTUNE_RESULTS)")
    p.add_argument("--quiet", action="store_true", help="print only errors and the final summary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autotune", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("probe", help="measure disk, decode, memory and step rate")
    _add_common(p)
    p.add_argument("--quick", action="store_true", help="shorter measurements")
    p.add_argument("--no-disk", action="store_true", help="skip the disk probe")
    p.add_argument("--stall", action="store_true",
                   help="also time a short training run three ways (synthetic, cached, cold "
                        "input) and attribute the data stall (DS-Analyzer)")
    p.add_argument("--stall-steps", type=int, default=30)

    p = sub.add_parser("plan", help="show the plan for a saved probe report")
    p.add_argument("--probe", required=True, help="probe.json (or a run folder holding one)")
    p.add_argument("--preset")
    p.add_argument("--hosts", type=int, default=1)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("pack", help="pack an ImageNet-layout folder into ArrayRecord shards")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--val-data", help="separate validation folder (class folders, or flat with a label file)")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--resize", type=int, default=0, help="store with this shorter side (0: originals)")
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("train", help="train a ResNet (with --auto: probe, plan and pack first)")
    _add_common(p)
    p.add_argument("--auto", action="store_true", help="probe (or reuse a fresh probe), plan, pack, train")
    p.add_argument("--val-data", help="validation folder (default: a seeded hold-out of --data)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--batch", type=int, help="per-device batch (overrides the plan)")
    p.add_argument("--threads", type=int, help="decode threads (overrides the plan)")
    p.add_argument("--read-mode", choices=("random", "sequential"))
    p.add_argument("--shards", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--resume", help="a results/<run> folder to continue")
    p.add_argument("--reprobe", action="store_true", help="probe even if a fresh probe exists")
    p.add_argument("--new-run", action="store_true",
                   help="start a new run even if the same command left an unfinished one")
    p.add_argument("--on-bad-record", choices=("skip", "fail"), default="skip")
    p.add_argument("--checkpoint-every", type=float, default=600.0, help="seconds between checkpoints")
    p.add_argument("--partitions", type=int,
                   help="data partitions with their own order (default: one per host); the "
                        "same value gives the same batches on any host count that divides it")
    p.add_argument("--coordinator", help="host:port of process 0 (multi-host)")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("--peer-timeout", type=float, default=60.0,
                   help="seconds without a sign of life before another process is declared "
                        "lost and this one exits (multi-host)")
    p.add_argument("--connect-timeout", type=float, default=300.0,
                   help="seconds to wait for the coordinator and every process to join")

    p = sub.add_parser("report", help="render a saved run, or compare two")
    p.add_argument("runs", nargs="+")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--gpu-hour-price",
                   help="US$ per GPU-hour, or an example list price: H100, H100:spot, H200, "
                        "A100, A100:spot, L4 (default: the probed GPU's example prices)")
    return parser


# ---------------------------------------------------------------- helpers

def _resolve_data(args, console) -> str:
    if args.data:
        path = Path(args.data).expanduser()
        if not path.is_dir():
            raise UsageError(f"--data {args.data}: no such folder (expected <root>/<wnid>/*.JPEG)")
        from trainers.pack import PackError, scan_image_folder

        try:  # class folders present, none empty: fail before minutes of probing
            scan_image_folder(path)
        except PackError as exc:
            raise UsageError(f"--data {args.data}: {exc}") from None
        return str(path.resolve())
    from trainers.synthetic import ensure_synthetic_dataset

    with _progress(console, "synthetic data set", args.quiet) as bar:
        path = ensure_synthetic_dataset(progress=bar)
    return str(path)


class _progress:
    """A rich progress bar usable as ``progress(done, total[, bad])``."""

    def __init__(self, console, label: str, quiet: bool = False):
        self.console, self.label, self.quiet = console, label, quiet
        self.bar = None

    def __enter__(self):
        if not self.quiet and self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)
            self.bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[extra]}"), TimeRemainingColumn(),
                                console=self.console, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=None, extra="")
        return self

    def __call__(self, done, total, bad=None):
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total,
                            extra=f"{bad} bad" if bad else "")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _preset(args):
    from autotune.presets import UnknownPresetError, default_preset_name, get_preset
    import jax

    name = getattr(args, "preset", None) or default_preset_name(jax.default_backend())
    try:
        preset = get_preset(name)
    except UnknownPresetError as exc:
        raise UsageError(str(exc)) from None
    try:  # a preset's fixed global batch must split over this run's devices
        preset.per_device_for(jax.device_count())
    except ValueError as exc:
        raise UsageError(f"--preset {name}: {exc}") from None
    return preset


def _budget(args) -> int | None:
    from autotune.batch_search import parse_memory_budget

    if not getattr(args, "memory_budget", None):
        return None
    try:
        return parse_memory_budget(args.memory_budget)
    except ValueError as exc:
        raise UsageError(f"--memory-budget {args.memory_budget}: {exc}") from None


def _say(console, quiet):
    return (lambda s: None) if quiet else (lambda s: console.print(f"[dim]probe:[/] {s}"))


def packed_dir_for(data: str, plan, val_data: str | None) -> Path:
    """Cache folder of the packed form of ``data`` under the plan's pack options."""
    from trainers.synthetic import default_cache_dir

    key = json.dumps([data, val_data, plan.num_shards, plan.pack_resize, plan.val_fraction])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return default_cache_dir() / "packed" / f"{Path(data).name}-{digest}"


def train_config(preset, plan, num_classes: int):
    """The ``trainers.train.TrainConfig`` a plan asks for."""
    from trainers import train as tr

    return tr.TrainConfig(
        arch=preset.arch, width=preset.width, small_images=preset.small_images,
        image_size=preset.image_size, num_classes=num_classes,
        per_device_batch=plan.per_device_batch, epochs=plan.epochs,
        optimizer=plan.lr.optimizer, learning_rate=plan.lr.learning_rate,
        warmup_epochs=plan.warmup_epochs, weight_decay=preset.weight_decay,
        label_smoothing=preset.label_smoothing, dtype=preset.dtype,
        min_crop_scale=preset.min_crop_scale, log_every_steps=preset.log_every_steps,
        momentum=preset.momentum, nesterov=preset.nesterov)


def loop_options(plan, **kw):
    """The ``trainers.loop.LoopOptions`` a plan asks for (``kw`` overrides)."""
    from trainers.loop import LoopOptions

    return LoopOptions(threads=plan.decode_threads, prefetch=plan.prefetch_batches,
                       device_prefetch=plan.device_prefetch, read_mode=plan.read_mode,
                       shuffle_window=plan.shuffle_window or 4096,
                       cache_decoded=plan.cache_decoded and not plan.decode_workers,
                       workers=plan.decode_workers, **kw)


def pack_for_plan(data: str, plan, report, console, quiet: bool, val_data: str | None = None):
    """Pack ``data`` as the plan says into the cache (resumes / reuses; a cached pack
    of an older state of ``data`` is replaced)."""
    from trainers.pack import PackOptions, pack_folder

    packed = str(packed_dir_for(data, plan, val_data))
    with _progress(console, "packing", quiet) as bar:
        result = pack_folder(
            data, packed,
            PackOptions(num_shards=plan.num_shards,
                        val_fraction=0.0 if val_data else plan.val_fraction,
                        resize_shorter=plan.pack_resize,
                        threads=max(1, report.decode.usable_cores)),
            val_source=val_data, progress=bar, replace_stale=True)
    return packed, result


# ---------------------------------------------------------------- commands

def cmd_probe(args, console) -> int:
    from autotune import render
    from autotune.probe_report import run_probe

    data = _resolve_data(args, console)
    preset = _preset(args)
    report = run_probe(data, preset, budget_bytes=_budget(args), quick=args.quick,
                       skip_disk=args.no_disk, progress=_say(console, args.quiet))
    if args.stall:
        from autotune.planner import make_plan
        from probes.stall import measure_stall

        plan = make_plan(report, preset)
        packed, pack_result = pack_for_plan(data, plan, report, console, args.quiet)
        _say(console, args.quiet)(f"stall: {args.stall_steps} steps each with synthetic, "
                                  f"cached and cold input")
        stall = measure_stall(train_config(preset, plan, pack_result.num_classes), packed,
                              loop_options(plan), steps=args.stall_steps)
        report = dataclasses.replace(report, stall=stall)
    run = results.new_run_dir(args.results, kind="probe")
    report.save(run / results.PROBE)
    console.print(render.render_probe(report))
    console.print(f"probe report: {run / results.PROBE}")
    _plots(run, console)
    return 0


def _plots(run, console) -> None:
    """PNG plots beside the JSON; a plotting error never fails the run."""
    try:
        from autotune.plots import write_plots

        paths = write_plots(run)
    except Exception as exc:  # noqa: BLE001
        console.print(f"[yellow]plots not written: {type(exc).__name__}: {exc}[/]")
        return
    if paths:
        console.print("plots: " + ", ".join(str(p) for p in paths))


def cmd_plan(args, console) -> int:
    from autotune import render
    from autotune.planner import PlanRequest, make_plan
    from autotune.presets import get_preset
    from autotune.probe_report import ProbeReport

    path = Path(args.probe)
    if path.is_dir():
        path = path / "probe.json"
    if not path.is_file():
        raise UsageError(f"--probe {args.probe}: no probe.json there")
    report = ProbeReport.load(path)
    plan = make_plan(report, get_preset(args.preset or report.preset),
                     PlanRequest(num_hosts=args.hosts))
    if args.json:
        print(plan.to_json())
    else:
        console.print(render.render_plan(plan))
    return 0


def cmd_pack(args, console) -> int:
    from autotune import render
    from trainers.pack import PackOptions, pack_folder

    if not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: no such folder (expected <root>/<wnid>/*.JPEG)")
    try:
        opts = PackOptions(num_shards=args.shards, val_fraction=args.val_fraction,
                           resize_shorter=args.resize or None, threads=args.threads)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with _progress(console, "packing", args.quiet) as bar:
        result = pack_folder(args.data, args.out, opts, val_source=args.val_data, progress=bar)
    console.print(render.render_pack(result))
    return 0


def oom_policy(plan, console=None):
    """What to do when the step runs out of memory mid-run: the next smaller per-device
    batch (``autotune.batch_search.next_smaller_batch``: 7/8, multiple of 8, or of 1
    below 8) and the learning rate rescaled by the plan's rule
    (``autotune.lr_rules.rescale_after_batch_change``). Returns the ``on_oom`` callable
    for ``trainers.loop.train_and_evaluate``."""
    from autotune.batch_search import NoBatchFits, next_smaller_batch
    from autotune.lr_rules import rescale_after_batch_change

    devices = max(1, plan.global_batch // max(1, plan.per_device_batch))

    def on_oom(cfg):
        b = cfg.per_device_batch
        try:
            new_b = next_smaller_batch(b, multiple=8 if b > 8 else 1)
        except NoBatchFits:
            return None
        lr = rescale_after_batch_change(cfg.learning_rate, b * devices, new_b * devices,
                                        plan.lr.rule)
        if console is not None:
            console.print(f"[yellow]out of device memory at per-device batch {b}: continuing "
                          f"at {new_b}, learning rate {cfg.learning_rate:.4g} -> {lr:.4g}[/]")
        return dataclasses.replace(cfg, per_device_batch=new_b, learning_rate=lr)
    return on_oom


def _init_distributed(args) -> None:
    from trainers.distributed import initialize

    for name in ("peer_timeout", "connect_timeout"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be > 0")
    try:
        initialize(coordinator=args.coordinator, num_processes=args.num_processes,
                   process_id=args.process_id, peer_timeout_s=args.peer_timeout,
                   connect_timeout_s=args.connect_timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_hosts_agree(plan, pack_result, packed) -> None:
    """Every process must train the same plan on the same packed data: compare each
    host's (train records, shards, classes, local devices, plan digest) with process
    0's (a collective; nothing on a single process).

    Raises:
      UsageError: naming the first process that differs, the value and process 0's.
    """
    import zlib

    import jax

    from trainers.distributed import all_gather_ints

    if jax.process_count() == 1:
        return
    train = pack_result.split("train")
    names = ("train records", "train shards", "classes", "local devices", "plan digest")
    mine = (sum(train.shard_lengths), len(train.shard_lengths), pack_result.num_classes,
            jax.local_device_count(), zlib.crc32(plan.to_json(None).encode()) & 0x7FFFFFFF)
    rows = all_gather_ints(mine)
    for p, row in enumerate(rows[1:], start=1):
        for name, got, want in zip(names, row, rows[0]):
            if got != want:
                raise UsageError(f"process {p} differs from process 0: {name} {got:,} vs "
                                 f"{want:,} (packed data {packed}); every host must see the "
                                 f"same data set, plan and device count")


def broadcast_text(text: str, max_bytes: int = 1 << 20) -> str:
    """Process 0's ``text`` on every process (identity on a single process)."""
    import jax

    if jax.process_count() == 1:
        return text
    import numpy as np
    from jax.experimental import multihost_utils

    raw = text.encode()
    if len(raw) > max_bytes:
        raise ValueError(f"text of {len(raw):,} bytes is too long to broadcast ({max_bytes:,})")
    buf = np.zeros(max_bytes, np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return bytes(got[got != 0].astype(np.uint8)).decode()


def _shared_run_dir(root: Path, primary: bool) -> Path:
    """The run folder, created by process 0 and its name broadcast to every process
    (orbax needs one checkpoint folder on a file system all hosts see)."""
    name = results.new_run_dir(root).name if primary else ""
    return Path(root) / broadcast_text(name, 512)


def cmd_train(args, console, argv_override: list[str] | None = None) -> int:
    _init_distributed(args)
    import jax

    from autotune import render
    from autotune.planner import Plan, PlanRequest, make_plan
    from autotune.probe_report import ProbeReport, run_probe
    from trainers import train as tr
    from trainers.loop import LoopOptions, train_and_evaluate

    primary = jax.process_index() == 0
    quiet = args.quiet or not primary
    argv = list(sys.argv[1:]) if argv_override is None else list(argv_override)
    if not args.resume and args.auto and not args.new_run:
        unfinished = results.find_unfinished_run(
            Path(args.results) if args.results else results.default_results_root(), argv)
        if unfinished is not None and jax.process_count() == 1:
            if not quiet:
                console.print(f"continuing the unfinished run {unfinished} (same command; "
                              f"--new-run to start afresh)")
            args.resume = str(unfinished)
    if args.resume:
        run = Path(args.resume)
        if not (run / results.PLAN).is_file():
            raise UsageError(f"--resume {args.resume}: not a run folder (no {results.PLAN})")
        plan = Plan.load(run / results.PLAN)
        meta = json.loads((run / results.RUN).read_text())
        data, packed = meta["data"], meta["packed"]
        config = tr.TrainConfig.from_dict(meta["config"])
        options = LoopOptions.from_dict(meta["options"])
    else:
        if not args.auto:
            raise UsageError("train needs --auto (probe, plan, pack, train) or --resume RUN")
        for name in ("epochs", "batch", "threads", "shards", "max_steps", "partitions"):
            v = getattr(args, name)
            if v is not None and v <= 0:
                raise UsageError(f"--{name.replace('_', '-')} {v}: must be > 0")
        data = _resolve_data(args, console)
        preset = _preset(args)
        root = Path(args.results) if args.results else results.default_results_root()
        run = _shared_run_dir(root, primary)
        fresh = None if args.reprobe else results.find_fresh_probe(root, data, preset.name)
        if fresh is not None:
            report = ProbeReport.load(fresh)
            if not quiet:
                console.print(f"reusing the probe of {fresh.parent.name} (under 24 h old; "
                              f"--reprobe to measure again)")
        else:
            report = run_probe(data, preset, budget_bytes=_budget(args), quick=True,
                               progress=_say(console, quiet))
        if primary:
            report.save(run / results.PROBE)
        n_local = jax.local_device_count()
        if args.batch and args.batch % 1:
            raise UsageError(f"--batch {args.batch}: must be an integer")
        try:
            plan = make_plan(report, preset, PlanRequest(
                num_hosts=jax.process_count(), epochs=args.epochs, per_device_batch=args.batch,
                threads=args.threads, read_mode=args.read_mode, num_shards=args.shards))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if plan.local_devices != n_local:
            plan = dataclasses.replace(plan, local_devices=n_local,
                                       global_batch=plan.per_device_batch * jax.device_count())
        if args.partitions and (args.partitions % jax.process_count()
                                or args.partitions > plan.num_shards):
            raise UsageError(f"--partitions {args.partitions}: must be a multiple of the "
                             f"{jax.process_count()} processes and at most the "
                             f"{plan.num_shards} shards")
        # Every host runs process 0's plan (hosts may measure slightly differently, and
        # the batch and shards must agree).
        plan = Plan.from_json(broadcast_text(plan.to_json(None)))
        if primary:
            plan.save(run / results.PLAN)
        if not quiet:
            console.print(render.render_plan(plan))
        if jax.process_count() > 1:
            # Process 0 packs first; on a shared file system the others then find it
            # finished, on node-local disks each packs the same shards itself.
            from jax.experimental import multihost_utils

            if primary:
                packed, pack_result = pack_for_plan(data, plan, report, console, quiet,
                                                    args.val_data)
            multihost_utils.sync_global_devices("autotune: packed")
            if not primary:
                packed, pack_result = pack_for_plan(data, plan, report, console, quiet,
                                                    args.val_data)
        else:
            packed, pack_result = pack_for_plan(data, plan, report, console, quiet,
                                                args.val_data)
        if primary:
            pack_result.save(run / results.PACK)
            results.save_json(run / results.BAD_IMAGES,
                              [b.to_dict() for b in pack_result.bad_images])
        check_hosts_agree(plan, pack_result, packed)
        if not quiet:
            console.print(render.render_pack(pack_result))
        config = train_config(preset, plan, pack_result.num_classes)
        options = loop_options(plan, on_bad_record=args.on_bad_record,
                               checkpoint_every_secs=args.checkpoint_every,
                               max_steps=args.max_steps, partitions=args.partitions)
        if primary:
            results.save_json(run / results.RUN, {"data": data, "packed": packed,
                                                  "config": config.to_dict(),
                                                  "options": options.to_dict(),
                                                  "argv": argv})
    writer = results.MetricsWriter(run / results.METRICS) if primary else None
    probe = ProbeReport.load(run / results.PROBE) if (run / results.PROBE).is_file() else None
    view = render.TrainView(console, quiet=quiet, plan=plan, probe=probe,
                            title=f"autotune train: {plan.preset} on {Path(data).name}")

    def callback(record):
        if writer:
            writer.write(record)
        view(record)

    with view:
        summary = train_and_evaluate(config, packed, str(run), options, callback=callback,
                                     on_oom=oom_policy(plan, None if quiet else console))
    if writer:
        writer.close()
        summary.save(run / results.SUMMARY)
    if primary:
        console.print(render.render_summary(summary, plan))
        _plots(run, console)
        console.print(f"run folder: {run}")
    if summary.status == "stopped":
        print(f"autotune train: stopped by {summary.stop_reason} at step {summary.steps}; every "
              f"process wrote checkpoint {summary.checkpoint_step}; run the same command again "
              f"(or autotune train --resume {run}) to continue", file=sys.stderr)
    return 0 if summary.status in ("completed", "max_steps") else EXIT_STOPPED


def cmd_report(args, console) -> int:
    from autotune import render
    from autotune.report import load_run, render_comparison, render_run, to_markdown

    runs = []
    for r in args.runs:
        if not Path(r).is_dir():
            raise UsageError(f"{r}: no such run folder")
        try:
            runs.append(load_run(r, price=args.gpu_hour_price))
        except ValueError as exc:
            raise UsageError(f"--gpu-hour-price {args.gpu_hour_price}: {exc}") from None
    if args.json:
        print(json.dumps([r.to_dict() for r in runs] if len(runs) > 1 else runs[0].to_dict(),
                         indent=2))
    elif args.markdown:
        print(to_markdown(runs))
    elif len(runs) == 1:
        console.print(render_run(runs[0]))
    else:
        console.print(render_comparison(runs[0], runs[1]))
    return 0


COMMANDS = {"probe": cmd_probe, "plan": cmd_plan, "pack": cmd_pack, "train": cmd_train,
            "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``autotune`` command. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from autotune.render import make_console

    console = make_console(quiet=False)
    try:
        if args.command == "train":
            return cmd_train(args, console, argv_override=argv)
        return COMMANDS[args.command](args, console)
    except UsageError as exc:
        return _fail(args.command, exc, EXIT_USAGE)
    except KeyboardInterrupt:
        print(f"autotune {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - known input errors become one line
        from trainers.distributed import ConnectError
        from trainers.pack import PackError
        from trainers.validation import ValidationLayoutError
        from autotune.records import RecordError

        if isinstance(exc, (PackError, ValidationLayoutError, RecordError, FileNotFoundError,
                            ConnectError)):
            return _fail(args.command, exc, EXIT_USAGE)
        if _announce_failure(exc):  # multi-host: leave now (see distributed.exit_now)
            import traceback

            from trainers.distributed import exit_now

            traceback.print_exc()
            exit_now(1)
        raise


def _announce_failure(exc: BaseException) -> bool:
    """On a multi-host run, tell the other processes this one is ending on an error,
    so that they exit at once naming it instead of waiting in a collective. Returns
    True on a multi-host run."""
    from trainers.distributed import watchdog

    dog = watchdog()
    if dog is not None:
        dog.announce_failure(f"{type(exc).__name__}: {exc}")
    return dog is not None


def _fail(command: str, exc: BaseException, code: int) -> int:
    print(f"autotune {command}: error: {exc}", file=sys.stderr)
    if _announce_failure(exc):  # multi-host: leave now (see distributed.exit_now)
        from trainers.distributed import exit_now

        exit_now(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
