"""Saved runs and the figures every view shows: load a ``results/<run>`` folder,
average its metrics, work out its headline figures and costs.

A run folder (see :mod:`autotune.results`) holds ``probe.json``, ``plan.json``,
``pack.json``, ``metrics.jsonl``, ``summary.json``, ``run.json`` and
``bad_images.json``; a probe-only run holds just ``probe.json``. :func:`load_run`
reads whatever is there into a :class:`SavedRun` (a record: ``--json`` prints its
``to_dict()``), with the arithmetic the views need done once, here: averages over
``metrics.jsonl`` (:class:`MetricsStats`, also kept live by :class:`StepAverager`
for the training view), the headline figures with their sources
(:class:`RunFigures`), measured against the plan (:func:`plan_ratio_pct`), bytes
saved by packing (:func:`pack_saved_fraction`), and time and cost estimates
(:func:`run_costs`, with :mod:`autotune.costs`).

Two input figures, with the definitions of ``trainers.loop`` (DS-Analyzer, Mohan et
al., VLDB 2021): the **data stall**, the share of the step time the accelerators sit
idle for want of input, ``100 x max(0, 1 - on-device-input step s / step s)``; and the
**host wait**, the share of wall time the training loop waited for the next batch.
With asynchronous dispatch the host can wait while the accelerators are busy, so the
two differ. Over a run both are ratios of sums over the logging windows (see
:class:`MetricsStats`), not means of the windows' percentages. Runs saved before the
stall was measured this way recorded host wait under the stall's name; they are read
with that figure as host wait and the stall unknown (:func:`upgrade_legacy_stall`).

Rendering lives in :mod:`autotune.render` (static) and :mod:`autotune.live` (the
training view); comparison and Markdown in :mod:`autotune.compare`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from autotune import results as res
from autotune.costs import CostEstimate, estimate_cost, example_price, resolve_price
from autotune.planner import Plan
from autotune.probe_report import ProbeReport
from trainers.records import Record, RecordError
from trainers.summaries import EvalReport, PackResult, StepReport, TrainSummary

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
    """Running averages of :class:`trainers.summaries.StepReport` windows (see
    :class:`MetricsStats` for the window rule and the formulas). Used by
    :func:`load_run` and by the live view (``autotune.live.TrainView``); not
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
            mean_step_s=_ratio(self.seconds, self.steps), mean_wait_s=_ratio(self.wait, self.steps),
            synthetic_step_s=_ratio(self.ref_synthetic, self.ref_steps),
            skipped_steps=r.skipped_steps,
            last_loss=r.loss, last_learning_rate=r.learning_rate, last_epoch=r.epoch,
            last_elapsed_s=r.elapsed_s, last_eta_s=r.eta_s,
            bad_records=r.bad_records)


def plan_ratio_pct(measured: float | None, predicted: float | None) -> float | None:
    """Measured against the plan: ``100 x measured / predicted`` (both images/s), in
    %; None when either is missing or not finite, or nothing was predicted."""
    if _finite(measured) is None or not _finite(predicted):
        return None
    return 100.0 * measured / predicted


def pack_saved_fraction(result: PackResult) -> float:
    """The share of the input bytes packing saved, ``1 - bytes out / bytes in``
    (a fraction; negative when the packed shards are larger)."""
    return 1 - result.bytes_out / max(1, result.bytes_in)


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
    ratio = plan_ratio_pct(ips, predicted)
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
