"""Batch-norm groups: per-device batch statistics (the default), groups of devices,
or every device; the running statistics averaged once per step."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainers import train as tr
from trainers.options import TrainConfig

CFG = TrainConfig(arch="resnet_tiny", width=4, small_images=True, image_size=8,
                  num_classes=3, per_device_batch=4, epochs=1, learning_rate=0.1,
                  warmup_epochs=0, label_smoothing=0.0)


def _data(n_dev: int):
    """Each device a different distribution: device d's pixels are offset by 60 d."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (n_dev, CFG.per_device_batch, 8, 8, 3))
    img = (img + 60 * np.arange(n_dev)[:, None, None, None, None]).astype(np.uint8)
    return {"image": img, "label": rng.integers(0, 3, (n_dev, CFG.per_device_batch),
                                                dtype=np.int32)}


def _forward(config: TrainConfig, n_dev: int):
    """Per-device training-mode forward: ``(logits, new running means)`` stacked by
    device, from one init."""
    model = tr.create_model(config, num_devices=n_dev)
    variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 8, 8, 3)), train=False))(
        jax.random.PRNGKey(0))

    def fwd(images):
        x = tr.normalize_images(images, jnp.float32)
        logits, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return logits, state["batch_stats"]

    out = jax.pmap(fwd, axis_name="batch", devices=jax.local_devices()[:n_dev])(
        _data(n_dev)["image"])
    return variables, jax.device_get(out)


def _first_mean(stats):
    return np.asarray(stats["bn_init"]["mean"])


def test_per_device_statistics_differ_and_sync_ones_agree():
    _, (logits_dev, stats_dev) = _forward(dataclasses.replace(CFG, bn_group_devices=1), 2)
    _, (logits_sync, stats_sync) = _forward(dataclasses.replace(CFG, bn_group_devices=0), 2)
    m_dev, m_sync = _first_mean(stats_dev), _first_mean(stats_sync)
    # Per device: each device's running mean moved by its own batch's mean.
    assert not np.allclose(m_dev[0], m_dev[1], atol=1e-3)
    # Synchronised: one mean over both devices' batches, the average of the two.
    np.testing.assert_allclose(m_sync[0], m_sync[1], rtol=1e-6)
    np.testing.assert_allclose(m_sync[0], m_dev.mean(axis=0), rtol=1e-4, atol=1e-6)
    # The normalisation differs within the step, so the outputs do too.
    assert not np.allclose(logits_dev, logits_sync, atol=1e-4)


def test_per_device_mode_normalises_each_device_by_its_own_batch():
    variables, (logits, _) = _forward(dataclasses.replace(CFG, bn_group_devices=1), 2)
    model = tr.create_model(dataclasses.replace(CFG, bn_group_devices=1), num_devices=2)
    images = _data(2)["image"]
    for d in range(2):  # the same as running that device's batch alone
        x = tr.normalize_images(images[d], jnp.float32)
        alone, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        np.testing.assert_allclose(logits[d], np.asarray(alone), rtol=1e-4, atol=1e-5)


def test_groups_of_devices_pool_within_the_group():
    _, (_, stats) = _forward(dataclasses.replace(CFG, bn_group_devices=2), 4)
    m = _first_mean(stats)
    np.testing.assert_allclose(m[0], m[1], rtol=1e-6)
    np.testing.assert_allclose(m[2], m[3], rtol=1e-6)
    assert not np.allclose(m[0], m[2], atol=1e-3)
    assert tr.bn_axis(dataclasses.replace(CFG, bn_group_devices=2), 4) == (
        "batch", [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="bn_group_devices \\(3\\)"):
        tr.bn_axis(dataclasses.replace(CFG, bn_group_devices=3), 4)


def test_train_step_averages_the_running_statistics_once_per_step():
    """Per-device normalisation inside the step, then one replicated set of running
    statistics: the mean over devices of what each device's batch gave."""
    cfg = dataclasses.replace(CFG, bn_group_devices=1)
    n = 2
    _, (_, stats_dev) = _forward(cfg, n)
    lr = tr.create_learning_rate_fn(cfg, 10)
    model = tr.create_model(cfg, num_devices=n)
    state = tr.create_train_state(jax.random.PRNGKey(0), cfg, model, lr)
    step = jax.pmap(functools.partial(tr.train_step, learning_rate_fn=lr, config=cfg),
                    axis_name="batch", in_axes=(None, 0), out_axes=(None, 0),
                    devices=jax.local_devices()[:n])
    new_state, _ = step(state, _data(n))
    got = jax.device_get(new_state.batch_stats)
    want = jax.tree_util.tree_map(lambda x: np.asarray(x).mean(axis=0), stats_dev)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # One copy: every device holds the same running statistics after the step.
    for leaf in jax.tree_util.tree_leaves(new_state.batch_stats):
        copies = [np.asarray(s.data) for s in leaf.addressable_shards]
        for c in copies[1:]:
            np.testing.assert_array_equal(copies[0], c)
