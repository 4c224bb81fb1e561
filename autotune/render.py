"""Static terminal views (rich): probe reports (with the stall attribution of
``probe --stall``), plans, packing, training summaries, evaluations, costs, saved
runs and the comparison of two runs; and the CLI's console.

Rendering computes nothing: every figure shown is a field of a record (the probes',
the planner's, the trainers', or :mod:`autotune.runs` / :mod:`autotune.compare` for
saved runs). The drawing only formats numbers (:mod:`autotune.fmt`) and scales charts
(:mod:`autotune.charts`). Every number carries its unit. The live training view is
:class:`autotune.live.TrainView`.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from rich import box
from rich.console import Console, Group
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from autotune.charts import column_chart, hbar_chart, shared_top
from autotune.compare import compare_runs, decision_changes
from autotune.fmt import (HOST_WAIT_LABEL, INPUT_FIGURES_NOTE, STALL_LABEL, fmt_bytes,
                          fmt_host_wait, fmt_ms, fmt_num, fmt_pct, fmt_secs, fmt_stall,
                          format_change, is_missing)
from autotune.runs import pack_saved_fraction


def make_console(quiet: bool = False) -> Console:
    """The CLI's console: terminal width on a TTY, else 120 columns."""
    return Console(stderr=False, quiet=quiet, highlight=False,
                   width=None if sys.stdout.isatty() else 120)


def kv_table(title: str, rows: Sequence[tuple[str, Any]]) -> Table:
    """A two-column table of ``(what, value)`` rows under a bold title."""
    t = Table(title=title, box=box.SIMPLE_HEAVY, show_header=False, title_justify="left",
              title_style="bold")
    t.add_column("what", style="bold", no_wrap=True)
    t.add_column("value")
    for k, v in rows:
        t.add_row(k, v)
    return t


def _titled_table(title: str, columns: Sequence[tuple[str, str]]) -> Table:
    """A table under a bold title with ``(name, justify)`` columns."""
    t = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left", title_style="bold")
    for c, j in columns:
        t.add_column(c, justify=j)
    return t


# ---------------------------------------------------------------- charts of records


def render_decode_chart(decode, step_images_per_s: float | None = None,
                        chosen_threads: int | None = None,
                        planned: tuple[str, float] | None = None, width: int = 36) -> Text:
    """Decode + augment images/s per thread count (a ``probes.decode.DecodeReport``)
    as bars, the train step rate (images/s) as the marker; ``planned = (label,
    images/s)`` adds the plan's decode rate (e.g. after the pack-time resize) as a
    last bar."""
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
    with IOPS and the median latency (ms)."""
    rows = []
    for label, field in _DISK_ROWS:
        s = getattr(disk, field)
        label = label.replace("xN", f"x{disk.queue_depth}")
        rows.append((label, s.mb_per_s, f"{fmt_num(s.mb_per_s, 'MB/s')}, {fmt_num(s.iops, 'IOPS')}"
                                        f", p50 {fmt_num(s.p50_ms, 'ms', 3)}"))
    return hbar_chart(rows, width=width)


def pct_chart_top(*series: Sequence) -> float:
    """The top of a percentage chart for ``StepReport`` series: 1.1 x the largest data
    stall or host wait (%), between 10% and 100% (one scale for runs drawn together)."""
    vals = [1.1 * v for steps in series for r in steps
            for v in (r.data_stall_pct, r.host_wait_pct) if not is_missing(v)]
    return min(100.0, max([10.0] + vals))


def render_time_charts(steps: Sequence, predicted: float | None = None, *,
                       width: int = 60, vmax: float | None = None,
                       stall_vmax: float | None = None, title: str = "",
                       stall_note: str = "") -> Group:
    """Images/s, data stall and host wait (%) per logging window
    (``trainers.summaries.StepReport`` records, in order) as column charts, the plan's
    prediction (images/s) as the reference line; both percentages on one scale
    (``stall_vmax``, default :func:`pct_chart_top`). With no stall figure in any
    window, ``stall_note`` says why in place of its chart."""
    if not steps:
        return Group(Text("  no step reports", style="dim"))
    xl = (f"step {steps[0].step:,}", f"step {steps[-1].step:,}")
    head = f"{title}: " if title else ""
    top = stall_vmax or pct_chart_top(steps)
    stalls = [r.data_stall_pct for r in steps]
    if all(is_missing(v) for v in stalls):
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


# ---------------------------------------------------------------- probe


def _host_table(report) -> Table:
    """The host, its GPUs (NVML) and JAX's devices."""
    h, acc = report.host, report.accelerator
    gpu_rows = [("GPUs (NVML)", h.gpu.status)]
    for g in h.gpu.gpus:
        gpu_rows.append((f"GPU {g.index}", f"{g.name}, {fmt_bytes(g.memory_free_bytes)} free of "
                                           f"{fmt_bytes(g.memory_total_bytes)}, "
                                           f"{fmt_num(g.gpu_utilisation_percent, '%')} busy"))
    return kv_table("Host", [
        ("host", f"{h.hostname} ({h.cpu_model or 'cpu'})"),
        ("cores", f"{h.usable_cores} usable, {h.logical_cores} logical"),
        ("RAM", f"{fmt_bytes(h.ram_available_bytes)} available of {fmt_bytes(h.ram_total_bytes)}"),
        ("data disk", f"{fmt_bytes(h.disk_free_bytes)} free ({h.fs_type or '?'})"),
        ("JAX", f"{h.jax_version}, backend {acc.backend}, {acc.local_devices} x {acc.device_kind}"),
    ] + gpu_rows)


