"""Tests for autotune/fmt.py, autotune/charts.py and autotune/render.py: number
formatting, the text charts, and the static views of records (probe with its stall
attribution, plan, pack, summary, a saved run)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from autotune import charts, fmt, render, runs
from probes.stall import attribute
from run_fixtures import (GiB, make_pack, make_plan, make_probe, make_summary, to_text,
                          write_full_run, write_run)


# ---------------------------------------------------------------- formatting


def test_formatters_carry_units():
    assert fmt.fmt_bytes(1536) == "1.5 KiB"
    assert fmt.fmt_bytes(3 * GiB) == "3.0 GiB"
    assert fmt.fmt_bytes(None) == "-"
    assert fmt.fmt_num(1234.4, "img/s") == "1,234 img/s"
    assert fmt.fmt_num(12.34, "ms") == "12.3 ms"
    assert fmt.fmt_num(1.234, "s") == "1.23 s"
    assert fmt.fmt_num(4.56, "%", 1) == "4.6%"
    assert fmt.fmt_num(float("nan"), "img/s") == "-"
    assert fmt.fmt_secs(3723) == "1h02m03s"
    assert fmt.fmt_secs(65) == "1m05s"
    assert fmt.fmt_secs(float("inf")) == "-"
    assert fmt.fmt_pct(0.4567) == "45.7%"
    assert fmt.fmt_ms(0.0205) == "20.5 ms" and fmt.fmt_ms(None) == "-"


def test_one_byte_formatter_for_every_view():
    # The renderers' default (1 decimal), the batch search's reasons (2 decimals) and
    # the planner's fixed MiB, all from fmt_bytes.
    assert fmt.fmt_bytes(61.2 * GiB, 2) == "61.20 GiB"
    assert fmt.fmt_bytes(300 * 2**20, 2) == "300.00 MiB"
    assert fmt.fmt_bytes(512) == "512 B" and fmt.fmt_bytes(512, 2) == "512 B"
    assert fmt.fmt_bytes(0.5) == "0 B"
    assert fmt.fmt_bytes(3 * GiB, unit="MiB") == "3,072.0 MiB"
    assert fmt.fmt_bytes(float("nan"), unit="MiB") == "-"
    with pytest.raises(ValueError, match="byte unit 'MB'"):
        fmt.fmt_bytes(1, unit="MB")


@pytest.mark.parametrize("value, unit, scale, shown", [
    (None, "s", 1, "-"), (True, "", 1, "yes"), (float("nan"), "%", 1, "-"),
    (3723.0, "s", 1, "1h02m03s"), (99.837, "$", 1, "$99.84"), (1234, "img/s", 1, "1,234 img/s"),
    (0.7, "%", 100, "70.0%"), (0.2048, "ms", 1e3, "205 ms"), ("random", "", 1, "random"),
])
def test_fmt_value_as_tables_show_figures(value, unit, scale, shown):
    assert fmt.fmt_value(value, unit, scale) == shown


def test_format_change_words():
    d = dataclasses.make_dataclass("D", ["delta", "delta_pct", "unit", "verdict"])
    assert fmt.format_change(d(2000.0, 20.0, "img/s", "better")) == "+20.0% better"
    assert fmt.format_change(d(-5.0, -50.0, "%", "worse")) == "-5.0 pp worse"
    assert fmt.format_change(d(None, None, "", "changed")) == "changed"
    assert fmt.format_change(d(0.0, 0.0, "ms", "same")) == ""
    assert fmt.format_delta(d(1.0, None, "", "changed")) == "+1"


# ---------------------------------------------------------------- charts


def test_hbar_chart_scales_bars_and_draws_the_marker():
    text = charts.hbar_chart([("a", 50.0, "50 img/s"), ("bb", 100.0, "100 img/s")], width=20,
                             marker=25.0, marker_label="step rate 25 img/s").plain
    lines = text.splitlines()
    # 50 of 100 over 20 cells = 10 cells; the marker at 25/100 x 20 = column 5.
    assert lines[0].startswith(" a █████┃████ ")
    assert lines[1].startswith("bb █████┃██████████████ ")
    assert lines[0].endswith("50 img/s") and lines[1].endswith("100 img/s")
    assert lines[2] == " " * 8 + "┗ step rate 25 img/s"


def test_hbar_chart_partial_blocks_and_no_marker():
    text = charts.hbar_chart([("x", 10.0, ""), ("y", 1.0, ""), ("z", 0.0, "")], width=8).plain
    lines = text.splitlines()
    assert lines[0].startswith("x ████████")
    assert lines[1].startswith("y ▊")  # 1/10 x 8 = 0.8 cell
    assert lines[2].strip() == "z"
    assert "┃" not in text


def test_column_chart_reference_line_labels_and_clipping():
    values = [100.0] * 9 + [1000.0]  # one outlier
    text = charts.column_chart(values, height=4, width=10, ref=120.0, ref_label="plan 120 img/s",
                               unit="img/s", x_labels=("step 1", "step 10")).plain
    lines = text.splitlines()
    # Scaled to 1.5 x max(p90 = 100, ref = 120) = 180, the outlier clipped with an arrow.
    assert lines[0].startswith("180 ┤") and lines[0].endswith("↑ img/s (↑ 1 above, up to 1,000 img/s)")
    assert any(ln.endswith("╌ plan 120 img/s") for ln in lines)
    assert lines[3].startswith("  0 ┤")
    assert lines[-1].strip().startswith("step 1") and lines[-1].endswith("step 10")
    assert charts.column_chart([], ref=1.0).plain.strip() == "(no data)"


def test_column_chart_averages_long_series_into_columns():
    text = charts.column_chart([0.0, 10.0] * 50, height=2, width=10, vmax=10.0).plain
    bars = text.splitlines()[-1].split("┤")[1]
    assert len(bars) == 10  # 100 values averaged into 10 columns (5 each, half height)


# ---------------------------------------------------------------- records


def test_render_probe_plan_pack_summary():
    text = to_text(render.render_probe(make_probe()))
    for needle in ("NVML ok: 8 GPU(s)", "GPU 7", "80.0 GiB", "sequential 1 MiB", "3,040 MB/s",
                   "random record x8", "5,200 img/s", "train step rate 12,000 img/s",
                   "12,000 img/s at per-device batch 256"):
        assert needle in text, needle
    text = to_text(render.render_plan(make_plan()))
    assert "Plan (resnet50): predicted 12,000 img/s, bottleneck compute" in text
    assert "decode_threads" in text and "covers the step" in text  # value and reason
    text = to_text(render.render_pack(make_pack()))
    assert "1,281,034 in = 1,281,024 packed + 10 skipped" in text
    text = to_text(render.render_summary(make_summary(stall=1.0, host_wait=30.0), make_plan()),
                   120)
    assert "status           completed " in text
    assert "10,000 img/s (1,250 img/s per device, 8 devices, 1 hosts)" in text
    assert ("data stall       1.0% of step time accelerators idle for input (on-device input: "
            "10,101 img/s)") in text
    assert "host wait        30.0% of wall time waiting for the next batch" in text
    assert "skipped steps    0 (non-finite loss or gradient)" in text
    assert "plan predicted   12,000 img/s (bottleneck compute)" in text
    assert "held-out top-1   70.00%" in text


def test_render_pack_shows_the_bytes_the_resize_saved():
    pack = dataclasses.replace(make_pack(), resize_shorter=256, bytes_out=35 * GiB)
    assert runs.pack_saved_fraction(pack) == pytest.approx(0.75)
    text = to_text(render.render_pack(pack), 120)
    assert "140.0 GiB in -> 35.0 GiB stored (shorter side 256 px, 75% saved)" in text


def test_render_stall_attribution_of_probe_stall():
    # 1 / 1000 s per image on the device, 1 / 500 cached, 1 / 200 cold (ms: 1, 2, 5):
    # compute 1 / 5 = 20%, preprocessing (2 - 1) / 5 = 20%, fetch (5 - 2) / 5 = 60%.
    stall = attribute(1000.0, 500.0, 200.0, steps=30)
    text = to_text(render.render_stall(stall), 120)
    for needle in ("Data stall attribution (30 steps per run, DS-Analyzer)",
                   "compute only   1,000 img/s (synthetic input on the device)",
                   "cached input   500 img/s (real input, page cache warm)",
                   "cold input     200 img/s (real input, page cache dropped)",
                   "bottleneck     fetch",
                   "            compute ████████████",
                   "preprocessing stall ████████████",
                   "        fetch stall ████████████████████████████████████ 60.0%"):
        assert needle in text, needle
    warm = to_text(render.render_stall(dataclasses.replace(stall, cache_dropped=False)), 120)
    assert "the page cache could not be dropped" in warm
    # The probe report shows it when the probe ran with --stall, and so does a saved run.
    assert "Data stall attribution" not in to_text(render.render_probe(make_probe()), 120)
    probe = dataclasses.replace(make_probe(), stall=stall)
    assert "Data stall attribution (30 steps" in to_text(render.render_probe(probe), 120)


def test_saved_probe_run_shows_its_stall(tmp_path):
    probe = dataclasses.replace(make_probe(), stall=attribute(1000.0, 500.0, 200.0, steps=30))
    run = runs.load_run(write_run(tmp_path / "p", probe=probe))
    assert run.probe.stall.bottleneck == "fetch"
    assert "cold input     200 img/s" in to_text(render.render_run(run), 120)


def test_render_summary_stopped_and_unmeasured_stall():
    summary = dataclasses.replace(make_summary(status="stopped", skipped=5,
                                               stop_reason="SIGINT on process 0"),
                                  data_stall_pct=float("nan"),
                                  synthetic_images_per_s=float("nan"))
    text = to_text(render.render_summary(summary), 120)
    assert "status           stopped (SIGINT on process 0)" in text
    assert "data stall       not measured (no on-device reference step time)" in text
    assert "host wait        10.0% of wall time" in text
    assert "skipped steps    5 (non-finite loss or gradient)" in text


# ---------------------------------------------------------------- render_run


def test_render_run_shows_every_part_with_units(tmp_path):
    run = runs.load_run(write_full_run(tmp_path / "full"))
    text = to_text(render.render_run(run))
    for needle in (
        "run full: train, completed",
        "Plan (resnet50): predicted 12,000 img/s, bottleneck compute",
        "random reads deliver 21,000 img/s; need 12,000 img/s",  # a decision's reason
        "rates per host: train step 12,000 img/s",
        "Decode vs the step rate",
        "train step rate 12,000 img/s",
        "sequential 1 MiB",  # disk chart
        "Training summary",
        "10,000 img/s (1,250 img/s per device, 8 devices, 1 hosts)",
        "10,000 img/s measured (summary.json) vs 12,000 img/s predicted = 83% of",
        "205 ms mean, 184 ms on on-device input",
        "10.0% of step time accelerators idle for input (on-device input: 11,111 img/s)",
        "10.0% of wall time waiting for the next batch, 20.5 ms per step",
        "10.0% mean, 10.0% last (accelerators idle for input, % of step time)",
        "data stall (accelerators idle for input, vs on-device input)",
        "host wait (training loop waiting for the next batch), % of wall time",
        "skipped steps    0 (non-finite loss or gradient)",
        "images/s per logging window",
        "╌ plan 12,000 img/s",
        "Held-out evaluations",
        "45.00%",
        "Time and cost to train",
        "$99.84", "$57.60", "25.6 GPU-h", "$3.90/GPU-h",
        "example list prices are approximate",
    ):
        assert needle in text, needle


def test_make_console_width_off_a_terminal(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert render.make_console().width == 120


def test_views_import_without_jax_psutil_or_matplotlib():
    code = ("import sys, autotune.runs, autotune.render, autotune.compare, autotune.live, "
            "autotune.plots; "
            "print(sorted(m for m in ('jax', 'psutil', 'matplotlib', 'pynvml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"

