"""Tests for autotune/compare.py: two runs' differences with their signs and
verdicts, the plan decisions that differ, Markdown, the comparison drawn by
autotune/render.py, and ``autotune report`` through the CLI."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from rich.console import Console

from autotune import compare, fmt, render, runs
from autotune.planner import Decision
from run_fixtures import (make_plan, make_probe, make_steps, make_summary, to_text, write_full_run,
                          write_run)


# ---------------------------------------------------------------- comparison


def _pair(tmp_path):
    a = runs.load_run(write_full_run(tmp_path / "runA"))
    b = runs.load_run(write_full_run(
        tmp_path / "runB", plan=make_plan(threads=16, read_mode="sequential"),
        summary=make_summary(ips=12_000.0, stall=5.0, host_wait=25.0, top1=0.68),
        steps=make_steps(ips=12_000.0, stall=5.0, host_wait=25.0)))
    return a, b


def test_compare_runs_signs_and_verdicts(tmp_path):
    a, b = _pair(tmp_path)
    d = {x.name: x for x in compare.compare_runs(a, b)}
    ips = d["images/s"]
    assert (ips.a_value, ips.b_value) == (10_000.0, 12_000.0)
    assert ips.delta_pct == pytest.approx(20.0) and ips.verdict == "better"
    assert fmt.format_delta(ips) == "+20.0%"
    stall = d["data stall (accelerators idle)"]
    assert stall.delta == pytest.approx(-5.0) and stall.verdict == "better"
    assert fmt.format_delta(stall) == "-5.0 pp"
    wait = d["host wait (% of wall time)"]
    assert (wait.a, wait.b, wait.verdict) == ("10.0%", "25.0%", "worse")
    assert d["host wait per step"].verdict == "worse"
    assert d["on-device input step time"].b == "162 ms"  # 2048 / 12,000 x 0.95
    top1 = d["held-out top-1"]
    assert top1.delta == pytest.approx(-2.0) and top1.verdict == "worse"
    assert d["step time"].verdict == "better" and d["step time"].delta < 0
    assert d["decode threads"].verdict == "changed" and d["decode threads"].delta_pct == 100.0
    assert (d["read mode"].a, d["read mode"].b, d["read mode"].verdict) == (
        "random", "sequential", "changed")
    assert d["per-device batch"].verdict == "same"
    assert d["plan predicted"].verdict == "same"
    # Measured against the plan: 83.3% -> 100%.
    assert d["measured / predicted"].verdict == "better"
    # Cost: same epochs at a higher rate: 1/1.2 the cost.
    assert d["cost of the planned epochs"].delta_pct == pytest.approx(100 * (1 / 1.2 - 1))
    assert d["cost of the planned epochs"].verdict == "better"
    changes = compare.decision_changes(a, b)
    assert [c[0] for c in changes] == ["decode_threads", "read_mode"]
    assert changes[0][1:3] == ("8", "16")


def test_compare_runs_with_missing_sides(tmp_path):
    a = runs.load_run(write_run(tmp_path / "p", probe=make_probe()))
    b = runs.load_run(write_full_run(tmp_path / "t"))
    d = {x.name: x for x in compare.compare_runs(a, b)}
    assert d["images/s"].verdict == "n/a" and d["images/s"].a == "-"
    assert d["probe step rate"].verdict == "same"


def test_render_comparison_highlights_better_and_worse(tmp_path):
    a, b = _pair(tmp_path)
    text = to_text(render.render_comparison(a, b))
    assert "A = runA   vs   B = runB" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("images/s "))
    assert "10,000 img/s" in line and "12,000 img/s" in line and "▲ +20.0% better" in line
    assert "▼ -2.0 pp worse" in text
    assert "≠ changed" in text and "sequential" in text
    assert "Plan decisions that differ" in text
    assert "A: images/s per logging window" in text and "B: data stall" in text
    # Colours: better in green, worse in red (ANSI from a colour console).
    console = Console(width=100, record=True, color_system="standard", force_terminal=True,
                      file=io.StringIO())
    console.print(render.render_comparison(a, b))
    ansi = console.export_text(styles=True)
    better = next(ln for ln in ansi.splitlines() if "+20.0% better" in ln)
    worse = next(ln for ln in ansi.splitlines() if "pp worse" in ln)
    assert "\x1b[1;32m" in better and "\x1b[1;31m" in worse


def test_to_markdown(tmp_path):
    a, b = _pair(tmp_path)
    md = compare.to_markdown([a, b])
    assert md.startswith("**A** `runA` vs **B** `runB`")
    assert "| figure | A | B | change |" in md
    assert "| images/s | 10,000 img/s | 12,000 img/s | **+20.0% better** |" in md
    assert "| held-out top-1 | 70.0% | 68.0% | **-2.0 pp worse** |" in md
    assert "| per-device batch | 256 | 256 |  |" in md
    assert "| decode_threads | 8 | 16 |" in md
    one = compare.to_markdown([a])
    assert "| choice | value | reason |" in one
    assert "| read_mode | random | random reads deliver 21,000 img/s; need 12,000 img/s |" in one
    assert "Cost (all 90 planned epochs, on-demand):" in one and "$99.84" in one
    three = compare.to_markdown([a, b, a])
    assert three.splitlines()[0] == "| figure | `runA` | `runB` | `runA` |"
    with pytest.raises(ValueError):
        compare.to_markdown([])


def test_markdown_escapes_pipes(tmp_path):
    plan = make_plan()
    plan = dataclasses.replace(plan, decisions=(Decision("x", "a|b", "because | reasons"),))
    md = compare.to_markdown([runs.load_run(write_full_run(tmp_path / "r", plan=plan))])
    assert "| x | a\\|b | because \\| reasons |" in md


# ---------------------------------------------------------------- CLI


def test_cli_report_one_two_json_markdown(tmp_path, capsys):
    from autotune.cli import main

    a, b = _pair(tmp_path)
    assert main(["report", a.path]) == 0
    out = capsys.readouterr().out
    assert "run runA: train, completed" in out and "Time and cost to train" in out
    assert main(["report", a.path, b.path]) == 0
    assert "+20.0% better" in capsys.readouterr().out
    assert main(["report", a.path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["figures"]["images_per_s"] == 10_000.0 and doc["costs"][0]["cost"] == pytest.approx(99.84)
    assert main(["report", a.path, b.path, "--markdown"]) == 0
    assert "| images/s | 10,000 img/s | 12,000 img/s | **+20.0% better** |" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
