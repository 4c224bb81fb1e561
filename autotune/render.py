"""Terminal rendering of probe reports, plans, packing, training and saved runs (rich).

Rendering never computes what the probes, the planner or :mod:`autotune.report`
compute: every figure shown is a field of a record. The drawing code only scales
bars to the width of the terminal (and averages a long series into the columns of a
chart). Every number carries its unit.

Text charts use block characters (no extra dependency): :func:`hbar_chart` (one bar
per row with an optional reference mark, e.g. decode images/s per thread count
against the train step rate) and :func:`column_chart` (a series over time with a
reference line, e.g. images/s per logging window against the plan's prediction).
"""

from __future__ import annotations

import collections
import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text


def _bad(x) -> bool:
    return x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


def fmt_bytes(n: float | None) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units); ``"-"`` for None / NaN."""
    if _bad(n):
        return "-"
    for unit, div in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n:,.0f} B"


def fmt_num(x: float | None, unit: str = "", digits: int | None = None) -> str:
    """A number with thousands separators and its unit: 0 decimals from 100 up, 1
    from 10, else 2 (or ``digits``); ``"-"`` for None / NaN."""
    if _bad(x):
        return "-"
    if digits is None:
        digits = 0 if abs(x) >= 100 else (1 if abs(x) >= 10 else 2)
    s = f"{x:,.{digits}f}"
    return s + unit if unit == "%" else f"{s} {unit}".strip()


def fmt_secs(s: float | None) -> str:
    """Seconds as ``1h02m03s`` / ``4m05s`` / ``6s``; ``"-"`` for None / NaN / inf."""
    if _bad(s):
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def fmt_pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage: ``0.4567`` -> ``"45.7%"``."""
    return "-" if _bad(x) else f"{100 * x:.{digits}f}%"


# ---------------------------------------------------------------- input figures

#: The two input figures, named alike in every view (definitions in
#: ``trainers.loop``; DS-Analyzer, Mohan et al., VLDB 2021).
STALL_LABEL = "data stall (accelerators idle for input, vs on-device input)"
STALL_SHORT = "data stall (accelerators idle)"
HOST_WAIT_LABEL = "host wait (training loop waiting for the next batch)"
HOST_WAIT_SHORT = "host wait (% of wall time)"
INPUT_FIGURES_NOTE = ("data stall = share of the step time the accelerators sit idle for "
                      "want of input, 1 - (step time on on-device input) / (step time) "
                      "(DS-Analyzer); host wait = share of wall time the training loop waited "
                      "for the next batch (with asynchronous dispatch it can be high while the "
                      "accelerators are busy)")


def fmt_stall(pct: float | None, note: str = "") -> str:
    """A data stall figure with its meaning, or why it is missing (``note``, e.g.
    ``autotune.report.RunFigures.data_stall_note``)."""
    if _bad(pct):
        return note or "not measured (no on-device reference step time)"
    return f"{fmt_num(pct, '%', 1)} of step time accelerators idle for input" + (
        f" ({note})" if note else "")


def fmt_host_wait(pct: float | None, wait_s: float | None = None) -> str:
    """Host wait as a share of wall time, and in ms per step when given."""
    per_step = "" if _bad(wait_s) else f", {fmt_num(wait_s * 1e3, 'ms')} per step"
    return f"{fmt_num(pct, '%', 1)} of wall time waiting for the next batch{per_step}"


def _stall_style(pct: float | None) -> str:
    if _bad(pct):
        return "dim"
    return "green" if pct < 5 else ("yellow" if pct < 20 else "red")


def _kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAVY, show_header=False, title_justify="left",
              title_style="bold")
    t.add_column("what", style="bold", no_wrap=True)
    t.add_column("value")
    for k, v in rows:
        t.add_row(k, v)
    return t


# ---------------------------------------------------------------- text charts

_HBLOCKS = " ▏▎▍▌▋▊▉█"
_VBLOCKS = " ▁▂▃▄▅▆▇█"


def _hbar(value: float, vmax: float, width: int) -> str:
    if _bad(value) or value <= 0 or vmax <= 0:
        return ""
    cells = min(float(width), value / vmax * width)
    full = int(cells)
    part = int((cells - full) * 8)
    bar = "█" * full + (_HBLOCKS[part] if part else "")
    return bar or "▏"


def hbar_chart(rows: Sequence[tuple[str, float, str]], *, width: int = 36,
               marker: float | None = None, marker_label: str = "",
               highlight: str | None = None) -> Text:
    """Horizontal bars, one per ``(label, value, value text)`` row, scaled to the
    largest value (or the marker); the marker (e.g. the step rate) is drawn as ``┃``
    across the bars and named under them. A row whose label equals ``highlight`` is
    drawn in bold cyan.
    """
    vals = [v for _, v, _ in rows if not _bad(v)]
    vmax = max(vals + ([marker] if not _bad(marker) else []) + [0.0])
    lw = max([len(lab) for lab, _, _ in rows] + [1])
    col = None
    if not _bad(marker) and vmax > 0:
        col = min(width - 1, int(marker / vmax * width))
    out = Text()
    for lab, v, txt in rows:
        bar = _hbar(v, vmax, width).ljust(width)
        style = "bold cyan" if highlight is not None and lab == highlight else "green"
        out.append(f"{lab:>{lw}} ", style="bold" if style == "bold cyan" else "")
        if col is not None:
            out.append(bar[:col], style=style)
            out.append("┃", style="bold yellow")
            out.append(bar[col + 1:], style=style)
        else:
            out.append(bar, style=style)
        out.append(f" {txt}\n")
    if col is not None:
        out.append(" " * (lw + 1 + col) + "┗ " + marker_label + "\n", style="yellow")
    out.rstrip()
    return out


