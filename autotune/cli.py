"""``autotune``: probe the machine, plan, pack, train, report.

The CLI is thin: it parses, calls ``autotune.orchestrate`` (and the planner, the
packer, the run loader), renders. Bad arguments end in one line naming the value and
what is expected, exit code 2, no traceback.

    autotune probe [--data DIR]                 measure this machine on this data
    autotune plan  [--probe FILE]               show the plan for a saved probe report
    autotune pack  --data PATH --out DIR        pack a folder or archive into ArrayRecord shards
    autotune train --auto [--data DIR]          probe (or reuse one), plan, pack, train
    autotune report RUN [RUN2]                  render a saved run, or compare two
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# NumPy's OpenBLAS starts a thread per core at import, which spins on the CPU for a
# while although nothing here multiplies matrices on the host (JAX has its own
# threads): ~0.1 s of CPU per process, in this one and in each pack worker process
# (spawned with this environment). One thread unless the user says otherwise; set
# before anything imports NumPy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from autotune import results
from autotune.progress import progress_bar
from trainers.options import PackOptions as _PackOptions

PACK_DEFAULTS = _PackOptions()

EXIT_USAGE = 2
#: A signal stopped the run after every process wrote the same checkpoint.
EXIT_STOPPED = 3


class UsageError(Exception):
    """A bad argument: printed as one line, exit code 2."""


def _batch_arg(text: str) -> str | int:
    """``--batch``: ``auto``, ``max`` or a whole number (checked by :func:`_batch_request`)."""
    if text in ("auto", "max"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto, max or a per-device "
                                         f"batch (a whole number)") from None
    return value  # < 1: refused by _batch_request as a UsageError (one line, exit 2)


def _batch_request(batch: str | int | None) -> dict:
    """``--batch`` as ``PlanRequest`` fields: ``per_device_batch`` for a number,
    ``batch_policy`` for ``auto`` / ``max``.

    Raises:
      UsageError: a number below 1."""
    if isinstance(batch, int):
        if batch < 1:
            raise UsageError(f"--batch {batch}: must be > 0")
        return {"per_device_batch": batch}
    return {"batch_policy": batch} if batch else {}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="training images as downloaded: a folder <root>/<wnid>/**/*.JPEG, "
                                  "ILSVRC2012_img_train.tar, an ImageNet-21k tar of per-class "
                                  "tars, or Kaggle's imagenet-object-localization-challenge "
                                  "folder or zip (default: a built-in synthetic JPEG data set)")
    p.add_argument("--preset", help="training recipe (default: resnet50 on GPU, cpu-small on CPU)")
    p.add_argument("--memory-budget", help="per-device memory budget, e.g. 8GiB (default: the "
                                           "device's limit; on CPU half the free RAM)")
    p.add_argument("--results", help="results folder (default: ./results or $AUTOTUNE_RESULTS)")
    p.add_argument("--quiet", action="store_true", help="print only errors and the final summary")


def _add_val(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-data", help="separate validation images: class folders, a flat folder "
                                      "or ILSVRC2012_img_val.tar with labels, or the Kaggle "
                                      "folder or zip (default: a seeded hold-out of --data)")
    p.add_argument("--val-labels", help="validation labels: ILSVRC2012_devkit_t12.tar.gz, "
                                        "LOC_val_solution.csv or any text/CSV/TSV file of "
                                        "file name -> wnid or class index (default: looked for "
                                        "beside the validation images)")


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
    p.add_argument("--batch", type=_batch_arg, metavar="{auto,max,N}",
                   help="per-device batch: auto, max or a number (see train --batch)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("pack", help="pack a folder or archive into ArrayRecord shards")
    p.add_argument("--data", required=True, help="as for train: a folder, a tar or a zip")
    p.add_argument("--out", required=True)
    _add_val(p)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--resize", type=int, default=0, help="store with this shorter side (0: originals)")
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--workers", type=int,
                   help="worker processes that read, verify, resize and write whole shards (0: "
                        "--threads threads of one process; default: one per core on 2 or more "
                        "cores, else 0; `train --auto` plans it the same way)")
    p.add_argument("--archive-shard-records", type=int, default=PACK_DEFAULTS.archive_shard_records,
                   help="records per shard of an archive input (a tar is streamed)")
    p.add_argument("--archive-group-shards", type=int, default=PACK_DEFAULTS.archive_group_shards,
                   help="shards of an archive input written at once (consecutive members are "
                        "dealt over them; the unit of resume and of the split between processes)")
    p.add_argument("--num-processes", type=int,
                   help="processes (hosts) packing into one shared --out; the result is "
                        "byte-identical to a one-process pack (default: SLURM_NTASKS "
                        "under srun, else 1)")
    p.add_argument("--process-id", type=int,
                   help="this process's index (default: SLURM_PROCID under srun, else 0)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("train", help="train a ResNet (with --auto: probe, plan and pack first)")
    _add_common(p)
    p.add_argument("--auto", action="store_true", help="probe (or reuse a fresh probe), plan, pack, train")
    _add_val(p)
    p.add_argument("--epochs", type=float)
    p.add_argument("--batch", type=_batch_arg, metavar="{auto,max,N}",
                   help="per-device batch: auto (the smallest of the largest that fits, the "
                        "throughput knee and the data's critical batch, even where the preset "
                        "fixes one), max (the largest that fits) or a number; the plan says "
                        "what it would have chosen (default: the preset's, else auto)")
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

def _data(args, console) -> str:
    from autotune.orchestrate import resolve_data

    with progress_bar(console, "synthetic data set", args.quiet) as bar:
        return resolve_data(args.data, bar)


def _say(console, quiet):
    return (lambda s: None) if quiet else (lambda s: console.print(f"[dim]probe:[/] {s}"))


# ---------------------------------------------------------------- commands

def cmd_probe(args, console) -> int:
    from autotune import orchestrate, render

    data = _data(args, console)
    preset = orchestrate.resolve_preset(args.preset)
    say = _say(console, args.quiet)
    report = orchestrate.run_probe(data, preset, quick=args.quick, skip_disk=args.no_disk,
                                   budget_bytes=orchestrate.memory_budget(args.memory_budget),
                                   progress=say)
    if args.stall:
        with progress_bar(console, "packing", args.quiet) as bar:
            report = orchestrate.stall_report(data, preset, report, args.stall_steps, bar, say)
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
        path = path / results.PROBE
    if not path.is_file():
        raise UsageError(f"--probe {args.probe}: no probe.json there")
    report = ProbeReport.load(path)
    try:
        plan = make_plan(report, get_preset(args.preset or report.preset),
                         PlanRequest(num_hosts=args.hosts, **_batch_request(args.batch)))
    except ValueError as exc:
        raise UsageError(f"--probe {args.probe}: {exc}") from None
    if args.json:
        print(plan.to_json())
    else:
        console.print(render.render_plan(plan))
    return 0


def _default_workers() -> int:
    """``pack --workers`` when not given: one process per usable core on two or more
    (the planner's rule, ``autotune.planner.choose_pack_workers``), else threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores if (cores or 1) >= 2 else 0


def _pack_processes(args) -> None:
    """``--num-processes`` / ``--process-id`` of ``pack``, from the SLURM launch when
    not given (``srun autotune pack ...`` on N tasks packs N disjoint parts)."""
    env_n, env_id = os.environ.get("SLURM_NTASKS"), os.environ.get("SLURM_PROCID")
    if args.num_processes is None:
        args.num_processes = int(env_n) if env_n and env_id and args.process_id is None else 1
    if args.process_id is None:
        args.process_id = int(env_id) if env_id and args.num_processes > 1 else 0


def cmd_pack(args, console) -> int:
    from autotune import render
    from trainers.options import PackOptions
    from trainers.pack import pack_folder

    _pack_processes(args)
    if not args.num_processes >= 1 or not 0 <= args.process_id < args.num_processes:
        raise UsageError(f"--process-id {args.process_id} --num-processes {args.num_processes}: "
                         f"need 0 <= process id < processes")
    if not Path(args.data).exists():
        raise UsageError(f"--data {args.data}: no such folder or archive (expected "
                         f"<root>/<wnid>/*.JPEG, a tar of per-class tars or the Kaggle folder "
                         f"or zip)")
    try:
        opts = PackOptions(num_shards=args.shards, val_fraction=args.val_fraction,
                           resize_shorter=args.resize or None, pack_threads=args.threads,
                           pack_workers=_default_workers() if args.workers is None
                           else args.workers,
                           archive_shard_records=args.archive_shard_records,
                           archive_group_shards=args.archive_group_shards)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with progress_bar(console, "packing", args.quiet) as bar:
        result = pack_folder(args.data, args.out, opts, val_source=args.val_data,
                             val_labels=args.val_labels, progress=bar,
                             process_index=args.process_id, process_count=args.num_processes)
    console.print(render.render_pack(result))
    return 0


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


def _train_request(args, console, argv: list[str]):
    """The parsed ``train --auto`` arguments as an ``orchestrate.TrainRequest``."""
    from autotune import orchestrate
    from autotune.planner import PlanRequest

    for name in ("epochs", "threads", "shards", "max_steps", "partitions"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise UsageError(f"--{name.replace('_', '-')} {v}: must be > 0")
    return orchestrate.TrainRequest(
        data=_data(args, console), preset=orchestrate.resolve_preset(args.preset),
        results_root=Path(args.results) if args.results else results.default_results_root(),
        plan_request=PlanRequest(epochs=args.epochs, **_batch_request(args.batch),
                                 decode_threads=args.threads, read_mode=args.read_mode,
                                 num_shards=args.shards),
        val_data=args.val_data, val_labels=args.val_labels, reprobe=args.reprobe,
        budget_bytes=orchestrate.memory_budget(args.memory_budget),
        partitions=args.partitions, argv=tuple(argv),
        loop_overrides={"on_bad_record": args.on_bad_record,
                        "checkpoint_every_s": args.checkpoint_every,
                        "max_steps": args.max_steps})


def _session(args, console, quiet: bool, argv: list[str]):
    """The run to train: the one named by ``--resume``, the unfinished run the same
    command left, or a new one (probe, plan, pack)."""
    from autotune import orchestrate, render
    from autotune.planner import Plan

    if not args.resume and args.auto and not args.new_run:
        root = Path(args.results) if args.results else results.default_results_root()
        unfinished = orchestrate.unfinished_run(root, argv)
        if unfinished is not None:
            if not quiet:
                console.print(f"continuing the unfinished run {unfinished} (same command; "
                              f"--new-run to start afresh)")
            args.resume = str(unfinished)
    if args.resume:
        return orchestrate.resume_session(args.resume)
    if not args.auto:
        raise UsageError("train needs --auto (probe, plan, pack, train) or --resume RUN")

    def show(record):  # the plan, then the pack result, as they are ready
        if not quiet:
            console.print(render.render_plan(record) if isinstance(record, Plan)
                          else render.render_pack(record))

    with progress_bar(console, "packing", quiet) as bar:
        return orchestrate.new_session(_train_request(args, console, argv),
                                       say=_say(console, quiet), show=show, progress=bar)


def cmd_train(args, console, argv_override: list[str] | None = None) -> int:
    _init_distributed(args)
    import jax

    from autotune import live, orchestrate, render
    from autotune.probe_report import ProbeReport

    primary = jax.process_index() == 0
    quiet = args.quiet or not primary
    argv = list(sys.argv[1:]) if argv_override is None else list(argv_override)
    session = _session(args, console, quiet, argv)
    probe_path = session.run / results.PROBE
    view = live.TrainView(console, quiet=quiet, plan=session.plan,
                          probe=ProbeReport.load(probe_path) if probe_path.is_file() else None,
                          title=f"autotune train: {session.plan.preset} on "
                                f"{Path(session.record.data).name}")

    def stepped_down(old, new):
        if not quiet:
            console.print(f"[yellow]out of device memory at per-device batch "
                          f"{old.per_device_batch}: continuing at {new.per_device_batch}, "
                          f"learning rate {old.learning_rate:.4g} -> {new.learning_rate:.4g}[/]")

    with view:
        summary = orchestrate.train(session, view, stepped_down)
    if primary:
        console.print(render.render_summary(summary, session.plan))
        _plots(session.run, console)
        console.print(f"run folder: {session.run}")
    if summary.status == "stopped":
        print(f"autotune train: stopped by {summary.stop_reason} at step {summary.steps}; every "
              f"process wrote checkpoint {summary.checkpoint_step}; run the same command again "
              f"(or autotune train --resume {session.run}) to continue", file=sys.stderr)
    return 0 if summary.status in ("completed", "max_steps") else EXIT_STOPPED


def cmd_report(args, console) -> int:
    from autotune import compare, render, runs as runs_lib

    runs = []
    for r in args.runs:
        if not Path(r).is_dir():
            raise UsageError(f"{r}: no such run folder")
        try:
            runs.append(runs_lib.load_run(r, price=args.gpu_hour_price))
        except ValueError as exc:
            raise UsageError(f"--gpu-hour-price {args.gpu_hour_price}: {exc}") from None
    if args.json:
        print(json.dumps([r.to_dict() for r in runs] if len(runs) > 1 else runs[0].to_dict(),
                         indent=2))
    elif args.markdown:
        print(compare.to_markdown(runs))
    elif len(runs) == 1:
        console.print(render.render_run(runs[0]))
    else:
        console.print(render.render_comparison(runs[0], runs[1]))
    return 0


COMMANDS = {"probe": cmd_probe, "plan": cmd_plan, "pack": cmd_pack, "train": cmd_train,
            "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``autotune`` command. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _one_line_archive_warnings()
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
        from trainers.scan import DataFolderError
        from trainers.records import RecordError

        from autotune.orchestrate import SetupError

        # DataFolderError covers trainers.validation.ValidationLayoutError and
        # trainers.sources.SourceError: every bad --data / --val-data / --val-labels.
        if isinstance(exc, (PackError, DataFolderError, RecordError, FileNotFoundError,
                            ConnectError, SetupError)):
            return _fail(args.command, exc, EXIT_USAGE)
        from trainers.distributed import leave_on_error

        leave_on_error(exc, 1, print_traceback=True)  # multi-host: peers told, exit now
        raise


def _one_line_archive_warnings() -> None:
    """A damaged archive that ended early (``trainers.pack.ArchiveEndedEarly``) is
    reported as one line on stderr (the pack table repeats it)."""
    import warnings

    from trainers.pack import ArchiveEndedEarly

    shown = warnings.showwarning
    if getattr(shown, "one_line_archive", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ArchiveEndedEarly):
            print(f"autotune: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    show.one_line_archive = True
    warnings.showwarning = show


def _fail(command: str, exc: BaseException, code: int) -> int:
    from trainers.distributed import leave_on_error

    print(f"autotune {command}: error: {exc}", file=sys.stderr)
    leave_on_error(exc, code)  # multi-host: peers told, exit now
    return code


if __name__ == "__main__":
    sys.exit(main())
