"""Formatting of numbers for every view: bytes, seconds, counts with units, percent,
changes, and the names of the two input figures.

Pure functions of their arguments, standard library only (no rich): the renderers
(:mod:`autotune.render`, :mod:`autotune.live`), the plots, the comparison and the
planner's reasons all write numbers the same way. Every number carries its unit;
missing values (None, NaN, inf) are written ``"-"``.
"""

from __future__ import annotations

import math
from typing import Any


def is_missing(x: Any) -> bool:
    """True for None and for a float that is NaN or infinite (a figure not measured)."""
    return x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


_BINARY_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))


def fmt_bytes(n: float | None, digits: int = 1, unit: str | None = None) -> str:
    """Bytes in binary units: ``1536`` -> ``"1.5 KiB"``, ``digits`` decimals
    (``fmt_bytes(61.2 * 2**30, 2)`` -> ``"61.20 GiB"``); plain bytes have none
    (``"512 B"``). ``unit`` (``"KiB"``, ``"MiB"``, ``"GiB"``, ``"TiB"``, ``"B"``) fixes
    the unit instead of the largest that fits: ``fmt_bytes(3 * 2**30, unit="MiB")`` ->
    ``"3,072.0 MiB"``. ``"-"`` for None / NaN.

    Raises:
      ValueError: an unknown ``unit``.
    """
    if is_missing(n):
        return "-"
    if unit is not None:
        sizes = dict(_BINARY_UNITS)
        if unit not in sizes:
            raise ValueError(f"byte unit {unit!r} is not one of {', '.join(sizes)}")
        chosen = (unit, sizes[unit])
    else:
        chosen = next(((u, d) for u, d in _BINARY_UNITS if abs(n) >= d), ("B", 1))
    name, div = chosen
    return f"{n / div:,.{0 if name == 'B' else digits}f} {name}"


def fmt_num(x: float | None, unit: str = "", digits: int | None = None) -> str:
    """A number with thousands separators and its unit: 0 decimals from 100 up, 1
    from 10, else 2 (or ``digits``); ``"%"`` is written without a space; ``"-"`` for
    None / NaN."""
    if is_missing(x):
        return "-"
    if digits is None:
        digits = 0 if abs(x) >= 100 else (1 if abs(x) >= 10 else 2)
    s = f"{x:,.{digits}f}"
    return s + unit if unit == "%" else f"{s} {unit}".strip()


def fmt_ms(seconds: float | None, digits: int | None = None) -> str:
    """Seconds written in milliseconds: ``0.0205`` -> ``"20.5 ms"``; ``"-"`` for
    None / NaN."""
    return fmt_num(None if is_missing(seconds) else seconds * 1e3, "ms", digits)


def fmt_secs(s: float | None) -> str:
    """Seconds as ``1h02m03s`` / ``4m05s`` / ``6s``; ``"-"`` for None / NaN / inf."""
    if is_missing(s):
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def fmt_pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage: ``0.4567`` -> ``"45.7%"``; ``"-"`` for None / NaN."""
    return "-" if is_missing(x) else f"{100 * x:.{digits}f}%"


def fmt_value(value: Any, unit: str = "", scale: float = 1.0) -> str:
    """One figure as a table shows it: ``value x scale`` with its unit (seconds as
    :func:`fmt_secs`, ``"$"`` as dollars and cents, ``"%"`` with one decimal,
    integers exact), booleans as yes / no, text as is; ``"-"`` when missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "-"
        v = value * scale
        if unit == "s":
            return fmt_secs(v)
        if unit == "$":
            return f"${v:,.2f}"
        if isinstance(value, int) and scale == 1:
            return f"{v:,}" + (f" {unit}" if unit else "")
        return fmt_num(v, unit, 1 if unit == "%" else None)
    return str(value)


def format_delta(d: Any) -> str:
    """The change of a compared figure (``autotune.compare.Difference``: ``delta``
    in its ``unit``, ``delta_pct`` in %) as shown: percentage points for ``%``
    figures (``"-5.0 pp"``), else percent (``"+20.0%"``); ``""`` without a change."""
    if d.delta is None:
        return ""
    if d.unit == "%":
        return f"{d.delta:+.1f} pp"
    if d.delta_pct is None:
        return f"{d.delta:+,.3g}"
    return f"{d.delta_pct:+.1f}%"


def format_change(d: Any) -> str:
    """B's change of a compared figure in words: :func:`format_delta` and the verdict
    (``"+20.0% better"``, ``"-5.0 pp worse"``, ``"changed"``); ``""`` when the figure
    is the same or missing on a side (verdict ``same`` / ``n/a``)."""
    if d.verdict in ("same", "n/a"):
        return ""
    return " ".join(x for x in (format_delta(d), d.verdict) if x)


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
    """A data stall figure (% of step time) with its meaning, or why it is missing
    (``note``, e.g. ``autotune.runs.RunFigures.data_stall_note``)."""
    if is_missing(pct):
        return note or "not measured (no on-device reference step time)"
    return f"{fmt_num(pct, '%', 1)} of step time accelerators idle for input" + (
        f" ({note})" if note else "")


def fmt_host_wait(pct: float | None, wait_s: float | None = None) -> str:
    """Host wait as a share of wall time (%), and in ms per step when ``wait_s``
    (seconds per step) is given."""
    per_step = "" if is_missing(wait_s) else f", {fmt_ms(wait_s)} per step"
    return f"{fmt_num(pct, '%', 1)} of wall time waiting for the next batch{per_step}"


def stall_style(pct: float | None) -> str:
    """The colour a data stall (% of step time) is drawn in: green under 5%, yellow
    under 20%, else red; dim when not measured."""
    if is_missing(pct):
        return "dim"
    return "green" if pct < 5 else ("yellow" if pct < 20 else "red")
