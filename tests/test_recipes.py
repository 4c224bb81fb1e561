"""The presets are the recipes they cite, and the plan hands them to the trainer
whole: BlurPool, the schedules, the LARS switch, batch-norm groups, eval settings."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autotune import planner
from autotune.lr_rules import scale_learning_rate
from autotune.presets import FFCV_RAMPS, get_preset
from trainers import models
from trainers import train as tr
from trainers.options import TrainConfig


# ---------------------------------------------------------------- BlurPool

def test_blur_is_ffcv_binomial_depthwise_filter_with_zero_padding():
    """FFCV BlurPoolConv2d: F.conv2d(x, [[1,2,1],[2,4,2],[1,2,1]]/16 per channel,
    stride 1, padding 1, groups=C) -- written out here as a loop over the 3x3 taps."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    k = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = sum(k[i, j] * pad[:, i:i + 5, j:j + 6, :] for i in range(3) for j in range(3))
    np.testing.assert_allclose(np.asarray(models.blur(jnp.asarray(x))), want, rtol=1e-6,
                               atol=1e-6)


def _outputs(width: int):
    """Logits without and with BlurPool from the same parameters (one init: BlurPool
    has no parameters, so the tree is the same and checkpoints load either way)."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 3)), jnp.float32)
    out = []
    variables = None
    for blurpool in (False, True):
        cfg = TrainConfig(arch="resnet_tiny", width=width, small_images=True, image_size=16,
                          num_classes=3, blurpool=blurpool)
        model = tr.create_model(cfg, num_devices=1)
        if variables is None:
            variables = model.init(jax.random.PRNGKey(0), x, train=False)
        out.append(np.asarray(model.apply(variables, x, train=False)))
    return out


def test_blurpool_changes_strided_convs_only_from_16_channels():
    off, on = _outputs(16)
    assert not np.allclose(off, on, atol=1e-5)
    # Width 2: the strided convs see 2, 4 and 8 channels, below FFCV's 16: untouched.
    off, on = _outputs(2)
    np.testing.assert_array_equal(off, on)


# ---------------------------------------------------------------- presets

@pytest.mark.parametrize("epochs", [16, 32, 88])
def test_ffcv_presets_are_the_yaml(epochs):
    p = get_preset(f"resnet50-{epochs}ep")
    # rn50_configs/rn50_<epochs>_epochs.yaml, key by key.
    assert (p.base_lr, p.base_batch) == (1.7, 8 * 512)          # lr.lr, batch_size x world_size
    assert (p.progressive_min_size, p.image_size) == (160, 192)  # min_res, max_res
    assert (p.progressive_start_epoch, p.progressive_end_epoch) == FFCV_RAMPS[epochs]
    assert (p.epochs, p.weight_decay, p.label_smoothing, p.momentum) == (epochs, 1e-4, 0.1, 0.9)
    assert p.blurpool and p.eval_flip and p.eval_image_size == 256
    assert p.schedule == "triangular" and p.warmup_epochs == 2  # cyclic, lr_peak_epoch 2
    assert p.warmup_start_fraction == 1e-4 and not p.nesterov
    assert p.eval_crop_fraction == 0.875 and not p.zero_init_last_bn
    assert "ffcv-imagenet" in p.source and f"rn50_{epochs}_epochs.yaml" in p.source
    assert FFCV_RAMPS == {16: (11, 13), 32: (23, 27), 88: (65, 76)}


def test_resnet50_is_goyal_et_al():
    p = get_preset("resnet50")
    assert (p.base_lr, p.base_batch, p.epochs, p.warmup_epochs) == (0.1, 256, 90, 5)
    assert p.schedule == "step" and p.decay_epochs == (30, 60, 80) and p.decay_factor == 0.1
    assert (p.weight_decay, p.label_smoothing, p.momentum, p.nesterov) == (1e-4, 0.0, 0.9, False)
    assert p.warmup_from_base_lr and p.zero_init_last_bn and not p.blurpool
    assert p.bn_group_devices is None and p.eval_image_size == 224 and not p.eval_flip
    assert "1706.02677" in p.source


# ---------------------------------------------------------------- plan -> TrainConfig

def _plan(preset, global_batch: int, per_device: int, devices: int = 8, epochs=None):
    lr, warmup, _ = planner.choose_learning_rate(preset, global_batch)
    bn, _ = planner.choose_bn_group(preset, per_device, devices)
    fields = {f.name: None for f in dataclasses.fields(planner.Plan)}
    fields.update(preset=preset.name, data_path="x", num_classes=1000,
                  image_size=preset.image_size, epochs=epochs or preset.epochs,
                  per_device_batch=per_device, local_devices=devices, num_hosts=1,
                  global_batch=global_batch, lr=lr, warmup_epochs=warmup, decisions=(),
                  bn_group_devices=bn)
    return planner.Plan(**fields)


def test_ffcv_plan_gives_the_trainer_the_whole_recipe():
    preset = get_preset("resnet50-16ep")
    cfg = planner.train_config(_plan(preset, 4096, 512), preset, 1000)
    assert cfg.learning_rate == pytest.approx(1.7) and cfg.schedule == "triangular"
    assert (cfg.warmup_epochs, cfg.warmup_start_fraction) == (2.0, 1e-4)
    assert cfg.blurpool and cfg.eval_flip and cfg.eval_size == 256 and not cfg.nesterov
    assert [cfg.image_size_at(e) for e in (0, 11, 12, 13, 15)] == [160, 160, 192, 192, 192]
    assert cfg.bn_group_devices == 1 and cfg.weight_decay == 1e-4
    # 1,024 images per step: the rate scales linearly, 1.7 x 1024 / 4096.
    cfg = planner.train_config(_plan(preset, 1024, 128), preset, 1000)
    assert cfg.learning_rate == pytest.approx(0.425)
    # Twice the epochs: the resize ramp stretches with the schedule, the warmup does not.
    cfg = planner.train_config(_plan(preset, 4096, 512, epochs=32), preset, 1000)
    assert (cfg.progressive_start_epoch, cfg.progressive_end_epoch) == (22, 26)
    assert cfg.warmup_epochs == 2


def test_goyal_plan_warms_up_from_the_base_rate_and_steps_down():
    preset = get_preset("resnet50")
    cfg = planner.train_config(_plan(preset, 8192, 1024), preset, 1000)
    assert cfg.learning_rate == pytest.approx(3.2)  # 0.1 x 8192 / 256
    lr = tr.create_learning_rate_fn(cfg, 100)
    assert float(lr(0)) == pytest.approx(0.1)       # eta = 0.1 at step 0 (Goyal 2.2)
    assert float(lr(500)) == pytest.approx(3.2)     # k eta after 5 epochs
    assert float(lr(3000)) == pytest.approx(0.32)   # /10 at epoch 30
    assert float(lr(8000)) == pytest.approx(0.0032, rel=1e-5)


def test_above_8k_the_plan_runs_lars_with_mlperf_settings():
    preset = get_preset("resnet50")
    plan = _plan(preset, 16384, 1024, devices=16)
    cfg = planner.train_config(plan, preset, 1000)
    d = scale_learning_rate("sgd", 16384)
    assert (cfg.optimizer, cfg.schedule, cfg.learning_rate) == ("lars", "poly", d.learning_rate)
    assert (cfg.nesterov, cfg.momentum, cfg.weight_decay) == (False, 0.9, 2e-4)
    assert (cfg.end_learning_rate, cfg.poly_power, cfg.warmup_start_fraction) == (1e-4, 2.0, 0.0)
    assert plan.warmup_epochs == 5  # MLPerf's, not capped by the preset


@pytest.mark.parametrize("per_device, devices, want", [
    (128, 8, 1),   # >= 32 per device: per-device statistics
    (32, 8, 1),
    (16, 8, 2),    # 2 x 16 = 32
    (8, 8, 4),     # 4 x 8 = 32
    (12, 8, 4),    # 2 x 12 < 32, 4 x 12 = 48 (groups must divide the host's 8)
    (2, 8, 8),     # even 8 x 2 < 32: the whole host
])
def test_choose_bn_group(per_device, devices, want):
    preset = dataclasses.replace(get_preset("cpu-small"), bn_group_devices=None)
    k, decision = planner.choose_bn_group(preset, per_device, devices)
    assert k == want and decision.name == "bn_group"
    assert str(per_device) in decision.reason and "32" in decision.reason


def test_choose_bn_group_keeps_a_preset_choice():
    k, decision = planner.choose_bn_group(get_preset("resnet50-16ep"), 8, 8)
    assert k == 1 and "fixed by preset resnet50-16ep" in decision.reason
    # Goyal et al.'s 32 images per BN batch: the rule, per device from 32 a device.
    assert planner.choose_bn_group(get_preset("resnet50"), 256, 8)[0] == 1
    assert planner.choose_bn_group(get_preset("resnet50"), 8, 8)[0] == 4


def test_old_train_config_json_still_loads():
    old = {"arch": "resnet50", "schedule": "cosine", "learning_rate": 0.4, "nesterov": True}
    cfg = TrainConfig.from_dict(old)
    assert cfg.bn_group_devices == 1 and cfg.progressive_min_size is None
    assert cfg.eval_size == cfg.image_size and not cfg.blurpool


def test_pack_side_serves_the_eval_size():
    # FFCV evaluates at 256 px (0.875 crop): stored shorter side >= 256 / 0.875 -> 296.
    preset = get_preset("resnet50-16ep")
    assert preset.pack_image_size == 256
    resize, _, decision = planner.choose_pack_resize(
        image_size=192, eval_image_size=256, mean_pixels=500 * 375, originals_ips=100.0,
        step_ips=1000.0)
    assert resize == 296 and "296" in decision.value