def _disk_parts(d) -> list[Any]:
    """The disk probe's reads as a table and a chart, and its notes."""
    t = _titled_table(f"Disk ({d.method}, {d.source})",
                      [(c, "right" if c != "read" else "left")
                       for c in ("read", "block", "depth", "IOPS", "MB/s", "p50 ms", "p99 ms")])
    for name, s in (("sequential", d.sequential), ("random 4 KiB", d.random_4k),
                    ("random record", d.random_record),
                    (f"random record x{d.queue_depth}", d.random_record_qd),
                    ("buffered random record", d.buffered_random_record)):
        t.add_row(name, fmt_bytes(s.block_bytes), str(s.queue_depth), fmt_num(s.iops),
                  fmt_num(s.mb_per_s), fmt_num(s.p50_ms, digits=3), fmt_num(s.p99_ms, digits=3))
    parts: list[Any] = [t, render_disk_chart(d)]
    if d.notes:
        parts.append(Text("\n".join(f"  note: {n}" for n in d.notes), style="dim"))
    return parts


def _decode_parts(dec, step_images_per_s: float | None) -> list[Any]:
    """The decode probe: images/s per thread count as a table, its ceiling, and the
    chart against the train step rate."""
    parts: list[Any] = [Text(f"Decode + augment ({dec.image_size} px output, {dec.sample_images} "
                             f"images, median {dec.median_width}x{dec.median_height} px)",
                             style="bold")]
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
                      + (f"; {len(dec.bad_images)} sampled files did not decode"
                         if dec.bad_images else "")))
    if dec.decoder:
        parts.append(Text(f"  training decode: {dec.decoder}", style="dim"))
    parts.append(render_decode_chart(dec, step_images_per_s))
    return parts


def _accelerator_table(report) -> Table:
    """Device memory, the compiled step's memory, the batch search and the step rate."""
    acc = report.accelerator
    rows = [("memory per device", f"{fmt_bytes(acc.memory_limit_bytes)} ({acc.memory_source})"),
            ("model", acc.model)]
    for m in acc.step_memory:
        rows.append((f"step memory @ batch {m.per_device_batch}", fmt_bytes(m.total)))
    if report.batch_search is not None:
        rows.append(("largest batch", report.batch_search.reason))
    if acc.rate_curve:
        rows.append(("images/s by batch", ", ".join(
            f"{p.per_device_batch}: {fmt_num(p.images_per_s)}" for p in acc.rate_curve)))
    if report.noise_scale is not None:
        n = report.noise_scale
        rows.append(("gradient noise scale", (
            f"B_simple {fmt_num(n.b_simple)} images over {n.averaged_steps} steps at "
            f"{n.per_device_batch} x {n.devices} devices" if n.b_simple is not None else n.note)))
    if acc.step_rate is not None:
        r = acc.step_rate
        rows.append(("train step", f"{fmt_num(r.images_per_s, 'img/s')} at per-device batch "
                                   f"{r.per_device_batch} ({fmt_num(r.images_per_s_per_device, 'img/s')}"
                                   f" per device, {fmt_ms(r.step_s)}/step, "
                                   f"compile {fmt_num(r.compile_s, 's')})"))
    return kv_table("Accelerator", rows)


