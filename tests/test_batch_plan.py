"""The per-device batch by throughput, by the data, and only then by memory (issue 16):
the three candidates, the smallest, the reasons, ``--batch max`` / ``N`` and the
warning past the critical batch, each worked out by hand."""

import dataclasses
import math

import pytest

from autotune import planner
from autotune.batch_search import BatchSearchResult, knee_batches
from autotune.planner import PlanRequest, make_plan
from autotune.presets import get_preset
from probes.records import NoiseScaleReport, StepRate
import probe_fixtures as pf


def _search(batch: int) -> BatchSearchResult:
    return BatchSearchResult(
        per_device_batch=batch, device_count=8, global_batch=8 * batch, multiple=8,
        predicted_bytes=70 * pf.GiB, prefetch_bytes=0, prefetch_bytes_per_image=0,
        usable_budget_bytes=72 * pf.GiB, budget_bytes=80 * pf.GiB, margin=0.1,
        margin_reason="", compilations=4, evaluations=(), fixed_bytes=None,
        bytes_per_image=None, limited_by="memory", method="memory-analysis-bisection",
        reason=f"{batch} fits in 72 GiB")


def _curve(points: dict[int, float], devices: int = 8) -> tuple[StepRate, ...]:
    return tuple(StepRate(per_device_batch=b, global_batch=b * devices, images_per_s=r,
                          images_per_s_per_device=r / devices, step_s=b * devices / r,
                          compile_s=1.0, steps=5) for b, r in sorted(points.items()))


def _noise(b_simple: float | None, *, g2=2.0) -> NoiseScaleReport:
    return NoiseScaleReport(
        per_device_batch=32, global_batch=256, devices=8, steps=200, averaged_steps=199,
        learning_rate=0.1, b_simple=b_simple, grad_sq=g2 if b_simple else None,
        trace_sigma=b_simple * g2 if b_simple else None, per_window=(), ema_decay=0.98,
        seconds=30.0, note="" if b_simple else "one device")


# images/s per host on 8 devices: the best is 20,000 at 512; 3% below is 19,400.
CURVE = {64: 15_000.0, 128: 18_000.0, 256: 19_500.0, 512: 20_000.0, 1024: 19_900.0}


def _report(*, fit=1024, curve=CURVE, noise=1_000.0):
    acc = dataclasses.replace(pf.accelerator(batch=fit, step_ips=curve.get(fit, 24_000.0)),
                              rate_curve=_curve(curve))
    rep = pf.report(acc=acc, search=_search(fit))
    return dataclasses.replace(rep, noise_scale=None if noise is None else _noise(noise))


def test_knee_is_the_smallest_batch_within_three_percent_of_the_best():
    b, d = planner.choose_throughput_knee(_curve(CURVE))
    # 256 gives 19,500 >= 0.97 x 20,000 = 19,400; 128 gives 18,000 < 19,400.
    assert b == 256 and d.value == "256"
    assert "best 20,000 at 512" in d.reason and "97.5% of the best" in d.reason
    # Points past the largest that fits are left out: among 64, 128 the best is 18,000.
    assert planner.choose_throughput_knee(_curve(CURVE), max_batch=128)[0] == 128
    assert planner.choose_throughput_knee(())[0] is None


def test_critical_batch_per_device_rounds_down_to_eight():
    # B_simple 1,000 -> critical global 1,000; / 8 devices = 125 -> 120 (multiple of 8).
    per, crit, d = planner.choose_critical_batch(_noise(1_000.0), all_devices=8)
    assert (per, crit) == (120, 1_000)
    assert "2000 / 2 = 1,000 images" in d.reason and "McCandlish" in d.reason
    # B_simple 50 on 8 devices: 50 // 8 = 6 (below 8: kept as is).
    assert planner.choose_critical_batch(_noise(50.0), all_devices=8)[:2] == (6, 50)
    # Not measured: no candidate, and the reason says why.
    per, crit, d = planner.choose_critical_batch(_noise(None), all_devices=8)
    assert per is None and crit is None and "one device" in d.reason


