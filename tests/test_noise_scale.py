"""The gradient noise scale (McCandlish et al. 2018, appendix A.1): the estimator on
synthetic gradients of known covariance, the two metrics of the real pmap step on 8
fake CPU devices, and the probe through the trainers' loop."""

import dataclasses
import math

import jax
import numpy as np
import pytest

from trainers import noise_scale as ns
from trainers import train as tr
from trainers.feed import replicated_sharding


def test_estimates_are_exact_on_expected_norms():
    # E|G_B|^2 = |G|^2 + tr(Sigma) / B; feeding the expectations returns both exactly.
    g2, trace = 4.0, 640.0
    small = g2 + trace / 16
    big = g2 + trace / 128
    got = ns.gradient_noise_estimates(small, big, 16, 128)
    assert got == pytest.approx((g2, trace))
    assert ns.simple_noise_scale(*got) == pytest.approx(160.0)


def test_estimates_refuse_one_batch_size():
    with pytest.raises(ValueError, match="B_small \\(8\\) < B_big \\(8\\)"):
        ns.gradient_noise_estimates(1.0, 1.0, 8, 8)
    assert math.isnan(ns.simple_noise_scale(-1.0, 5.0))


def _quadratic_step(rng, theta, mu, chol, devices, b_small):
    """One data-parallel step of the quadratic model ``loss_i = |theta - x_i|^2 / 2``
    with ``x_i ~ N(mu, L L^T)``: per-example gradient ``theta - x_i``, so the true
    gradient is ``theta - mu`` and the per-example covariance ``L L^T``. Returns the
    step's ``(mean_d |g_d|^2, |mean_d g_d|^2)``, as the pmap step reports them."""
    x = mu + rng.standard_normal((devices, b_small, mu.size)) @ chol.T
    per_device = (theta - x).mean(axis=1)  # [devices, dim]: gradient over B_small
    return float(np.mean(np.sum(per_device ** 2, axis=1))), float(
        np.sum(per_device.mean(axis=0) ** 2))


@pytest.mark.parametrize("devices,b_small", [(8, 16), (2, 64)])
def test_ema_recovers_the_closed_form_noise_scale(devices, b_small):
    rng = np.random.default_rng(0)
    dim = 20
    a = rng.standard_normal((dim, dim)) * 0.3
    cov = a @ a.T + np.diag(np.linspace(0.5, 2.0, dim))  # a full covariance
    chol = np.linalg.cholesky(cov)
    mu = rng.standard_normal(dim)
    theta = mu + 0.4 * np.ones(dim) / np.sqrt(dim) * np.sqrt(np.trace(cov) / 100)
    truth = np.trace(cov) / np.sum((theta - mu) ** 2)  # B_simple = tr(Sigma) / |G|^2
    assert 50 < truth < 1000  # between B_small and far past B_big: a real test
    ema = ns.NoiseScaleEMA(b_small, devices * b_small, decay=0.999)
    for _ in range(6000):
        ema.update(*_quadratic_step(rng, theta, mu, chol, devices, b_small))
    assert ema.steps == 6000
    assert ema.b_simple == pytest.approx(truth, rel=0.08)
    assert ema.trace_sigma == pytest.approx(np.trace(cov), rel=0.05)
    assert ema.grad_sq == pytest.approx(np.sum((theta - mu) ** 2), rel=0.08)


def test_ema_ignores_non_finite_steps_and_starts_empty():
    ema = ns.NoiseScaleEMA(4, 32)
    assert math.isnan(ema.b_simple) and ema.steps == 0
    ema.update(float("nan"), 1.0)
    assert ema.steps == 0
    ema.update(4.0 + 640 / 4, 4.0 + 640 / 32)
    assert ema.b_simple == pytest.approx(160.0)


SGD = tr.TrainConfig(arch="resnet_tiny", width=4, small_images=True, image_size=16,
                     num_classes=5, per_device_batch=4, epochs=1, learning_rate=0.5,
                     warmup_epochs=0, weight_decay=0.0, label_smoothing=0.0, momentum=0.0,
                     nesterov=False, schedule="constant")