def render_stall(stall) -> Group:
    """A ``probes.records.StallReport`` (``autotune probe --stall``): images/s on
    synthetic, cached and cold input, and the cold step time split into compute,
    preprocessing stall and fetch stall (% of the time per image), with the
    bottleneck."""
    cold = "real input, page cache dropped" if stall.cache_dropped else (
        "real input; the page cache could not be dropped, so as warm as the cached run")
    rows = [("compute only", f"{fmt_num(stall.synthetic_images_per_s, 'img/s')} (synthetic "
                             f"input on the device)"),
            ("cached input", f"{fmt_num(stall.cached_images_per_s, 'img/s')} (real input, page "
                             f"cache warm)"),
            ("cold input", f"{fmt_num(stall.cold_images_per_s, 'img/s')} ({cold})"),
            ("bottleneck", stall.bottleneck)]
    shares = [("compute", stall.compute_pct), ("preprocessing stall", stall.prep_stall_pct),
              ("fetch stall", stall.fetch_stall_pct)]
    chart = hbar_chart([(name, pct, fmt_num(pct, "%", 1)) for name, pct in shares],
                       highlight={"compute": "compute", "preprocessing": "preprocessing stall",
                                  "fetch": "fetch stall"}.get(stall.bottleneck))
    return Group(kv_table(f"Data stall attribution ({stall.steps:,} steps per run, DS-Analyzer)",
                          rows),
                 Text("Cold step time per image: compute, waiting for decode + augmentation, "
                      "waiting for storage (% of the time)", style="bold"),
                 chart)


def render_probe(report) -> Group:
    """Tables and charts for a :class:`autotune.probe_report.ProbeReport`: host,
    data set, disk, decode, accelerator, and the stall attribution when the probe
    ran with ``--stall``."""
    ds, acc = report.dataset, report.accelerator
    parts: list[Any] = [_host_table(report), kv_table("Data set", [
        ("input", ds.path + (f" ({ds.kind})" if getattr(ds, "kind", "") else "")),
        ("images", ("about " if getattr(ds, "estimated", False) else "")
                   + f"{ds.num_images:,} in {ds.num_classes:,} classes"
                   + (" (estimated from the archive's bytes)"
                      if getattr(ds, "estimated", False) else "")),
        ("size", f"{fmt_bytes(ds.total_bytes)} (median file {fmt_bytes(ds.median_bytes)})"),
    ])]
    if report.disk is not None:
        parts += _disk_parts(report.disk)
    parts += _decode_parts(report.decode, acc.step_rate.images_per_s if acc.step_rate else None)
    parts.append(_accelerator_table(report))
    if report.stall is not None:
        parts.append(render_stall(report.stall))
    return Group(*parts)


# ---------------------------------------------------------------- plan, pack, training


def render_plan(plan) -> Group:
    """The plan's decisions with their reasons, and the rates (images/s) its
    prediction rests on (all per host unless named global)."""
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
    warnings = [Text(f"  warning: {w}", style="bold yellow") for w in plan.warnings]
    return Group(t, line, *warnings)


