"""Tests for autotune/live.py and probes/sampler.py: the live training view (its
plain-line fallback off a terminal, its panel in a terminal, quiet mode, failing
samplers; data stall and host wait apart) and the utilisation sampler."""

from __future__ import annotations

import dataclasses
import io

from rich.console import Console

from autotune.live import TrainView
from probes.records import GpuSample
from probes.sampler import HostSample, UtilisationSampler
from run_fixtures import GiB, make_eval, make_plan, make_probe, make_steps, to_text


# ---------------------------------------------------------------- live view


def _gpus():
    return (GpuSample(index=0, gpu_utilisation_percent=95, memory_used_bytes=60 * GiB),
            GpuSample(index=1, gpu_utilisation_percent=None, memory_used_bytes=None))


def _host():
    return HostSample(cpu_percent=50.0, process_cpu_percent=120.0, cores=32,
                      ram_used_bytes=100 * GiB, ram_total_bytes=256 * GiB,
                      process_rss_bytes=20 * GiB)


def _plain_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=100, color_system=None), buf


def test_trainview_plain_lines_when_not_a_terminal():
    console, buf = _plain_console()
    assert not console.is_terminal
    view = TrainView(console, plan=make_plan(), gpu_sampler=_gpus, host_sampler=_host)
    steps = make_steps(2, ips=10_000.0, stall=10.0)
    with view:
        assert view.live is None
        for r in steps:
            view(r)
        view(make_eval(200, 0.32, 0.25, 0.5))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3
    first = lines[0]
    assert first.startswith("step 100/56250 epoch 0.16 | 10,000 img/s, avg 10,000 (plan 12,000)")
    assert ("step 205 ms (on-device input 184 ms), data stall 10.0%, host wait 10.0% "
            "(20.5 ms/step)") in first
    assert "skipped" not in first
    assert "loss 6.800 lr 0.8" in first and "ETA 3h11m40s" in first
    assert "GPU 95% -" in first and "CPU 50% RAM 100.0 GiB/256.0 GiB" in first
    assert lines[2].startswith("eval epoch 0.32: top-1 25.00% top-5 50.00% loss 1.250")


def _row(text: str, key: str) -> str:
    """The panel line whose first cell is ``key``."""
    return next(ln for ln in text.splitlines() if ln.strip("│ ").startswith(key + " "))


def test_trainview_fast_pipeline_shows_stall_and_host_wait_apart():
    # Accelerators busy (0.3% stall) while the loop waits 45% of the wall time for
    # the next batch (asynchronous dispatch): two figures, each on its own row.
    steps = make_steps(2, stall=0.3, host_wait=45.0, skipped=2)
    console, buf = _plain_console()
    with TrainView(console, gpu_sampler=lambda: (), host_sampler=lambda: None) as view:
        view(steps[0])
    line = buf.getvalue()
    assert "data stall 0.3%, host wait 45.0% (92.2 ms/step)" in line
    assert "| 2 steps skipped (non-finite)" in line
    view = TrainView(Console(file=io.StringIO(), width=160, force_terminal=True,
                             color_system=None), gpu_sampler=lambda: (), host_sampler=lambda: None)
    for r in steps:
        view(r)
    text = to_text(view._render(), 160)
    stall, wait = _row(text, "data stall"), _row(text, "host wait")
    assert "0.3% now, 0.3% average" in stall and "45.0%" not in stall
    assert "45.0% now (92.2 ms/step), 45.0% average" in wait and "0.3%" not in wait
    assert "2 (non-finite loss or gradient)" in _row(text, "skipped steps")


def test_trainview_without_an_on_device_reference():
    # synthetic_steps = 0: no reference, the stall is unknown (not 0, not red).
    r = dataclasses.replace(make_steps(1)[0], data_stall_pct=float("nan"),
                            synthetic_step_s=float("nan"))
    console, buf = _plain_console()
    with TrainView(console, gpu_sampler=lambda: (), host_sampler=lambda: None) as view:
        view(r)
    assert "(on-device input -), data stall -, host wait 10.0%" in buf.getvalue()
    text = to_text(view._render(), 160)
    assert "- now, - average" in _row(text, "data stall")


