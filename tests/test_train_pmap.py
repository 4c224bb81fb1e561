"""The pmap train step on 8 fake CPU devices (XLA_FLAGS set in conftest.py), the
learning-rate schedule, weight-decay masking and the step-memory analysis."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainers.feed import replicated_sharding

from trainers import train as tr

TINY = tr.TrainConfig(arch="resnet_tiny", width=4, small_images=True, image_size=16,
                      num_classes=5, per_device_batch=4, epochs=1, learning_rate=0.1,
                      warmup_epochs=0, weight_decay=1e-4, label_smoothing=0.1)


def _batch(n_dev, cfg, seed=0):
    rng = np.random.default_rng(seed)
    b = n_dev * cfg.per_device_batch
    host = {"image": rng.integers(0, 256, (b, cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
            "label": rng.integers(0, cfg.num_classes, (b,), dtype=np.int32)}
    return tr.shard_batch(host, n_dev)


def test_eight_fake_devices_are_there():
    assert jax.local_device_count() == 8


def _shards_equal(tree):
    """Every device's copy of every leaf of the replicated state is the same."""
    for leaf in jax.tree_util.tree_leaves(tree):
        copies = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert len(copies) == jax.local_device_count()
        for c in copies[1:]:
            np.testing.assert_array_equal(copies[0], c)


def test_pmap_step_keeps_parameters_identical_across_devices():
    n = jax.local_device_count()
    lr = tr.create_learning_rate_fn(TINY, 10)
    state = tr.create_train_state(jax.random.PRNGKey(0), TINY, tr.create_model(TINY), lr)
    before = jax.device_get(state.params)
    state = jax.device_put(state, replicated_sharding())
    p_step = tr.make_p_train_step(TINY, lr)
    for i in range(3):  # each device sees different images
        state, metrics = p_step(state, _batch(n, TINY, seed=i))
    _shards_equal((state.params, state.batch_stats, state.opt_state))
    params = jax.device_get(state.params)
    # One array per leaf (no per-device stack) ... and the parameters did change.
    assert all(a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(params),
                                                  jax.tree_util.tree_leaves(before)))
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(params),
                                                   jax.tree_util.tree_leaves(before))]
    assert any(moved)
    m = jax.device_get(metrics)
    assert m["loss"].shape == (n,)
    assert np.all(np.isfinite(m["loss"])) and np.all(m["loss"] == m["loss"][0])


def test_nan_on_one_device_makes_every_replica_skip_the_step():
    """A NaN in one device's images: the averaged loss is NaN, every device skips,
    the replicas stay identical and equal to the state before the step."""
    n = jax.local_device_count()
    lr = tr.create_learning_rate_fn(TINY, 10)
    state = jax.device_put(
        tr.create_train_state(jax.random.PRNGKey(0), TINY, tr.create_model(TINY), lr),
        replicated_sharding())
    p_step = tr.make_p_train_step(TINY, lr)
    state, _ = p_step(state, _batch(n, TINY, seed=0))
    before = jax.device_get((state.params, state.batch_stats))
    step_before = int(jax.device_get(state.step))
    # NaN cannot live in uint8 images: feed the same batch as float32 (the step
    # normalises any dtype) with one NaN pixel on device 3.
    bad = _batch(n, TINY, seed=1)
    bad["image"] = bad["image"].astype(np.float32)
    bad["image"][3, 0, 0, 0, 0] = np.nan
    state, metrics = p_step(state, bad)
    m = jax.device_get(metrics)
    assert np.all(m["nonfinite"] == 1.0)  # every device took the same decision
    _shards_equal((state.params, state.batch_stats, state.opt_state))
    after = jax.device_get((state.params, state.batch_stats))
    for a, b in zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(before)):
        np.testing.assert_array_equal(a, b)
    assert int(jax.device_get(state.step)) == step_before
    # The next finite step trains again.
    state, metrics = p_step(state, _batch(n, TINY, seed=2))
    assert np.all(jax.device_get(metrics)["nonfinite"] == 0.0)


def test_eval_step_counts_only_masked_examples():
    n = jax.local_device_count()
    lr = tr.create_learning_rate_fn(TINY, 10)
    state = jax.device_put(
        tr.create_train_state(jax.random.PRNGKey(0), TINY, tr.create_model(TINY), lr),
        replicated_sharding())
    batch = _batch(n, TINY)
    mask = np.zeros((n, TINY.per_device_batch), bool)
    mask[:, :3] = True  # 3 of 4 per device
    out = jax.device_get(tr.make_p_eval_step(TINY)(state, {**batch, "mask": mask}))
    assert out["count"] == 3 * n
    assert 0 <= out["top1"] <= out["top5"] <= out["count"]


def test_schedule_warmup_then_cosine():
    cfg = dataclasses.replace(TINY, epochs=10, warmup_epochs=2, learning_rate=0.4)
    fn = tr.create_learning_rate_fn(cfg, steps_per_epoch=100)
    # warmup: linear 0 -> 0.4 over 200 steps; then cosine over the remaining 800.
    assert float(fn(0)) == pytest.approx(0.0)
    assert float(fn(100)) == pytest.approx(0.2)
    assert float(fn(200)) == pytest.approx(0.4)
    assert float(fn(600)) == pytest.approx(0.2, abs=1e-6)  # half-way through the cosine
    assert float(fn(1000)) == pytest.approx(0.0, abs=1e-7)


def test_weight_decay_skips_batch_norm_and_biases():
    lr = tr.create_learning_rate_fn(TINY, 10)
    state = tr.create_train_state(jax.random.PRNGKey(0), TINY, tr.create_model(TINY), lr)
    mask = tr.decay_mask(state.params)
    flat = {"/".join(str(k.key) for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat["conv_init/kernel"] and flat["Dense_0/kernel"]
    assert not flat["Dense_0/bias"] and not flat["bn_init/scale"] and not flat["bn_init/bias"]
    # The optimizer applies decay only to masked leaves: zero gradients move only kernels.
    zero = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    upd, _ = state.tx.update(zero, state.tx.init(state.params), state.params)
    for path, u in jax.tree_util.tree_leaves_with_path(upd):
        name = "/".join(str(k.key) for k in path)
        assert bool(jnp.any(u != 0)) == flat[name], name


def test_compiled_step_memory_grows_with_the_batch():
    a = tr.compiled_step_memory(TINY, 8)
    b = tr.compiled_step_memory(TINY, 32)
    assert a is not None and b is not None
    assert a["total"] == a["argument"] + a["output"] + a["temp"] - a["alias"]
    assert b["temp"] > a["temp"]


def test_batch_not_divisible_by_devices_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Batch size \(10\) must be divisible by device count \(8\)"):
        tr.shard_batch({"image": np.zeros((10, 2)), "label": np.zeros(10)}, 8)
