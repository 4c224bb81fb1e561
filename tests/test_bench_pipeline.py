"""Tests for the table arithmetic of bench/pipeline.py (no decode, no child process).

The script is loaded from its path with importlib (bench/ is not a package).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "pipeline.py"
_spec = importlib.util.spec_from_file_location("bench_pipeline", _PATH)
bp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bp)


def _point(rnd, method, threads, images, seconds, cpu):
    return {"round": rnd, "method": method, "threads": threads, "images": images,
            "seconds": seconds, "cpu_seconds": cpu, "decode_cpu_us": 900.0,
            "resize_flip_cpu_us": 100.0}


def test_two_thread_rows_against_1_thread_x_t_and_against_the_decoder_on_t_threads():
    # round 0: ceiling 1,000 img/s on 1 thread; decoder on 2 threads 1,800; pipeline 1,620.
    # round 1: ceiling 1,000; decoder on 2 threads 1,900; pipeline 1,710.
    points = [_point(0, "ceiling", 1, 1000, 1.0, 1.0), _point(1, "ceiling", 1, 1000, 1.0, 1.0),
              _point(0, "ceiling@T", 2, 1800, 1.0, 2.0), _point(1, "ceiling@T", 2, 1900, 1.0, 2.0),
              _point(0, "autotune", 2, 1620, 1.0, 2.0), _point(1, "autotune", 2, 1710, 1.0, 1.9)]
    rows = {(r["method"], r["threads"]): r for r in bp.summarise(points, [2])}
    a = rows[("autotune", 2)]
    assert a["images_per_s"] == pytest.approx(1665)  # median of 1,620 and 1,710
    assert a["pct_ceiling"] == pytest.approx(100 * 1665 / 2000)  # 1 thread x 2: 83.25%
    assert a["pct_decoder_at_t"] == pytest.approx(100 * 1665 / 1850)  # 90%
    assert a["paired_pct_decoder_at_t"] == pytest.approx(90.0)  # 1620/1800 and 1710/1900
    assert a["eff_pct_decoder_at_t"] == pytest.approx(100 * ((810 + 900) / 2) / 925)
    goals = {g["goal"].split(" (")[0]: g for g in bp.check_goals(list(rows.values()))}
    assert goals["autotune / its ceiling"]["pass"] is False
    on_t = goals["autotune / its decode + resize measured on T threads"]
    assert on_t["pass"] is True and on_t["unit"] == "%"


def test_no_decoder_row_on_one_thread():
    points = [_point(0, "ceiling", 1, 1000, 1.0, 1.0), _point(0, "autotune", 1, 930, 1.0, 1.0)]
    (row,) = [r for r in bp.summarise(points, [1]) if r["method"] == "autotune"]
    assert row["pct_ceiling"] == pytest.approx(93.0) and row["pct_decoder_at_t"] is None
    assert [g["goal"] for g in bp.check_goals([row]) if "ceiling" in g["goal"] or "T threads" in g["goal"]] == ["autotune / its ceiling"]