def test_plan_takes_the_smallest_of_the_three_with_each_reason():
    rep = _report(noise=1_000.0)
    plan = make_plan(rep, get_preset("resnet50"), PlanRequest(local_devices=8))
    # fit 1,024, knee 256, critical 120 -> 120 per device, global 960.
    assert (plan.per_device_batch, plan.global_batch) == (120, 960)
    assert plan.decision("batch_fit").value == "1024"
    assert plan.decision("batch_knee").value == "256"
    assert plan.decision("batch_critical").value == "120"
    assert plan.decision("per_device_batch").reason == (
        "smallest of largest that fits 1024, throughput knee 256, critical batch 120 -> 120 "
        "(critical batch)")
    assert (plan.noise_scale, plan.critical_batch, plan.warnings) == (1_000.0, 1_000, ())
    # The step rate at 120 is interpolated on the curve between 64 and 128:
    # 15,000 + 3,000 x 56 / 64 = 17,625 img/s.
    assert plan.step_images_per_s == pytest.approx(17_625.0)
    # A large noise scale: the knee limits (256 < 50,000 / 8 = 6,250).
    plan = make_plan(_report(noise=50_000.0), get_preset("resnet50"), PlanRequest(local_devices=8))
    assert plan.per_device_batch == 256
    assert plan.decision("per_device_batch").reason.endswith("-> 256 (throughput knee)")
    # No noise scale (one device): knee 256 vs fit 1,024.
    plan = make_plan(_report(noise=None), get_preset("resnet50"), PlanRequest(local_devices=8))
    assert plan.per_device_batch == 256 and plan.critical_batch is None


def test_batch_max_and_n_say_what_the_plan_would_have_chosen_and_warn():
    rep = _report(noise=1_000.0)
    plan = make_plan(rep, get_preset("resnet50"),
                     PlanRequest(local_devices=8, batch_policy="max"))
    assert (plan.per_device_batch, plan.global_batch) == (1024, 8192)
    reason = plan.decision("per_device_batch").reason
    assert reason.startswith("the largest that fits, forced (--batch max); the plan would "
                             "have chosen 120: smallest of largest that fits 1024")
    # 8,192 / 1,000 = 8.2x the critical batch; the advice is the critical per-device 120.
    assert len(plan.warnings) == 1
    assert plan.warnings[0].startswith("global batch 8,192 is 8.2x the critical batch 1,000")
    assert "--batch 120" in plan.warnings[0]
    plan = make_plan(rep, get_preset("resnet50"), PlanRequest(local_devices=8, per_device_batch=96))
    assert plan.global_batch == 768 and plan.warnings == ()  # 768 <= 1,000
    assert plan.decision("per_device_batch").reason.startswith(
        "given on the command line (--batch 96); the plan would have chosen 120")


def test_fixed_preset_batch_unless_auto():
    # cpu-small fixes global 128 = 16 per device on 8 devices; auto takes the smallest.
    rep = _report(noise=1_000.0)
    plan = make_plan(rep, get_preset("cpu-small"), PlanRequest(local_devices=8))
    assert plan.per_device_batch == 16
    assert plan.decision("per_device_batch").reason == "fixed by preset cpu-small"
    plan = make_plan(rep, get_preset("cpu-small"),
                     PlanRequest(local_devices=8, batch_policy="auto"))
    assert plan.per_device_batch == 120


def test_forced_global_1024_warns_with_the_rule():
    """The issue's case: cpu-small at --batch 128 on 8 devices (global 1,024) on data
    whose noise scale is 200: 5.1x the critical batch; the linear rule's LR is named."""
    rep = _report(fit=128, curve={8: 500.0, 16: 800.0, 32: 950.0, 64: 990.0, 128: 1_000.0},
                  noise=200.0)
    plan = make_plan(rep, get_preset("cpu-small"), PlanRequest(local_devices=8, per_device_batch=128))
    assert plan.global_batch == 1024
    assert plan.warnings[0].startswith("global batch 1,024 is 5.1x the critical batch 200")
    # The plan would have chosen 200 // 8 = 25 -> 24 (the knee, 64: 990 >= 970, is larger).
    assert "the plan would have chosen 24" in plan.decision("per_device_batch").reason
    assert plan.lr.learning_rate == pytest.approx(0.4 * 1024 / 256)
    assert "linear" in plan.decision("learning_rate").reason


def test_plan_request_refuses_both_a_policy_and_a_number():
    with pytest.raises(ValueError, match="batch policy 'max' and per-device batch 64"):
        PlanRequest(batch_policy="max", per_device_batch=64)
    with pytest.raises(ValueError, match="batch policy 'big'"):
        PlanRequest(batch_policy="big")


def test_noise_vs_batch_for_the_live_view():
    assert planner.noise_vs_batch(float("nan"), 256) is None
    kind, text = planner.noise_vs_batch(400.0, 256)
    assert kind == "above" and text.startswith("B_simple 400 -> critical batch 400 > global "
                                               "batch 256 in use")
    assert planner.noise_vs_batch(100.0, 256)[0] == "below"


def test_noise_probe_batch_sees_at_most_one_epoch():
    c = planner.batch_candidates(_report(fit=128, curve={8: 1.0, 128: 1.0}, noise=None),
                                 all_devices=8)
    # knee 8 (equal rates) < fit 128; one epoch 8,522 / (60 x 8) = 17 -> 8.
    per, steps, d = planner.choose_noise_probe(c, all_devices=8, train_images=8_522,
                                               backend="cpu")
    assert (per, steps) == (8, 60)
    c = planner.batch_candidates(_report(noise=None), all_devices=8)
    # GPU: knee 256; one epoch 1,268,355 / (200 x 8) = 792 -> min 256.
    assert planner.choose_noise_probe(c, all_devices=8, train_images=1_268_355,
                                      backend="gpu")[:2] == (256, 200)


