"""Tests for the verdict helpers of bench/batch_search.py (no JAX, no child process).

The script is loaded from its path with importlib (bench/ is not a package). Units:
MiB = 2**20 bytes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from autotune.batch_search import find_max_batch

MiB = 2**20
_PATH = Path(__file__).resolve().parents[1] / "bench" / "batch_search.py"
_spec = importlib.util.spec_from_file_location("bench_batch_search", _PATH)
bbs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bbs)


def test_usable_budget_is_the_searchs_usable_budget():
    # An affine model whose line crosses the usable budget exactly at batch 100: the
    # search keeps 100, so its usable budget is the helper's.
    budget, margin = 1000 * MiB, 0.10
    usable = bbs.usable_budget(budget, margin)
    assert usable == int(budget * 0.9)
    per_image, prefetch = 3 * MiB, 12_288
    fixed = usable - 100 * (per_image + prefetch)
    found = find_max_batch(lambda b: fixed + per_image * b, budget, multiple=1, margin=margin,
                           prefetch_bytes_per_image=prefetch, max_batch=1000)
    assert found.per_device_batch == 100
    assert found.prefetch_bytes + found.usable_budget_bytes == usable


def test_trial_fits_only_when_peak_plus_prefetch_within_usable():
    usable = 900 * MiB
    exact = bbs.trial_verdict(8, ran=True, peak_bytes=usable - 8 * 100,
                              prefetch_bytes_per_image=100, usable_bytes=usable)
    assert exact["fits"] and exact["need_bytes"] == usable and exact["prefetch_bytes"] == 800
    over = bbs.trial_verdict(8, ran=True, peak_bytes=usable - 8 * 100 + 1,
                             prefetch_bytes_per_image=100, usable_bytes=usable)
    assert not over["fits"] and over["need_bytes"] == usable + 1
    # The peak alone fits but the prefetch term pushes it over: the search's test.
    assert not bbs.trial_verdict(8, ran=True, peak_bytes=usable,
                                 prefetch_bytes_per_image=1, usable_bytes=usable)["fits"]


def test_trial_that_did_not_run_or_measured_nothing_does_not_fit():
    crashed = bbs.trial_verdict(64, ran=False, peak_bytes=None, prefetch_bytes_per_image=1,
                                usable_bytes=10**12)
    assert not crashed["fits"] and crashed["need_bytes"] is None
    blind = bbs.trial_verdict(64, ran=True, peak_bytes=None, prefetch_bytes_per_image=1,
                              usable_bytes=10**12)
    assert not blind["fits"] and "no peak" in blind["why"]


@pytest.mark.parametrize("pick,truth,within,above,goal", [
    (608, 608, True, False, True),
    (584, 608, True, False, True),     # 96.1%
    (576, 608, False, False, False),   # 94.7%: more than 5% below
    (616, 608, True, True, False),     # 101.3%: within 5% but above
    (656, 608, False, True, False),    # 107.9%: the old run
])
def test_compare_pick(pick, truth, within, above, goal):
    c = bbs.compare_pick(pick, truth)
    assert (c["within"], c["above"], c["goal_met"]) == (within, above, goal)
    assert c["ratio"] == pytest.approx(pick / truth)


def test_compare_pick_refuses_a_zero_truth():
    with pytest.raises(ValueError, match="must be > 0"):
        bbs.compare_pick(8, 0)


def test_verification_is_never_ok_above_the_budget():
    gib = 1024 * MiB
    # The old report: ok=True with a 1.08 GiB peak against a 1 GiB budget.
    assert not bbs.verification_verdict(ran=True, peak_bytes=int(1.08 * gib),
                                        budget_bytes=gib)["fits"]
    assert bbs.verification_verdict(ran=True, peak_bytes=gib, budget_bytes=gib)["fits"]
    assert not bbs.verification_verdict(ran=True, peak_bytes=None, budget_bytes=gib)["fits"]
    assert not bbs.verification_verdict(ran=False, peak_bytes=None, budget_bytes=gib)["fits"]
