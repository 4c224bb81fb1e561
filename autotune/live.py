"""The live training view: what the training loop's records say, as they come.

The view shows the fields of the ``StepReport`` / ``EvalReport`` records it is handed,
the run averages of :class:`autotune.runs.StepAverager`, the plan's figures, and the
utilisation readings of :class:`probes.sampler.UtilisationSampler` (NVML and psutil).
It computes nothing itself: it formats (:mod:`autotune.fmt`) and draws
(:mod:`autotune.charts`).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable

from rich import box
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from autotune.charts import sparkline
from autotune.fmt import fmt_bytes, fmt_ms, fmt_num, fmt_secs, is_missing, stall_style
from autotune.planner import noise_vs_batch
from autotune.runs import StepAverager, plan_ratio_pct
from probes.sampler import HostSample, UtilisationSampler


class TrainView:
    """The live training view.

    In a terminal: a rich ``Live`` panel redrawn ``refresh_per_second`` times a second
    by rich's own thread (the training loop only hands over records: no drawing and
    no device sync on its thread). It shows epoch progress with ETA, images/s (last
    window and run average) beside the plan's prediction, the step time beside the
    step time on on-device input, the data stall (accelerators idle for input) and,
    separately, the host wait (the loop waiting for the next batch; both now, run
    average and recent history), skipped steps, loss and learning rate, held-out
    accuracy, the gradient noise scale against the batch in use (saying so when the
    data's critical batch moves past it, either way:
    :func:`autotune.planner.noise_vs_batch`), per-GPU utilisation and memory and host
    CPU and RAM (read by
    :class:`probes.sampler.UtilisationSampler` at most once every
    :attr:`SAMPLE_EVERY_S` seconds).

    Not a terminal (CI, ``nohup``): one plain line per report. ``quiet``: nothing.

    Args:
      console: where to draw (default: a new ``Console``).
      quiet: print nothing.
      title: panel title.
      plan: an ``autotune.planner.Plan`` (prediction, epochs, layout), optional.
      probe: an ``autotune.probe_report.ProbeReport`` (GPU memory totals), optional.
      gpu_sampler / host_sampler: callables returning ``probes.records.GpuSample``
        tuples / a :class:`probes.sampler.HostSample` (defaults: NVML and psutil; for
        tests).
      refresh_per_second: redraws per second in a terminal.
      history: images/s values kept for the sparkline.
    """

    SAMPLE_EVERY_S = 1.0

    def __init__(self, console: Console | None = None, *, quiet: bool = False,
                 title: str = "autotune train", plan=None, probe=None,
                 gpu_sampler: Callable[[], tuple] | None = None,
                 host_sampler: Callable[[], HostSample | None] | None = None,
                 refresh_per_second: float = 4, history: int = 120):
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
        self._sample = UtilisationSampler(gpu_sampler, host_sampler, every_s=self.SAMPLE_EVERY_S)
        self._t0 = time.monotonic()

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
                self.vs_plan_pct = plan_ratio_pct(self.avg.mean_images_per_s, pred)
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
        """One line for a ``StepReport`` off a terminal."""
        gpus, host = self._sample()
        pred = (f" (plan {fmt_num(self.plan.predicted_global_images_per_s)})"
                if self.plan is not None else "")
        s = (f"step {r.step}/{r.total_steps} epoch {r.epoch:.2f} | "
             f"{fmt_num(r.images_per_s)} img/s, avg {fmt_num(self.avg.mean_images_per_s)}{pred} | "
             f"step {fmt_ms(r.step_s)} (on-device input {fmt_ms(r.synthetic_step_s)}), data stall "
             f"{fmt_num(r.data_stall_pct, '%', 1)}, host wait {fmt_num(r.host_wait_pct, '%', 1)} "
             f"({fmt_ms(r.wait_s)}/step) | "
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
        noise = self._noise(r)
        if noise is not None:
            s += f" | noise scale: {noise[1]}"
        return s

    def _noise(self, r) -> tuple[str, str] | None:
        """The planner's comparison of the window's noise scale with the global batch
        in use (None: not measured, or no plan)."""
        if self.plan is None:
            return None
        return noise_vs_batch(getattr(r, "noise_scale", float("nan")), self.plan.global_batch)

    def _progress_rows(self, t: Table, r, plan, vs_plan, hist: dict[str, Any]) -> None:
        """Progress and throughput rows from the last ``StepReport`` ``r``."""
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
        top = max([v for v in hist["ips"] if not is_missing(v)]
                  + ([plan.predicted_global_images_per_s] if plan is not None else [])
                  + [1e-9])
        t.add_row("", Text(sparkline(hist["ips"], top), style="green"))

    def _step_rows(self, t: Table, r, plan, vs_plan, hist: dict[str, Any]) -> None:
        """The rows drawn from the last ``StepReport`` ``r``; ``hist``: the run averages
        (``avg_*``, from :class:`autotune.runs.StepAverager`) and the recent series."""
        self._progress_rows(t, r, plan, vs_plan, hist)
        t.add_row("step time", f"{fmt_ms(r.step_s)} now, {fmt_ms(r.synthetic_step_s)} on "
                               f"on-device input (the accelerators alone)")
        style = stall_style(r.data_stall_pct)
        t.add_row("data stall", Text(f"{fmt_num(r.data_stall_pct, '%', 1)} now, "
                                     f"{fmt_num(hist['avg_stall'], '%', 1)} average: accelerators "
                                     f"idle for input, % of step time", style=style))
        t.add_row("", Text(sparkline(hist["stall"], 100.0), style=style))
        t.add_row("host wait", f"{fmt_num(r.host_wait_pct, '%', 1)} now "
                               f"({fmt_ms(r.wait_s)}/step), "
                               f"{fmt_num(hist['avg_wait'], '%', 1)} average: loop waiting for "
                               f"the next batch, % of wall time")
        t.add_row("", Text(sparkline(hist["wait"], 100.0), style="magenta"))
        t.add_row("loss / lr", f"{r.loss:.4f} / {r.learning_rate:.4g} "
                               f"(batch top-1 {r.accuracy:.1%})")
        if r.bad_records:
            t.add_row("bad records", Text(f"{r.bad_records:,} skipped", style="yellow"))
        if r.skipped_steps:
            t.add_row("skipped steps", Text(f"{r.skipped_steps:,} (non-finite loss or gradient)",
                                            style="yellow"))
        noise = self._noise(r)
        if noise is not None:
            t.add_row("noise scale", Text(noise[1], style="yellow" if noise[0] == "below"
                                          else "cyan"))

    def _machine_rows(self, t: Table, plan) -> None:
        """Per-GPU utilisation and memory, host CPU and RAM, and the plan's layout."""
        gpus, host = self._sample()
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

    def _render(self):
        """The panel (called by rich's refresh thread)."""
        with self._lock:
            r, e, plan, vs_plan = self.last_step, self.last_eval, self.plan, self.vs_plan_pct
            hist = {"avg_ips": self.avg.mean_images_per_s,
                    "avg_stall": self.avg.mean_data_stall_pct,
                    "avg_wait": self.avg.mean_host_wait_pct, "ips": list(self.ips_history),
                    "stall": list(self.stall_history), "wait": list(self.wait_history)}
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
        self._machine_rows(t, plan)
        return Panel(t, title=self.title, title_align="left", border_style="blue")
