"""The out-of-memory step-down the trainer calls (``autotune.planner.step_down``),
worked by hand: the next smaller per-device batch (7/8, a multiple of 8, or of 1 at 8
and below) and the learning rate rescaled by the plan's rule."""

import dataclasses
import math

import pytest

from autotune.planner import PlanRequest, make_plan, step_down, train_config
from autotune.presets import get_preset
from test_planner import gpu_ssd_report


def _plan_and_config(preset="resnet50", **request):
    preset = get_preset(preset) if isinstance(preset, str) else preset
    plan = make_plan(gpu_ssd_report(), preset, PlanRequest(**request))
    return plan, train_config(plan, preset, num_classes=1000)


def test_linear_rule_steps_down_by_an_eighth():
    plan, cfg = _plan_and_config()
    # 256 x 8 devices = 2048, LR 0.8 (linear). 256 x 7/8 = 224: LR 0.8 x 224 / 256 = 0.7.
    assert (cfg.per_device_batch, cfg.learning_rate) == (256, pytest.approx(0.8))
    cfg = step_down(cfg, plan)
    assert (cfg.per_device_batch, cfg.learning_rate) == (224, pytest.approx(0.7))
    # 224 x 7/8 = 196 -> 192 (multiple of 8): 0.7 x 192 / 224 = 0.6.
    cfg = step_down(cfg, plan)
    assert (cfg.per_device_batch, cfg.learning_rate) == (192, pytest.approx(0.6))
    # Everything else is kept.
    assert dataclasses.replace(cfg, per_device_batch=256, learning_rate=0.8) == \
        train_config(plan, get_preset("resnet50"), 1000)


def test_small_batches_step_by_one_and_stop_at_one():
    plan, cfg = _plan_and_config()
    # 9 > 8: multiple 8 -> max(8, floor(7.875 / 8) x 8 = 0) = 8; LR x 8 / 9.
    nine = dataclasses.replace(cfg, per_device_batch=9, learning_rate=0.9)
    got = step_down(nine, plan)
    assert (got.per_device_batch, got.learning_rate) == (8, pytest.approx(0.8))
    # 8: multiple 1 -> floor(7) = 7; 2 -> floor(1.75) = 1.
    assert step_down(dataclasses.replace(cfg, per_device_batch=8), plan).per_device_batch == 7
    assert step_down(dataclasses.replace(cfg, per_device_batch=2), plan).per_device_batch == 1
    assert step_down(dataclasses.replace(cfg, per_device_batch=1), plan) is None


def test_lars_rule_follows_the_mlperf_table():
    # 8 hosts: 256 x 8 x 8 = 16,384 -> LARS, peak 25 (table row [16384, 32768)). After
    # 224: 224 x 64 = 14,336 < 16,384 -> table peak 10: 25 x 10 / 25 = 10.
    plan, cfg = _plan_and_config(num_hosts=8)
    assert (plan.lr.rule, cfg.learning_rate) == ("lars-mlperf", pytest.approx(25.0))
    assert step_down(cfg, plan).learning_rate == pytest.approx(10.0)


def test_sqrt_rule_for_adamw():
    # AdamW, base 1e-3 at 256: 1e-3 x sqrt(2048 / 256) = 2.828e-3; after 224 per device:
    # x sqrt(1792 / 2048) = x 0.9354 -> 2.646e-3.
    preset = dataclasses.replace(get_preset("resnet50"), optimizer="adamw", base_lr=1e-3)
    plan, cfg = _plan_and_config(preset)
    assert cfg.learning_rate == pytest.approx(1e-3 * math.sqrt(8))
    assert step_down(cfg, plan).learning_rate == pytest.approx(1e-3 * math.sqrt(7))


def test_devices_are_the_plans_local_devices_times_hosts():
    # Local devices from the request (4), 2 hosts: 256 x 4 x 2 = 2048, LR 0.8; the
    # rescale ratio is per-device anyway: 0.8 x 224 / 256 = 0.7.
    plan, cfg = _plan_and_config(local_devices=4, num_hosts=2)
    assert plan.global_batch == 2048
    assert step_down(cfg, plan).learning_rate == pytest.approx(0.7)
