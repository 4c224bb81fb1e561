"""The largest per-device batch that fits in device memory: the pure search logic.

Nothing here imports JAX or touches a device. The caller hands in a callable that
does the measuring:

* :func:`find_max_batch` takes ``memory_bytes(b)``, the bytes XLA says the compiled
  train step needs at per-device batch ``b``. In the real tool that is
  ``jax.jit(step).lower(...).compile().memory_analysis()``:
  ``argument_size_in_bytes + output_size_in_bytes + temp_size_in_bytes -
  alias_size_in_bytes`` (the peak estimate used in jax-ml/jax#31292). Each call is
  one XLA compilation (about 10-60 s for a ResNet-50 on a GPU), so the search counts
  them and keeps them few: memory is close to affine in the batch (parameters,
  gradients and optimizer state are fixed; activations grow per image), so it
  measures two small batches, fits the line, jumps to the predicted maximum, and then
  verifies it (the next multiple must fail), refining by secant (regula falsi) steps
  with safeguards for curved memory. On an affine memory model it needs at most 4
  compilations.
* :func:`find_max_batch_by_trial` is the fallback when the memory analysis is
  unavailable (``memory_analysis()`` returns ``None`` or all zeros on some JAX GPU
  and TPU versions: jax-ml/jax#18954, jax-ml/jax#12848): it drives a predicate
  ``fits(b)`` that runs real steps in a child process (an out-of-memory error kills
  only the child), doubling then bisecting, and counts the trials.
* :func:`next_smaller_batch` is the step-down rule after an out-of-memory error at
  run time; :func:`parse_memory_budget` reads the CPU ``--memory-budget`` option.

Safety: a batch is returned only if it was measured (or trialled) and fit; the
maximality claim assumes memory does not decrease as the batch grows.

Budget: pass the bytes XLA can actually hand out (e.g. ``bytes_limit`` from
``device.memory_stats()``), not the card's total: by default JAX preallocates 75% of
GPU memory (JAX docs, "GPU memory allocation").
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Callable

from trainers.records import Record
from autotune.fmt import fmt_bytes

__all__ = [
    "BatchEvaluation",
    "BatchSearchError",
    "BatchSearchResult",
    "BatchVerification",
    "DEFAULT_MARGIN",
    "MARGIN_REASON",
    "METHOD_MEMORY_ANALYSIS",
    "METHOD_TRIAL",
    "METHOD_UNAVAILABLE",
    "MemoryAnalysisUnavailable",
    "NoBatchFits",
    "STEP_DOWN_FRACTION",
    "find_max_batch",
    "find_max_batch_by_trial",
    "knee_batches",
    "next_smaller_batch",
    "ran_out_of_memory",
    "parse_memory_budget",
    "verify_max_batch",
]

_FILE = "autotune/batch_search.py"

#: Fraction of the memory budget held back (see :data:`MARGIN_REASON`).
DEFAULT_MARGIN = 0.10

#: Why :data:`DEFAULT_MARGIN` exists; copied into every result.
MARGIN_REASON = (
    "10% of the budget is held back because XLA's compile-time memory analysis counts "
    "buffers, not the GPU BFC allocator's fragmentation and bookkeeping (JAX docs, "
    "'GPU memory allocation': a program using most of the memory can OOM through "
    "fragmentation), and because a batch that only just fits OOMs later; PyTorch "
    "Lightning's BatchSizeFinder hit exactly that (Lightning-AI/pytorch-lightning "
    "#9625, #20447, #21154) and PR #21163 adds a `margin` argument for it"
)

#: ``method`` of a result found with ``memory_analysis()`` (:func:`find_max_batch`).
METHOD_MEMORY_ANALYSIS = "memory-analysis-bisection"
#: ``method`` of a result found by running real steps (:func:`find_max_batch_by_trial`).
METHOD_TRIAL = "trial-bisection"
#: ``method`` for a caller that could search neither way and kept a fixed batch.
METHOD_UNAVAILABLE = "unavailable"

#: :func:`next_smaller_batch` keeps this fraction of the batch after an OOM.
STEP_DOWN_FRACTION = 7 / 8


class BatchSearchError(RuntimeError):
    """Base class of the errors raised by the batch search."""


class MemoryAnalysisUnavailable(BatchSearchError):
    """``memory_bytes(b)`` returned ``None``, 0 or a negative number: XLA's memory
    analysis is not available on this backend/version (jax-ml/jax#18954 reports all
    zeros on GPU with jax 0.4.20; jax-ml/jax#12848 reports 0/-1 on TPU). The caller
    should fall back to :func:`find_max_batch_by_trial`.

    Attributes: ``batch`` (the per-device batch asked for), ``value`` (what came back).
    """

    def __init__(self, batch: int, value: object):
        self.batch = batch
        self.value = value
        super().__init__(
            f"{_FILE}: memory analysis unavailable: memory_bytes({batch}) returned "
            f"{value!r} (None or <= 0); fall back to find_max_batch_by_trial, which runs "
            "real steps in a child process")


class NoBatchFits(BatchSearchError):
    """Not even the smallest allowed per-device batch fits (or the OOM step-down cannot
    go lower). Attributes: ``batch`` (the smallest batch tried), ``detail``."""

    def __init__(self, batch: int, detail: str):
        self.batch = batch
        self.detail = detail
        super().__init__(f"{_FILE}: no per-device batch fits: {detail}")


@dataclass(frozen=True)
class BatchEvaluation(Record):
    """One measured batch: per-device ``batch`` (images), the ``bytes`` the compiled
    train step needs per device (``None`` for a real-step trial, which reports only
    success), ``total_bytes`` = ``bytes`` + input prefetch bytes at that batch (``None``
    for a trial), and whether it ``fits``."""

    batch: int
    bytes: int | None
    total_bytes: int | None
    fits: bool


@dataclass(frozen=True)
class BatchVerification(Record):
    """Real train steps at one per-device ``batch`` (images), held to the search's test.

    Fields (bytes per device): ``analysis_bytes`` (XLA's buffer analysis of the step at
    ``batch``); ``measured_bytes`` (the steps' measured peak: ``peak_bytes_in_use`` on
    GPU/TPU, ``probes.step_child``'s live arrays + steady-step resident growth on CPU;
    ``None`` when the steps did not run, e.g. out of memory); ``need_bytes``
    (``measured_bytes`` + input prefetch at ``batch``, ``None`` without a measurement);
    ``fits`` (``need_bytes`` <= the usable budget); ``ratio`` (measured / analysis,
    ``None`` without a measurement)."""

    batch: int
    analysis_bytes: int
    measured_bytes: int | None
    need_bytes: int | None
    fits: bool
    ratio: float | None


@dataclass(frozen=True)
class BatchSearchResult(Record):
    """The chosen per-device batch and how it was found.

    Fields (bytes are per device):
      per_device_batch: images per device per step; a multiple of ``multiple``.
      device_count: devices the step is replicated on (pmap).
      global_batch: ``per_device_batch * device_count``; divisible by the device
        count by construction (the search works on the per-device batch), and a
        multiple of ``multiple * device_count``.
      multiple: the rounding unit (8: tensor-core friendly shapes).
      predicted_bytes: bytes XLA's memory analysis says the step needs at the chosen
        batch (``None`` for a trial search).
      prefetch_bytes: on-device input prefetch buffers at the chosen batch
        (``prefetch_bytes_per_image * per_device_batch``).
      prefetch_bytes_per_image: prefetch depth x bytes of one device-side image.
      usable_budget_bytes: ``budget_bytes * (1 - margin) - prefetch_bytes``, the bytes
        the step may use at the chosen batch (``None`` for a trial search).
      budget_bytes: device memory the search was given (``None`` for a trial search).
      margin: fraction held back (memory for the analysis search; batch for a trial).
      margin_reason: why the margin exists.
      compilations: calls to the measuring callable (each compiles the step; for a
        trial search, each runs real steps in a child process).
      evaluations: every measured batch, in call order.
      fixed_bytes: intercept of the line through the two measurements nearest the
        boundary (params + optimizer state + workspace), ``None`` with one measurement.
      bytes_per_image: slope of that line less the prefetch bytes per image (the step's
        activations per image), ``None`` with one measurement.
      limited_by: ``"memory"`` (the next multiple does not fit) or ``"max_batch"``
        (the search cap was reached and still fit).
      method: :data:`METHOD_MEMORY_ANALYSIS`, :data:`METHOD_TRIAL` or
        :data:`METHOD_UNAVAILABLE`.
      reason: one sentence with the numbers, for the report.
      verifications: the real-step checks of :func:`verify_max_batch`, in call order
        (empty: the batch rests on the analysis alone).
      calibration: measured / analysed bytes that the verified pick was re-searched
        with (1.0 when the analysis was not contradicted or not verified).
    """

    per_device_batch: int
    device_count: int
    global_batch: int
    multiple: int
    predicted_bytes: int | None
    prefetch_bytes: int
    prefetch_bytes_per_image: int
    usable_budget_bytes: int | None
    budget_bytes: int | None
    margin: float
    margin_reason: str
    compilations: int
    evaluations: tuple[BatchEvaluation, ...]
    fixed_bytes: float | None
    bytes_per_image: float | None
    limited_by: str
    method: str
    reason: str
    verifications: tuple[BatchVerification, ...] = ()
    calibration: float = 1.0


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{_FILE}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{_FILE}: {name} ({value}) must be >= {minimum}")
    return value


def _check_margin(margin: float) -> float:
    if not (0.0 <= float(margin) < 1.0):
        raise ValueError(f"{_FILE}: margin ({margin}) must be in [0, 1)")
    return float(margin)


def _usable_bytes(budget_bytes: int, margin: float) -> int:
    """The bytes a batch may use: ``floor(budget_bytes * (1 - margin))``."""
    return int(math.floor(budget_bytes * (1.0 - margin)))


def _round_down(value: float, multiple: int) -> int:
    return int(math.floor(value / multiple)) * multiple


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def find_max_batch(
    memory_bytes: Callable[[int], int | None],
    budget_bytes: int,
    *,
    multiple: int = 8,
    lo: int | None = None,
    hi: int | None = None,
    max_batch: int = 65536,
    margin: float = DEFAULT_MARGIN,
    prefetch_bytes_per_image: int = 0,
    device_count: int = 1,
) -> BatchSearchResult:
    """The largest per-device batch (a multiple of ``multiple``) whose train step fits.

    A batch ``b`` fits when ``memory_bytes(b) + prefetch_bytes_per_image * b <=
    floor(budget_bytes * (1 - margin))``. The search:

    1. measures ``b1 = lo`` (rounded up to ``multiple``; default ``multiple``) and
       ``b2 = 4 * b1`` (capped);
    2. while no batch has failed: fits the line ``bytes = fixed + per_image * b``
       through the two largest fitting batches and measures the largest multiple it
       says fits (or, when that is a batch already known to fit, the next multiple, to
       prove it fails); if two such extrapolations in a row still fit, or the line is
       flat, it doubles instead;
    3. once a batch has failed: the parabola through the bracket ends (largest
       fitting, smallest failing batch) and the largest batch below them predicts the
       crossing (Brent-style quadratic interpolation, for curved memory), else regula
       falsi (the secant through the ends), rounded down to a multiple; with the
       Illinois modification (the end that has not moved for two steps gets its
       excess halved) and a gallop (after k >= 3 moves of the same end, step away from
       it by at least 2**(k-2) multiples, never past the midpoint), so curved or
       staircase memory curves still converge in a few steps;
    4. stops when the next multiple above the best fitting batch is known to fail, or
       the best fitting batch is the cap.

    Every batch is measured at most once. On an affine model the answer costs at most 4
    compilations (two to fit, one at the prediction, one just above it).

    Args:
      memory_bytes: per-device batch -> bytes the compiled step needs per device
        (argument + output + temp - alias from ``Compiled.memory_analysis()``), or
        ``None``/0 when the analysis is unavailable. Each call is a compilation.
      budget_bytes: device memory available to XLA, bytes (> 0).
      multiple: per-device batch granularity (8 for tensor cores; 1 to disable).
      lo: smallest per-device batch to consider (default ``multiple``).
      hi: largest per-device batch to consider (default: ``max_batch``).
      max_batch: hard cap on the per-device batch.
      margin: fraction of ``budget_bytes`` held back (default 0.10, see
        :data:`MARGIN_REASON`).
      prefetch_bytes_per_image: bytes the input pipeline keeps on the device per image
        of the batch = prefetch depth x bytes of one device-side image (e.g. 2 x
        224*224*3 uint8 = 301,056). It grows with the batch, so it is charged per image.
      device_count: devices per step; only used for ``global_batch`` (the per-device
        batch is what must fit, and ``global_batch`` is then divisible by the device
        count automatically).

    Returns:
      :class:`BatchSearchResult` with ``method == METHOD_MEMORY_ANALYSIS``.

    Raises:
      MemoryAnalysisUnavailable: ``memory_bytes`` returned ``None`` or a value <= 0.
      NoBatchFits: even the smallest batch ``b1`` exceeds the usable budget.
      ValueError / TypeError: invalid arguments (non-positive budget, ``lo`` above the
        cap, margin outside [0, 1), ...).
    """
    budget_bytes = _check_int("budget_bytes", budget_bytes, 1)
    device_count = _check_int("device_count", device_count, 1)
    prefetch = _check_int("prefetch_bytes_per_image", prefetch_bytes_per_image, 0)
    margin = _check_margin(margin)
    cap, start = _search_bounds(multiple, lo, hi, max_batch)
    usable_total = _usable_bytes(budget_bytes, margin)
    search = _MemorySearch(memory_bytes, usable_total=usable_total, prefetch=prefetch,
                           multiple=multiple, cap=cap)
    search.measure(start)
    if not search.fits(start):
        raise NoBatchFits(
            start,
            f"per-device batch {start} needs {fmt_bytes(search.evals[start], 2)} + "
            f"{fmt_bytes(prefetch * start, 2)} prefetch, more than the "
            f"{fmt_bytes(search.usable_total, 2)} usable ({fmt_bytes(budget_bytes, 2)} x "
            f"{1 - margin:.2f}); lower `multiple`, the image size or the model")
    search.best = start
    if start < cap:
        b2 = min(4 * start, cap)
        search.measure(b2)
        search.record(b2)
    search.refine()
    return _memory_result(search, budget_bytes=budget_bytes, margin=margin,
                          device_count=device_count)


def _search_bounds(multiple: int, lo: int | None, hi: int | None,
                   max_batch: int) -> tuple[int, int]:
    """``(cap, start)`` of :func:`find_max_batch`: the largest and the first batch,
    multiples of ``multiple``.

    Raises:
      ValueError / TypeError: the bounds are not integers or leave no multiple.
    """
    multiple = _check_int("multiple", multiple, 1)
    max_batch = _check_int("max_batch", max_batch, 1)
    cap_raw = max_batch if hi is None else min(_check_int("hi", hi, 1), max_batch)
    cap = _round_down(cap_raw, multiple)
    if cap < multiple:
        raise ValueError(
            f"{_FILE}: the batch cap (min(hi={hi}, max_batch={max_batch}) = {cap_raw}) is "
            f"below one multiple of {multiple}")
    start = multiple if lo is None else _round_up(_check_int("lo", lo, 1), multiple)
    if start > cap:
        raise ValueError(f"{_FILE}: lo ({lo}, rounded up to {start}) exceeds the batch cap ({cap})")
    return cap, start


@dataclass
class _MemorySearch:
    """The state of :func:`find_max_batch`: measured bytes per batch, the bracket
    (``best`` fits, ``fail`` does not) and the Illinois / gallop bookkeeping."""

    memory_bytes: Callable[[int], int | None]
    usable_total: int
    prefetch: int
    multiple: int
    cap: int
    evals: dict[int, int] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    best: int = 0              # largest batch measured to fit
    fail: int | None = None    # smallest batch measured not to fit
    weight_best: float = 1.0
    weight_fail: float = 1.0
    last_side: str = ""
    side_run: int = 0
    extrap_fits: int = 0       # consecutive extrapolations that still fit (unbracketed)

    def measure(self, b: int) -> None:
        value = self.memory_bytes(b)
        if value is None or isinstance(value, bool) or value <= 0:
            raise MemoryAnalysisUnavailable(b, value)
        self.evals[b] = int(value)
        self.order.append(b)

    def need(self, b: int) -> int:
        return self.evals[b] + self.prefetch * b

    def fits(self, b: int) -> bool:
        return self.need(b) <= self.usable_total

    def line(self, x0: int, x1: int) -> tuple[float, float]:
        """(intercept, slope) in bytes and bytes/image of the total need through x0, x1."""
        slope = (self.need(x1) - self.need(x0)) / (x1 - x0)
        return self.need(x0) - slope * x0, slope

    def record(self, b: int) -> None:
        if self.fits(b):
            self.best = max(self.best, b)
        elif self.fail is None or b < self.fail:
            self.fail = b

    def refine(self) -> None:
        """Measure candidates until the next multiple above ``best`` is known to fail
        or ``best`` is the cap."""
        while True:
            upper = self.cap if self.fail is None else min(self.cap, self.fail - self.multiple)
            if self.best >= upper:
                return
            if self.fail is None:
                cand, extrapolated = self._extrapolate()
            else:
                cand, extrapolated = self._interpolate(), False
            cand = max(self.best + self.multiple, min(cand, upper))
            if cand in self.evals:  # cannot happen with a consistent bracket; guard anyway
                return
            self.measure(cand)
            self.record(cand)
            self._update_weights(cand, extrapolated)

    def _extrapolate(self) -> tuple[int, bool]:
        """Unbracketed: the line through the two largest fitting batches (the widest
        pair if that one is flat) predicts the largest fit; double when the line keeps
        under-predicting. Returns ``(candidate, extrapolated)``."""
        fitting = sorted(b for b in self.evals if self.fits(b))
        fixed, slope = self.line(fitting[-2], fitting[-1])
        if slope <= 0:
            fixed, slope = self.line(fitting[0], fitting[-1])
        if slope > 0 and self.extrap_fits < 2:
            predicted = _round_down((self.usable_total - fixed) / slope, self.multiple)
            return (predicted if predicted > self.best else self.best + self.multiple), True
        return 2 * self.best, False

    def _interpolate(self) -> int:
        """Bracketed: regula falsi with Illinois weights (Dowell & Jarratt 1971; the end
        that stays put twice has its excess halved), or the parabola through a third
        point below the bracket while the ends alternate (Brent-style, for curved
        memory); after a run of k >= 3 moves of the same end, a gallop of at least
        2**(k-2) multiples from it, never past the bracket's midpoint (staircase
        memory curves then cost O(log) compilations)."""
        best, fail, m = self.best, self.fail, self.multiple
        g_best = (self.need(best) - self.usable_total) * self.weight_best   # <= 0
        g_fail = (self.need(fail) - self.usable_total) * self.weight_fail   # > 0
        root = best + (fail - best) * (-g_best) / (g_fail - g_best)
        below = [b for b in self.evals if b < best]
        if below and self.weight_best == 1.0 and self.weight_fail == 1.0:
            quad = _quadratic_root([(x, self.need(x)) for x in (max(below), best, fail)],
                                   self.usable_total, best, fail)
            if quad is not None:
                root = quad
        predicted = _round_down(root, m)
        cand = predicted if predicted > best else best + m
        if self.side_run >= 3:
            step = m * 2 ** (self.side_run - 2)
            mid = best + ((fail - best) // m // 2) * m
            if self.last_side == "best":
                cand = max(cand, min(best + step, mid))
            else:
                cand = min(cand, max(fail - step, mid))
        return cand

    def _update_weights(self, cand: int, extrapolated: bool) -> None:
        side = "best" if self.fits(cand) else "fail"
        if side == "best":
            self.weight_best = 1.0
            self.weight_fail = self.weight_fail * 0.5 if self.last_side == "best" else 1.0
        else:
            self.weight_fail = 1.0
            self.weight_best = self.weight_best * 0.5 if self.last_side == "fail" else 1.0
        self.side_run = self.side_run + 1 if side == self.last_side else 1
        self.last_side = side
        self.extrap_fits = self.extrap_fits + 1 if (extrapolated and side == "best") else 0


def _memory_result(s: _MemorySearch, *, budget_bytes: int, margin: float,
                   device_count: int) -> BatchSearchResult:
    """The :class:`BatchSearchResult` of a finished :class:`_MemorySearch`, with the
    line through the two measurements nearest the boundary and the reason."""
    best, fail, prefetch = s.best, s.fail, s.prefetch
    limited_by = "memory" if fail is not None and fail - s.multiple <= best else "max_batch"
    prefetch_at = prefetch * best
    usable_at = s.usable_total - prefetch_at
    if fail is not None:
        fixed_bytes, per_image = s.line(best, fail)
    elif len(s.evals) >= 2:
        fixed_bytes, per_image = s.line(*sorted(s.evals)[-2:])
    else:
        fixed_bytes, per_image = None, None
    pre = (f" - {fmt_bytes(prefetch_at, 2)} input prefetch" if prefetch else "")
    if limited_by == "memory":
        beyond = (f"; batch {fail} would need {fmt_bytes(s.evals[fail], 2)}"
                  + (f" + {fmt_bytes(prefetch * fail, 2)} prefetch" if prefetch else ""))
    else:
        beyond = f"; capped at max batch {s.cap}"
    reason = (
        f"per-device batch {best}: {fmt_bytes(s.evals[best], 2)} of "
        f"{fmt_bytes(usable_at, 2)} usable ({fmt_bytes(budget_bytes, 2)} x "
        f"{1 - margin:.2f}{pre}){beyond}; {len(s.order)} compilations; global batch "
        f"{best * device_count} = {best} x {device_count} device(s), divisible by the device "
        f"count because the search is per device; {margin:.0%} margin for allocator "
        "fragmentation")
    return BatchSearchResult(
        per_device_batch=best, device_count=device_count, global_batch=best * device_count,
        multiple=s.multiple, predicted_bytes=s.evals[best], prefetch_bytes=prefetch_at,
        prefetch_bytes_per_image=prefetch, usable_budget_bytes=usable_at,
        budget_bytes=budget_bytes, margin=margin, margin_reason=MARGIN_REASON,
        compilations=len(s.order),
        evaluations=tuple(BatchEvaluation(batch=b, bytes=s.evals[b], total_bytes=s.need(b),
                                          fits=s.fits(b)) for b in s.order),
        fixed_bytes=None if fixed_bytes is None else float(fixed_bytes),
        bytes_per_image=None if per_image is None else float(per_image - prefetch),
        limited_by=limited_by, method=METHOD_MEMORY_ANALYSIS, reason=reason)


def _quadratic_root(points: list[tuple[int, int]], target: int, lo: int, hi: int) -> float | None:
    """The x in [lo, hi] where the parabola through three (batch, bytes) points equals
    ``target``; ``None`` when the points are (nearly) collinear or no single root lies
    in [lo, hi] (the caller then uses the secant)."""
    (x0, y0), (x1, y1), (x2, y2) = points
    d01 = (y1 - y0) / (x1 - x0)           # Newton divided differences
    d12 = (y2 - y1) / (x2 - x1)
    d012 = (d12 - d01) / (x2 - x0)
    a = d012                               # y = a x^2 + b x + c
    b = d01 - d012 * (x0 + x1)
    c = y0 - d01 * x0 + d012 * x0 * x1 - target
    if abs(a) * (hi - lo) <= 1e-9 * max(1.0, abs(b)):
        return None
    disc = b * b - 4 * a * c
    if disc < 0:
        return None
    roots = [(-b + sign * math.sqrt(disc)) / (2 * a) for sign in (1.0, -1.0)]
    inside = [r for r in roots if lo <= r <= hi]
    return inside[0] if len(inside) == 1 else None


def verify_max_batch(
    found: BatchSearchResult,
    memory_bytes: Callable[[int], int | None],
    measured_bytes: Callable[[int], int | None],
    *,
    max_trials: int = 5,
    tolerance: float = 0.05,
) -> BatchSearchResult:
    """``found`` (a :func:`find_max_batch` result) checked by real steps, and corrected
    when they contradict the analysis.

    XLA's buffer analysis is what the step's buffers need; what a backend really uses
    can be more: on CPU, Eigen's convolution packing and thread-pool scratch sit outside
    the buffer assignment (measured 1.05-1.30x the analysis for a small ResNet, more
    from one batch to the next: ``bench/RESULTS.md``, "Largest batch"); on GPU,
    workspaces and fragmentation the 10% margin is meant to cover. So the pick is run
    (``measured_bytes(b)``: a few real steps in a child process, their peak) and held to
    the search's own test, ``measured(b) + prefetch_bytes_per_image * b <=
    floor(budget * (1 - margin))``:

    1. the pick fits: it is kept (one trial: the usual case where the analysis holds);
    2. it does not: ``calibration`` = the largest measured / analysed ratio seen, and the
       analysis search is run again below the failure on ``analysis(b) x calibration``
       (compilations already made are reused), and that pick is run;
    3. once one batch fits and a larger one failed, the truth lies between them: while
       the fitting batch is more than ``tolerance`` below the largest untried one, the
       batch where the line through the two measured needs meets the budget is tried
       (the midpoint when that line says nothing new).

    At most ``max_trials`` trials. A batch is returned only if its real steps fit; it
    is never above the analysis pick (the analysis is taken as a lower bound of what
    the steps use).

    Args:
      found: the memory-analysis result to check (``method ==
        METHOD_MEMORY_ANALYSIS``, with its budget).
      memory_bytes: the same callable :func:`find_max_batch` was given (batch -> bytes
        XLA says the step needs; one compilation per new batch).
      measured_bytes: per-device batch -> the measured peak bytes of real steps there,
        or ``None`` when they did not run (out of memory, crash).
      max_trials: most real-step trials (>= 1).
      tolerance: stop once the fitting batch is within this fraction of the largest
        batch not yet known to fail (0.05: the issue-4/15 goal).

    Returns:
      A :class:`BatchSearchResult` with ``verifications`` (every trial) and
      ``calibration``; ``per_device_batch`` = the largest batch whose steps fit.

    Raises:
      NoBatchFits: no trial fit within ``max_trials``, or even the smallest batch fails
        the calibrated analysis.
      MemoryAnalysisUnavailable: ``memory_bytes`` returned None or <= 0.
      ValueError / TypeError: ``found`` is no memory-analysis result; bad arguments.
    """
    if found.method != METHOD_MEMORY_ANALYSIS or found.budget_bytes is None:
        raise ValueError(f"{_FILE}: verify_max_batch needs a find_max_batch result "
                         f"(method {METHOD_MEMORY_ANALYSIS!r}), got method {found.method!r}")
    _check_int("max_trials", max_trials, 1)
    if not 0.0 <= float(tolerance) < 1.0:
        raise ValueError(f"{_FILE}: tolerance ({tolerance}) must be in [0, 1)")
    v = _Verifier(found, memory_bytes, measured_bytes)
    cand: int | None = found.per_device_batch
    while cand is not None:
        v.trial(cand)
        if len(v.checks) >= max_trials:
            break
        cand = v.next_candidate(tolerance)
    if v.fit is None:
        raise NoBatchFits(found.per_device_batch, "real steps fit at none of the batches "
                          f"tried ({v.describe()})")
    return v.result()


class _Verifier:
    """The state of :func:`verify_max_batch`: analysed bytes (reused compilations), the
    trials, the largest fitting (``fit``) and smallest failing (``fail``) batch."""

    def __init__(self, found: BatchSearchResult, memory_bytes, measured_bytes):
        self.found, self.memory_bytes, self.measured_bytes = found, memory_bytes, measured_bytes
        self.multiple, self.prefetch = found.multiple, found.prefetch_bytes_per_image
        self.usable = _usable_bytes(found.budget_bytes, found.margin)
        self.analysis = {e.batch: int(e.bytes) for e in found.evaluations if e.bytes}
        self.order = [e.batch for e in found.evaluations]
        self.checks: list[BatchVerification] = []
        self.fit: int | None = None
        self.fail: int | None = None
        self.calibration = 1.0
        self.repick: BatchSearchResult | None = None

    def analysed(self, b: int) -> int:
        if b not in self.analysis:
            value = self.memory_bytes(b)
            if value is None or isinstance(value, bool) or value <= 0:
                raise MemoryAnalysisUnavailable(b, value)
            self.analysis[b] = int(value)
            self.order.append(b)
        return self.analysis[b]

    def trial(self, b: int) -> None:
        analysis = self.analysed(b)
        got = self.measured_bytes(b)
        measured = int(got) if got is not None and not isinstance(got, bool) and got > 0 else None
        need = None if measured is None else measured + self.prefetch * b
        fits = need is not None and need <= self.usable
        ratio = None if measured is None else measured / analysis
        self.checks.append(BatchVerification(batch=b, analysis_bytes=analysis,
                                             measured_bytes=measured, need_bytes=need,
                                             fits=fits, ratio=ratio))
        if fits:
            self.fit = max(self.fit or 0, b)
        else:
            self.fail = b if self.fail is None else min(self.fail, b)
            if ratio is not None:
                self.calibration = max(self.calibration, ratio)

    def top(self) -> int:
        """The largest batch not known to fail (never above the analysis pick)."""
        top = self.found.per_device_batch
        return top if self.fail is None else min(top, self.fail - self.multiple)

    def next_candidate(self, tolerance: float) -> int | None:
        """The next batch to try, or None when done."""
        top = self.top()
        if self.fit is not None and (self.fit >= top or self.fit >= (1 - tolerance) * top):
            return None
        if top < self.multiple:
            return None
        if self.fit is None:
            return self._calibrated(top)
        return self._bracketed(top)

    def _calibrated(self, top: int) -> int:
        """The analysis search again, below ``top``, on analysis x calibration (a failure
        without a measurement steps down by :func:`next_smaller_batch`)."""
        last = self.checks[-1]
        if last.measured_bytes is None and self.calibration == 1.0:
            return min(top, next_smaller_batch(last.batch, self.multiple))
        ratio = self.calibration
        self.repick = find_max_batch(
            lambda b: int(math.ceil(self.analysed(b) * ratio)), self.found.budget_bytes,
            multiple=self.multiple, hi=top, max_batch=top, margin=self.found.margin,
            prefetch_bytes_per_image=self.prefetch, device_count=self.found.device_count)
        return self.repick.per_device_batch

    def _bracketed(self, top: int) -> int:
        """Between the fitting batch and ``top``: where the line through the measured
        needs of the fitting and the failing batch meets the usable budget, else the
        midpoint."""
        m = self.multiple
        need = {c.batch: c.need_bytes for c in self.checks if c.need_bytes is not None}
        lo, hi = self.fit, self.fail
        cand = lo + ((top - lo) // m // 2) * m
        if hi is not None and lo in need and hi in need and need[hi] > need[lo]:
            slope = (need[hi] - need[lo]) / (hi - lo)
            cand = _round_down(lo + (self.usable - need[lo]) / slope, m)
        return min(top, max(lo + m, cand))

    def describe(self) -> str:
        parts = []
        for c in self.checks:
            if c.measured_bytes is None:
                parts.append(f"{c.batch}: did not run")
            else:
                parts.append(f"{c.batch}: {fmt_bytes(c.measured_bytes, 2)} measured "
                             f"({c.ratio:.2f}x the analysis) + prefetch "
                             f"{'<=' if c.fits else '>'} {fmt_bytes(self.usable, 2)} usable")
        return "; ".join(parts)

    def result(self) -> BatchSearchResult:
        f, b = self.found, self.fit
        prefetch_at = self.prefetch * b
        limited = f.limited_by if b == f.per_device_batch else "memory"
        why = (f"per-device batch {b}: its real steps measured "
               f"{fmt_bytes(self._check(b).measured_bytes, 2)} + "
               f"{fmt_bytes(prefetch_at, 2)} prefetch <= {fmt_bytes(self.usable, 2)} usable "
               f"({len(self.checks)} real-step trial(s): {self.describe()})")
        if b != f.per_device_batch:
            why += (f"; the analysis alone picked {f.per_device_batch}; re-searched on "
                    f"{self.calibration:.2f}x the analysis")
        else:
            why += f"; the analysis search: {f.reason}"
        evals = tuple(BatchEvaluation(batch=x, bytes=self.analysis[x],
                                      total_bytes=self.analysis[x] + self.prefetch * x,
                                      fits=self.analysis[x] + self.prefetch * x <= self.usable)
                      for x in self.order)
        return dataclasses.replace(
            f, per_device_batch=b, global_batch=b * f.device_count,
            predicted_bytes=self.analysis[b], prefetch_bytes=prefetch_at,
            usable_budget_bytes=self.usable - prefetch_at, compilations=len(self.order),
            evaluations=evals, limited_by=limited, reason=why,
            verifications=tuple(self.checks), calibration=self.calibration)

    def _check(self, b: int) -> BatchVerification:
        return next(c for c in self.checks if c.batch == b)


def find_max_batch_by_trial(
    fits: Callable[[int], bool],
    *,
    start: int,
    multiple: int = 8,
    max_batch: int = 65536,
    margin: float = DEFAULT_MARGIN,
    device_count: int = 1,
) -> BatchSearchResult:
    """The largest per-device batch for which ``fits(b)`` is true, by real trials.

    The fallback for :class:`MemoryAnalysisUnavailable`: ``fits(b)`` runs a few real
    train steps at per-device batch ``b`` in a child process and reports whether they
    finished without running out of memory (the out-of-memory error kills only the
    child). Search: start at ``start`` (rounded up to ``multiple``); if it fits, double
    until a batch fails or ``max_batch`` is reached; if it fails, halve until one fits;
    then bisect on multiples between the last fit and the first failure. Each batch is
    tried at most once. ``margin`` is then taken off the batch found, as PyTorch
    Lightning's ``margin`` does (``int(found * (1 - margin))``), rounded down to
    ``multiple`` but not below it: real steps include the allocator's fragmentation,
    but later allocations (evaluation, checkpointing, a larger prefetch) do not.

    Args:
      fits: per-device batch -> True if real steps ran at that batch.
      start: first per-device batch to try (e.g. a previous answer, or 64).
      multiple: per-device batch granularity.
      max_batch: hard cap on the per-device batch.
      margin: fraction of the batch found that is given up, in [0, 1).
      device_count: devices per step; only used for ``global_batch``.

    Returns:
      :class:`BatchSearchResult` with ``method == METHOD_TRIAL``, ``compilations`` =
      number of trials, ``predicted_bytes``/``budget_bytes``/``usable_budget_bytes``
      ``None``.

    Raises:
      NoBatchFits: not even ``multiple`` fits.
      ValueError / TypeError: invalid arguments.
    """
    multiple = _check_int("multiple", multiple, 1)
    max_batch = _check_int("max_batch", max_batch, 1)
    device_count = _check_int("device_count", device_count, 1)
    margin = _check_margin(margin)
    cap = _round_down(max_batch, multiple)
    if cap < multiple:
        raise ValueError(f"{_FILE}: max_batch ({max_batch}) is below one multiple of {multiple}")
    first = min(_round_up(_check_int("start", start, 1), multiple), cap)

    results: dict[int, bool] = {}

    def trial(b: int) -> bool:
        results[b] = bool(fits(b))
        return results[b]

    if trial(first):
        best, fail = _double_until_fail(trial, first, cap)
    else:
        best, fail = _halve_until_fit(trial, first, multiple, results)
    while fail is not None and fail - best > multiple:
        mid = best + ((fail - best) // multiple // 2) * multiple
        if trial(mid):
            best = mid
        else:
            fail = mid
    return _trial_result(results, found=best, fail=fail, cap=cap, multiple=multiple,
                         margin=margin, device_count=device_count)


def _double_until_fail(trial: Callable[[int], bool], first: int,
                       cap: int) -> tuple[int, int | None]:
    """From a fitting ``first``: double until a batch fails or the cap fits.
    Returns ``(best, fail)`` (``fail`` None when the cap fit)."""
    best = first
    while best < cap:
        b = min(2 * best, cap)
        if not trial(b):
            return best, b
        best = b
    return best, None


def _halve_until_fit(trial: Callable[[int], bool], first: int, multiple: int,
                     results: dict[int, bool]) -> tuple[int, int]:
    """From a failing ``first``: halve (rounded down to ``multiple``) until a batch
    fits. Returns ``(best, fail)``.

    Raises:
      NoBatchFits: ``multiple`` itself failed.
    """
    fail = b = first
    while True:
        if b <= multiple:
            raise NoBatchFits(
                b, f"real steps at per-device batch {b} (the smallest multiple of "
                f"{multiple}) ran out of memory; tried {list(results)}")
        b = max(multiple, _round_down(b // 2, multiple))
        if trial(b):
            return b, fail
        fail = b


def _trial_result(results: dict[int, bool], *, found: int, fail: int | None, cap: int,
                  multiple: int, margin: float, device_count: int) -> BatchSearchResult:
    """The :class:`BatchSearchResult` of a trial search: ``found`` less the margin,
    rounded down to ``multiple`` but not below it."""
    chosen = max(multiple, _round_down(found * (1.0 - margin), multiple))
    global_batch = chosen * device_count
    beyond = f"batch {fail} ran out of memory" if fail is not None else f"capped at {cap}"
    reason = (
        f"per-device batch {chosen}: largest batch whose real steps ran was {found} "
        f"({beyond}), minus {margin:.0%} margin, rounded down to a multiple of "
        f"{multiple}; {len(results)} trials; global batch {global_batch} = {chosen} x "
        f"{device_count} device(s)")
    return BatchSearchResult(
        per_device_batch=chosen, device_count=device_count, global_batch=global_batch,
        multiple=multiple, predicted_bytes=None, prefetch_bytes=0, prefetch_bytes_per_image=0,
        usable_budget_bytes=None, budget_bytes=None, margin=margin,
        margin_reason=MARGIN_REASON, compilations=len(results),
        evaluations=tuple(BatchEvaluation(batch=b, bytes=None, total_bytes=None, fits=ok)
                          for b, ok in results.items()),
        fixed_bytes=None, bytes_per_image=None,
        limited_by="memory" if fail is not None else "max_batch", method=METHOD_TRIAL,
        reason=reason)


def next_smaller_batch(per_device_batch: int, multiple: int = 8) -> int:
    """The per-device batch to retry with after an out-of-memory error.

    Rule: keep 7/8 of the batch, rounded down to ``multiple``, but at least
    ``multiple`` and always strictly smaller: ``max(multiple, floor(b * 7/8 /
    multiple) * multiple)``, and ``b - multiple`` when rounding would not shrink it.
    E.g. 256 -> 224 -> 192 -> 168 -> 144 -> 120 -> 104 -> 88 -> 72 -> 56 -> 48 -> 40
    -> 32 -> 24 -> 16 -> 8. A 12.5% step (rather than halving, as HF Accelerate's
    ``find_executable_batch_size`` does) suits a batch that the search already put
    just under the budget: a run-time OOM there is an overrun of a few percent, so
    one or two steps recover it without giving up half the throughput.

    Args:
      per_device_batch: the batch that ran out of memory (images per device).
      multiple: granularity of the per-device batch.

    Returns:
      A smaller per-device batch, a multiple of ``multiple``.

    Raises:
      NoBatchFits: ``per_device_batch <= multiple``: it cannot go lower.
      ValueError / TypeError: non-positive or non-integer arguments.
    """
    b = _check_int("per_device_batch", per_device_batch, 1)
    m = _check_int("multiple", multiple, 1)
    if b <= m:
        raise NoBatchFits(
            b, f"per-device batch {b} ran out of memory and cannot step down below the "
            f"multiple {m}")
    new = _round_down(b * STEP_DOWN_FRACTION, m)
    if new >= b:
        new = _round_down(b - 1, m)
    return max(m, new)


def ran_out_of_memory(result: BatchSearchResult) -> BatchSearchResult:
    """``result`` after real steps at its per-device batch ran out of memory (the
    probe's step-rate run, in the probe's own process, where the allocator's
    fragmentation or a workspace the analysis did not count can still exceed a budget
    the analysis met): the batch steps down by :func:`next_smaller_batch`, the event
    is kept as a :class:`BatchVerification` that did not fit (no measurement), and the
    reason says so. The analysis bytes at the new batch are kept when they were
    measured (else ``predicted_bytes`` is None).

    Raises:
      NoBatchFits: the batch is already the smallest multiple.
    """
    b, m = result.per_device_batch, result.multiple
    new = next_smaller_batch(b, m)
    analysis = {e.batch: e.bytes for e in result.evaluations if e.bytes}
    prefetch = result.prefetch_bytes_per_image * new
    usable = (None if result.budget_bytes is None else
              _usable_bytes(result.budget_bytes, result.margin) - prefetch)
    event = BatchVerification(batch=b, analysis_bytes=int(analysis.get(b) or 0),
                              measured_bytes=None, need_bytes=None, fits=False, ratio=None)
    return dataclasses.replace(
        result, per_device_batch=new, global_batch=new * result.device_count,
        predicted_bytes=analysis.get(new), prefetch_bytes=prefetch,
        usable_budget_bytes=usable, limited_by="memory",
        verifications=result.verifications + (event,),
        reason=(f"per-device batch {new}: real steps at {b} ran out of memory in the probe, "
                f"so the batch stepped down by 7/8 (next_smaller_batch); before: "
                f"{result.reason}"))


def knee_batches(max_batch: int, *, multiple: int = 8, points: int = 5) -> tuple[int, ...]:
    """Per-device batches at which to time the step for the throughput knee:
    ``max_batch`` and its halvings, each rounded down to ``multiple``, at least
    ``multiple`` (or ``max_batch`` when that is smaller), at most ``points`` of them,
    ascending. E.g. 1024 -> (64, 128, 256, 512, 1024); 128 -> (8, 16, 32, 64, 128);
    200 -> (8, 24, 48, 96, 200).

    Raises:
      ValueError / TypeError: non-positive or non-integer arguments.
    """
    b = _check_int("max_batch", max_batch, 1)
    m = _check_int("multiple", multiple, 1)
    n = _check_int("points", points, 1)
    out = [b]
    while len(out) < n:
        nxt = _round_down(out[-1] / 2, m)
        if nxt < m or nxt >= out[-1]:
            break
        out.append(nxt)
    return tuple(sorted(set(out)))


_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_BUDGET_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*([A-Za-z]*)\s*$")


def parse_memory_budget(text: str | int) -> int:
    """Bytes in a memory size such as ``"8GiB"``, ``"512 MiB"``, ``"1.5GB"``, ``"4096"``.

    Units (case-insensitive): B, KB/MB/GB/TB (powers of 1000), KiB/MiB/GiB/TiB (powers
    of 1024); no unit means bytes. Fractions are rounded to the nearest byte. An
    ``int`` is taken as bytes.

    Raises:
      ValueError: not a positive number followed by one of those units (e.g. "8G" is
        refused as ambiguous between GB and GiB); the message quotes the input.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"{_FILE}: memory budget ({text}) must be positive")
        return text
    if not isinstance(text, str):
        raise ValueError(f"{_FILE}: memory budget must be a string like '8GiB', got {text!r}")
    match = _BUDGET_RE.match(text)
    units = ", ".join(["B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"])
    if not match:
        raise ValueError(
            f"{_FILE}: cannot read memory budget {text!r}: expected a number and a unit "
            f"({units}), e.g. '8GiB'")
    number, exponent, unit = match.groups()
    factor = _UNITS.get(unit.lower() if unit else "b")
    if factor is None:
        raise ValueError(
            f"{_FILE}: unknown unit {unit!r} in memory budget {text!r}; use one of {units}")
    value = float(number) * (10.0 ** int(exponent) if exponent else 1.0) * factor
    result = int(round(value))
    if result <= 0:
        raise ValueError(f"{_FILE}: memory budget {text!r} must be at least 1 byte")
    return result
