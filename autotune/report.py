"""Saved runs: load a ``results/<run>`` folder, compare two, estimate cost, export.

A run folder (see :mod:`autotune.results`) holds ``probe.json``, ``plan.json``,
``pack.json``, ``metrics.jsonl``, ``summary.json``, ``run.json`` and
``bad_images.json``; a probe-only run holds just ``probe.json``. :func:`load_run`
reads whatever is there into a :class:`SavedRun` (a record: ``--json`` prints its
``to_dict()``), with the light arithmetic the views need done once, here: averages
over ``metrics.jsonl`` (:class:`MetricsStats`), the headline figures with their
sources (:class:`RunFigures`), and time and cost estimates (:class:`CostEstimate`).

Two input figures, with the definitions of ``trainers.loop`` (DS-Analyzer, Mohan et
al., VLDB 2021): the **data stall**, the share of the step time the accelerators sit
idle for want of input, ``100 x max(0, 1 - on-device-input step s / step s)``; and the
**host wait**, the share of wall time the training loop waited for the next batch.
With asynchronous dispatch the host can wait while the accelerators are busy, so the
two differ. Over a run both are ratios of sums over the logging windows (see
:class:`MetricsStats`), not means of the windows' percentages. Runs saved before the
stall was measured this way recorded host wait under the stall's name; they are read
with that figure as host wait and the stall unknown (:func:`upgrade_legacy_stall`).

:func:`render_run` and :func:`render_comparison` give rich renderables (drawn by
:mod:`autotune.render`); :func:`to_markdown` a table to paste into an issue.

Cost: ``estimate_cost`` multiplies out images / (images/s) x GPUs x $/GPU-hour. The
price is the user's, or an example list price per GPU type
(:data:`EXAMPLE_GPU_PRICES`: approximate public figures with their source and date,
not quotes; prices differ by provider, region and month).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from autotune import render
from autotune import results as res
from autotune.planner import Plan
from autotune.probe_report import ProbeReport
from trainers.records import Record, RecordError
from trainers.summaries import EvalReport, StepReport, TrainSummary
from trainers.summaries import PackResult

# ---------------------------------------------------------------- prices


@dataclass(frozen=True)
class GpuPrice(Record):
    """An example list price of one GPU type, per GPU-hour, in US dollars.

    Attributes:
      gpu: short name, e.g. ``"H100"``.
      match: words looked for in the NVML / JAX device name
        (``"NVIDIA H100 80GB HBM3"``), case-insensitive, whole words (``L4`` does not
        match ``L40S``).
      on_demand_per_gpu_hour: $/GPU-hour on demand.
      spot_per_gpu_hour: $/GPU-hour as spot / preemptible capacity (None: no figure).
      source: where the figures come from.
      as_of: month of the source.
    """

    gpu: str
    match: tuple[str, ...]
    on_demand_per_gpu_hour: float
    spot_per_gpu_hour: float | None
    source: str
    as_of: str


#: Example list prices, $/GPU-hour (approximate public figures, not quotes: they move
#: month to month and differ by provider and region; give your own price for a real
#: estimate). Sources: costnimbus.com "GPU cost management for ML teams" (March 2026:
#: AWS EC2 P5 H100 ~$3.90 on demand, GCP A3-High spot ~$2.25; GCP g2-standard-4 1x L4
#: ~$0.70-0.80 per VM-hour); mercatus-ai.com "Cloud GPU pricing" (May 2026,
#: hyperscaler on-demand ranges: A100 80GB $1.50-3.00, H200 $4.50-7.00; the low ends
#: are listed); aiapiplaybook.com "GPU cloud pricing 2026" (January 2026: A100 80GB
#: spot $0.86).
EXAMPLE_GPU_PRICES: tuple[GpuPrice, ...] = (
    GpuPrice("H200", ("h200",), 4.50, None,
             "mercatus-ai.com, hyperscaler on-demand range $4.50-7.00 (low end)", "2026-05"),
    GpuPrice("H100", ("h100",), 3.90, 2.25,
             "costnimbus.com: AWS EC2 P5 on demand ~$3.90, GCP A3-High spot ~$2.25", "2026-03"),
    GpuPrice("A100", ("a100",), 1.50, 0.86,
             "mercatus-ai.com hyperscaler on-demand range $1.50-3.00 (low end, 80GB); "
             "aiapiplaybook.com spot $0.86", "2026-01/05"),
    GpuPrice("L4", ("l4",), 0.75, None,
             "costnimbus.com: GCP g2-standard-4 (1x L4) ~$0.70-0.80 per VM-hour", "2026-03"),
)

PRICE_KINDS = ("on-demand", "spot")


def example_price(device_name: str | None) -> GpuPrice | None:
    """The :data:`EXAMPLE_GPU_PRICES` row whose ``match`` occurs in ``device_name``
    (e.g. ``"NVIDIA H100 80GB HBM3"`` -> the H100 row); None when unknown."""
    if not device_name:
        return None
    name = device_name.lower()
    for p in EXAMPLE_GPU_PRICES:
        if any(re.search(rf"\b{re.escape(m)}\b", name) for m in p.match):
            return p
    return None


def resolve_price(text: str | float | None) -> tuple[float, str] | None:
    """Parse a ``--gpu-hour-price`` value: a number of dollars per GPU-hour
    (``"2.49"``), or an example price by GPU type and kind (``"H100"``,
    ``"h100:spot"``, ``"A100:on-demand"``). Returns ``(dollars per GPU-hour, source
    text)``, None for None.

    Raises:
      ValueError: negative price, unknown GPU type or price kind, or a kind with no
        figure (the message lists the known types).
    """
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = repr(float(text))
    s = str(text).strip()
    try:
        value = float(s.lstrip("$"))
    except ValueError:
        value = None
    if value is not None:
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"GPU-hour price {text}: must be a finite number >= 0 dollars")
        return value, "given"
    gpu, _, kind = s.replace("-spot", ":spot").replace("-on-demand", ":on-demand").partition(":")
    kind = (kind or "on-demand").lower().replace("_", "-")
    row = next((p for p in EXAMPLE_GPU_PRICES if p.gpu.lower() == gpu.strip().lower()), None)
    known = ", ".join(p.gpu for p in EXAMPLE_GPU_PRICES)
    if row is None:
        raise ValueError(f"GPU-hour price {text!r}: not a number of dollars and not a known "
                         f"GPU type (known: {known}; kinds: {', '.join(PRICE_KINDS)})")
    if kind not in PRICE_KINDS:
        raise ValueError(f"GPU-hour price {text!r}: price kind {kind!r} is not one of "
                         f"{', '.join(PRICE_KINDS)}")
    value = row.on_demand_per_gpu_hour if kind == "on-demand" else row.spot_per_gpu_hour
    if value is None:
        raise ValueError(f"GPU-hour price {text!r}: no example {kind} price for {row.gpu}")
    return value, f"example {row.gpu} {kind} list price ({row.source}, {row.as_of})"


# ---------------------------------------------------------------- cost


@dataclass(frozen=True)
class CostEstimate(Record):
    """Time and cost of training ``epochs`` epochs at a throughput.

    Attributes:
      label: what is estimated (``"all 8 planned epochs"``, ``"remaining 7.2 epochs"``).
      images_per_epoch: images per epoch (images).
      epochs: epochs estimated.
      images: ``images_per_epoch x epochs``.
      images_per_s: global throughput assumed (images/s, all GPUs).
      seconds: ``images / images_per_s`` (wall seconds).
      num_gpus: GPUs billed.
      gpu_hours: ``seconds / 3600 x num_gpus``.
      price_per_gpu_hour: US dollars per GPU-hour.
      cost: ``gpu_hours x price_per_gpu_hour`` (US dollars).
      price_source: where the price comes from.
      rate_source: where the throughput comes from (measured or predicted).
      arithmetic: the whole calculation in one line.
    """

    label: str
    images_per_epoch: int
    epochs: float
    images: float
    images_per_s: float
    seconds: float
    num_gpus: int
    gpu_hours: float
    price_per_gpu_hour: float
    cost: float
    price_source: str
    rate_source: str
    arithmetic: str


def estimate_cost(images_per_epoch: int, epochs: float, images_per_s: float, num_gpus: int,
                  price_per_gpu_hour: float, *, label: str = "",
                  price_source: str = "given", rate_source: str = "given") -> CostEstimate:
    """Time and cost to train ``epochs`` epochs of ``images_per_epoch`` images at
    ``images_per_s`` (global) on ``num_gpus`` GPUs billed ``price_per_gpu_hour``
    dollars each: ``seconds = images_per_epoch x epochs / images_per_s``,
    ``GPU-hours = seconds / 3600 x num_gpus``, ``cost = GPU-hours x price``. Excludes
    compilation, evaluation and checkpoint time, and start-up billing.

    Raises:
      ValueError: images_per_epoch < 0, epochs < 0, images_per_s <= 0 or not finite,
        num_gpus < 1, price < 0 (the message names the value).
    """
    if images_per_epoch < 0:
        raise ValueError(f"images per epoch ({images_per_epoch}) must be >= 0")
    if not epochs >= 0:
        raise ValueError(f"epochs ({epochs}) must be >= 0")
    if not (images_per_s > 0 and math.isfinite(images_per_s)):
        raise ValueError(f"throughput ({images_per_s} images/s) must be a finite number > 0")
    if num_gpus < 1:
        raise ValueError(f"GPU count ({num_gpus}) must be >= 1")
    if not price_per_gpu_hour >= 0:
        raise ValueError(f"price ({price_per_gpu_hour} $/GPU-hour) must be >= 0")
    images = images_per_epoch * epochs
    seconds = images / images_per_s
    gpu_hours = seconds / 3600.0 * num_gpus
    cost = gpu_hours * price_per_gpu_hour
    arithmetic = (f"{images_per_epoch:,} images/epoch x {epochs:g} epochs = {images:,.0f} images; "
                  f"/ {images_per_s:,.1f} images/s = {seconds:,.0f} s ({render.fmt_secs(seconds)}); "
                  f"/ 3600 x {num_gpus} GPU{'s' if num_gpus != 1 else ''} = {gpu_hours:,.4g} GPU-h; "
                  f"x ${price_per_gpu_hour:,.2f}/GPU-h = ${cost:,.2f}")
    return CostEstimate(label=label or f"{epochs:g} epochs", images_per_epoch=int(images_per_epoch),
                        epochs=float(epochs), images=float(images), images_per_s=float(images_per_s),
                        seconds=seconds, num_gpus=int(num_gpus), gpu_hours=gpu_hours,
                        price_per_gpu_hour=float(price_per_gpu_hour), cost=cost,
                        price_source=price_source, rate_source=rate_source, arithmetic=arithmetic)


# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class MetricsStats(Record):
    """Averages over the ``StepReport`` lines of ``metrics.jsonl``.

    Each report covers a window of steps; a window's length ``n`` is the step
    difference to the previous report (for the first report, and after a resume where
    the step count restarts lower, the previous window's length, or ``step - 1`` when
    there is none: the first step is compilation and belongs to no window). Sums run
    over windows ``w`` with ``n_w`` steps of ``t_w`` mean step seconds, ``h_w`` mean
    host-wait seconds and ``s_w`` on-device (synthetic) step seconds:

    * ``mean_images_per_s = sum(images_w) / sum(n_w t_w)`` (time-weighted);
    * ``mean_data_stall_pct = 100 x max(0, 1 - sum(n_w s_w) / sum(n_w t_w))`` over the
      windows with a reference ``s_w`` (the DS-Analyzer stall of the mean step time
      against the mean on-device step time; with one reference, as in one run, it is
      ``1 - s / mean step``, the summary's formula), NaN when no window has one (runs
      saved before the stall was measured, or ``synthetic_steps = 0``);
    * ``mean_host_wait_pct = 100 x sum(n_w h_w) / sum(n_w t_w)`` (share of wall time).

    Attributes:
      step_reports, eval_reports: lines of each kind.
      first_step, last_step, total_steps: steps of the first and last report, and of
        the schedule.
      segments: runs of increasing steps (2+ after a resume).
      window_steps, window_s: steps and time covered by the windows (s).
      mean_images_per_s / peak_images_per_s / last_images_per_s: global images/s.
      mean_data_stall_pct / last_data_stall_pct: accelerators idle for want of input,
        share of step time (%), see above; NaN when unknown.
      stall_steps: steps of the windows the stall figure covers (< the windows' steps
        when only part of the file has an on-device reference).
      mean_host_wait_pct / last_host_wait_pct: the training loop waiting for the next
        batch, share of wall time (%).
      mean_step_s / mean_wait_s: per step (s); wait = host wait.
      synthetic_step_s: mean on-device (synthetic input) step time over the
        windows with a reference, ``sum(n_w s_w) / sum(n_w)`` (s); NaN without.
      skipped_steps: steps skipped for a non-finite loss or gradient (the last
        report's run total).
      last_loss, last_learning_rate, last_epoch, last_elapsed_s,
      last_eta_s, bad_records: from the last report.
    """

    step_reports: int
    eval_reports: int
    first_step: int
    last_step: int
    total_steps: int
    segments: int
    window_steps: int
    window_s: float
    mean_images_per_s: float
    peak_images_per_s: float
    last_images_per_s: float
    mean_data_stall_pct: float
    last_data_stall_pct: float
    stall_steps: int
    mean_host_wait_pct: float
    last_host_wait_pct: float
    mean_step_s: float
    mean_wait_s: float
    synthetic_step_s: float
    skipped_steps: int
    last_loss: float
    last_learning_rate: float
    last_epoch: float
    last_elapsed_s: float
    last_eta_s: float
    bad_records: int


def _ratio(num: float, den: float, scale: float = 1.0) -> float:
    return scale * num / den if den > 0 else float("nan")


class StepAverager:
    """Running averages of :class:`trainers.loop.StepReport` windows (see
    :class:`MetricsStats` for the window rule and the formulas). Used by
    :func:`load_run` and by the live view (``autotune.render.TrainView``); not
    thread-safe (the view calls it under its lock).
    """

    def __init__(self):
        self.reports = 0
        self.segments = 0
        self.prev_step: int | None = None
        self.prev_window = 0
        self.steps = 0
        self.seconds = 0.0
        self.images = 0.0
        self.wait = 0.0
        self.ref_steps = 0  # windows with an on-device reference: steps,
        self.ref_s = 0.0  # their step time,
        self.ref_synthetic = 0.0  # and their on-device step time
        self.peak = float("nan")
        self.last: StepReport | None = None
        self.first_step: int | None = None

    def add(self, r: StepReport) -> None:
        """Fold one report in."""
        if self.prev_step is None or r.step <= self.prev_step:
            window = self.prev_window or max(1, r.step - 1)
            self.segments += 1
        else:
            window = r.step - self.prev_step
        t = window * r.step_s
        self.steps += window
        self.seconds += t
        self.images += r.images_per_s * t
        self.wait += window * r.wait_s
        if r.synthetic_step_s > 0 and t > 0:
            self.ref_steps += window
            self.ref_s += t
            self.ref_synthetic += window * r.synthetic_step_s
        if not r.images_per_s <= self.peak:
            self.peak = r.images_per_s
        if self.first_step is None:
            self.first_step = r.step
        self.prev_step, self.prev_window, self.last = r.step, window, r
        self.reports += 1

    @property
    def mean_images_per_s(self) -> float:
        """Images / seconds over the windows so far (NaN before any)."""
        return _ratio(self.images, self.seconds)

    @property
    def mean_data_stall_pct(self) -> float:
        """``100 x max(0, 1 - sum(n s) / sum(n t))`` over the windows with an on-device
        reference (NaN without one)."""
        if not self.ref_s > 0:
            return float("nan")
        return max(0.0, 100.0 * (1.0 - self.ref_synthetic / self.ref_s))

    @property
    def mean_host_wait_pct(self) -> float:
        """100 x host wait / wall time over the windows so far (NaN before any)."""
        return _ratio(self.wait, self.seconds, 100.0)

    @property
    def mean_step_s(self) -> float:
        return _ratio(self.seconds, self.steps)

    @property
    def mean_wait_s(self) -> float:
        return _ratio(self.wait, self.steps)

    @property
    def synthetic_step_s(self) -> float:
        return _ratio(self.ref_synthetic, self.ref_steps)

    def stats(self, eval_reports: int = 0) -> MetricsStats | None:
        """The :class:`MetricsStats` so far; None before any report."""
        r = self.last
        if r is None:
            return None
        return MetricsStats(
            step_reports=self.reports, eval_reports=eval_reports,
            first_step=int(self.first_step), last_step=r.step, total_steps=r.total_steps,
            segments=self.segments, window_steps=self.steps, window_s=self.seconds,
            mean_images_per_s=self.mean_images_per_s, peak_images_per_s=self.peak,
            last_images_per_s=r.images_per_s, mean_data_stall_pct=self.mean_data_stall_pct,
            last_data_stall_pct=r.data_stall_pct, stall_steps=self.ref_steps,
            mean_host_wait_pct=self.mean_host_wait_pct, last_host_wait_pct=r.host_wait_pct,
            mean_step_s=self.mean_step_s, mean_wait_s=self.mean_wait_s,
            synthetic_step_s=self.synthetic_step_s, skipped_steps=r.skipped_steps,
            last_loss=r.loss, last_learning_rate=r.learning_rate, last_epoch=r.epoch,
            last_elapsed_s=r.elapsed_s, last_eta_s=r.eta_s,
            bad_records=r.bad_records)


def metrics_stats(steps: Iterable[StepReport], eval_reports: int = 0) -> MetricsStats | None:
    """:class:`MetricsStats` over ``steps`` in file order; None when empty."""
    avg = StepAverager()
    for r in steps:
        avg.add(r)
    return avg.stats(eval_reports)


# ---------------------------------------------------------------- saved runs

#: Why a run has no data stall figure: it was saved before the stall was measured
#: against on-device input (its ``data_stall_pct`` then meant host wait).
LEGACY_STALL_NOTE = ("not measured: this run was saved before autotune measured the stall "
                     "against on-device input; its old 'data stall' figure was host wait and "
                     "is shown as host wait")
#: Why a run has no data stall figure: no on-device reference step time was timed.
NO_REFERENCE_NOTE = "not measured: no on-device reference step time (synthetic_steps = 0)"


def upgrade_legacy_stall(data: Any) -> tuple[Any, bool]:
    """Read a ``StepReport`` / ``TrainSummary`` dict written before the data stall was
    measured against on-device input. Such a dict has no ``host_wait_pct`` key and its
    ``data_stall_pct`` was host wait / wall time; it comes back with that value as
    ``host_wait_pct`` and the stall unknown (null, read as NaN), and True. Any other
    value comes back unchanged, with False."""
    if not isinstance(data, dict) or "host_wait_pct" in data or "data_stall_pct" not in data:
        return data, False
    return {**data, "host_wait_pct": data["data_stall_pct"], "data_stall_pct": None}, True


@dataclass(frozen=True)
class RunFigures(Record):
    """A run's headline figures, each None when the run does not have it.

    Attributes:
      status: ``completed`` / ``max_steps`` / ``stopped`` (summary.json),
        ``probe only``, or ``no summary`` (still running, or killed).
      stop_reason: why a stopped run stopped (``"SIGTERM on process 1"``).
      images_per_s: measured global images/s: the summary's mean, else the
        metrics.jsonl average (``images_per_s_source`` says which).
      images_per_s_per_device: the same per device.
      data_stall_pct: share of the step time the accelerators sat idle for want of
        input (%, DS-Analyzer): ``100 x max(0, 1 - on-device step s / step s)``, same
        source (see :class:`MetricsStats` for the average); None when not measured.
      data_stall_note: why the stall is missing, or which steps it covers ("" when
        it covers the whole run).
      host_wait_pct: share of wall time the training loop waited for the next batch
        (%), same source.
      step_s, wait_s: mean step time and host wait per step (s), from
        metrics.jsonl.
      synthetic_step_s: step time on on-device input, the stall's reference (s):
        metrics.jsonl's mean, else global batch / the summary's reference images/s.
      synthetic_images_per_s: global images/s on on-device input (summary.json).
      skipped_steps: steps skipped for a non-finite loss or gradient (summary, else
        the last report).
      predicted_images_per_s: the plan's global prediction (images/s).
      measured_vs_predicted_pct: 100 x measured / predicted.
      bottleneck: the plan's predicted bottleneck.
      top1, top5, eval_loss: the last held-out evaluation (fractions; loss in nats).
      train_loss: the last training-batch loss.
      steps, epochs_done: done (summary or the last report).
      planned_epochs: the plan's epochs.
      wall_s, compile_s: from the summary (s).
      probe_step_images_per_s: the probe's measured train-step rate (images/s per host).
      decode_best_images_per_s: the probe's best decode + augment rate (images/s).
    """

    status: str
    images_per_s: float | None = None
    images_per_s_source: str = ""
    images_per_s_per_device: float | None = None
    data_stall_pct: float | None = None
    step_s: float | None = None
    wait_s: float | None = None
    predicted_images_per_s: float | None = None
    measured_vs_predicted_pct: float | None = None
    bottleneck: str | None = None
    top1: float | None = None
    top5: float | None = None
    eval_loss: float | None = None
    train_loss: float | None = None
    steps: int | None = None
    epochs_done: float | None = None
    planned_epochs: float | None = None
    wall_s: float | None = None
    compile_s: float | None = None
    probe_step_images_per_s: float | None = None
    decode_best_images_per_s: float | None = None
    data_stall_note: str = ""
    host_wait_pct: float | None = None
    synthetic_step_s: float | None = None
    synthetic_images_per_s: float | None = None
    skipped_steps: int | None = None
    stop_reason: str | None = None


@dataclass(frozen=True)
class SavedRun(Record):
    """Everything in one run folder (any file may be missing).

    Attributes:
      path: the folder; name: its base name.
      kind: ``train`` (a plan, metrics or summary is there) or ``probe``.
      probe, plan, pack, summary: the saved records.
      run_meta: ``run.json`` (data, packed folder, config, options, argv).
      steps, evals: the ``metrics.jsonl`` records in file order (old-format records
        read through :func:`upgrade_legacy_stall`).
      metrics: averages over ``steps`` (None without step reports).
      figures: the headline figures.
      costs: time and cost estimates (empty without a price).
      bad_images: entries of ``bad_images.json``.
      plots: PNG files in the folder (names).
      problems: files that could not be read, with the reason.
      legacy_stall: some record was written before the data stall was measured
        against on-device input (its old stall figure is read as host wait).
    """

    path: str
    name: str
    kind: str
    probe: ProbeReport | None
    plan: Plan | None
    pack: PackResult | None
    summary: TrainSummary | None
    run_meta: dict[str, Any] | None
    steps: tuple[StepReport, ...]
    evals: tuple[EvalReport, ...]
    metrics: MetricsStats | None
    figures: RunFigures
    costs: tuple[CostEstimate, ...]
    bad_images: int
    plots: tuple[str, ...]
    problems: tuple[str, ...]
    legacy_stall: bool = False


def _finite(x: float | None) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _stall_note(stall: float | None, metrics: MetricsStats | None, measured: bool,
                legacy: bool) -> str:
    if stall is None:
        return (LEGACY_STALL_NOTE if legacy else NO_REFERENCE_NOTE) if measured else ""
    if metrics is not None and 0 < metrics.stall_steps < metrics.window_steps:
        return (f"over the {metrics.stall_steps:,} of {metrics.window_steps:,} logged steps "
                f"that have an on-device reference")
    return ""


def _input_figures(plan, summary, metrics: MetricsStats | None,
                   legacy: tuple[bool, bool]) -> dict[str, Any]:
    """Throughput, data stall and host wait, from the summary when it has a
    throughput, else from the metrics.jsonl averages (see :class:`RunFigures`);
    ``legacy``: (summary.json, the last step report) were saved in the old format."""
    out: dict[str, Any] = {}
    if summary is not None and _finite(summary.images_per_s):
        out.update(images_per_s=summary.images_per_s, images_per_s_source="summary.json",
                   images_per_s_per_device=_finite(summary.images_per_s_per_device),
                   data_stall_pct=_finite(summary.data_stall_pct),
                   host_wait_pct=_finite(summary.host_wait_pct))
    elif metrics is not None and _finite(metrics.mean_images_per_s):
        devices = summary.num_devices if summary else (
            plan.local_devices * plan.num_hosts if plan else None)
        out.update(images_per_s=metrics.mean_images_per_s,
                   images_per_s_source="metrics.jsonl average",
                   images_per_s_per_device=metrics.mean_images_per_s / devices if devices else None,
                   data_stall_pct=_finite(metrics.mean_data_stall_pct),
                   host_wait_pct=_finite(metrics.mean_host_wait_pct))
    synthetic_ips = _finite(summary.synthetic_images_per_s) if summary else None
    synthetic_s = _finite(metrics.synthetic_step_s) if metrics else None
    if synthetic_s is None and synthetic_ips:
        synthetic_s = summary.global_batch / synthetic_ips
    from_metrics = out.get("images_per_s_source") == "metrics.jsonl average"
    out.update(data_stall_note=_stall_note(out.get("data_stall_pct"),
                                           metrics if from_metrics else None,
                                           "images_per_s" in out, legacy[from_metrics]),
               step_s=_finite(metrics.mean_step_s) if metrics else None,
               wait_s=_finite(metrics.mean_wait_s) if metrics else None,
               synthetic_step_s=synthetic_s, synthetic_images_per_s=synthetic_ips)
    return out


def _skipped_steps(summary, metrics: MetricsStats | None,
                   legacy: tuple[bool, bool]) -> int | None:
    if summary is not None:
        return None if legacy[0] else summary.skipped_steps
    return None if metrics is None or legacy[1] else metrics.skipped_steps


def _figures(probe, plan, summary, metrics: MetricsStats | None, evals: Sequence[EvalReport],
             kind: str, legacy: tuple[bool, bool] = (False, False)) -> RunFigures:
    """The :class:`RunFigures`; ``legacy``: whether (summary.json, the last step report)
    were saved before the data stall was measured against on-device input (their stall
    figure is unknown and their skipped steps were not counted)."""
    if summary is not None:
        status = summary.status
    elif kind == "probe":
        status = "probe only"
    else:
        status = "no summary"
    inputs = _input_figures(plan, summary, metrics, legacy)
    ips = inputs.get("images_per_s")
    predicted = _finite(plan.predicted_global_images_per_s) if plan else None
    ratio = 100.0 * ips / predicted if ips and predicted else None
    last_eval = summary.final_eval if summary is not None and summary.final_eval else (
        evals[-1] if evals else None)
    step_rate = probe.accelerator.step_rate if probe is not None else None
    return RunFigures(
        status=status, **inputs,
        skipped_steps=_skipped_steps(summary, metrics, legacy),
        stop_reason=(summary.stop_reason or None) if summary else None,
        predicted_images_per_s=predicted, measured_vs_predicted_pct=ratio,
        bottleneck=plan.bottleneck if plan else None,
        top1=last_eval.top1 if last_eval else None, top5=last_eval.top5 if last_eval else None,
        eval_loss=_finite(last_eval.loss) if last_eval else None,
        train_loss=_finite(metrics.last_loss) if metrics else None,
        steps=summary.steps if summary else (metrics.last_step if metrics else None),
        epochs_done=summary.epochs if summary else (metrics.last_epoch if metrics else None),
        planned_epochs=plan.epochs if plan else None,
        wall_s=summary.wall_s if summary else None,
        compile_s=summary.compile_s if summary else None,
        probe_step_images_per_s=step_rate.images_per_s if step_rate else None,
        decode_best_images_per_s=probe.decode.best.images_per_s if probe else None)


def _device_name(probe: ProbeReport | None) -> str | None:
    if probe is None:
        return None
    if probe.host.gpu.gpus and probe.host.gpu.gpus[0].name:
        return probe.host.gpu.gpus[0].name
    return probe.accelerator.device_kind


def _images_per_epoch(plan, pack, summary, probe) -> tuple[int | None, str]:
    if summary is not None and summary.steps_per_epoch:
        return summary.steps_per_epoch * summary.global_batch, (
            f"{summary.steps_per_epoch:,} steps/epoch x global batch {summary.global_batch:,}")
    if pack is not None:
        for s in pack.splits:
            if s.name == "train":
                return s.num_examples, "pack.json train split"
    if probe is not None:
        frac = plan.val_fraction if plan is not None else 0.0
        return int(probe.dataset.num_images * (1 - frac)), "probe.json image count"
    return None, ""


def run_costs(probe, plan, pack, summary, figures: RunFigures,
              price: str | float | None = None) -> tuple[CostEstimate, ...]:
    """Time and cost estimates for a run: the planned epochs (and, for a run that
    stopped early, the remaining ones) at the measured throughput (the plan's
    prediction when nothing was measured).

    ``price``: as :func:`resolve_price` takes it; None uses the example list prices
    of the GPU type the probe saw (on demand and spot), or gives nothing on an
    unknown device.

    Raises:
      ValueError: a bad ``price`` (see :func:`resolve_price`).
    """
    prices: list[tuple[float, str, str]] = []
    given = resolve_price(price)
    if given is not None:
        prices.append((given[0], given[1], ""))
    else:
        row = example_price(_device_name(probe))
        if row is None:
            return ()
        prices.append((row.on_demand_per_gpu_hour,
                       f"example {row.gpu} on-demand list price ({row.source}, {row.as_of})",
                       "on-demand"))
        if row.spot_per_gpu_hour is not None:
            prices.append((row.spot_per_gpu_hour,
                           f"example {row.gpu} spot list price ({row.source}, {row.as_of})",
                           "spot"))
    per_epoch, _why = _images_per_epoch(plan, pack, summary, probe)
    epochs = figures.planned_epochs
    if epochs is None and summary is None:
        return ()
    if figures.images_per_s:
        rate, rate_source = figures.images_per_s, f"measured ({figures.images_per_s_source})"
    elif figures.predicted_images_per_s:
        rate, rate_source = figures.predicted_images_per_s, "plan prediction"
    else:
        return ()
    gpus = summary.num_devices if summary else (plan.local_devices * plan.num_hosts if plan else 1)
    if not per_epoch or not epochs:
        return ()
    out = []
    done = figures.epochs_done or 0.0
    spans = [(f"all {epochs:g} planned epochs", epochs)]
    if summary is None or summary.status != "completed":
        if 0 < done < epochs:
            spans.append((f"remaining {epochs - done:.2f} epochs", epochs - done))
    for value, source, kind in prices:
        for label, ep in spans:
            out.append(estimate_cost(per_epoch, ep, rate, gpus, value,
                                     label=label + (f", {kind}" if kind else ""),
                                     price_source=source, rate_source=rate_source))
    return tuple(out)


def _load_record(cls, path: Path, problems: list[str], legacy: list[bool] | None = None):
    """``cls`` from ``path`` (None when absent; unreadable: None and a line in
    ``problems``). With ``legacy``, the document is read through
    :func:`upgrade_legacy_stall` and whether it was upgraded appended to ``legacy``."""
    if not path.is_file():
        return None
    try:
        if legacy is None:
            return cls.load(path)
        data, old = upgrade_legacy_stall(json.loads(path.read_text()))
        record = cls.from_dict(data)
        legacy.append(old)
        return record
    except (RecordError, OSError, ValueError, TypeError) as exc:
        problems.append(f"{path.name}: {exc}")
        return None


def _read_metrics(path: Path, problems: list[str], legacy: list[bool]
                  ) -> tuple[list[StepReport], list[EvalReport]]:
    """The step and evaluation reports of ``metrics.jsonl`` (step reports read through
    :func:`upgrade_legacy_stall`, whether each was upgraded appended to ``legacy``);
    lines that do not parse are counted in ``problems``."""
    steps: list[StepReport] = []
    evals: list[EvalReport] = []
    if not path.is_file():
        return steps, evals
    bad_lines = 0
    for obj in res.read_metrics(path):
        kind = obj.pop("kind", None) if isinstance(obj, dict) else None
        try:
            if kind == "StepReport":
                obj, old = upgrade_legacy_stall(obj)
                steps.append(StepReport.from_dict(obj))
                legacy.append(old)
            elif kind == "EvalReport":
                evals.append(EvalReport.from_dict(obj))
            else:
                bad_lines += 1
        except RecordError as exc:
            bad_lines += 1
            if bad_lines == 1:
                problems.append(f"{path.name}: {exc}")
    if bad_lines > 1:
        problems.append(f"{path.name}: {bad_lines} lines not read")
    return steps, evals


def load_run(path: str | os.PathLike, *, price: str | float | None = None) -> SavedRun:
    """Read a run folder.

    Files that are missing are None / empty; files that do not parse are listed in
    ``problems`` (the rest is still shown). A torn last line of ``metrics.jsonl``
    (killed writer) is skipped. Records saved before the data stall was measured
    against on-device input are read through :func:`upgrade_legacy_stall`: their old
    stall figure (host wait) becomes ``host_wait_pct``, the stall unknown
    (``legacy_stall`` and ``figures.data_stall_note`` say so).

    Args:
      path: ``results/<run>`` folder.
      price: GPU-hour price for the cost estimate (see :func:`resolve_price`); None:
        the example list price of the probed GPU type, if known.

    Raises:
      FileNotFoundError: no such folder, or a folder with none of the run files
        (message names the folder and the files looked for).
      ValueError: a bad ``price``.
    """
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"run folder {p} does not exist")
    expected = (res.PROBE, res.PLAN, res.PACK, res.METRICS, res.SUMMARY, res.RUN)
    if not any((p / f).is_file() for f in expected):
        raise FileNotFoundError(f"{p} is not a run folder: none of {', '.join(expected)} there")
    problems: list[str] = []
    probe = _load_record(ProbeReport, p / res.PROBE, problems)
    plan = _load_record(Plan, p / res.PLAN, problems)
    pack = _load_record(PackResult, p / res.PACK, problems)
    old_summary: list[bool] = []  # summary.json, each step report: saved in the old format?
    summary = _load_record(TrainSummary, p / res.SUMMARY, problems, old_summary)
    meta = None
    if (p / res.RUN).is_file():
        try:
            meta = json.loads((p / res.RUN).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"{res.RUN}: {exc}")
    old_steps: list[bool] = []
    steps, evals = _read_metrics(p / res.METRICS, problems, old_steps)
    bad_images = 0
    if (p / res.BAD_IMAGES).is_file():
        try:
            bad_images = len(json.loads((p / res.BAD_IMAGES).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            problems.append(f"{res.BAD_IMAGES}: {exc}")
    kind = "train" if (plan is not None or summary is not None or steps or meta) else "probe"
    metrics = metrics_stats(steps, len(evals))
    figures = _figures(probe, plan, summary, metrics, evals, kind,
                       (any(old_summary), bool(old_steps) and old_steps[-1]))
    costs = run_costs(probe, plan, pack, summary, figures, price)
    plots = tuple(sorted(f.name for f in p.glob("*.png")))
    return SavedRun(path=str(p), name=p.resolve().name, kind=kind, probe=probe, plan=plan,
                    pack=pack, summary=summary, run_meta=meta, steps=tuple(steps),
                    evals=tuple(evals), metrics=metrics, figures=figures, costs=costs,
                    bad_images=bad_images, plots=plots, problems=tuple(problems),
                    legacy_stall=any(old_summary + old_steps))


# ---------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Difference(Record):
    """One figure of two runs side by side.

    Attributes:
      group: ``throughput``, ``accuracy``, ``plan``, ``machine`` or ``cost``.
      name: the figure, e.g. ``"images/s"``.
      unit: its unit (``"img/s"``, ``"%"``, ``"ms"``, ``"s"``, ``"$"``, ``""``).
      a, b: the values as shown (``"-"`` when missing).
      a_value, b_value: the numbers (None for text or missing values).
      delta: ``b - a`` in the unit (percentage points for ``%`` figures).
      delta_pct: ``100 x (b - a) / |a|``.
      better: ``"higher"``, ``"lower"`` or ``""`` (a setting: neither is better).
      verdict: ``"better"`` / ``"worse"`` (B against A, by ``better``), ``"changed"``
        (a setting differs), ``"same"`` (within 0.5%, or equal text) or ``"n/a"``
        (missing on a side).
    """

    group: str
    name: str
    unit: str
    a: str
    b: str
    a_value: float | None
    b_value: float | None
    delta: float | None
    delta_pct: float | None
    better: str
    verdict: str


#: Relative change (%) under which two numbers count as the same.
SAME_WITHIN_PCT = 0.5


def _g(obj, *names):
    for n in names:
        if obj is None:
            return None
        obj = getattr(obj, n, None)
    return obj


def _gpu_names(r: SavedRun) -> str | None:
    if r.probe is None:
        return None
    gpus = r.probe.host.gpu.gpus
    if gpus:
        return f"{len(gpus)} x {gpus[0].name}"
    return f"{r.probe.accelerator.local_devices} x {r.probe.accelerator.device_kind}"


def _fmt_g(x) -> str | None:
    return None if x is None else f"{x:.4g}"


def _cost(r: SavedRun) -> float | None:
    return r.costs[0].cost if r.costs else None


# (group, name, unit, getter, better, scale for display)
_SPECS: tuple[tuple[str, str, str, Callable[[SavedRun], Any], str, float], ...] = (
    ("throughput", "images/s", "img/s", lambda r: r.figures.images_per_s, "higher", 1),
    ("throughput", "images/s per device", "img/s", lambda r: r.figures.images_per_s_per_device,
     "higher", 1),
    ("throughput", render.STALL_SHORT, "%", lambda r: r.figures.data_stall_pct, "lower", 1),
    ("throughput", render.HOST_WAIT_SHORT, "%", lambda r: r.figures.host_wait_pct, "lower", 1),
    ("throughput", "step time", "ms", lambda r: r.figures.step_s, "lower", 1e3),
    ("throughput", "on-device input step time", "ms", lambda r: r.figures.synthetic_step_s,
     "lower", 1e3),
    ("throughput", "host wait per step", "ms", lambda r: r.figures.wait_s, "lower", 1e3),
    ("throughput", "on-device input images/s", "img/s",
     lambda r: r.figures.synthetic_images_per_s, "higher", 1),
    ("throughput", "skipped steps", "", lambda r: r.figures.skipped_steps, "lower", 1),
    ("throughput", "plan predicted", "img/s", lambda r: r.figures.predicted_images_per_s, "", 1),
    ("throughput", "measured / predicted", "%", lambda r: r.figures.measured_vs_predicted_pct,
     "higher", 1),
    ("throughput", "wall time", "s", lambda r: r.figures.wall_s, "lower", 1),
    ("throughput", "compile time", "s", lambda r: r.figures.compile_s, "lower", 1),
    ("accuracy", "held-out top-1", "%", lambda r: r.figures.top1, "higher", 100),
    ("accuracy", "held-out top-5", "%", lambda r: r.figures.top5, "higher", 100),
    ("accuracy", "held-out loss", "", lambda r: r.figures.eval_loss, "lower", 1),
    ("accuracy", "last training loss", "", lambda r: r.figures.train_loss, "lower", 1),
    ("accuracy", "epochs done", "", lambda r: r.figures.epochs_done, "", 1),
    ("plan", "status", "", lambda r: r.figures.status, "", 1),
    ("plan", "stop reason", "", lambda r: r.figures.stop_reason, "", 1),
    ("plan", "preset", "", lambda r: _g(r.plan, "preset"), "", 1),
    ("plan", "per-device batch", "", lambda r: _g(r.plan, "per_device_batch"), "", 1),
    ("plan", "global batch", "", lambda r: _g(r.plan, "global_batch"), "", 1),
    ("plan", "learning rate", "", lambda r: _fmt_g(_g(r.plan, "lr", "learning_rate")), "", 1),
    ("plan", "epochs planned", "", lambda r: _fmt_g(_g(r.plan, "epochs")), "", 1),
    ("plan", "decode threads", "", lambda r: _g(r.plan, "decode_threads"), "", 1),
    ("plan", "read mode", "", lambda r: _g(r.plan, "read_mode"), "", 1),
    ("plan", "shards", "", lambda r: _g(r.plan, "num_shards"), "", 1),
    ("plan", "pack resize", "px", lambda r: _g(r.plan, "pack_resize"), "", 1),
    ("plan", "cache decoded", "", lambda r: _g(r.plan, "cache_decoded"), "", 1),
    ("plan", "host prefetch", "batches", lambda r: _g(r.plan, "prefetch_batches"), "", 1),
    ("plan", "bottleneck", "", lambda r: r.figures.bottleneck, "", 1),
    ("machine", "host", "", lambda r: _g(r.probe, "host", "hostname"), "", 1),
    ("machine", "devices", "", _gpu_names, "", 1),
    ("machine", "usable cores", "", lambda r: _g(r.probe, "host", "usable_cores"), "", 1),
    ("machine", "probe step rate", "img/s", lambda r: r.figures.probe_step_images_per_s,
     "higher", 1),
    ("machine", "best decode rate", "img/s", lambda r: r.figures.decode_best_images_per_s,
     "higher", 1),
    ("machine", "disk sequential", "MB/s", lambda r: _g(r.probe, "disk", "sequential", "mb_per_s"),
     "higher", 1),
    ("machine", "disk random record", "IOPS",
     lambda r: _g(r.probe, "disk", "random_record_qd", "iops"), "higher", 1),
    ("cost", "cost of the planned epochs", "$", _cost, "lower", 1),
)


def _show(value, unit: str, scale: float) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "-"
        v = value * scale
        if unit == "s":
            return render.fmt_secs(v)
        if unit == "$":
            return f"${v:,.2f}"
        if isinstance(value, int) and scale == 1:
            return f"{v:,}" + (f" {unit}" if unit else "")
        return render.fmt_num(v, unit, 1 if unit == "%" else None)
    return str(value)


def compare_runs(a: SavedRun, b: SavedRun) -> tuple[Difference, ...]:
    """The figures of :data:`_SPECS` for runs ``a`` and ``b`` with B's change against
    A. Figures missing on both sides are left out.

    Verdicts: for measured figures with a direction (``better``), ``better`` /
    ``worse`` when they differ by more than :data:`SAME_WITHIN_PCT` percent (relative);
    settings that differ are ``changed``.
    """
    out = []
    for group, name, unit, get, better, scale in _SPECS:
        va, vb = get(a), get(b)
        if va is None and vb is None:
            continue
        num = lambda v: (float(v) * scale if isinstance(v, (int, float)) and not isinstance(v, bool)
                         and math.isfinite(v) else None)
        na, nb = num(va), num(vb)
        delta = delta_pct = None
        if na is not None and nb is not None:
            delta = nb - na
            delta_pct = 100.0 * delta / abs(na) if na else (0.0 if nb == na else None)
        if va is None or vb is None:
            verdict = "n/a"
        elif na is not None and nb is not None:
            same = (abs(delta_pct) < SAME_WITHIN_PCT if delta_pct is not None else na == nb)
            if same:
                verdict = "same"
            elif not better:
                verdict = "changed"
            else:
                verdict = "better" if (delta > 0) == (better == "higher") else "worse"
        else:
            verdict = "same" if va == vb else "changed"
        out.append(Difference(group=group, name=name, unit=unit, a=_show(va, unit, scale),
                              b=_show(vb, unit, scale), a_value=na, b_value=nb, delta=delta,
                              delta_pct=delta_pct, better=better, verdict=verdict))
    return tuple(out)


def decision_changes(a: SavedRun, b: SavedRun) -> tuple[tuple[str, str, str, str], ...]:
    """Plan decisions whose value differs: ``(name, value A, value B, reason B)``."""
    if a.plan is None or b.plan is None:
        return ()
    da = {d.name: d for d in a.plan.decisions}
    out = []
    for d in b.plan.decisions:
        old = da.get(d.name)
        if old is None or old.value != d.value:
            out.append((d.name, old.value if old else "-", d.value, d.reason))
    return tuple(out)


def format_delta(d: Difference) -> str:
    """The change as shown: percentage points for ``%`` figures, else percent."""
    if d.delta is None:
        return ""
    if d.unit == "%":
        return f"{d.delta:+.1f} pp"
    if d.delta_pct is None:
        return f"{d.delta:+,.3g}"
    return f"{d.delta_pct:+.1f}%"


# ---------------------------------------------------------------- rendering


def render_run(run: SavedRun):
    """A rich renderable of a saved run: probe (with text charts), plan with the
    reasons, packing, training summary with the measured-vs-predicted figures,
    throughput, data stall and host wait over time, evaluation history, cost
    estimates, and the plot files."""
    return render.render_saved_run(run)


def render_comparison(a: SavedRun, b: SavedRun):
    """A rich renderable comparing runs ``a`` and ``b`` side by side: every figure of
    :func:`compare_runs` with B's change in % (percentage points for % figures),
    better in green, worse in red, changed settings in yellow; then the plan
    decisions that differ with B's reasons, and both throughput curves."""
    return render.render_comparison(a, b, compare_runs(a, b), decision_changes(a, b))


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_notes(runs: Sequence[SavedRun]) -> list[str]:
    """The input figures' definitions, and each run's note on its data stall."""
    notes = [f"{render.INPUT_FIGURES_NOTE}."]
    notes += [f"`{_md(r.name)}`: data stall {_md(r.figures.data_stall_note)}."
              for r in runs if r.figures.data_stall_note]
    return [""] + [f"- {n}" for n in notes]


def to_markdown(runs: Sequence[SavedRun]) -> str:
    """Markdown to paste into an issue.

    One run: its headline figures and the plan's decisions with their reasons. Two
    runs: one table with both columns and B's change (bold where a figure changed).
    More: one column per run, no deltas. Under the figures: what data stall and host
    wait mean, and why a run has no data stall (e.g. saved before it was measured).

    Raises:
      ValueError: no runs.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("to_markdown needs at least one run")
    lines: list[str] = []
    if len(runs) == 2:
        a, b = runs
        lines += [f"**A** `{a.name}` vs **B** `{b.name}`", "",
                  "| figure | A | B | change |", "|---|---:|---:|---|"]
        for d in compare_runs(a, b):
            ch = ""
            if d.verdict in ("better", "worse", "changed"):
                ch = "**" + " ".join(x for x in (format_delta(d), d.verdict) if x) + "**"
            lines.append(f"| {_md(d.name)} | {_md(d.a)} | {_md(d.b)} | {_md(ch)} |")
        lines += _md_notes(runs)
        changes = decision_changes(a, b)
        if changes:
            lines += ["", "Plan decisions that differ (B's reasons):", "",
                      "| choice | A | B | reason (B) |", "|---|---|---|---|"]
            lines += [f"| {_md(n)} | {_md(va)} | {_md(vb)} | {_md(why)} |"
                      for n, va, vb, why in changes]
        return "\n".join(lines) + "\n"
    header = "| figure | " + " | ".join(f"`{_md(r.name)}`" for r in runs) + " |"
    lines += [header, "|---|" + "---:|" * len(runs)]
    base = runs[0]
    for i, (group, name, unit, get, _better, scale) in enumerate(_SPECS):
        vals = [get(r) for r in runs]
        if all(v is None for v in vals):
            continue
        lines.append(f"| {_md(name)} | " + " | ".join(_md(_show(v, unit, scale)) for v in vals)
                     + " |")
    lines += _md_notes(runs)
    if len(runs) == 1:
        r = base
        if r.plan is not None:
            lines += ["", "| choice | value | reason |", "|---|---|---|"]
            lines += [f"| {_md(d.name)} | {_md(d.value)} | {_md(d.reason)} |"
                      for d in r.plan.decisions]
        for c in r.costs:
            lines += ["", f"Cost ({_md(c.label)}): {_md(c.arithmetic)} "
                          f"(price: {_md(c.price_source)}; rate: {_md(c.rate_source)})"]
    return "\n".join(lines) + "\n"