def render_pack(result) -> Table:
    """A ``trainers.summaries.PackResult``: counts, bytes (and the share the pack-time
    resize saved, :func:`autotune.runs.pack_saved_fraction`), time, skipped files."""
    kind = getattr(result, "kind", "")
    rows = [("input", f"{result.source}" + (f" ({kind})" if kind else "")),
            ("output", result.out_dir)]
    if getattr(result, "val_source", None):
        rows.append(("validation input", result.val_source))
    if not getattr(result, "complete", True):
        return kv_table("Pack (this process's shards)", rows + [
            ("images", f"{result.input_images:,} read, {result.packed:,} packed + "
                       f"{result.skipped:,} skipped here"),
            ("status", "other processes are still packing; the last one to finish writes "
                       "the data set's metadata (or run `autotune pack` again without "
                       "--process-id once all have finished)")])
    names = result.class_names
    words = [w for w in getattr(result, "class_words", ()) if w]
    rows.append(("classes", f"{len(names):,}" + (
        f": {result.class_label(0)} ... {result.class_label(len(names) - 1)}"
        if words else f": {names[0]} ... {names[-1]}" if names else "")))
    rows += [("images", f"{result.input_images:,} in = {result.packed:,} packed + "
                        f"{result.skipped:,} skipped"),
            ("splits", ", ".join(f"{s.name} {s.num_examples:,} in {len(s.shard_lengths)} shards"
                                 for s in result.splits)),
            ("bytes", f"{fmt_bytes(result.bytes_in)} in -> {fmt_bytes(result.bytes_out)} stored"
                      + (f" (shorter side {result.resize_shorter} px, "
                         f"{pack_saved_fraction(result):.0%} saved"
                         + (f", full decode {result.decode_speedup:.1f}x faster measured"
                            if getattr(result, "decode_speedup", None) else "") + ")"
                         if result.resize_shorter else "")),
            ("time", fmt_secs(result.seconds) + (f", {result.resumed_shards} shards kept from an "
                                                 f"interrupted run" if result.resumed_shards else ""))]
    for line in getattr(result, "stopped", ()):
        rows.append(("ended early", line))
    for b in result.bad_images[:10]:
        rows.append(("skipped", f"{b.path}: {b.reason}"))
    if len(result.bad_images) > 10:
        rows.append(("skipped", f"... {len(result.bad_images) - 10} more in bad_images.json"))
    return kv_table("Pack", rows)


def _summary_extra_rows(summary, plan) -> list[tuple[str, str]]:
    """The summary's rows after the figures: the plan's prediction and device memory,
    out-of-memory retries, the resume step and the held-out accuracy."""
    rows = []
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
    if not is_missing(getattr(summary, "noise_scale", None)):
        rows.append(("gradient noise scale", f"B_simple {fmt_num(summary.noise_scale)} images at "
                                             f"the end ({summary.noise_steps:,} steps averaged) "
                                             f"vs global batch {summary.global_batch:,}"))
    if summary.final_eval is not None:
        e = summary.final_eval
        rows.append(("held-out top-1", f"{e.top1:.2%} (top-5 {e.top5:.2%}, {e.count:,} images)"))
    return rows


def render_summary(summary, plan=None, figures=None) -> Table:
    """A ``trainers.summaries.TrainSummary`` (and the plan's prediction beside it):
    status (with the stop reason of a stopped run), throughput (images/s), data stall
    and host wait (%), skipped steps, and the rest. Given the run's
    ``autotune.runs.RunFigures`` (a saved run), its ``data_stall_note`` says why a
    stall is missing, and its ``skipped_steps`` (None for runs saved before they were
    counted) is shown."""
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
             + ("" if is_missing(synthetic) else
                f" (on-device input: {fmt_num(synthetic, 'img/s')})")),
            ("host wait", fmt_host_wait(summary.host_wait_pct)),
            ("wall time", f"{fmt_secs(summary.wall_s)} (compile {fmt_num(summary.compile_s, 's')})"),
            ("bad records", f"{summary.bad_records:,}"),
            ("skipped steps", "not counted (run saved before they were)" if skipped is None else
             f"{skipped:,} (non-finite loss or gradient)")]
    return kv_table("Training summary", rows + _summary_extra_rows(summary, plan))