def _columns(values: Sequence[float], width: int) -> list[float]:
    vals = [float("nan") if _bad(v) else float(v) for v in values]
    if len(vals) <= width:
        return vals
    out = []
    for i in range(width):
        chunk = [v for v in vals[i * len(vals) // width:(i + 1) * len(vals) // width]
                 if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out


def column_chart(values: Sequence[float], *, height: int = 6, width: int = 60,
                 ref: float | None = None, ref_label: str = "", unit: str = "",
                 vmax: float | None = None, x_labels: tuple[str, str] | None = None,
                 style: str = "green") -> Text:
    """A series as vertical bars (one column per value; a longer series is averaged
    into ``width`` columns), from 0 to ``vmax`` (default: the largest value or
    ``ref``, +5%), with the reference value drawn as a dashed line ``╌`` where no bar
    covers it and named on the right; ``x_labels`` are written under the first and
    last column.
    """
    cols = _columns(values, width)
    finite = [v for v in cols if not math.isnan(v)]
    if not finite:
        return Text("  (no data)", style="dim")
    refv = [ref] if not _bad(ref) else []
    if vmax and vmax > 0:
        top = vmax
    else:
        top = max(finite + refv) * 1.05
        # A few outlying windows must not flatten the rest: scale to the 90th
        # percentile (or the reference) and mark the clipped columns with an arrow.
        p90 = sorted(finite)[int(0.9 * (len(finite) - 1))]
        if top > 2.5 * max([p90] + refv):
            top = 1.5 * max([p90] + refv)
    top = top or 1.0
    label_w = max(len(fmt_num(top)), 1)
    out = Text()
    ref_row = None
    if not _bad(ref) and 0 <= ref <= top:
        ref_row = min(height - 1, int(ref / top * height))
    for row in range(height - 1, -1, -1):
        lo, hi = top * row / height, top * (row + 1) / height
        axis = fmt_num(top) if row == height - 1 else ("0" if row == 0 else "")
        out.append(f"{axis:>{label_w}} ┤", style="dim")
        for v in cols:
            if math.isnan(v) or v <= lo:
                if row == ref_row:
                    out.append("╌", style="yellow")
                else:
                    out.append(" ")
            elif v > top and row == height - 1:
                out.append("↑", style="bold " + style)
            elif v >= hi:
                out.append("█", style=style)
            else:
                out.append(_VBLOCKS[max(1, int((v - lo) / (hi - lo) * 8))], style=style)
        if row == ref_row:
            out.append(f" ╌ {ref_label or fmt_num(ref, unit)}", style="yellow")
        elif row == height - 1:
            clipped = sum(1 for v in cols if not math.isnan(v) and v > top)
            note = f" {unit}" if unit else ""
            if clipped:
                note += f" (↑ {clipped} above, up to {fmt_num(max(finite), unit)})"
            out.append(note, style="dim")
        out.append("\n")
    if x_labels:
        left, right = x_labels
        gap = max(1, len(cols) - len(left) - len(right))
        out.append(" " * (label_w + 2) + left + " " * gap + right + "\n", style="dim")
    out.rstrip()
    return out


def render_decode_chart(decode, step_images_per_s: float | None = None,
                        chosen_threads: int | None = None,
                        planned: tuple[str, float] | None = None, width: int = 36) -> Text:
    """Decode + augment images/s per thread count (a ``probes.decode.DecodeReport``)
    as bars, the train step rate as the marker; ``planned = (label, images/s)`` adds
    the plan's decode rate (e.g. after the pack-time resize) as a last bar."""
    rows = [(f"{p.threads} thr", p.images_per_s, fmt_num(p.images_per_s, "img/s"))
            for p in decode.points]
    if planned is not None:
        rows.append((planned[0], planned[1], fmt_num(planned[1], "img/s")))
    return hbar_chart(rows, width=width, marker=step_images_per_s,
                      marker_label=f"train step rate {fmt_num(step_images_per_s, 'img/s')}",
                      highlight=f"{chosen_threads} thr" if chosen_threads else None)


_DISK_ROWS = (("sequential 1 MiB", "sequential"), ("random 4 KiB", "random_4k"),
              ("random record", "random_record"), ("random record xN", "random_record_qd"),
              ("buffered random", "buffered_random_record"))


def render_disk_chart(disk, width: int = 36) -> Text:
    """MB/s of each read the disk probe made (a ``probes.disk.DiskReport``) as bars,
    with IOPS and the median latency."""
    rows = []
    for label, field in _DISK_ROWS:
        s = getattr(disk, field)
        label = label.replace("xN", f"x{disk.queue_depth}")
        rows.append((label, s.mb_per_s, f"{fmt_num(s.mb_per_s, 'MB/s')}, {fmt_num(s.iops, 'IOPS')}"
                                        f", p50 {fmt_num(s.p50_ms, 'ms', 3)}"))
    return hbar_chart(rows, width=width)


def pct_chart_top(*series: Sequence) -> float:
    """The top of a percentage chart for ``StepReport`` series: 1.1 x the largest data
    stall or host wait, between 10% and 100% (one scale for runs drawn together)."""
    vals = [1.1 * v for steps in series for r in steps
            for v in (r.data_stall_pct, r.host_wait_pct) if not _bad(v)]
    return min(100.0, max([10.0] + vals))


def render_time_charts(steps: Sequence, predicted: float | None = None, *,
                       width: int = 60, vmax: float | None = None,
                       stall_vmax: float | None = None, title: str = "",
                       stall_note: str = "") -> Group:
    """Images/s, data stall and host wait per logging window
    (``trainers.loop.StepReport`` records, in order) as column charts, the plan's
    prediction as the reference line; both percentages on one scale
    (``stall_vmax``, default :func:`pct_chart_top`). With no stall figure in any
    window, ``stall_note`` says why in place of its chart."""
    if not steps:
        return Group(Text("  no step reports", style="dim"))
    xl = (f"step {steps[0].step:,}", f"step {steps[-1].step:,}")
    head = f"{title}: " if title else ""
    top = stall_vmax or pct_chart_top(steps)
    stalls = [r.data_stall_pct for r in steps]
    if all(_bad(v) for v in stalls):
        stall_chart = Text("  " + fmt_stall(None, stall_note), style="dim")
    else:
        stall_chart = column_chart(stalls, width=width, height=4, unit="%", vmax=top,
                                   x_labels=xl, style="red")
    return Group(
        Text(f"{head}images/s per logging window", style="bold"),
        column_chart([r.images_per_s for r in steps], width=width, vmax=vmax, ref=predicted,
                     ref_label=f"plan {fmt_num(predicted, 'img/s')}", unit="img/s",
                     x_labels=xl),
        Text(f"{head}{STALL_LABEL}", style="bold"),
        stall_chart,
        Text(f"{head}{HOST_WAIT_LABEL}, % of wall time", style="bold"),
        column_chart([r.host_wait_pct for r in steps], width=width, height=4, unit="%",
                     vmax=top, x_labels=xl, style="magenta"))


# ---------------------------------------------------------------- records


def render_probe(report) -> Group:
    """Tables and charts for a :class:`autotune.probe_report.ProbeReport`."""
    h, d, dec, acc = report.host, report.disk, report.decode, report.accelerator
    parts: list[Any] = []
    gpu_rows = [("GPUs (NVML)", h.gpu.status)]
    for g in h.gpu.gpus:
        gpu_rows.append((f"GPU {g.index}", f"{g.name}, {fmt_bytes(g.memory_free_bytes)} free of "
                                           f"{fmt_bytes(g.memory_total_bytes)}, "
                                           f"{fmt_num(g.gpu_utilisation_percent, '%')} busy"))
    parts.append(_kv_table("Host", [
        ("host", f"{h.hostname} ({h.cpu_model or 'cpu'})"),
        ("cores", f"{h.usable_cores} usable, {h.logical_cores} logical"),
        ("RAM", f"{fmt_bytes(h.ram_available_bytes)} available of {fmt_bytes(h.ram_total_bytes)}"),
        ("data disk", f"{fmt_bytes(h.disk_free_bytes)} free ({h.fs_type or '?'})"),
        ("JAX", f"{h.jax_version}, backend {acc.backend}, {acc.local_devices} x {acc.device_kind}"),
    ] + gpu_rows))
    ds = report.dataset
    parts.append(_kv_table("Data set", [
        ("folder", ds.path),
        ("images", f"{ds.num_images:,} in {ds.num_classes:,} classes"),
        ("size", f"{fmt_bytes(ds.total_bytes)} (median file {fmt_bytes(ds.median_bytes)})"),
    ]))
    if d is not None:
        t = Table(title=f"Disk ({d.method}, {d.source})", box=box.SIMPLE_HEAVY,
                  title_justify="left", title_style="bold")
        for c in ("read", "block", "depth", "IOPS", "MB/s", "p50 ms", "p99 ms"):
            t.add_column(c, justify="right" if c != "read" else "left")
        for name, s in (("sequential", d.sequential), ("random 4 KiB", d.random_4k),
                        ("random record", d.random_record),
                        (f"random record x{d.queue_depth}", d.random_record_qd),
                        ("buffered random record", d.buffered_random_record)):
            t.add_row(name, fmt_bytes(s.block_bytes), str(s.queue_depth), fmt_num(s.iops),
                      fmt_num(s.mb_per_s), fmt_num(s.p50_ms, digits=3), fmt_num(s.p99_ms, digits=3))
        parts.append(t)
        parts.append(render_disk_chart(d))
        if d.notes:
            parts.append(Text("\n".join(f"  note: {n}" for n in d.notes), style="dim"))
    parts.append(Text(f"Decode + augment ({dec.image_size} px output, {dec.sample_images} images, "
                      f"median {dec.median_width}x{dec.median_height} px)", style="bold"))
    t = Table(box=box.SIMPLE_HEAVY)
    for c in ("threads", "images/s", "speed-up", "efficiency"):
        t.add_column(c, justify="right")
    for p in dec.points:
        mark = " <- knee" if p.threads == dec.knee_threads else ""
        t.add_row(str(p.threads), fmt_num(p.images_per_s), f"{p.speedup:.2f}x",
                  f"{p.efficiency:.0%}{mark}")
    parts.append(t)
    parts.append(Text(f"  ceiling: raw libjpeg-turbo decode {fmt_num(dec.raw_decode_images_per_s)} "
                      f"img/s x {dec.usable_cores} cores = {fmt_num(dec.ceiling_images_per_s)} img/s"
                      + (f"; {len(dec.bad_images)} sampled files did not decode" if dec.bad_images else "")))
    if dec.decoder:
        parts.append(Text(f"  training decode: {dec.decoder}", style="dim"))
    parts.append(render_decode_chart(dec, acc.step_rate.images_per_s if acc.step_rate else None))
    rows = [("memory per device", f"{fmt_bytes(acc.memory_limit_bytes)} ({acc.memory_source})"),
            ("model", acc.model)]
    for m in acc.step_memory:
        rows.append((f"step memory @ batch {m.per_device_batch}", fmt_bytes(m.total)))
    if report.batch_search is not None:
        rows.append(("largest batch", report.batch_search.reason))
    if acc.step_rate is not None:
        r = acc.step_rate
        rows.append(("train step", f"{fmt_num(r.images_per_s, 'img/s')} at per-device batch "
                                   f"{r.per_device_batch} ({fmt_num(r.images_per_s_per_device, 'img/s')}"
                                   f" per device, {fmt_num(r.step_s * 1e3, 'ms')}/step, "
                                   f"compile {fmt_num(r.compile_s, 's')})"))
    parts.append(_kv_table("Accelerator", rows))
    return Group(*parts)


def render_plan(plan) -> Group:
    """The plan's decisions with their reasons, and the rates its prediction rests
    on (all per host unless named global)."""
    t = Table(title=f"Plan ({plan.preset}): predicted {fmt_num(plan.predicted_global_images_per_s)} "
                    f"img/s, bottleneck {plan.bottleneck}", box=box.SIMPLE_HEAVY,
              title_justify="left", title_style="bold")
    t.add_column("choice", style="bold", no_wrap=True)
    t.add_column("value", style="cyan")
    t.add_column("reason")
    for d in plan.decisions:
        t.add_row(d.name, d.value, d.reason)
    rates = [f"train step {fmt_num(plan.step_images_per_s, 'img/s')}",
             f"decode {fmt_num(plan.decode_images_per_s, 'img/s')} at {plan.decode_threads} threads"]
    if plan.random_read_images_per_s is not None:
        rates.append(f"random reads {fmt_num(plan.random_read_images_per_s, 'img/s')}")
    if plan.sequential_read_images_per_s is not None:
        rates.append(f"sequential reads {fmt_num(plan.sequential_read_images_per_s, 'img/s')}")
    line = Text("  rates per host: " + ", ".join(rates)
                + f" -> predicted {fmt_num(plan.predicted_images_per_s, 'img/s')} per host, "
                  f"{fmt_num(plan.predicted_global_images_per_s, 'img/s')} over "
                  f"{plan.num_hosts} host{'s' if plan.num_hosts != 1 else ''}", style="dim")
    return Group(t, line)


def render_pack(result) -> Table:
    """A ``trainers.pack.PackResult``: counts, bytes, time, skipped files."""
    rows = [("output", result.out_dir),
            ("images", f"{result.input_images:,} in = {result.packed:,} packed + "
                       f"{result.skipped:,} skipped"),
            ("splits", ", ".join(f"{s.name} {s.num_examples:,} in {len(s.shard_lengths)} shards"
                                 for s in result.splits)),
            ("bytes", f"{fmt_bytes(result.bytes_in)} in -> {fmt_bytes(result.bytes_out)} stored"
                      + (f" (shorter side {result.resize_shorter} px, "
                         f"{1 - result.bytes_out / max(1, result.bytes_in):.0%} saved"
                         + (f", full decode {result.decode_speedup:.1f}x faster measured"
                            if getattr(result, "decode_speedup", None) else "") + ")"
                         if result.resize_shorter else "")),
            ("time", fmt_secs(result.seconds) + (f", {result.resumed_shards} shards kept from an "
                                                 f"interrupted run" if result.resumed_shards else ""))]
    for b in result.bad_images[:10]:
        rows.append(("skipped", f"{b.path}: {b.reason}"))
    if len(result.bad_images) > 10:
        rows.append(("skipped", f"... {len(result.bad_images) - 10} more in bad_images.json"))
    return _kv_table("Pack", rows)


def render_summary(summary, plan=None, figures=None) -> Table:
    """A ``trainers.loop.TrainSummary`` (and the plan's prediction beside it): status
    (with the stop reason of a stopped run), throughput, data stall and host wait,
    skipped steps, and the rest. Given the run's ``autotune.report.RunFigures`` (a
    saved run), its ``data_stall_note`` says why a stall is missing, and its
    ``skipped_steps`` (None for runs saved before they were counted) is shown."""
    reason, synthetic = summary.stop_reason, summary.synthetic_images_per_s
    skipped = summary.skipped_steps if figures is None else figures.skipped_steps
    rows = [("status", summary.status + (f" ({reason})" if reason else "")),
            ("steps", f"{summary.steps:,} ({summary.epochs:.2f} epochs, {summary.steps_per_epoch:,} "
                      f"steps/epoch, global batch {summary.global_batch:,})"),
            ("throughput", f"{fmt_num(summary.images_per_s, 'img/s')} "
                           f"({fmt_num(summary.images_per_s_per_device, 'img/s')} per device, "
                           f"{summary.num_devices} devices, {summary.num_hosts} hosts)"),
            ("data stall", fmt_stall(summary.data_stall_pct,
                                     figures.data_stall_note if figures is not None else "")
             + ("" if _bad(synthetic) else
                f" (on-device input: {fmt_num(synthetic, 'img/s')})")),
            ("host wait", fmt_host_wait(summary.host_wait_pct)),
            ("wall time", f"{fmt_secs(summary.wall_s)} (compile {fmt_num(summary.compile_s, 's')})"),
            ("bad records", f"{summary.bad_records:,}"),
            ("skipped steps", "not counted (run saved before they were)" if skipped is None else
             f"{skipped:,} (non-finite loss or gradient)")]
    if plan is not None:
        rows.append(("plan predicted", f"{fmt_num(plan.predicted_global_images_per_s, 'img/s')} "
                                       f"(bottleneck {plan.bottleneck})"))
    if plan is not None and (plan.step_bytes or summary.peak_bytes_in_use):
        rows.append(("device memory", f"{fmt_bytes(plan.step_bytes)} predicted (compiled memory "
                                      f"analysis) vs {fmt_bytes(summary.peak_bytes_in_use)} "
                                      f"measured peak"
                     + ("" if summary.peak_bytes_in_use else " (no device memory statistics "
                                                             "on this backend)")))
    for ev in getattr(summary, "oom_events", ()):
        rows.append(("out of memory", f"at step {ev.step:,}: per-device batch "
                                      f"{ev.old_per_device_batch} -> {ev.new_per_device_batch}, "
                                      f"learning rate {ev.old_learning_rate:.4g} -> "
                                      f"{ev.new_learning_rate:.4g}, continued from step "
                                      f"{ev.resumed_step:,}"))
    if summary.resumed_from_step:
        rows.append(("resumed from", f"step {summary.resumed_from_step:,}"))
    if summary.final_eval is not None:
        e = summary.final_eval
        rows.append(("held-out top-1", f"{e.top1:.2%} (top-5 {e.top5:.2%}, {e.count:,} images)"))
    return _kv_table("Training summary", rows)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def render_measured_vs_plan(figures) -> Table:
    """An ``autotune.report.RunFigures``: what was measured beside what the plan
    predicted."""
    f = figures
    rows = [("throughput", f"{fmt_num(f.images_per_s, 'img/s')} measured ({f.images_per_s_source or '-'})"
                           f" vs {fmt_num(f.predicted_images_per_s, 'img/s')} predicted"
                           + (f" = {fmt_num(f.measured_vs_predicted_pct, '%', 0)} of the plan"
                              if f.measured_vs_predicted_pct is not None else ""))]
    if f.bottleneck:
        rows.append(("predicted bottleneck", f.bottleneck))
    if f.step_s is not None or f.synthetic_step_s is not None:
        rows.append(("step time", f"{fmt_num(_ms(f.step_s), 'ms')} mean, "
                                  f"{fmt_num(_ms(f.synthetic_step_s), 'ms')} on on-device "
                                  f"input (the accelerators alone)"))
    rows.append(("data stall", fmt_stall(f.data_stall_pct, f.data_stall_note)))
    rows.append(("host wait", fmt_host_wait(f.host_wait_pct, f.wait_s)))
    if f.skipped_steps:
        rows.append(("skipped steps", Text(f"{f.skipped_steps:,} (non-finite loss or gradient)",
                                           style="yellow")))
    if f.probe_step_images_per_s is not None:
        rows.append(("probe step rate", f"{fmt_num(f.probe_step_images_per_s, 'img/s')} per host "
                                        f"(train step alone, synthetic input)"))
    if f.top1 is not None:
        rows.append(("held-out", f"top-1 {fmt_pct(f.top1, 2)}, top-5 {fmt_pct(f.top5, 2)}, "
                                 f"loss {fmt_num(f.eval_loss, digits=3)}"))
    return _kv_table("Measured vs plan", rows)


def render_eval_history(evals: Sequence) -> Table:
    """``trainers.loop.EvalReport`` records as a table."""
    t = Table(title="Held-out evaluations", box=box.SIMPLE_HEAVY, title_justify="left",
              title_style="bold")
    for c in ("epoch", "step", "top-1", "top-5", "loss", "images", "time"):
        t.add_column(c, justify="right")
    for e in evals:
        t.add_row(f"{e.epoch:.2f}", f"{e.step:,}", fmt_pct(e.top1, 2), fmt_pct(e.top5, 2),
                  fmt_num(e.loss, digits=3), f"{e.count:,}", fmt_secs(e.seconds))
    return t


def render_costs(costs: Sequence) -> Group:
    """``autotune.report.CostEstimate`` records: time, GPU-hours and dollars, with the
    arithmetic and the price's source."""
    t = Table(title="Time and cost to train", box=box.SIMPLE_HEAVY, title_justify="left",
              title_style="bold")
    for c, j in (("estimate", "left"), ("throughput", "right"), ("time", "right"),
                 ("GPU-hours", "right"), ("price", "right"), ("cost", "right")):
        t.add_column(c, justify=j)
    for c in costs:
        t.add_row(c.label, fmt_num(c.images_per_s, "img/s"), fmt_secs(c.seconds),
                  f"{c.gpu_hours:,.4g} GPU-h", f"${c.price_per_gpu_hour:,.2f}/GPU-h",
                  f"${c.cost:,.2f}")
    notes = []
    for c in costs:
        notes.append(f"  {c.label}: {c.arithmetic}")
    for src in dict.fromkeys(c.price_source for c in costs):
        notes.append(f"  price: {src}")
    for src in dict.fromkeys(c.rate_source for c in costs):
        notes.append(f"  throughput: {src}; compile, evaluation and checkpoints not included")
    if any(c.price_source.startswith("example") for c in costs):
        notes.append("  example list prices are approximate public figures, not quotes; "
                     "give your own price per GPU-hour")
    return Group(t, Text("\n".join(notes), style="dim"))


# ---------------------------------------------------------------- saved runs


def render_saved_run(run) -> Group:
    """An ``autotune.report.SavedRun``: every part the folder has."""
    f = run.figures
    parts: list[Any] = [Rule(f"run {run.name}: {run.kind}, {f.status}", style="bold")]
    parts.append(Text(f"  folder {run.path}", style="dim"))
    if run.probe is not None:
        parts.append(Rule("probe", style="dim"))
        parts.append(Text(f"  probed {run.probe.created_utc} in {fmt_secs(run.probe.seconds)} "
                          f"for preset {run.probe.preset}", style="dim"))
        parts.append(render_probe(run.probe))
    if run.plan is not None:
        parts.append(Rule("plan", style="dim"))
        parts.append(render_plan(run.plan))
        if run.probe is not None:
            p = run.plan
            parts.append(Text("Decode vs the step rate (the plan's threads in bold)", style="bold"))
            planned = None
            if p.pack_resize:
                planned = (f"{p.decode_threads} thr @{p.pack_resize}px", p.decode_images_per_s)
            parts.append(render_decode_chart(run.probe.decode, p.step_images_per_s,
                                             chosen_threads=p.decode_threads, planned=planned))
    if run.pack is not None:
        parts.append(Rule("pack", style="dim"))
        parts.append(render_pack(run.pack))
    if run.kind == "train":
        parts.append(Rule("training", style="dim"))
        if run.summary is not None:
            parts.append(render_summary(run.summary, run.plan, f))
        else:
            parts.append(Text("  no summary.json: the run is still going, or was killed; "
                              "figures below come from metrics.jsonl", style="yellow"))
        if run.metrics is not None:
            m = run.metrics
            parts.append(_kv_table("metrics.jsonl", [
                ("reports", f"{m.step_reports:,} step reports (steps {m.first_step:,}..{m.last_step:,}"
                            f" of {m.total_steps:,}), {m.eval_reports:,} evaluations"
                            + (f", {m.segments} segments (resumed)" if m.segments > 1 else "")),
                ("images/s", f"{fmt_num(m.mean_images_per_s, 'img/s')} mean, "
                             f"{fmt_num(m.peak_images_per_s, 'img/s')} peak, "
                             f"{fmt_num(m.last_images_per_s, 'img/s')} last"),
                ("data stall", f"{fmt_num(m.mean_data_stall_pct, '%', 1)} mean, "
                               f"{fmt_num(m.last_data_stall_pct, '%', 1)} last "
                               f"(accelerators idle for input, % of step time)"),
                ("host wait", f"{fmt_num(m.mean_host_wait_pct, '%', 1)} mean, "
                              f"{fmt_num(m.last_host_wait_pct, '%', 1)} last (% of wall time)"),
                ("last", f"epoch {m.last_epoch:.2f}, loss {fmt_num(m.last_loss, digits=4)}, "
                         f"lr {m.last_learning_rate:.4g}, elapsed {fmt_secs(m.last_elapsed_s)}"),
            ]))
        parts.append(render_measured_vs_plan(f))
        if run.steps:
            parts.append(render_time_charts(run.steps, f.predicted_images_per_s,
                                            stall_note=f.data_stall_note))
        if run.evals:
            parts.append(render_eval_history(run.evals))
        if run.bad_images:
            parts.append(Text(f"  {run.bad_images:,} unreadable images skipped at packing "
                              f"(bad_images.json)", style="yellow"))
    if run.costs:
        parts.append(Rule("cost", style="dim"))
        parts.append(render_costs(run.costs))
    if run.plots:
        parts.append(Text("  plots: " + ", ".join(run.plots), style="dim"))
    for p in run.problems:
        parts.append(Text(f"  could not read {p}", style="red"))
    return Group(*parts)


_VERDICT_STYLE = {"better": "bold green", "worse": "bold red", "changed": "yellow",
                  "same": "dim", "n/a": "dim"}


def render_comparison(a, b, diffs: Sequence, changes: Sequence[tuple[str, str, str, str]]) -> Group:
    """Two ``SavedRun`` side by side: ``diffs`` (``autotune.report.Difference``) as a
    table, B's change coloured (green better, red worse, yellow a changed setting);
    ``changes`` (plan decisions that differ: name, A, B, B's reason); both runs'
    throughput, data stall and host wait over time on one scale. Under the table:
    what data stall and host wait mean, and why a run has no data stall."""
    from autotune.report import format_delta

    t = Table(title=f"A = {a.name}   vs   B = {b.name}", box=box.SIMPLE_HEAVY,
              title_justify="left", title_style="bold")
    t.add_column("figure", style="bold", no_wrap=True)
    t.add_column("A", justify="right")
    t.add_column("B", justify="right")
    t.add_column("change (B vs A)", justify="left")
    group = None
    for d in diffs:
        if d.group != group:
            group = d.group
            t.add_row(Text(group, style="bold underline"), "", "", "")
        style = _VERDICT_STYLE[d.verdict]
        change = "" if d.verdict in ("same", "n/a") else " ".join(
            x for x in (format_delta(d), d.verdict) if x)
        arrow = {"better": "▲ ", "worse": "▼ ", "changed": "≠ "}.get(d.verdict, "")
        t.add_row(f"  {d.name}", d.a, Text(d.b, style=style if d.verdict != "same" else ""),
                  Text(arrow + change, style=style))
    notes = [f"  {INPUT_FIGURES_NOTE}"] + [
        f"  {title} ({run.name}): data stall {run.figures.data_stall_note}"
        for title, run in (("A", a), ("B", b)) if run.figures.data_stall_note]
    parts: list[Any] = [t, Text("\n".join(notes), style="dim")]
    if changes:
        c = Table(title="Plan decisions that differ (B's reasons)", box=box.SIMPLE_HEAVY,
                  title_justify="left", title_style="bold")
        c.add_column("choice", style="bold", no_wrap=True)
        c.add_column("A")
        c.add_column("B", style="yellow")
        c.add_column("reason (B)")
        for name, va, vb, why in changes:
            c.add_row(name, va, vb, why)
        parts.append(c)
    if a.steps or b.steps:
        vals = sorted(r.images_per_s for r in (*a.steps, *b.steps) if not _bad(r.images_per_s))
        preds = [x for x in (a.figures.predicted_images_per_s, b.figures.predicted_images_per_s)
                 if not _bad(x)]
        top = (1.5 * max([vals[int(0.9 * (len(vals) - 1))]] + preds)
               if vals else None)
        stall = pct_chart_top(a.steps, b.steps)
        for title, run in (("A", a), ("B", b)):
            parts.append(render_time_charts(run.steps, run.figures.predicted_images_per_s,
                                            vmax=top, stall_vmax=stall, title=title,
                                            stall_note=run.figures.data_stall_note))
    return Group(*parts)


# ---------------------------------------------------------------- live view


@dataclass(frozen=True)
class HostSample:
    """One live reading of the host (psutil).

    Attributes:
      cpu_percent: all CPUs busy, 0..100 (``psutil.cpu_percent``, since the previous
        call).
      process_cpu_percent: this process, 100 = one core (``Process.cpu_percent``).
      cores: logical CPUs.
      ram_used_bytes, ram_total_bytes: ``total - available`` and total (bytes).
      process_rss_bytes: this process's resident memory (bytes).
    """

    cpu_percent: float
    process_cpu_percent: float
    cores: int
    ram_used_bytes: int
    ram_total_bytes: int
    process_rss_bytes: int


class _HostSampler:
    def __init__(self):
        import psutil

        self.psutil = psutil
        self.proc = psutil.Process()
        psutil.cpu_percent(None)  # start the interval
        self.proc.cpu_percent(None)

    def __call__(self) -> HostSample:
        ps = self.psutil
        vm = ps.virtual_memory()
        return HostSample(cpu_percent=ps.cpu_percent(None),
                          process_cpu_percent=self.proc.cpu_percent(None),
                          cores=ps.cpu_count() or 1, ram_used_bytes=vm.total - vm.available,
                          ram_total_bytes=vm.total, process_rss_bytes=self.proc.memory_info().rss)


def _default_gpu_sampler() -> Callable[[], tuple]:
    try:
        from probes.gpu import sample_utilisation
    except Exception:  # noqa: BLE001 - no GPU view without the probe module
        return lambda: ()
    return sample_utilisation


class TrainView:
    """The live training view.

    In a terminal: a rich ``Live`` panel redrawn ``refresh_per_second`` times a second
    by rich's own thread (the training loop only hands over records: no drawing and
    no device sync on its thread). It shows epoch progress with ETA, images/s (last
    window and run average) beside the plan's prediction, the step time beside the
    step time on on-device input, the data stall (accelerators idle for input) and,
    separately, the host wait (the loop waiting for the next batch; both now, run
    average and recent history), skipped steps, loss and learning rate, held-out
    accuracy, per-GPU utilisation and memory (NVML via
    ``probes.gpu.sample_utilisation``) and host CPU and RAM (psutil), sampled at most
    once a second.

    Not a terminal (CI, ``nohup``): one plain line per report. ``quiet``: nothing.

    Args:
      console: where to draw (default: a new ``Console``).
      quiet: print nothing.
      title: panel title.
      plan: an ``autotune.planner.Plan`` (prediction, epochs, layout), optional.
      probe: an ``autotune.probe_report.ProbeReport`` (GPU memory totals), optional.
      gpu_sampler / host_sampler: callables returning ``probes.gpu.GpuSample``
        tuples / a :class:`HostSample` (defaults: NVML and psutil; for tests).
      refresh_per_second: redraws per second in a terminal.
      history: images/s values kept for the sparkline.
    """

    SAMPLE_EVERY_S = 1.0

    def __init__(self, console: Console | None = None, *, quiet: bool = False,
                 title: str = "autotune train", plan=None, probe=None,
                 gpu_sampler: Callable[[], tuple] | None = None,
                 host_sampler: Callable[[], HostSample] | None = None,
                 refresh_per_second: float = 4, history: int = 120):
        from autotune.report import StepAverager

        self.console = console or Console()
        self.quiet = quiet
        self.plan = plan
        self.probe = probe
        self.title = title
        self.last_step = None
        self.last_eval = None
        self.avg = StepAverager()
        self.vs_plan_pct = None
        self.ips_history: collections.deque = collections.deque(maxlen=history)
        self.stall_history: collections.deque = collections.deque(maxlen=history)
        self.wait_history: collections.deque = collections.deque(maxlen=history)
        self._lock = threading.Lock()
        self.live = None
        self.interactive = self.console.is_terminal and not quiet
        self.refresh_per_second = refresh_per_second
        self._gpu_sampler = gpu_sampler
        self._host_sampler = host_sampler
        self._samples: tuple[float, tuple, HostSample | None] | None = None
        self._t0 = time.monotonic()

    # -- samplers (called from rich's refresh thread, or per plain line)

    def _sample(self) -> tuple[tuple, HostSample | None]:
        now = time.monotonic()
        if self._samples is not None and now - self._samples[0] < self.SAMPLE_EVERY_S:
            return self._samples[1], self._samples[2]
        if self._gpu_sampler is None:
            self._gpu_sampler = _default_gpu_sampler()
        if self._host_sampler is None:
            try:
                self._host_sampler = _HostSampler()
            except Exception:  # noqa: BLE001 - psutil missing: no host line
                self._host_sampler = lambda: None
        try:
            gpus = tuple(self._gpu_sampler())
        except Exception:  # noqa: BLE001 - a failing NVML must not stop training
            gpus = ()
        try:
            host = self._host_sampler()
        except Exception:  # noqa: BLE001
            host = None
        self._samples = (now, gpus, host)
        return gpus, host

    def __enter__(self):
        if self.interactive:
            self._sample()  # start psutil's CPU interval
            self.live = Live(console=self.console, refresh_per_second=self.refresh_per_second,
                             transient=False, get_renderable=self._render)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.refresh()
            self.live.__exit__(*exc)
            self.live = None

    def __call__(self, record) -> None:
        """Take a ``StepReport`` or ``EvalReport`` (cheap: no drawing in a terminal)."""
        kind = type(record).__name__
        with self._lock:
            if kind == "StepReport":
                self.last_step = record
                self.avg.add(record)
                self.ips_history.append(record.images_per_s)
                self.stall_history.append(record.data_stall_pct)
                self.wait_history.append(record.host_wait_pct)
                pred = self.plan.predicted_global_images_per_s if self.plan is not None else None
                mean = self.avg.mean_images_per_s
                self.vs_plan_pct = 100.0 * mean / pred if pred and not _bad(mean) else None
            elif kind == "EvalReport":
                self.last_eval = record
        if self.quiet or self.live is not None:
            return
        if kind == "StepReport":
            self.console.print(self._plain_line(record), highlight=False, soft_wrap=True)
        elif kind == "EvalReport":
            self.console.print(f"eval epoch {record.epoch:.2f}: top-1 {record.top1:.2%} "
                               f"top-5 {record.top5:.2%} loss {record.loss:.3f} "
                               f"({record.count:,} images, {fmt_secs(record.seconds)})",
                               highlight=False, soft_wrap=True)

    def _plain_line(self, r) -> str:
        gpus, host = self._sample()
        pred = (f" (plan {fmt_num(self.plan.predicted_global_images_per_s)})"
                if self.plan is not None else "")
        s = (f"step {r.step}/{r.total_steps} epoch {r.epoch:.2f} | "
             f"{fmt_num(r.images_per_s)} img/s, avg {fmt_num(self.avg.mean_images_per_s)}{pred} | "
             f"step {fmt_num(r.step_s * 1e3, 'ms')} (on-device input "
             f"{fmt_num(r.synthetic_step_s * 1e3, 'ms')}), data stall "
             f"{fmt_num(r.data_stall_pct, '%', 1)}, host wait {fmt_num(r.host_wait_pct, '%', 1)} "
             f"({fmt_num(r.wait_s * 1e3, 'ms')}/step) | "
             f"loss {r.loss:.3f} lr {r.learning_rate:.4g} | ETA {fmt_secs(r.eta_s)}")
        if gpus:
            s += " | GPU " + " ".join(f"{fmt_num(g.gpu_utilisation_percent, '%', 0)}"
                                      for g in gpus)
        if host is not None:
            s += (f" | CPU {host.cpu_percent:.0f}% RAM "
                  f"{fmt_bytes(host.ram_used_bytes)}/{fmt_bytes(host.ram_total_bytes)}")
        if r.bad_records:
            s += f" | {r.bad_records:,} bad records"
        if r.skipped_steps:
            s += f" | {r.skipped_steps:,} steps skipped (non-finite)"
        return s

    def _sparkline(self, values: Sequence[float], top: float) -> str:
        cols = _columns(list(values), 40)
        return "".join(" " if math.isnan(v) else _VBLOCKS[max(1, min(8, int(v / top * 8)))]
                       for v in cols)

    def _step_rows(self, t: Table, r, plan, vs_plan, hist: dict[str, Any]) -> None:
        """The rows drawn from the last ``StepReport`` ``r``; ``hist``: the run averages
        (``avg_*``, from :class:`autotune.report.StepAverager`) and the recent series."""
        frac = min(1.0, r.step / max(1, r.total_steps))
        epochs = plan.epochs if plan is not None else None
        bar = Text()
        bar.append("█" * int(24 * frac), style="green")
        bar.append("░" * (24 - int(24 * frac)), style="dim")
        bar.append(f" {frac:.0%}  step {r.step:,}/{r.total_steps:,} · epoch {r.epoch:.2f}"
                   + (f"/{epochs:g}" if epochs else "")
                   + f" · elapsed {fmt_secs(r.elapsed_s)} · ETA {fmt_secs(r.eta_s)}")
        t.add_row("progress", bar)
        thr = Text(f"{fmt_num(r.images_per_s, 'img/s')} now, "
                   f"{fmt_num(hist['avg_ips'], 'img/s')} average")
        if plan is not None:
            thr.append(f"  | plan {fmt_num(plan.predicted_global_images_per_s, 'img/s')} "
                       f"(bottleneck {plan.bottleneck})", style="cyan")
            if vs_plan is not None:
                thr.append(f" = {vs_plan:.0f}% of plan",
                           style="green" if vs_plan >= 90 else "yellow")
        t.add_row("throughput", thr)
        top = max([v for v in hist["ips"] if not _bad(v)]
                  + ([plan.predicted_global_images_per_s] if plan is not None else [])
                  + [1e-9])
        t.add_row("", Text(self._sparkline(hist["ips"], top), style="green"))
        t.add_row("step time", f"{fmt_num(r.step_s * 1e3, 'ms')} now, "
                               f"{fmt_num(r.synthetic_step_s * 1e3, 'ms')} on on-device "
                               f"input (the accelerators alone)")
        style = _stall_style(r.data_stall_pct)
        t.add_row("data stall", Text(f"{fmt_num(r.data_stall_pct, '%', 1)} now, "
                                     f"{fmt_num(hist['avg_stall'], '%', 1)} average: accelerators "
                                     f"idle for input, % of step time", style=style))
        t.add_row("", Text(self._sparkline(hist["stall"], 100.0), style=style))
        t.add_row("host wait", f"{fmt_num(r.host_wait_pct, '%', 1)} now "
                               f"({fmt_num(r.wait_s * 1e3, 'ms')}/step), "
                               f"{fmt_num(hist['avg_wait'], '%', 1)} average: loop waiting for "
                               f"the next batch, % of wall time")
        t.add_row("", Text(self._sparkline(hist["wait"], 100.0), style="magenta"))
        t.add_row("loss / lr", f"{r.loss:.4f} / {r.learning_rate:.4g} "
                               f"(batch top-1 {r.accuracy:.1%})")
        if r.bad_records:
            t.add_row("bad records", Text(f"{r.bad_records:,} skipped", style="yellow"))
        if r.skipped_steps:
            t.add_row("skipped steps", Text(f"{r.skipped_steps:,} (non-finite loss or gradient)",
                                            style="yellow"))

    def _render(self):
        with self._lock:
            r, e, plan, vs_plan = self.last_step, self.last_eval, self.plan, self.vs_plan_pct
            hist = {"avg_ips": self.avg.mean_images_per_s,
                    "avg_stall": self.avg.mean_data_stall_pct,
                    "avg_wait": self.avg.mean_host_wait_pct, "ips": list(self.ips_history),
                    "stall": list(self.stall_history), "wait": list(self.wait_history)}
        gpus, host = self._sample()
        t = Table(box=box.SIMPLE_HEAVY, show_header=False, expand=False)
        t.add_column("what", style="bold", no_wrap=True)
        t.add_column("value")
        if r is None:
            t.add_row("status", f"waiting for the first step (compiling the train step, filling "
                                f"the input pipeline) ... {fmt_secs(time.monotonic() - self._t0)}")
        else:
            self._step_rows(t, r, plan, vs_plan, hist)
        if e is not None:
            t.add_row("held-out", f"top-1 {e.top1:.2%}, top-5 {e.top5:.2%}, loss {e.loss:.3f} "
                                  f"at epoch {e.epoch:.2f}")
        totals = {}
        if self.probe is not None:
            totals = {g.index: g.memory_total_bytes for g in self.probe.host.gpu.gpus}
        for g in gpus:
            total = totals.get(g.index)
            t.add_row(f"GPU {g.index}", f"{fmt_num(g.gpu_utilisation_percent, '%', 0)} busy, "
                                        f"{fmt_bytes(g.memory_used_bytes)} used"
                                        + (f" of {fmt_bytes(total)}" if total else ""))
        if host is not None:
            t.add_row("host", f"CPU {host.cpu_percent:.0f}% of {host.cores} cores (this process "
                              f"{host.process_cpu_percent / 100:.1f} cores) · RAM "
                              f"{fmt_bytes(host.ram_used_bytes)} of {fmt_bytes(host.ram_total_bytes)}"
                              f" (this process {fmt_bytes(host.process_rss_bytes)})")
        if plan is not None:
            t.add_row("plan", Text(f"batch {plan.per_device_batch} x {plan.local_devices} devices x "
                                   f"{plan.num_hosts} hosts = {plan.global_batch}, "
                                   f"{plan.decode_threads} decode threads, {plan.read_mode} reads, "
                                   f"{plan.num_shards} shards", style="dim"))
        return Panel(t, title=self.title, title_align="left", border_style="blue")


def make_console(quiet: bool = False) -> Console:
    """The CLI's console: terminal width on a TTY, else 120 columns."""
    return Console(stderr=False, quiet=quiet, highlight=False,
                   width=None if sys.stdout.isatty() else 120)
