"""Tests for autotune/batch_search.py: the search over fake memory models (no JAX).

Units: GiB = 2**30 bytes, MiB = 2**20 bytes. A "fake affine model" is
``fixed + per_image * b`` bytes; the search must find the largest multiple that fits
under ``floor(budget * (1 - margin))`` bytes, with few calls to the model.
"""

from __future__ import annotations

import math
import random

import pytest

from autotune.batch_search import (
    METHOD_MEMORY_ANALYSIS,
    METHOD_TRIAL,
    BatchSearchResult,
    MemoryAnalysisUnavailable,
    NoBatchFits,
    find_max_batch,
    find_max_batch_by_trial,
    next_smaller_batch,
    parse_memory_budget,
)

GiB = 2**30
MiB = 2**20


class CountingModel:
    """Wraps a bytes(b) function and records every call (each one is a compilation)."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[int] = []

    def __call__(self, b: int) -> int:
        self.calls.append(b)
        return self.fn(b)


def affine(fixed: int, per_image: int):
    return CountingModel(lambda b: fixed + per_image * b)


def usable(budget: int, margin: float = 0.10) -> int:
    return math.floor(budget * (1 - margin))


# --- the affine model, worked by hand ------------------------------------------------
#
# 2 GiB fixed + 30 MiB per image, budget 16 GiB, margin 10%:
#   usable = 16 GiB x 0.9 = 14.4 GiB = 14745.6 MiB
#   b <= (14745.6 - 2048) / 30 = 423.25  -> 423 images -> multiple of 8: 416
#   check 416: 2048 + 416*30 = 14528 MiB <= 14745.6   fits
#   check 424: 2048 + 424*30 = 14768 MiB >  14745.6   does not fit
# margin 0:  (16384 - 2048) / 30 = 477.9 -> 472 (480: 2048 + 14400 = 16448 > 16384)
# multiple 1:  423 (424 needs 14768 MiB > 14745.6)
# multiple 32: 423 -> 416 = 13 x 32 (448: 2048 + 13440 = 15488 > 14745.6)
# prefetch: depth 4 x one float32 224x224x3 image (602,112 B) = 2,408,448 B per image:
#   per image 31,457,280 + 2,408,448 = 33,865,728 B; usable 15,461,882,265 B
#   b <= (15,461,882,265 - 2,147,483,648) / 33,865,728 = 393.2 -> 392
#   check 400: 2,147,483,648 + 400 x 33,865,728 = 15,693,774,848 > usable
@pytest.mark.parametrize(
    "margin, multiple, prefetch, expected",
    [
        (0.10, 8, 0, 416),
        (0.0, 8, 0, 472),
        (0.10, 1, 0, 423),
        (0.10, 32, 0, 416),
        (0.10, 8, 4 * 602_112, 392),
    ],
)
def test_affine_model_hand_worked(margin, multiple, prefetch, expected):
    model = affine(2 * GiB, 30 * MiB)
    r = find_max_batch(model, 16 * GiB, multiple=multiple, margin=margin,
                       prefetch_bytes_per_image=prefetch)
    assert r.per_device_batch == expected
    assert r.per_device_batch % multiple == 0
    # Never over budget, and the next multiple was measured and does not fit.
    limit = usable(16 * GiB, margin)
    assert model.fn(expected) + prefetch * expected <= limit
    nxt = expected + multiple
    assert model.fn(nxt) + prefetch * nxt > limit
    assert any(e.batch == nxt and not e.fits for e in r.evaluations)
    # Affine: two points fix the line, one call at the prediction, one to prove it max.
    assert r.compilations == len(model.calls) <= 4
    assert r.limited_by == "memory"
    assert r.method == METHOD_MEMORY_ANALYSIS
    assert r.predicted_bytes == model.fn(expected)
    assert r.prefetch_bytes == prefetch * expected
    assert r.usable_budget_bytes == limit - prefetch * expected
    # The fitted line recovers the model (fixed 2 GiB, 30 MiB per image).
    assert r.fixed_bytes == pytest.approx(2 * GiB, rel=1e-6)
    assert r.bytes_per_image == pytest.approx(30 * MiB, rel=1e-6)


def test_prefetch_reduces_the_batch():
    without = find_max_batch(affine(2 * GiB, 30 * MiB), 16 * GiB)
    with_prefetch = find_max_batch(affine(2 * GiB, 30 * MiB), 16 * GiB,
                                   prefetch_bytes_per_image=4 * 602_112)
    assert with_prefetch.per_device_batch < without.per_device_batch
    assert "prefetch" in with_prefetch.reason


def test_reason_and_global_batch():
    # Same hand-worked model on 8 devices: global batch 416 x 8 = 3328.
    r = find_max_batch(affine(2 * GiB, 30 * MiB), 16 * GiB, device_count=8)
    assert r.global_batch == 3328 and r.global_batch % 8 == 0
    assert r.reason.startswith("per-device batch 416: ")
    assert "16.00 GiB x 0.90" in r.reason and "3328 = 416 x 8" in r.reason
    assert "fragmentation" in r.margin_reason and "BFC" in r.margin_reason
    assert r.margin == 0.10


def test_result_round_trips_through_json():
    r = find_max_batch(affine(2 * GiB, 30 * MiB), 16 * GiB, prefetch_bytes_per_image=301_056)
    assert BatchSearchResult.from_json(r.to_json()) == r


# --- smooth but curved: still few compilations ---------------------------------------
#
# 2 GiB + 30 MiB*b + 0.001 MiB*b^2, budget 40 GiB, margin 10%: usable 36864 MiB
#   0.001 b^2 + 30 b - 34816 <= 0  ->  b <= (-30 + sqrt(900 + 139.264)) / 0.002
#   = (-30 + 32.2376) / 0.002 = 1118.8 -> 1112
#   check 1120: 2048 + 33600 + 1254.4 = 36902.4 MiB > 36864
def test_smooth_convex_model_few_compilations():
    model = CountingModel(lambda b: int(2 * GiB + 30 * MiB * b + 0.001 * MiB * b * b))
    r = find_max_batch(model, 40 * GiB)
    assert r.per_device_batch == 1112
    assert r.compilations <= 6


@pytest.mark.parametrize("curvature", [0.0005, 0.001, 0.002, 0.005])
@pytest.mark.parametrize("budget_gib", [16, 40, 80])
def test_smooth_models_at_most_six_compilations(curvature, budget_gib):
    model = CountingModel(lambda b: int(2 * GiB + 30 * MiB * b + curvature * MiB * b * b))
    r = find_max_batch(model, budget_gib * GiB, max_batch=8192)
    brute = max(b for b in range(8, 8193, 8) if model.fn(b) <= usable(budget_gib * GiB))
    assert r.per_device_batch == brute
    assert r.compilations <= 6


# --- step jumps, staircases, non-monotone: never over budget -------------------------

def _brute_force(fn, limit, multiple, cap, prefetch=0):
    fitting = [b for b in range(multiple, cap + 1, multiple) if fn(b) + prefetch * b <= limit]
    return max(fitting) if fitting else None


@pytest.mark.parametrize("seed", range(40))
def test_random_monotone_step_models_match_brute_force(seed):
    rng = random.Random(seed)
    fixed = rng.uniform(0.2, 6) * GiB
    per = rng.uniform(2, 80) * MiB
    jumps = sorted(rng.sample(range(1, 2048), rng.randint(1, 5)))   # e.g. XLA switching
    sizes = [rng.uniform(0.05, 2) * GiB for _ in jumps]             # algorithms/remat
    chunk = rng.choice([1, 64 * MiB, 256 * MiB])                     # staircase rounding

    def fn(b):
        v = fixed + per * b + sum(s for j, s in zip(jumps, sizes) if b >= j)
        return int(math.ceil(v / chunk) * chunk)

    budget = int(rng.uniform(6, 80) * GiB)
    multiple = rng.choice([1, 8, 16])
    cap = 2048
    model = CountingModel(fn)
    brute = _brute_force(fn, usable(budget), multiple, cap)
    if brute is None:
        with pytest.raises(NoBatchFits):
            find_max_batch(model, budget, multiple=multiple, max_batch=cap)
        return
    r = find_max_batch(model, budget, multiple=multiple, max_batch=cap)
    assert r.per_device_batch == brute
    assert fn(r.per_device_batch) <= usable(budget)
    # Bounded like a bisection over cap/multiple candidates, with room for the fit.
    assert r.compilations <= 2 * math.ceil(math.log2(cap // multiple)) + 4
    batches = [e.batch for e in r.evaluations]
    assert len(batches) == len(set(batches)), "a batch was compiled twice"
    assert all(b % multiple == 0 for b in batches)


def test_jump_right_above_the_affine_prediction():
    # Affine prediction says 416 (as above), but a 1 GiB workspace jump starts at 400:
    #   b < 400: 2048 + 30 b MiB;  b >= 400: 3072 + 30 b MiB.
    #   Under 14745.6 MiB: 392 -> 2048 + 11760 = 13808 fits; 400 -> 3072 + 12000 =
    #   15072 does not; so the answer is 392 (the jump makes everything >= 400 fail).
    model = CountingModel(lambda b: 2 * GiB + 30 * MiB * b + (GiB if b >= 400 else 0))
    r = find_max_batch(model, 16 * GiB)
    assert r.per_device_batch == 392
    assert model.fn(392) <= usable(16 * GiB)
    assert r.compilations <= 8


@pytest.mark.parametrize("seed", range(20))
def test_non_monotone_model_never_returns_an_over_budget_batch(seed):
    rng = random.Random(1000 + seed)
    spikes = set(rng.sample(range(8, 4096, 8), 60))   # batches where XLA does worse

    def fn(b):
        base = GiB + 20 * MiB * b
        return base + (3 * GiB if b in spikes else 0) - (200 * MiB if b % 64 == 0 else 0)

    model = CountingModel(fn)
    r = find_max_batch(model, 40 * GiB, max_batch=4096)
    assert fn(r.per_device_batch) <= usable(40 * GiB)
    assert r.evaluations[-1].batch in model.calls
    measured = {e.batch: e.bytes for e in r.evaluations}
    assert measured[r.per_device_batch] == fn(r.per_device_batch)


# --- caps, lo/hi, rounding ------------------------------------------------------------

def test_cap_reached_when_everything_fits():
    # 100 MiB + 1 MiB/image never reaches 14.4 GiB below 1000 images: 100 + 1000 =
    # 1100 MiB. max_batch 1000 = 125 x 8 is the answer: measure 8, 32, then the line
    # predicts far beyond, clamped to 1000, which fits: 3 compilations.
    model = affine(100 * MiB, 1 * MiB)
    r = find_max_batch(model, 16 * GiB, max_batch=1000)
    assert r.per_device_batch == 1000 and r.limited_by == "max_batch"
    assert r.compilations == 3
    assert "capped" in r.reason


def test_hi_caps_and_rounds_down_to_the_multiple():
    # hi 300 -> cap 296 (multiple of 8); the affine model fits up to 416, so 296.
    r = find_max_batch(affine(2 * GiB, 30 * MiB), 16 * GiB, hi=300)
    assert r.per_device_batch == 296 and r.limited_by == "max_batch"


def test_lo_rounds_up_and_starts_there():
    model = affine(2 * GiB, 30 * MiB)
    r = find_max_batch(model, 16 * GiB, lo=20)
    assert model.calls[0] == 24       # 20 rounded up to a multiple of 8
    assert model.calls[1] == 96       # second point at 4x the first
    assert r.per_device_batch == 416


def test_no_batch_fits():
    # 20 GiB of parameters alone exceed 14.4 GiB usable.
    with pytest.raises(NoBatchFits, match="per-device batch 8 needs"):
        find_max_batch(affine(20 * GiB, MiB), 16 * GiB)


@pytest.mark.parametrize("bad", [None, 0, -1])
def test_memory_analysis_unavailable_on_first_call(bad):
    with pytest.raises(MemoryAnalysisUnavailable) as info:
        find_max_batch(lambda b: bad, 16 * GiB)
    assert info.value.batch == 8 and info.value.value == bad
    assert "find_max_batch_by_trial" in str(info.value)


def test_memory_analysis_unavailable_later():
    # Some backends report real numbers for tiny programs and zeros for others.
    with pytest.raises(MemoryAnalysisUnavailable) as info:
        find_max_batch(lambda b: GiB if b == 8 else 0, 16 * GiB)
    assert info.value.batch == 32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"margin": 1.0}, "margin"),
        ({"margin": -0.1}, "margin"),
        ({"multiple": 0}, "multiple"),
        ({"lo": 100, "max_batch": 64}, "exceeds the batch cap"),
        ({"max_batch": 4}, "below one multiple"),
        ({"prefetch_bytes_per_image": -1}, "prefetch"),
        ({"device_count": 0}, "device_count"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        find_max_batch(affine(GiB, MiB), 16 * GiB, **kwargs)


def test_invalid_budget():
    with pytest.raises(ValueError, match="budget_bytes"):
        find_max_batch(affine(GiB, MiB), 0)


# --- trial search (fallback: real steps in a child process) ---------------------------

def test_trial_search_doubling_then_bisection():
    # Fits iff b <= 300. From 32: 32 ok, 64 ok, 128 ok, 256 ok, 512 OOM; bisect on
    # multiples of 8 between 256 and 512: 384 OOM, 320 OOM, 288 ok, 304 OOM, 296 ok
    # -> 296 (304 failed). 10 trials. Margin 0 keeps 296.
    tried = []

    def fits(b):
        tried.append(b)
        return b <= 300

    r = find_max_batch_by_trial(fits, start=32, multiple=8, max_batch=4096, margin=0.0)
    assert tried == [32, 64, 128, 256, 512, 384, 320, 288, 304, 296]
    assert r.per_device_batch == 296 and r.compilations == 10
    assert r.method == METHOD_TRIAL and r.limited_by == "memory"
    assert r.predicted_bytes is None and r.budget_bytes is None


def test_trial_search_applies_the_margin_to_the_batch():
    # Found 296 as above; 10% margin: 296 x 0.9 = 266.4 -> multiple of 8: 264.
    r = find_max_batch_by_trial(lambda b: b <= 300, start=32, multiple=8, max_batch=4096)
    assert r.per_device_batch == 264
    assert "296" in r.reason


def test_trial_search_start_too_big_halves_first():
    # Fits iff b <= 20. From 64: 64 OOM, 32 OOM, 16 ok; bisect (16, 32): 24 OOM -> 16.
    tried = []

    def fits(b):
        tried.append(b)
        return b <= 20

    r = find_max_batch_by_trial(fits, start=64, multiple=8, max_batch=4096, margin=0.0)
    assert tried == [64, 32, 16, 24]
    assert r.per_device_batch == 16


def test_trial_search_cap_and_nothing_fits():
    r = find_max_batch_by_trial(lambda b: True, start=64, multiple=8, max_batch=512,
                                margin=0.0, device_count=4)
    assert r.per_device_batch == 512 and r.limited_by == "max_batch"
    assert [e.batch for e in r.evaluations] == [64, 128, 256, 512]
    assert r.global_batch == 2048
    with pytest.raises(NoBatchFits):
        find_max_batch_by_trial(lambda b: False, start=64, multiple=8)


# --- OOM step-down --------------------------------------------------------------------

def test_next_smaller_batch_chain_from_256():
    # 7/8 rounded down to 8: 256*7/8 = 224; 224 -> 196 -> 192; 192 -> 168;
    # 168 -> 147 -> 144; ... 24 -> 21 -> 16; 16 -> 14 -> 8; 8 cannot go lower.
    chain = [256]
    while True:
        try:
            chain.append(next_smaller_batch(chain[-1], 8))
        except NoBatchFits:
            break
    assert chain == [256, 224, 192, 168, 144, 120, 104, 88, 72, 56, 48, 40, 32, 24, 16, 8]


@pytest.mark.parametrize(
    "batch, multiple, expected",
    [
        (9, 8, 8),        # 7.9 -> 0 -> at least the multiple
        (12, 8, 8),       # 10.5 -> 8
        (100, 1, 87),     # 87.5 -> 87
        (2, 1, 1),        # 1.75 -> 1
        (64, 32, 32),     # 56 -> 32
        (7, 1, 6),        # 6.125 -> 6
    ],
)
def test_next_smaller_batch_table(batch, multiple, expected):
    assert next_smaller_batch(batch, multiple) == expected


@pytest.mark.parametrize("batch, multiple", [(8, 8), (4, 8), (1, 1), (32, 32)])
def test_next_smaller_batch_cannot_go_lower(batch, multiple):
    with pytest.raises(NoBatchFits, match="cannot step down"):
        next_smaller_batch(batch, multiple)


# --- --memory-budget parsing ----------------------------------------------------------

@pytest.mark.parametrize(
    "text, expected",
    [
        ("8GiB", 8 * 2**30),
        ("8 GiB", 8 * 2**30),
        ("512MiB", 512 * 2**20),
        ("2KiB", 2048),
        ("1TiB", 2**40),
        ("1.5GB", 1_500_000_000),
        ("100KB", 100_000),
        ("3MB", 3_000_000),
        ("1tb", 10**12),
        ("0.5gib", 2**29),
        ("4096", 4096),
        ("4096B", 4096),
        ("1e3MB", 10**9),
        (12345, 12345),
    ],
)
def test_parse_memory_budget(text, expected):
    assert parse_memory_budget(text) == expected


@pytest.mark.parametrize("text", ["", "8G", "abc", "-1GiB", "0GiB", "8 GiBs", "GiB", "1.2.3GB"])
def test_parse_memory_budget_rejects(text):
    with pytest.raises(ValueError, match="memory budget|unit"):
        parse_memory_budget(text)


def test_format_bytes():
    from autotune.fmt import fmt_bytes  # the one byte formatter the messages use

    assert fmt_bytes(61.2 * GiB, 2) == "61.20 GiB"
    assert fmt_bytes(300 * MiB, 2) == "300.00 MiB"
    assert fmt_bytes(512, 2) == "512 B"


# --- verify_max_batch: real steps against the analysis --------------------------------
#
# The analysis model: 2 GiB fixed + 30 MiB per image, budget 16 GiB, margin 10%, no
# prefetch: the analysis search picks 416 (worked above). usable = 14745.6 MiB.

from autotune.batch_search import BatchVerification, ran_out_of_memory, verify_max_batch  # noqa: E402


def _found_416():
    model = affine(2 * GiB, 30 * MiB)
    return find_max_batch(model, 16 * GiB, multiple=8), model


def test_verify_keeps_the_pick_when_the_steps_fit_it():
    found, model = _found_416()
    trials = CountingModel(lambda b: 2 * GiB + 30 * MiB * b)  # measured = analysis
    got = verify_max_batch(found, model, trials)
    assert trials.calls == [416]
    assert got.per_device_batch == 416
    assert got.verifications == (BatchVerification(
        batch=416, analysis_bytes=(2048 + 416 * 30) * MiB,
        measured_bytes=(2048 + 416 * 30) * MiB, need_bytes=(2048 + 416 * 30) * MiB,
        fits=True, ratio=1.0),)
    assert got.calibration == 1.0
    assert got.compilations == found.compilations  # no new compilation


def test_verify_recalibrates_below_an_analysis_that_undercounts():
    # The steps use 1.25x the analysis from batch 320 up (a backend's scratch that
    # the buffer analysis does not see), 1.05x below.
    #   416: 1.25 x 14528 = 18160 MiB > 14745.6            fails; calibration 1.25
    #   re-search on 1.25 x analysis: 1.25 (2048 + 30 b) <= 14745.6 -> b <= 324.9 -> 320
    #   320: 1.25 x (2048 + 9600) = 14560 MiB <= 14745.6   fits
    #   320 >= 0.95 x 408 (the largest batch below the failure)? 320 < 387.6: bracket
    #   line through the needs (320, 14560) and (416, 18160): 37.5 MiB per image,
    #   meets 14745.6 at 320 + 185.6 / 37.5 = 324.9 -> 320, so the next multiple: 328
    #   328: 1.25 x 11888 = 14860 > 14745.6              fails; 320 >= 0.95 x 320: done
    found, model = _found_416()
    trials = CountingModel(lambda b: int((2 * GiB + 30 * MiB * b) * (1.25 if b >= 320 else 1.05)))
    got = verify_max_batch(found, model, trials)
    assert trials.calls == [416, 320, 328]
    assert got.per_device_batch == 320
    assert got.calibration == 1.25
    assert [c.fits for c in got.verifications] == [False, True, False]
    assert got.limited_by == "memory"
    assert "the analysis alone picked 416" in got.reason
    # The truth by brute force over every multiple: 320 as well (never above it).
    truth = max(b for b in range(8, 2049, 8) if trials.fn(b) <= usable(16 * GiB))
    assert got.per_device_batch == truth == 320
    assert BatchSearchResult.from_dict(got.to_dict()) == got


def test_verify_steps_down_after_steps_that_did_not_run():
    # 416 runs out of memory (no measurement): next_smaller_batch(416) = 360 (7/8),
    # which fits; 360 < 0.95 x 408: the midpoint of 360..408 on multiples of 8 is 384,
    # which fits; 384 < 387.6, midpoint of 384..408 is 392: fails; 384 >= 0.95 x 384.
    found, model = _found_416()

    def measured(b):
        return None if b >= 392 else 2 * GiB + 30 * MiB * b

    trials = CountingModel(measured)
    got = verify_max_batch(found, model, trials)
    assert trials.calls == [416, 360, 384, 392]
    assert got.per_device_batch == 384
    assert got.verifications[0].measured_bytes is None and not got.verifications[0].fits


def test_verify_raises_when_no_trial_fits_and_stops_at_max_trials():
    found, model = _found_416()
    with pytest.raises(NoBatchFits, match="real steps fit at none"):
        verify_max_batch(found, model, lambda b: None, max_trials=3)
    trials = CountingModel(lambda b: None)
    with pytest.raises(NoBatchFits):
        verify_max_batch(found, model, trials, max_trials=2)
    assert len(trials.calls) == 2


def test_verify_refuses_a_trial_search_result():
    found = find_max_batch_by_trial(lambda b: b <= 64, start=32, margin=0.0)
    with pytest.raises(ValueError, match="needs a find_max_batch result"):
        verify_max_batch(found, lambda b: 1, lambda b: 1)


def test_a_result_saved_before_verification_existed_still_loads():
    found, _ = _found_416()
    data = found.to_dict()
    del data["verifications"], data["calibration"]
    back = BatchSearchResult.from_dict(data)
    assert back.verifications == () and back.calibration == 1.0


def test_the_cpu_probe_verifies_its_pick_in_child_processes(monkeypatch):
    # autotune.orchestrate._verify_on_cpu: each trial is a child's measured peak; a
    # child that did not run is no measurement. The fake children measure 1.25x the
    # analysis from 320 up: the same trials as the worked example above.
    from autotune import orchestrate
    from probes import step_child
    from probes.records import ChildStepResult

    found, model = _found_416()
    calls = []

    def fake_child(config, b, *, steps, **_):
        calls.append((config, b, steps))
        peak = int((2 * GiB + 30 * MiB * b) * (1.25 if b >= 320 else 1.05))
        return ChildStepResult(per_device_batch=b, ok=True, oom=False, peak_bytes=peak,
                               peak_source="test", step_s=0.1, error="")

    monkeypatch.setattr(step_child, "run_steps_in_child", fake_child)
    said = []
    got = orchestrate._verify_on_cpu(found, model, "the config", said.append)
    assert [b for _, b, _ in calls] == [416, 320, 328]
    assert all(c == "the config" and s == orchestrate.VERIFY_STEPS for c, _, s in calls)
    assert got.per_device_batch == 320 and len(said) == 3


def test_ran_out_of_memory_steps_the_pick_down_by_seven_eighths():
    # The pick 416 (worked above) ran out of memory for real: 416 x 7/8 = 364 -> 360.
    found, _ = _found_416()
    got = ran_out_of_memory(found)
    assert (got.per_device_batch, got.global_batch, got.limited_by) == (360, 360, "memory")
    assert got.verifications == (BatchVerification(batch=416, analysis_bytes=(2048 + 416 * 30) * MiB,
                                                   measured_bytes=None, need_bytes=None,
                                                   fits=False, ratio=None),)
    assert got.predicted_bytes is None  # 360 was never compiled
    assert got.usable_budget_bytes == usable(16 * GiB)  # no prefetch term here
    assert got.reason.startswith("per-device batch 360: real steps at 416 ran out of memory")
    again = ran_out_of_memory(got)
    assert again.per_device_batch == 312 and len(again.verifications) == 2
    small = find_max_batch(affine(0, 1), 8 * 9, multiple=8, max_batch=8)
    with pytest.raises(NoBatchFits):
        ran_out_of_memory(small)


def test_the_probe_steps_down_when_the_rate_run_runs_out_of_memory(monkeypatch):
    # autotune.orchestrate._measure_rates: the rate curve's real steps at the pick run
    # out of memory twice (416 -> 360 -> 312), then fit; any other error is raised.
    from autotune import orchestrate
    from probes import accelerator

    found, _ = _found_416()
    runs = []

    def fake_probe(config, *, curve_batches=(), **_):
        runs.append((config.per_device_batch, curve_batches))
        if config.per_device_batch > 320:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return "report"

    monkeypatch.setattr(accelerator, "probe_accelerator", fake_probe)
    said = []
    config = orchestrate.TrainConfig(arch="resnet_tiny", per_device_batch=8)
    search, acc = orchestrate._measure_rates(found, 416, config, None, True, said.append)
    assert acc == "report" and search.per_device_batch == 312
    assert [b for b, _ in runs] == [416, 360, 312] and runs[-1][1][-1] == 312
    assert sum("ran out of memory" in s for s in said) == 2

    def broken(config, **_):
        raise RuntimeError("INTERNAL: something else")

    monkeypatch.setattr(accelerator, "probe_accelerator", broken)
    with pytest.raises(RuntimeError, match="something else"):
        orchestrate._measure_rates(found, 416, config, None, True, said.append)
