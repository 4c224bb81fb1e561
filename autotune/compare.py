"""Two saved runs side by side: every headline figure with B's change against A
(:func:`compare_runs`), the plan decisions that differ (:func:`decision_changes`), and
Markdown of one or more runs to paste into an issue (:func:`to_markdown`).

The runs come from :func:`autotune.runs.load_run`; the comparison is drawn by
:func:`autotune.render.render_comparison`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from autotune.fmt import (HOST_WAIT_SHORT, INPUT_FIGURES_NOTE, STALL_SHORT, fmt_value,
                          format_change)
from autotune.runs import SavedRun
from trainers.records import Record


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
    ("throughput", STALL_SHORT, "%", lambda r: r.figures.data_stall_pct, "lower", 1),
    ("throughput", HOST_WAIT_SHORT, "%", lambda r: r.figures.host_wait_pct, "lower", 1),
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
        out.append(Difference(group=group, name=name, unit=unit, a=fmt_value(va, unit, scale),
                              b=fmt_value(vb, unit, scale), a_value=na, b_value=nb, delta=delta,
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


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_notes(runs: Sequence[SavedRun]) -> list[str]:
    """The input figures' definitions, and each run's note on its data stall."""
    notes = [f"{INPUT_FIGURES_NOTE}."]
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
            ch = format_change(d)
            ch = f"**{ch}**" if ch else ""
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
    for _group, name, unit, get, _better, scale in _SPECS:
        vals = [get(r) for r in runs]
        if all(v is None for v in vals):
            continue
        lines.append(f"| {_md(name)} | " + " | ".join(_md(fmt_value(v, unit, scale)) for v in vals)
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
