"""Each learning-rate schedule the trainer runs, checked by value at chosen steps
against the formula of its source (written out here by hand, not with the trainer's
code), and LARS as the trainer builds it."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autotune import lr_rules
from trainers import train as tr
from trainers.options import SCHEDULES, TrainConfig

SPE = 10  # steps per epoch
BASE = TrainConfig(arch="resnet_tiny", width=4, small_images=True, image_size=16,
                   num_classes=3, per_device_batch=2, epochs=10, learning_rate=2.0,
                   warmup_epochs=2)


def _lr(config: TrainConfig, step: int) -> float:
    return float(tr.create_learning_rate_fn(config, SPE)(step))


@pytest.mark.parametrize("step, want", [
    # Goyal et al. 2017 sec. 2.2 warmup from 0 (f = 0): lr x t / W, W = 20 steps.
    (0, 0.0), (5, 2.0 * 5 / 20), (19, 2.0 * 19 / 20),
    # cosine: lr x (1 + cos(pi (t - W) / (T - W))) / 2, T = 100.
    (20, 2.0), (60, 2.0 * 0.5 * (1 + math.cos(math.pi * 40 / 80))),
    (99, 2.0 * 0.5 * (1 + math.cos(math.pi * 79 / 80))), (100, 0.0),
])
def test_cosine_with_warmup(step, want):
    assert _lr(dataclasses.replace(BASE, schedule="cosine"), step) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("step, want", [
    # Goyal et al.: warmup from the base rate eta (here f = 0.25 of the peak) to k x eta.
    (0, 0.5), (10, 0.5 + 1.5 * 10 / 20), (20, 2.0),
    # x 0.1 at epochs 3 and 6 (steps 30 and 60; Goyal/He use 30, 60, 80 of 90).
    (29, 2.0), (30, 0.2), (59, 0.2), (60, 0.02), (99, 0.02),
])
def test_step_schedule_goyal(step, want):
    cfg = dataclasses.replace(BASE, schedule="step", warmup_start_fraction=0.25,
                              decay_epochs=(3.0, 6.0), decay_factor=0.1)
    assert _lr(cfg, step) == pytest.approx(want, rel=1e-6, abs=1e-7)


def test_constant_after_warmup():
    cfg = dataclasses.replace(BASE, schedule="constant")
    assert [_lr(cfg, t) for t in (0, 10, 20, 55, 99)] == pytest.approx([0.0, 1.0, 2.0, 2.0, 2.0])


def _mlperf_poly(step: int, peak: float, warmup: int, total: int, end: float = 1e-4) -> float:
    """mlcommons/training image_classification/tensorflow2/lars_util.py
    PolynomialDecayWithWarmup: warmup_rate = peak x step / warmup_steps when step <=
    warmup_steps, else tf.keras PolynomialDecay(peak, decay_steps = train_steps -
    warmup_steps + 1, end, power 2) at step - warmup_steps."""
    if step <= warmup:
        return peak * step / warmup
    decay = total - warmup + 1
    p = min(step - warmup, decay) / decay
    return (peak - end) * (1 - p) ** 2 + end


@pytest.mark.parametrize("step", [0, 7, 20, 21, 50, 99, 100, 150])
def test_poly_is_mlperf_polynomial_decay_with_warmup(step):
    # The MLPerf table's peak at global batch 16k (25), 2 warmup epochs of 10 here.
    cfg = dataclasses.replace(BASE, schedule="poly", learning_rate=25.0, warmup_epochs=2,
                              epochs=10, end_learning_rate=1e-4, poly_power=2.0)
    assert _lr(cfg, step) == pytest.approx(_mlperf_poly(step, 25.0, 20, 100), rel=1e-5)


def _ffcv_cyclic(step: int, lr: float, epochs: int, peak_epoch: int) -> float:
    """libffcv/ffcv-imagenet train_imagenet.py: get_cyclic_lr(epoch) = np.interp(
    [epoch], [0, lr_peak_epoch, epochs], [1e-4 x lr, lr, 0]); train_loop interpolates
    per iteration between get_lr(epoch) and get_lr(epoch + 1)."""
    epoch, ix = divmod(step, SPE)

    def get_lr(e):
        return np.interp([e], [0, peak_epoch, epochs], [1e-4 * lr, lr, 0])[0]

    return np.interp(np.arange(SPE), [0, SPE], [get_lr(epoch), get_lr(epoch + 1)])[ix]


@pytest.mark.parametrize("step", [0, 1, 9, 10, 15, 20, 21, 57, 99])
def test_triangular_is_ffcv_step_free_ramp(step):
    cfg = dataclasses.replace(BASE, schedule="triangular", learning_rate=1.7, epochs=10,
                              warmup_epochs=2, warmup_start_fraction=1e-4)
    assert _lr(cfg, step) == pytest.approx(_ffcv_cyclic(step, 1.7, 10, 2), rel=1e-5, abs=1e-7)


def test_schedule_runs_inside_jit_on_a_step_array():
    for name in SCHEDULES:
        fn = tr.create_learning_rate_fn(dataclasses.replace(BASE, schedule=name), SPE)
        got = jax.jit(fn)(jnp.asarray(37, jnp.int32))
        assert got.dtype == jnp.float32 and float(got) == pytest.approx(float(fn(37)))


def test_every_schedule_the_rules_name_exists_in_the_trainer():
    assert set(lr_rules.RULE_SCHEDULES) <= set(SCHEDULES)
    d = lr_rules.scale_learning_rate("sgd", 16384)
    assert d.schedule_name in SCHEDULES and d.schedule_name == "poly"
    assert (d.end_learning_rate, d.poly_power, d.nesterov) == (1e-4, 2.0, False)
    assert lr_rules.scale_learning_rate("sgd", 1024).schedule_name == ""  # the preset's
    with pytest.raises(ValueError, match="schedule 'cyclic'"):
        TrainConfig(schedule="cyclic")


def test_lars_update_is_you_et_al_trust_ratio():
    """One LARS step from zero momentum on a kernel w with gradient g (You, Gitman &
    Ginsburg 2017, Algorithm 1; optax.lars, trust coefficient 0.001): update =
    -lr x 0.001 x |w| / |g + wd w| x (g + wd w); biases (1-D) get plain -lr x g."""
    cfg = dataclasses.replace(BASE, optimizer="lars", weight_decay=1e-3, nesterov=False,
                              momentum=0.9)
    tx = tr.create_optimizer(cfg, 0.5)
    w = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])  # |w| = 5
    b = jnp.asarray([1.0, -1.0])
    params = {"kernel": w, "bias": b}
    grads = {"kernel": jnp.asarray([[0.1, 0.0], [0.0, 0.2]]), "bias": jnp.asarray([0.3, 0.3])}
    updates, _ = tx.update(grads, tx.init(params), params)
    g = np.asarray(grads["kernel"]) + 1e-3 * np.asarray(w)
    want = -0.5 * 0.001 * 5.0 / np.linalg.norm(g) * g
    np.testing.assert_allclose(np.asarray(updates["kernel"]), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(updates["bias"]), -0.5 * np.asarray([0.3, 0.3]),
                               rtol=1e-6)


def test_sgd_nesterov_follows_the_config():
    params = {"kernel": jnp.ones((2, 2))}
    grads = {"kernel": jnp.full((2, 2), 0.5)}
    for nesterov, want in ((False, -0.1 * 0.5), (True, -0.1 * 0.5 * 1.9)):
        cfg = dataclasses.replace(BASE, optimizer="sgd", weight_decay=0.0, nesterov=nesterov)
        tx = tr.create_optimizer(cfg, 0.1)
        updates, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(np.asarray(updates["kernel"]), want, rtol=1e-6)