def render_measured_vs_plan(figures) -> Table:
    """An ``autotune.runs.RunFigures``: what was measured beside what the plan
    predicted (images/s, step time in ms, data stall and host wait in %)."""
    f = figures
    rows = [("throughput", f"{fmt_num(f.images_per_s, 'img/s')} measured ({f.images_per_s_source or '-'})"
                           f" vs {fmt_num(f.predicted_images_per_s, 'img/s')} predicted"
                           + (f" = {fmt_num(f.measured_vs_predicted_pct, '%', 0)} of the plan"
                              if f.measured_vs_predicted_pct is not None else ""))]
    if f.bottleneck:
        rows.append(("predicted bottleneck", f.bottleneck))
    if f.step_s is not None or f.synthetic_step_s is not None:
        rows.append(("step time", f"{fmt_ms(f.step_s)} mean, {fmt_ms(f.synthetic_step_s)} on "
                                  f"on-device input (the accelerators alone)"))
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
    return kv_table("Measured vs plan", rows)


def render_eval_history(evals: Sequence) -> Table:
    """``trainers.summaries.EvalReport`` records as a table (accuracy in %, time)."""
    t = _titled_table("Held-out evaluations",
                      [(c, "right") for c in ("epoch", "step", "top-1", "top-5", "loss", "images",
                                              "time")])
    for e in evals:
        t.add_row(f"{e.epoch:.2f}", f"{e.step:,}", fmt_pct(e.top1, 2), fmt_pct(e.top5, 2),
                  fmt_num(e.loss, digits=3), f"{e.count:,}", fmt_secs(e.seconds))
    return t


def render_costs(costs: Sequence) -> Group:
    """``autotune.costs.CostEstimate`` records: time, GPU-hours and dollars, with the
    arithmetic and the price's source."""
    t = _titled_table("Time and cost to train",
                      [("estimate", "left"), ("throughput", "right"), ("time", "right"),
                       ("GPU-hours", "right"), ("price", "right"), ("cost", "right")])
    for c in costs:
        t.add_row(c.label, fmt_num(c.images_per_s, "img/s"), fmt_secs(c.seconds),
                  f"{c.gpu_hours:,.4g} GPU-h", f"${c.price_per_gpu_hour:,.2f}/GPU-h",
                  f"${c.cost:,.2f}")
    notes = [f"  {c.label}: {c.arithmetic}" for c in costs]
    for src in dict.fromkeys(c.price_source for c in costs):
        notes.append(f"  price: {src}")
    for src in dict.fromkeys(c.rate_source for c in costs):
        notes.append(f"  throughput: {src}; compile, evaluation and checkpoints not included")
    if any(c.price_source.startswith("example") for c in costs):
        notes.append("  example list prices are approximate public figures, not quotes; "
                     "give your own price per GPU-hour")
    return Group(t, Text("\n".join(notes), style="dim"))


# ---------------------------------------------------------------- saved runs


def _metrics_table(m) -> Table:
    """An ``autotune.runs.MetricsStats``: the averages over metrics.jsonl."""
    return kv_table("metrics.jsonl", [
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
    ])


def _plan_parts(run) -> list[Any]:
    """A saved run's plan, and its decode threads against the step rate."""
    parts: list[Any] = [Rule("plan", style="dim"), render_plan(run.plan)]
    if run.probe is not None:
        p = run.plan
        parts.append(Text("Decode vs the step rate (the plan's threads in bold)", style="bold"))
        planned = None
        if p.pack_resize:
            planned = (f"{p.decode_threads} thr @{p.pack_resize}px", p.decode_images_per_s)
        parts.append(render_decode_chart(run.probe.decode, p.step_images_per_s,
                                         chosen_threads=p.decode_threads, planned=planned))
    return parts


def _training_parts(run) -> list[Any]:
    """A saved training run's summary, metrics, measured-vs-plan figures, charts and
    evaluations."""
    f = run.figures
    parts: list[Any] = [Rule("training", style="dim")]
    if run.summary is not None:
        parts.append(render_summary(run.summary, run.plan, f))
    else:
        parts.append(Text("  no summary.json: the run is still going, or was killed; "
                          "figures below come from metrics.jsonl", style="yellow"))
    if run.metrics is not None:
        parts.append(_metrics_table(run.metrics))
    parts.append(render_measured_vs_plan(f))
    if run.steps:
        parts.append(render_time_charts(run.steps, f.predicted_images_per_s,
                                        stall_note=f.data_stall_note))
    if run.evals:
        parts.append(render_eval_history(run.evals))
    if run.bad_images:
        parts.append(Text(f"  {run.bad_images:,} unreadable images skipped at packing "
                          f"(bad_images.json)", style="yellow"))
    return parts