def test_pmap_step_reports_both_squared_norms():
    """On 8 fake devices: ``grad_sq_per_device`` is the mean over devices of each
    device's gradient squared norm (reference: the same loss differentiated per device
    under ``vmap`` with the step's axis name), and ``grad_sq_mean`` is the squared norm
    of the averaged gradient, which plain SGD (no momentum, no decay) applies: the
    parameter change is ``-lr x`` that gradient."""
    n = jax.local_device_count()
    assert n == 8
    cfg = SGD
    lr_fn = tr.create_learning_rate_fn(cfg, 10)
    model = tr.create_model(cfg)
    state = tr.create_train_state(jax.random.PRNGKey(0), cfg, model, lr_fn)
    rng = np.random.default_rng(1)
    b = n * cfg.per_device_batch
    batch = tr.shard_batch({"image": rng.integers(0, 256, (b, 16, 16, 3), dtype=np.uint8),
                            "label": rng.integers(0, 5, (b,), dtype=np.int32)}, n)

    def device_grad(image, label):
        def loss(params):
            logits, _ = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                       tr.normalize_images(image, np.float32), train=True,
                                       mutable=["batch_stats"])
            return tr.cross_entropy_loss(logits, label, cfg.num_classes, 0.0)
        return jax.grad(loss)(state.params)

    grads = jax.vmap(device_grad, axis_name="batch")(batch["image"], batch["label"])
    per_dev = [sum(float(np.sum(np.square(np.asarray(g[d]))))
                   for g in jax.tree_util.tree_leaves(grads)) for d in range(n)]
    before = jax.device_get(state.params)
    p_step = tr.make_p_train_step(cfg, lr_fn)
    new, metrics = p_step(jax.device_put(state, replicated_sharding()), batch)
    metrics = jax.device_get(metrics)
    after = jax.device_get(new.params)
    moved = sum(float(np.sum(np.square((np.asarray(a) - np.asarray(o)) / cfg.learning_rate)))
                for a, o in zip(jax.tree_util.tree_leaves(after),
                                jax.tree_util.tree_leaves(before)))
    assert metrics["grad_sq_per_device"][0] == pytest.approx(np.mean(per_dev), rel=1e-3)
    assert metrics["grad_sq_mean"][0] == pytest.approx(moved, rel=1e-3)
    # averaging over 8 devices removes noise: |mean g|^2 < mean |g|^2 (different data)
    assert metrics["grad_sq_mean"][0] < metrics["grad_sq_per_device"][0]
    np.testing.assert_allclose(metrics["grad_sq_mean"], metrics["grad_sq_mean"][0])


def test_probe_through_the_loop_on_packed_data(tmp_path):
    """The probe trains a few steps on 8 devices through the trainers' loop and reads a
    finite noise scale back, averaged over the steps after the compile step; on one
    device it measures nothing and says why."""
    from probes.noise_scale import measure_noise_scale
    from trainers.options import LoopOptions, PackOptions
    from trainers.pack import pack_folder
    from trainers.synthetic import write_synthetic_dataset

    src = tmp_path / "src"
    write_synthetic_dataset(src, num_classes=4, images_per_class=8)
    pack_folder(str(src), str(tmp_path / "packed"), PackOptions(num_shards=2, pack_threads=1))
    cfg = dataclasses.replace(SGD, num_classes=4, per_device_batch=2, momentum=0.9, epochs=3,
                              learning_rate=0.05)
    opts = LoopOptions(decode_threads=1, prefetch_batches=2, cache_decoded=False)
    rep = measure_noise_scale(cfg, str(tmp_path / "packed"), opts, steps=4, devices=8)
    assert (rep.steps, rep.averaged_steps, rep.global_batch) == (4, 3, 16)
    assert rep.b_simple is None or rep.b_simple > 0
    assert (rep.b_simple is None) == bool(rep.note)
    assert len(rep.per_window) >= 1
    one = measure_noise_scale(cfg, str(tmp_path / "packed"), opts, steps=4, devices=1)
    assert one.b_simple is None and "one device" in one.note and one.steps == 0