def test_trainview_quiet_prints_nothing():
    console, buf = _plain_console()
    view = TrainView(console, quiet=True, gpu_sampler=_gpus, host_sampler=_host)
    with view:
        for r in make_steps(3):
            view(r)
    assert buf.getvalue() == ""
    assert view.last_step.step == 300  # still tracks the run


def test_trainview_panel_in_a_terminal():
    console = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    view = TrainView(console, plan=make_plan(), probe=make_probe(), gpu_sampler=_gpus,
                     host_sampler=_host, title="autotune train: resnet50 on train")
    assert view.interactive
    assert "waiting for the first step (compiling the train step" in to_text(view._render(), 120)
    steps = make_steps(3, ips=9_000.0, stall=20.0)
    for r in steps:
        view(r)
    view(make_eval(300, 0.48, 0.31, 0.6))
    text = to_text(view._render(), 120)
    for needle in ("autotune train: resnet50 on train",
                   "step 300/56,250 · epoch 0.48/90 · elapsed",
                   "9,000 img/s now, 9,000 img/s average",
                   "plan 12,000 img/s (bottleneck compute) = 75% of plan",
                   "228 ms now, 182 ms on on-device input (the accelerators alone)",
                   "20.0% now, 20.0% average",
                   "accelerators idle for input, % of step time",
                   "10.0% now (22.8 ms/step), 10.0% average",
                   "loop waiting for the next batch, % of wall time",
                   "loss / lr", "6.6000 / 0.8",
                   "top-1 31.00%, top-5 60.00%",
                   "GPU 0", "95% busy, 60.0 GiB used of 80.0 GiB",
                   "GPU 1", "- busy, - used of 80.0 GiB",
                   "CPU 50% of 32 cores (this process 1.2 cores) · RAM 100.0 GiB of 256.0 GiB",
                   "batch 256 x 8 devices x 1 hosts = 2048, 8 decode threads, random reads"):
        assert needle in text, needle


def test_trainview_live_context_draws_the_last_state():
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=True, color_system=None)
    view = TrainView(console, plan=make_plan(), gpu_sampler=lambda: (), host_sampler=_host,
                     refresh_per_second=1)
    import threading

    main_calls = []
    draw = view._render

    def counting():
        if threading.current_thread() is threading.main_thread():
            main_calls.append(1)
        return draw()

    view._render = counting
    with view:
        assert view.live is not None
        before = len(main_calls)
        for r in make_steps(2):
            view(r)  # hands the record over; rich's thread draws
        assert len(main_calls) == before
    assert view.live is None
    out = buf.getvalue()
    assert "10,000 img/s now" in out and "step 200/56,250 ·" in out


def test_trainview_survives_failing_samplers():
    def broken():
        raise RuntimeError("NVML gone")

    console, buf = _plain_console()
    view = TrainView(console, gpu_sampler=broken, host_sampler=broken)
    with view:
        view(make_steps(1)[0])
    line = buf.getvalue()
    assert "img/s" in line and "GPU" not in line and "CPU" not in line
    text = to_text(view._render())
    assert "10,000 img/s now" in text and "GPU 0" not in text


# ---------------------------------------------------------------- sampler


def test_utilisation_sampler_reads_at_most_once_per_interval():
    calls = []

    def gpus():
        calls.append(1)
        return _gpus()

    sample = UtilisationSampler(gpus, _host, every_s=3600.0)
    first = sample()
    assert first == (_gpus(), _host())
    assert sample() == first and len(calls) == 1  # within the interval: the last readings
    again = UtilisationSampler(gpus, _host, every_s=0.0)
    again()
    again()
    assert len(calls) == 3


def test_utilisation_sampler_never_raises():
    def broken():
        raise RuntimeError("NVML gone")

    assert UtilisationSampler(broken, broken)() == ((), None)


def test_default_host_sampler_reads_psutil():
    from probes.sampler import default_host_sampler

    host = default_host_sampler()()
    assert host is None or (host.cores >= 1 and 0 < host.ram_used_bytes <= host.ram_total_bytes
                            and host.process_rss_bytes > 0)