def render_run(run) -> Group:
    """An ``autotune.runs.SavedRun``: probe (with text charts and the stall
    attribution), plan with the reasons, packing, training summary with the
    measured-vs-predicted figures, throughput, data stall and host wait over time,
    evaluation history, cost estimates, the plot files, and the files that could not
    be read."""
    f = run.figures
    parts: list[Any] = [Rule(f"run {run.name}: {run.kind}, {f.status}", style="bold"),
                        Text(f"  folder {run.path}", style="dim")]
    if run.probe is not None:
        parts.append(Rule("probe", style="dim"))
        parts.append(Text(f"  probed {run.probe.created_utc} in {fmt_secs(run.probe.seconds)} "
                          f"for preset {run.probe.preset}", style="dim"))
        parts.append(render_probe(run.probe))
    if run.plan is not None:
        parts += _plan_parts(run)
    if run.pack is not None:
        parts += [Rule("pack", style="dim"), render_pack(run.pack)]
    if run.kind == "train":
        parts += _training_parts(run)
    if run.costs:
        parts += [Rule("cost", style="dim"), render_costs(run.costs)]
    if run.plots:
        parts.append(Text("  plots: " + ", ".join(run.plots), style="dim"))
    for p in run.problems:
        parts.append(Text(f"  could not read {p}", style="red"))
    return Group(*parts)


# ---------------------------------------------------------------- comparison

_VERDICT_STYLE = {"better": "bold green", "worse": "bold red", "changed": "yellow",
                  "same": "dim", "n/a": "dim"}


def _differences_table(a, b, diffs: Sequence) -> Table:
    """``autotune.compare.Difference`` rows by group, B's change coloured."""
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
        arrow = {"better": "▲ ", "worse": "▼ ", "changed": "≠ "}.get(d.verdict, "")
        t.add_row(f"  {d.name}", d.a, Text(d.b, style=style if d.verdict != "same" else ""),
                  Text(arrow + format_change(d), style=style))
    return t


def _decision_changes_table(changes: Sequence[tuple[str, str, str, str]]) -> Table:
    """Plan decisions that differ: name, A, B and B's reason."""
    c = Table(title="Plan decisions that differ (B's reasons)", box=box.SIMPLE_HEAVY,
              title_justify="left", title_style="bold")
    c.add_column("choice", style="bold", no_wrap=True)
    c.add_column("A")
    c.add_column("B", style="yellow")
    c.add_column("reason (B)")
    for name, va, vb, why in changes:
        c.add_row(name, va, vb, why)
    return c


def render_comparison(a, b) -> Group:
    """Two ``autotune.runs.SavedRun`` side by side: every figure of
    :func:`autotune.compare.compare_runs` with B's change in % (percentage points for
    % figures), better in green, worse in red, changed settings in yellow; what data
    stall and host wait mean, and why a run has no data stall; the plan decisions that
    differ with B's reasons (:func:`autotune.compare.decision_changes`); and both
    runs' throughput, data stall and host wait over time on one scale."""
    notes = [f"  {INPUT_FIGURES_NOTE}"] + [
        f"  {title} ({run.name}): data stall {run.figures.data_stall_note}"
        for title, run in (("A", a), ("B", b)) if run.figures.data_stall_note]
    parts: list[Any] = [_differences_table(a, b, compare_runs(a, b)),
                        Text("\n".join(notes), style="dim")]
    changes = decision_changes(a, b)
    if changes:
        parts.append(_decision_changes_table(changes))
    if a.steps or b.steps:
        top = shared_top([r.images_per_s for r in (*a.steps, *b.steps)],
                         [a.figures.predicted_images_per_s, b.figures.predicted_images_per_s])
        stall = pct_chart_top(a.steps, b.steps)
        for title, run in (("A", a), ("B", b)):
            parts.append(render_time_charts(run.steps, run.figures.predicted_images_per_s,
                                            vmax=top, stall_vmax=stall, title=title,
                                            stall_note=run.figures.data_stall_note))
    return Group(*parts)