def test_knee_batches_halve_from_the_largest_that_fits():
    assert knee_batches(1024) == (64, 128, 256, 512, 1024)
    assert knee_batches(128) == (8, 16, 32, 64, 128)
    assert knee_batches(200) == (8, 24, 48, 96, 200)
    assert knee_batches(4) == (4,)


def test_old_probe_and_plan_records_still_load():
    rep = _report()
    d = rep.to_dict()
    del d["noise_scale"]
    del d["accelerator"]["rate_curve"]
    old = type(rep).from_dict(d)
    assert old.noise_scale is None and old.accelerator.rate_curve == ()
    plan = make_plan(old, get_preset("resnet50"), PlanRequest(local_devices=8))
    pd = plan.to_dict()
    for k in ("noise_scale", "critical_batch", "warnings"):
        del pd[k]
    assert type(plan).from_dict(pd).warnings == ()
    assert math.isnan(float("nan"))


def test_cli_plan_prints_the_forced_batch_the_choice_and_the_warning(tmp_path, capsys):
    """``autotune plan --probe P --batch max`` / ``--batch 128``: the plan table says
    what the plan would have chosen and why, and the warning is printed; a bad
    ``--batch`` is one line, exit code 2."""
    from autotune.cli import main

    path = tmp_path / "probe.json"
    _report(noise=1_000.0).save(path)
    assert main(["plan", "--probe", str(path), "--batch", "max"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the plan would have chosen 120" in out
    assert "warning: global batch 8,192 is 8.2x the critical batch 1,000" in out
    assert main(["plan", "--probe", str(path), "--batch", "96"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "given on the command line (--batch 96)" in out and "warning" not in out
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--probe", str(path), "--batch", "huge"])
    assert exc.value.code == 2
    assert "'huge': expected auto, max or a per-device batch" in capsys.readouterr().err


def test_live_view_says_when_the_noise_scale_moves_past_the_batch():
    """The plain line and the panel say where the run's noise scale stands against the
    global batch in use (2,048 here): past it (the data would use more), or below it."""
    import io

    from rich.console import Console

    from autotune.live import TrainView
    from run_fixtures import make_plan, make_steps, to_text

    buf = io.StringIO()
    view = TrainView(Console(file=buf, width=300, color_system=None), plan=make_plan(),
                     gpu_sampler=lambda: (), host_sampler=lambda: None)
    steps = make_steps(3)
    with view:
        view(steps[0])  # NaN: not measured, nothing said
        view(dataclasses.replace(steps[1], noise_scale=900.0))
        view(dataclasses.replace(steps[2], noise_scale=5_000.0))
    lines = buf.getvalue().splitlines()
    assert "noise scale" not in lines[0]
    assert ("noise scale: B_simple 900 -> critical batch 900 < global batch 2,048 in use: the "
            "batch is past what the data can use now") in lines[1]
    assert "critical batch 5,000 > global batch 2,048 in use: the data would now use a larger " \
           "batch well" in lines[2]
    assert "critical batch 5,000 > global batch 2,048" in to_text(view._render(), width=200)


def test_the_data_caps_every_batch_but_a_requested_one_which_it_refuses():
    rep = _report(fit=1024, curve={256: 1.0, 1024: 1.0}, noise=None)
    # 10,000 training images on 8 devices: at most 10,000 / (2 x 8) = 625 -> 624 each
    c = planner.batch_candidates(rep, all_devices=8, train_images=10_000)
    assert c.data == 624 and c.decisions[-1].name == "batch_data"
    b, why = planner.recommended_batch(c)
    assert b == 256 and "data" not in why  # named only where it binds
    c = planner.batch_candidates(rep, all_devices=8, train_images=1_000)
    b, why = planner.recommended_batch(c)
    assert b == 56 and "the data's cap 56" in why  # 1,000 / 16 = 62 -> 56
    preset = get_preset("resnet50")
    b, d = planner.choose_per_device_batch(rep, preset, all_devices=8, policy="max",
                                           train_images=1_000)
    assert b == 56 and "capped at 56 by the data" in d.reason
    with pytest.raises(ValueError, match="--batch 128: 128 x 8 devices .* --batch 56"):
        planner.choose_per_device_batch(rep, preset, all_devices=8, requested=128,
                                        train_images=1_000)
    assert planner.choose_data_batch_cap(None, all_devices=8)[0] is None
    assert planner.choose_data_batch_cap(10, all_devices=8)[0] == 1
