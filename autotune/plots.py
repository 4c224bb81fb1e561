"""PNG plots of a run, written beside its JSON (matplotlib, Agg backend).

* ``decode_threads.png``: decode + augment images/s against threads (probe.json),
  the train step rate as a horizontal line, the plan's threads and its decode rate
  after the pack-time resize (plan.json) when there is a plan.
* ``throughput.png``: images/s, and data stall (accelerators idle for input, against
  on-device input) beside host wait (the loop waiting for the next batch) per logging
  window over the steps (metrics.jsonl), the plan's prediction as a line; held-out
  top-1 when evaluated.
* ``disk.png``: MB/s and IOPS of the disk probe's reads, random against sequential
  (probe.json's disk record).

Figures are drawn on ``matplotlib.figure.Figure`` with an explicit Agg canvas (no
``pyplot``: no global state, safe beside other threads; matplotlib is imported on the
first plot) and written atomically. Plotting shows what the records and the figures
of :func:`autotune.runs.load_run` hold; it computes nothing.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from pathlib import Path
from typing import Sequence

from autotune.fmt import HOST_WAIT_LABEL, STALL_LABEL
from autotune.runs import load_run

DECODE_PNG = "decode_threads.png"
THROUGHPUT_PNG = "throughput.png"
DISK_PNG = "disk.png"


def _figure(w: float = 7.5, h: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def plot_decode(decode, path: str | os.PathLike, *, step_images_per_s: float | None = None,
                plan=None, title: str = "") -> Path:
    """Decode + augment images/s against threads (a ``probes.decode.DecodeReport``),
    with the train step rate (images/s per host) as a horizontal line and, given a
    ``Plan``, its chosen threads and decode rate (after the pack-time resize)."""
    fig = _figure()
    ax = fig.add_subplot()
    th = [p.threads for p in decode.points]
    ips = [p.images_per_s for p in decode.points]
    ax.plot(th, ips, "o-", color="tab:blue",
            label=f"decode + augment, {decode.image_size} px (measured)")
    if _ok(decode.ceiling_images_per_s):
        ax.axhline(decode.ceiling_images_per_s, color="tab:gray", ls=":",
                   label=f"raw decode x {decode.usable_cores} cores = "
                         f"{decode.ceiling_images_per_s:,.0f} img/s")
    if _ok(step_images_per_s):
        ax.axhline(step_images_per_s, color="tab:red", ls="--",
                   label=f"train step rate {step_images_per_s:,.0f} img/s")
    if plan is not None:
        ax.axvline(plan.decode_threads, color="tab:green", ls="-.", alpha=0.6,
                   label=f"plan: {plan.decode_threads} decode threads")
        if plan.pack_resize and _ok(plan.decode_images_per_s):
            ax.plot([plan.decode_threads], [plan.decode_images_per_s], "*", ms=14,
                    color="tab:green",
                    label=f"plan: after pack resize to {plan.pack_resize} px, "
                          f"{plan.decode_images_per_s:,.0f} img/s (predicted)")
    ax.set_xlabel("decode threads")
    ax.set_ylabel("images/s")
    ax.set_xticks(th)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "Decode + augmentation throughput against threads")
    return _save(fig, Path(path))


def plot_throughput(steps: Sequence, path: str | os.PathLike, *,
                    predicted: float | None = None, evals: Sequence = (),
                    mean_images_per_s: float | None = None, title: str = "",
                    stall_note: str = "") -> Path:
    """Images/s per logging window against the step (``trainers.summaries.StepReport``
    records), the plan's prediction and the run mean as lines; below, the data stall
    (% of step time the accelerators were idle for input) and the host wait (% of
    wall time the loop waited for the next batch) as two series (``stall_note``
    written in the panel when no window has a stall figure, e.g. an old run); held-out
    top-1 (``EvalReport``) in a third panel when there is any.

    Raises:
      ValueError: no step reports.
    """
    if not steps:
        raise ValueError(f"no step reports to plot for {path}")
    n = 3 if evals else 2
    fig = _figure(7.5, 2.6 * n)
    axes = fig.subplots(n, 1, sharex=True)
    x = [r.step for r in steps]
    a0 = axes[0]
    a0.plot(x, [r.images_per_s for r in steps], ".-", color="tab:blue", label="measured")
    if _ok(predicted):
        a0.axhline(predicted, color="tab:red", ls="--", label=f"plan {predicted:,.0f} img/s")
    if _ok(mean_images_per_s):
        a0.axhline(mean_images_per_s, color="tab:blue", ls=":",
                   label=f"run mean {mean_images_per_s:,.0f} img/s")
    a0.set_ylabel("images/s (global)")
    a0.set_ylim(bottom=0)
    a0.legend(fontsize=8)
    a0.grid(alpha=0.3)
    _plot_input_figures(axes[1], steps, stall_note)
    if evals:
        a2 = axes[2]
        a2.plot([e.step for e in evals], [100 * e.top1 for e in evals], "o-", color="tab:green",
                label="top-1")
        a2.plot([e.step for e in evals], [100 * e.top5 for e in evals], "s--", color="tab:olive",
                label="top-5")
        a2.set_ylabel("held-out accuracy (%)")
        a2.set_ylim(0, 100)
        a2.legend(fontsize=8)
        a2.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.suptitle(title or "Throughput, data stall and host wait per logging window")
    return _save(fig, Path(path))


def _plot_input_figures(ax, steps: Sequence, stall_note: str) -> None:
    """Data stall (filled) and host wait (dashed) per window on one 0-100% axis."""
    x = [r.step for r in steps]
    stall = [r.data_stall_pct for r in steps]
    if any(_ok(v) for v in stall):
        ax.fill_between(x, stall, step="pre", color="tab:orange", alpha=0.5)
        ax.plot(x, stall, drawstyle="steps-pre", color="tab:orange",
                label=f"{STALL_LABEL}, % of step time")
    else:
        ax.text(0.5, 0.65, textwrap.fill(f"data stall {stall_note or 'not measured'}", 90,
                                         break_on_hyphens=False),
                transform=ax.transAxes, ha="center", va="center", fontsize=7, color="tab:gray")
    ax.plot(x, [r.host_wait_pct for r in steps], drawstyle="steps-pre", color="tab:purple",
            ls="--", label=f"{HOST_WAIT_LABEL}, % of wall time")
    ax.set_ylabel("% of time")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)


_DISK = (("sequential\n1 MiB", "sequential"), ("random\n4 KiB", "random_4k"),
         ("random\nrecord", "random_record"), ("random\nrecord xN", "random_record_qd"),
         ("buffered\nrandom", "buffered_random_record"))


def plot_disk(disk, path: str | os.PathLike, *, plan=None, title: str = "") -> Path:
    """MB/s and IOPS of each read of a ``probes.disk.DiskReport``, random against
    sequential (log scale); given a ``Plan``, a third panel with the images/s the
    plan says random and sequential reads deliver, against the train step rate."""
    with_plan = plan is not None and (_ok(plan.random_read_images_per_s)
                                      or _ok(plan.sequential_read_images_per_s))
    fig = _figure(11 if with_plan else 8, 4.2)
    axes = fig.subplots(1, 3 if with_plan else 2)
    a0, a1 = axes[0], axes[1]
    labels, mbs, iops, colors = [], [], [], []
    for label, field in _DISK:
        s = getattr(disk, field)
        labels.append(label.replace("xN", f"x{disk.queue_depth}"))
        mbs.append(s.mb_per_s if _ok(s.mb_per_s) else 0.0)
        iops.append(s.iops if _ok(s.iops) else 0.0)
        colors.append("tab:blue" if s.pattern == "seq" else
                      ("tab:gray" if not s.direct else "tab:orange"))
    for ax, vals, unit in ((a0, mbs, "MB/s (1 MB = 1e6 B)"), (a1, iops, "reads/s (IOPS)")):
        bars = ax.bar(range(len(vals)), vals, color=colors)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:,.0f}", (b.get_x() + b.get_width() / 2, v), ha="center",
                        va="bottom", fontsize=7)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        if any(v > 0 for v in vals):
            ax.set_yscale("log")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3, axis="y")
    if with_plan:
        a2 = axes[2]
        names = [f"random\n(depth {disk.queue_depth})", "sequential"]
        vals = [plan.random_read_images_per_s or 0.0, plan.sequential_read_images_per_s or 0.0]
        bars = a2.bar(range(2), vals, color=["tab:orange", "tab:blue"])
        for b, v in zip(bars, vals):
            a2.annotate(f"{v:,.0f}", (b.get_x() + b.get_width() / 2, v), ha="center",
                        va="bottom", fontsize=7)
        if _ok(plan.step_images_per_s):
            a2.axhline(plan.step_images_per_s, color="tab:red", ls="--",
                       label=f"train step rate {plan.step_images_per_s:,.0f} img/s")
            a2.legend(fontsize=7, loc="lower right")
        a2.set_xticks(range(2), names, fontsize=7)
        if any(v > 0 for v in vals):
            a2.set_yscale("log")
        a2.set_ylabel("images/s the reads deliver (plan)")
        a2.set_title(f"read mode chosen: {plan.read_mode}", fontsize=9)
        a2.grid(alpha=0.3, axis="y")
    fig.suptitle(title or f"Disk reads ({disk.method}, {disk.source}; record "
                          f"{disk.record_bytes:,} B; grey = through the page cache)")
    return _save(fig, Path(path))


def write_plots(run_dir: str | os.PathLike) -> list[Path]:
    """Write every plot the run folder's files allow (see the module docstring)
    into ``run_dir``; returns the paths written (empty when there is nothing to
    plot).

    Raises:
      FileNotFoundError: ``run_dir`` is not a run folder (``autotune.runs.load_run``).
    """
    run = load_run(run_dir)
    out = Path(run_dir)
    written: list[Path] = []
    if run.probe is not None:
        step_rate = (run.plan.step_images_per_s if run.plan is not None else
                     (run.probe.accelerator.step_rate.images_per_s
                      if run.probe.accelerator.step_rate else None))
        written.append(plot_decode(run.probe.decode, out / DECODE_PNG,
                                   step_images_per_s=step_rate, plan=run.plan))
        if run.probe.disk is not None:
            written.append(plot_disk(run.probe.disk, out / DISK_PNG, plan=run.plan))
    if run.steps:
        written.append(plot_throughput(run.steps, out / THROUGHPUT_PNG,
                                       predicted=run.figures.predicted_images_per_s,
                                       evals=run.evals,
                                       mean_images_per_s=run.figures.images_per_s,
                                       stall_note=run.figures.data_stall_note))
    return written
