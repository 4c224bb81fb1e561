"""Tests for autotune/runs.py and autotune/plots.py: the metrics averages worked by
hand, loading saved run folders (complete, probe-only, in progress, damaged, saved in
the old format), the figures every view shows from them, and the PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from autotune import compare, plots, render, runs
from autotune import results as res
from run_fixtures import (make_legacy, make_plan, make_probe, make_steps, make_summary, to_text,
                          write_full_run, write_run)
from trainers.loop import stall_pct
from trainers.summaries import StepReport

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- metrics


def _step(step, ips, step_s, wait_s, synth_s=float("nan"), total=100, skipped=0):
    return StepReport(step=step, total_steps=total, epoch=step / 10, images_per_s=ips,
                      step_s=step_s, wait_s=wait_s,
                      data_stall_pct=stall_pct(synth_s, step_s), loss=1.0, accuracy=0.5,
                      learning_rate=0.1, bad_records=0, elapsed_s=float(step),
                      eta_s=0.0, host_wait_pct=100 * wait_s / step_s,
                      synthetic_step_s=synth_s, skipped_steps=skipped)


def test_metrics_stats_are_time_weighted_by_hand():
    # Report at step 10 covers steps 2..10 (9 steps; step 1 is compilation): 9 x 1.0 s
    # = 9 s, 900 images, 0.9 s host wait, 9 x 0.5 s on on-device input. Report at step
    # 20 covers 10 steps x 0.5 s = 5 s, 1,000 images, 0 s host wait, 10 x 0.5 s on
    # device. Mean = 1,900 / 14 = 135.71 img/s; host wait = 0.9 / 14 = 6.43% of wall
    # time; stall = 1 - (4.5 + 5) / 14 = 32.14% of step time; mean step = 14 / 19 s.
    m = runs.metrics_stats([_step(10, 100.0, 1.0, 0.1, 0.5),
                            _step(20, 200.0, 0.5, 0.0, 0.5, skipped=2)], 1)
    assert m.mean_images_per_s == pytest.approx(1900 / 14)
    assert m.mean_host_wait_pct == pytest.approx(100 * 0.9 / 14)
    assert m.mean_data_stall_pct == pytest.approx(100 * (1 - 9.5 / 14))
    assert (m.last_data_stall_pct, m.last_host_wait_pct) == (0.0, 0.0)
    assert m.mean_step_s == pytest.approx(14 / 19)
    assert m.mean_wait_s == pytest.approx(0.9 / 19)
    assert m.synthetic_step_s == pytest.approx(0.5)
    assert (m.stall_steps, m.window_steps, m.skipped_steps) == (19, 19, 2)
    assert m.peak_images_per_s == 200.0 and m.last_images_per_s == 200.0
    assert (m.step_reports, m.eval_reports, m.first_step, m.last_step, m.segments) == (2, 1, 10, 20, 1)


def test_metrics_stall_is_the_mean_step_against_the_reference():
    # Window 1: 9 steps x 1.0 s against 0.5 s on device (50% stall); window 2: 10 steps
    # x 0.4 s, faster than the 0.5 s reference (clipped to 0% on its own); window 3: no
    # reference (NaN), left out. Run stall = 1 - (9 x 0.5 + 10 x 0.5) / (9 x 1.0 + 10 x
    # 0.4) = 1 - 9.5 / 13 = 26.92%, not the time-weighted mean of the windows' clipped
    # percentages (9 x 50 / 13 = 34.6%) nor their step-weighted mean (23.7%).
    m = runs.metrics_stats([_step(10, 100.0, 1.0, 0.0, 0.5), _step(20, 250.0, 0.4, 0.0, 0.5),
                            _step(30, 100.0, 1.0, 0.0)])
    assert m.mean_data_stall_pct == pytest.approx(100 * (1 - 9.5 / 13))
    assert (m.stall_steps, m.window_steps) == (19, 29)
    assert m.synthetic_step_s == pytest.approx(0.5)
    # No window with a reference: the stall is unknown, host wait still known.
    m = runs.metrics_stats([_step(10, 100.0, 1.0, 0.25)])
    assert math.isnan(m.mean_data_stall_pct) and m.stall_steps == 0
    assert m.mean_host_wait_pct == pytest.approx(25.0)


def test_metrics_stats_resumed_run_counts_segments():
    # After a resume the step count restarts lower (15 after 20): that window takes the
    # previous window's length (10 steps x 1 s = 10 s, 1,000 images).
    m = runs.metrics_stats([_step(10, 100.0, 1.0, 0.0), _step(20, 200.0, 0.5, 0.0),
                            _step(15, 100.0, 1.0, 0.0)])
    assert m.segments == 2
    assert m.mean_images_per_s == pytest.approx((900 + 1000 + 1000) / (9 + 5 + 10))
    assert runs.metrics_stats([]) is None


def test_plan_ratio_pct():
    assert runs.plan_ratio_pct(9_000.0, 12_000.0) == pytest.approx(75.0)
    assert runs.plan_ratio_pct(0.0, 12_000.0) == 0.0
    for measured, predicted in ((None, 1.0), (float("nan"), 1.0), (1.0, None), (1.0, 0.0)):
        assert runs.plan_ratio_pct(measured, predicted) is None


# ---------------------------------------------------------------- load_run


def test_load_full_run(tmp_path):
    run = runs.load_run(write_full_run(tmp_path / "r1"))
    assert run.kind == "train" and run.name == "r1" and run.problems == ()
    f = run.figures
    assert f.status == "completed"
    assert f.images_per_s == 10_000.0 and f.images_per_s_source == "summary.json"
    assert f.predicted_images_per_s == 12_000.0
    assert f.measured_vs_predicted_pct == pytest.approx(100 * 10_000 / 12_000)
    assert f.top1 == 0.70 and f.bottleneck == "compute"
    assert f.step_s == pytest.approx(2048 / 10_000)
    assert f.wait_s == pytest.approx(2048 / 10_000 * 0.1)
    assert len(run.steps) == 20 and len(run.evals) == 2
    assert run.metrics.step_reports == 20 and run.metrics.eval_reports == 2
    assert run.run_meta["argv"] == ["train"]
    # Costs at the example H100 prices (the probe saw 8 H100s), for the 90 planned
    # epochs at the measured 10,000 img/s: 625 x 2048 = 1,280,000 images/epoch;
    # x 90 / 10,000 = 11,520 s; x 8 / 3600 = 25.6 GPU-h; x $3.90 = $99.84 on demand,
    # x $2.25 = $57.60 spot.
    assert [c.label for c in run.costs] == ["all 90 planned epochs, on-demand",
                                            "all 90 planned epochs, spot"]
    assert run.costs[0].images_per_epoch == 1_280_000
    assert run.costs[0].cost == pytest.approx(99.84)
    assert run.costs[1].cost == pytest.approx(57.60)
    assert run.costs[0].rate_source == "measured (summary.json)"
    # The record round-trips through JSON (what --json prints).
    back = runs.SavedRun.from_dict(json.loads(json.dumps(run.to_dict())))
    assert back.to_dict() == run.to_dict()


def test_load_run_with_given_price_and_stopped_run(tmp_path):
    summary = make_summary(status="stopped", steps=6250)  # 10 of 90 epochs
    run = runs.load_run(write_full_run(tmp_path / "r", summary=summary), price="2")
    assert [c.label for c in run.costs] == ["all 90 planned epochs", "remaining 80.00 epochs"]
    assert all(c.price_source == "given" for c in run.costs)
    # 80 epochs x 1,280,000 / 10,000 img/s = 10,240 s x 8 GPUs / 3600 x $2 = $45.51
    assert run.costs[1].cost == pytest.approx(10_240 * 8 / 3600 * 2)
    with pytest.raises(ValueError, match="not a number of dollars"):
        runs.load_run(tmp_path / "r", price="cheap")


def test_load_probe_only_run(tmp_path):
    folder = write_run(tmp_path / "p", probe=make_probe(gpus=0))
    run = runs.load_run(folder)
    assert run.kind == "probe" and run.figures.status == "probe only"
    assert run.costs == ()  # a CPU host: no example price
    assert run.figures.probe_step_images_per_s == 12_000.0
    assert run.figures.decode_best_images_per_s == 5_200.0
    text = to_text(render.render_run(run))
    assert "run p: probe, probe only" in text
    assert "train step rate 12,000 img/s" in text
    assert "Training summary" not in text


def test_load_run_in_progress_uses_metrics_and_skips_torn_line(tmp_path):
    folder = write_run(tmp_path / "live", probe=make_probe(), plan=make_plan(),
                       steps=make_steps(5, ips=8_000.0, stall=25.0))
    with open(folder / res.METRICS, "a") as f:
        f.write('{"kind": "StepReport", "step": 6')  # killed mid-line
    run = runs.load_run(folder)
    assert run.figures.status == "no summary"
    assert run.figures.images_per_s == pytest.approx(8_000.0)
    assert run.figures.images_per_s_source == "metrics.jsonl average"
    assert run.figures.images_per_s_per_device == pytest.approx(1_000.0)
    assert run.figures.data_stall_pct == pytest.approx(25.0)
    assert len(run.steps) == 5 and run.problems == ()
    # 90 epochs planned, 500 / 625 = 0.8 done: both the whole and the remaining.
    assert [c.label for c in run.costs][:2] == ["all 90 planned epochs, on-demand",
                                                "remaining 89.20 epochs, on-demand"]
    assert "still going, or was killed" in to_text(render.render_run(run))


def test_load_run_lists_unreadable_files_and_keeps_the_rest(tmp_path):
    folder = write_full_run(tmp_path / "bad")
    (folder / res.PLAN).write_text('{"preset": "x"}')
    with open(folder / res.METRICS, "a") as f:
        f.write(json.dumps({"kind": "StepReport", "step": "x"}) + "\n")
    run = runs.load_run(folder)
    assert run.plan is None and run.summary is not None
    assert any(p.startswith("plan.json:") and "missing field" in p for p in run.problems)
    assert any(p.startswith("metrics.jsonl:") for p in run.problems)
    assert "could not read plan.json" in to_text(render.render_run(run))


def test_load_run_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runs.load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty is not a run folder"):
        runs.load_run(tmp_path / "empty")


def test_fast_pipeline_high_host_wait_without_stall(tmp_path):
    # The accelerators are busy (0.2% stall against on-device input) while the loop
    # waits 40% of the wall time for the next batch (asynchronous dispatch): two
    # different figures, each under its own name, in every view.
    folder = write_full_run(tmp_path / "fast", steps=make_steps(stall=0.2, host_wait=40.0),
                            summary=make_summary(stall=0.2, host_wait=40.0))
    run = runs.load_run(folder)
    f = run.figures
    assert f.data_stall_pct == pytest.approx(0.2) and f.host_wait_pct == pytest.approx(40.0)
    assert f.data_stall_note == "" and not run.legacy_stall
    assert run.metrics.mean_data_stall_pct == pytest.approx(0.2)
    assert run.metrics.mean_host_wait_pct == pytest.approx(40.0)
    text = to_text(render.render_run(run), 120)
    for needle in ("data stall       0.2% of step time accelerators idle for input",
                   "host wait        40.0% of wall time waiting for the next batch",
                   "40.0% of wall time waiting for the next batch, 81.9 ms per step",
                   "0.2% mean, 0.2% last", "40.0% mean, 40.0% last"):
        assert needle in text, needle
    md = compare.to_markdown([run])
    assert "| data stall (accelerators idle) | 0.2% |" in md
    assert "| host wait (% of wall time) | 40.0% |" in md
    assert "| host wait per step | 81.9 ms |" in md
    assert "host wait = share of wall time" in md
    assert plots.write_plots(folder)


def test_legacy_run_loads_without_claiming_a_stall(tmp_path):
    # Saved before the change: no host_wait_pct / synthetic / skipped fields, and the
    # 10% "data stall" in its files was host wait.
    folder = make_legacy(write_full_run(tmp_path / "old", steps=make_steps(stall=3.0),
                                        summary=make_summary(stall=3.0)))
    assert "host_wait_pct" not in (folder / res.SUMMARY).read_text()
    run = runs.load_run(folder)
    assert run.problems == () and run.legacy_stall
    f = run.figures
    assert f.data_stall_pct is None and f.host_wait_pct == pytest.approx(10.0)
    assert f.data_stall_note == runs.LEGACY_STALL_NOTE
    assert f.skipped_steps is None and f.synthetic_step_s is None
    assert math.isnan(run.summary.data_stall_pct) and run.summary.host_wait_pct == 10.0
    assert all(math.isnan(r.data_stall_pct) and r.host_wait_pct == 10.0 for r in run.steps)
    assert math.isnan(run.metrics.mean_data_stall_pct)
    assert run.metrics.mean_host_wait_pct == pytest.approx(10.0)
    text = to_text(render.render_run(run), 120)
    assert "of step time accelerators idle" not in text
    assert "- mean, - last (accelerators idle for input, % of step time)" in text
    assert "data stall       not measured: this run was saved before" in text
    assert "host wait        10.0% of wall time waiting for the next batch" in text
    assert "skipped steps    not counted" in text
    md = compare.to_markdown([run])
    assert "| data stall" not in md and "| host wait (% of wall time) | 10.0% |" in md
    assert "`old`: data stall not measured: this run was saved before" in md
    assert plots.write_plots(folder)
    # Against a new run: the stall has no old side to compare with.
    new = runs.load_run(write_full_run(tmp_path / "new"))
    d = {x.name: x for x in compare.compare_runs(run, new)}
    stall = d["data stall (accelerators idle)"]
    assert (stall.a, stall.b, stall.verdict) == ("-", "10.0%", "n/a")
    assert d["host wait (% of wall time)"].verdict == "same"
    assert "A (old): data stall not measured" in to_text(render.render_comparison(run, new), 120)
    # The JSON of the loaded run reads back.
    assert runs.SavedRun.from_dict(json.loads(json.dumps(run.to_dict()))).to_dict() == run.to_dict()


def test_example_run_is_an_old_format_run():
    run = runs.load_run(Path(__file__).parent.parent / "results" / "example")
    assert run.problems == () and run.legacy_stall
    assert run.figures.data_stall_pct is None
    assert run.figures.host_wait_pct == pytest.approx(4.134185720061127)


def test_resumed_old_run_stall_covers_the_new_windows(tmp_path):
    # An old run resumed by the new code: 5 old windows (99 + 4 x 100 steps: the first
    # step is compilation), then 5 new ones of 100 steps (no summary yet).
    folder = make_legacy(write_run(tmp_path / "mixed", plan=make_plan(),
                                   steps=make_steps(5, host_wait=30.0)))
    w = res.MetricsWriter(folder / res.METRICS)
    for r in make_steps(10, stall=4.0, host_wait=10.0)[5:]:
        w.write(r)
    w.close()
    run = runs.load_run(folder)
    f = run.figures
    assert f.data_stall_pct == pytest.approx(4.0)
    assert f.host_wait_pct == pytest.approx((499 * 30 + 500 * 10) / 999)
    assert f.data_stall_note == "over the 500 of 999 logged steps that have an on-device reference"
    assert f.skipped_steps == 0  # the last report is new: steps are counted
    assert "4.0% of step time accelerators idle for input (over the 500 of 999" in to_text(
        render.render_run(run), 140)


def test_stopped_run_shows_the_reason_and_skipped_steps(tmp_path):
    summary = make_summary(status="stopped", steps=6250, skipped=3,
                           stop_reason="SIGTERM on process 1")
    run = runs.load_run(write_full_run(tmp_path / "s", summary=summary,
                                       steps=make_steps(skipped=3)))
    assert run.figures.stop_reason == "SIGTERM on process 1" and run.figures.skipped_steps == 3
    text = to_text(render.render_run(run), 120)
    assert "status           stopped (SIGTERM on process 1)" in text
    assert "skipped steps    3 (non-finite loss or gradient)" in text
    other = runs.load_run(write_full_run(tmp_path / "c"))
    d = {x.name: x for x in compare.compare_runs(other, run)}
    assert (d["stop reason"].a, d["stop reason"].b, d["stop reason"].verdict) == (
        "-", "SIGTERM on process 1", "n/a")
    assert (d["skipped steps"].a, d["skipped steps"].b, d["skipped steps"].verdict) == (
        "0", "3", "worse")
    assert "| stop reason | - | SIGTERM on process 1 |" in compare.to_markdown([other, run])


# ---------------------------------------------------------------- plots


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_write_plots_full_run(tmp_path):
    folder = write_full_run(tmp_path / "r")
    paths = plots.write_plots(folder)
    assert sorted(p.name for p in paths) == sorted([plots.DECODE_PNG, plots.DISK_PNG,
                                                    plots.THROUGHPUT_PNG])
    for p in paths:
        assert p.parent == folder and _is_png(p), p
    assert not list(folder.glob(".*.tmp"))
    # The report lists them.
    assert runs.load_run(folder).plots == tuple(sorted(p.name for p in paths))


def test_write_plots_probe_only_without_disk(tmp_path):
    folder = write_run(tmp_path / "p", probe=make_probe(gpus=0, disk=False))
    paths = plots.write_plots(folder)
    assert [p.name for p in paths] == [plots.DECODE_PNG]
    assert _is_png(paths[0])


def test_write_plots_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        plots.write_plots(tmp_path / "none")
    with pytest.raises(ValueError, match="no step reports"):
        plots.plot_throughput([], tmp_path / "x.png")
