"""Terminal charts from lists of numbers, drawn with block characters (rich ``Text``,
no other dependency).

* :func:`hbar_chart`: one horizontal bar per row with an optional reference mark
  (e.g. decode images/s per thread count against the train step rate);
* :func:`column_chart`: a series over time as vertical bars with a reference line
  (e.g. images/s per logging window against the plan's prediction);
* :func:`sparkline`: a series in one line of block characters (the live view).

The charts only scale the values they are given to the cells they have (and average
a long series into the columns of a chart); what the values mean is the caller's.
"""

from __future__ import annotations

import math
from typing import Sequence

from rich.text import Text

from autotune.fmt import fmt_num, is_missing

_HBLOCKS = " ▏▎▍▌▋▊▉█"
_VBLOCKS = " ▁▂▃▄▅▆▇█"


def _hbar(value: float, vmax: float, width: int) -> str:
    if is_missing(value) or value <= 0 or vmax <= 0:
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
    largest value (or the marker), ``width`` cells at most; the marker (e.g. the step
    rate, in the rows' unit) is drawn as ``┃`` across the bars and named under them.
    A row whose label equals ``highlight`` is drawn in bold cyan.
    """
    vals = [v for _, v, _ in rows if not is_missing(v)]
    vmax = max(vals + ([marker] if not is_missing(marker) else []) + [0.0])
    lw = max([len(lab) for lab, _, _ in rows] + [1])
    col = None
    if not is_missing(marker) and vmax > 0:
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


def columns(values: Sequence[float | None], width: int) -> list[float]:
    """``values`` as at most ``width`` columns: a longer series is averaged in equal
    runs (missing values left out; NaN for a run with none)."""
    vals = [float("nan") if is_missing(v) else float(v) for v in values]
    if len(vals) <= width:
        return vals
    out = []
    for i in range(width):
        chunk = [v for v in vals[i * len(vals) // width:(i + 1) * len(vals) // width]
                 if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out


def _top(finite: list[float], ref: float | None, vmax: float | None) -> float:
    """The chart's top value: ``vmax``, else the largest value or ``ref`` + 5%, but
    1.5 x the 90th percentile (or ``ref``) when a few outliers would flatten the rest."""
    refv = [ref] if not is_missing(ref) else []
    if vmax and vmax > 0:
        return vmax
    top = max(finite + refv) * 1.05
    p90 = sorted(finite)[int(0.9 * (len(finite) - 1))]
    if top > 2.5 * max([p90] + refv):
        top = 1.5 * max([p90] + refv)
    return top or 1.0


def shared_top(values: Sequence[float | None], refs: Sequence[float | None] = ()) -> float | None:
    """One top for several column charts drawn on one scale: 1.5 x the larger of the
    90th percentile of ``values`` and the ``refs``; None without values."""
    vals = sorted(v for v in values if not is_missing(v))
    if not vals:
        return None
    return 1.5 * max([vals[int(0.9 * (len(vals) - 1))]] + [r for r in refs if not is_missing(r)])


def column_chart(values: Sequence[float], *, height: int = 6, width: int = 60,
                 ref: float | None = None, ref_label: str = "", unit: str = "",
                 vmax: float | None = None, x_labels: tuple[str, str] | None = None,
                 style: str = "green") -> Text:
    """A series as vertical bars (one column per value; a longer series is averaged
    into ``width`` columns), ``height`` rows from 0 to ``vmax`` (default: the largest
    value or ``ref``, +5%; values above the top drawn as ``↑``), with the reference
    value (in ``unit``) drawn as a dashed line ``╌`` where no bar covers it and named
    on the right; ``x_labels`` are written under the first and last column.
    """
    cols = columns(values, width)
    finite = [v for v in cols if not math.isnan(v)]
    if not finite:
        return Text("  (no data)", style="dim")
    top = _top(finite, ref, vmax)
    label_w = max(len(fmt_num(top)), 1)
    out = Text()
    ref_row = None
    if not is_missing(ref) and 0 <= ref <= top:
        ref_row = min(height - 1, int(ref / top * height))
    for row in range(height - 1, -1, -1):
        lo, hi = top * row / height, top * (row + 1) / height
        axis = fmt_num(top) if row == height - 1 else ("0" if row == 0 else "")
        out.append(f"{axis:>{label_w}} ┤", style="dim")
        for v in cols:
            if math.isnan(v) or v <= lo:
                on_ref = row == ref_row
                out.append("╌" if on_ref else " ", style="yellow" if on_ref else "")
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


def sparkline(values: Sequence[float | None], top: float, width: int = 40) -> str:
    """``values`` in one line of block characters, at most ``width`` wide (a longer
    series averaged), scaled from 0 to ``top``; a missing value is a space."""
    return "".join(" " if math.isnan(v) else _VBLOCKS[max(1, min(8, int(v / top * 8)))]
                   for v in columns(list(values), width))
