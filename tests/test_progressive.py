"""Progressive resizing (FFCV's ``get_resolution``): the side changes at the configured
epochs, the pipeline's batches follow, the step compiles once per side, and a resume
across a change is bit-identical."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import packed_jpeg_folder, write_jpeg_folder
from trainers import input_pipeline as ip
from trainers import pack as pack_lib
from trainers import train as tr
from trainers.loop import train_and_evaluate
from trainers.options import AugmentConfig, LoopOptions, PackOptions, TrainConfig
from trainers.pack import pack_folder

# 3 epochs: 8 px in epoch 0 (<= start_ramp), interp 12 px in epoch 1, 16 px from epoch 2.
CFG = TrainConfig(arch="resnet_tiny", width=4, small_images=True, image_size=16,
                  num_classes=3, per_device_batch=2, epochs=3, learning_rate=0.05,
                  warmup_epochs=0, log_every_steps=1, min_crop_scale=0.5,
                  progressive_min_size=8, progressive_start_epoch=0,
                  progressive_end_epoch=2, progressive_multiple=4)


def _ffcv_get_resolution(epoch, min_res, max_res, end_ramp, start_ramp):
    """libffcv/ffcv-imagenet train_imagenet.py ImageNetTrainer.get_resolution."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / 32)) * 32


@pytest.mark.parametrize("epochs, start, end", [(16, 11, 13), (32, 23, 27), (88, 65, 76)])
def test_sizes_follow_ffcv_get_resolution(epochs, start, end):
    cfg = TrainConfig(image_size=192, epochs=epochs, progressive_min_size=160,
                      progressive_start_epoch=start, progressive_end_epoch=end)
    got = [cfg.image_size_at(e) for e in range(epochs)]
    assert got == [_ffcv_get_resolution(e, 160, 192, end, start) for e in range(epochs)]
    assert got[start] == 160 and got[end] == 192 and set(got) <= {160, 192}
    assert TrainConfig(image_size=192).image_size_at(0) == 192  # not progressive


def test_tiny_config_sizes():
    assert [CFG.image_size_at(e) for e in range(3)] == [8, 12, 16]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return packed_jpeg_folder(tmp_path_factory.mktemp("progressive"), classes=3, per_class=16,
                              size=(40, 32), num_shards=2)


def test_pipeline_output_size_follows_the_epoch(packed):
    result = pack_lib.load_pack_result(packed)
    lengths = result.split("train").shard_lengths
    cfg = ip.PipelineConfig(host_batch=8, augment=AugmentConfig(image_size=16, min_scale=0.5),
                            decode_threads=1, epoch_sizes=(8, 12, 16))
    spe = ip.steps_per_epoch(lengths, 8)
    ds = ip.TrainBatches(pack_lib.shard_paths(packed, "train"), lengths, cfg, spe, 3)
    for k in range(3 * spe):
        side = (8, 12, 16)[k // spe]
        assert ds[k]["image"].shape == (8, side, side, 3)


def _counting_step(monkeypatch):
    """Count traces of the train step: pmap traces (and compiles) once per new
    input shape, so this is the number of compiled step programs."""
    shapes = []
    real = tr.train_step

    def counted(state, batch, **kw):
        shapes.append(tuple(batch["image"].shape))
        return real(state, batch, **kw)

    monkeypatch.setattr(tr, "train_step", counted)
    return shapes


def _opts(**kw):
    return LoopOptions(decode_threads=1, eval_every_epochs=0, checkpoint_every_s=0,
                       synthetic_steps=1, **kw)


def test_step_compiles_once_per_size_and_resume_across_a_change_is_exact(
        packed, tmp_path, monkeypatch):
    shapes = _counting_step(monkeypatch)
    seen = []
    ref = train_and_evaluate(CFG, str(packed), str(tmp_path / "ref"), _opts(),
                             callback=seen.append, eval_at_end=False)
    assert ref.status == "completed" and ref.steps == 3 * ref.steps_per_epoch
    # One trace per side, in epoch order: 8, 12 then 16 px.
    assert [s[2] for s in shapes] == [8, 12, 16], shapes

    # Stop inside epoch 0 (8 px), resume: the rest runs through both changes.
    spe = ref.steps_per_epoch
    first = train_and_evaluate(CFG, str(packed), str(tmp_path / "resumed"),
                               _opts(max_steps=spe - 1), eval_at_end=False)
    assert first.status == "max_steps" and first.steps == spe - 1
    second = train_and_evaluate(CFG, str(packed), str(tmp_path / "resumed"), _opts(),
                                eval_at_end=False)
    assert second.resumed_from_step == spe - 1 and second.steps == ref.steps
    assert second.params_sha256 == ref.params_sha256
    # Each run compiled each side it met once: 8 | 8 | 8, 12, 16 px.
    assert [s[2] for s in shapes] == [8, 12, 16, 8, 8, 12, 16], shapes


def test_eval_step_averages_the_logits_of_the_image_and_its_mirror():
    import functools

    import jax
    import jax.numpy as jnp
    import optax

    cfg = dataclasses.replace(CFG, progressive_min_size=None, image_size=8, eval_flip=True)
    lr = tr.create_learning_rate_fn(cfg, 10)
    state = tr.create_train_state(jax.random.PRNGKey(1), cfg, tr.create_model(cfg), lr)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    labels = np.asarray([0, 1, 2, 0], np.int32)
    batch = {"image": images[None], "label": labels[None], "mask": np.ones((1, 4), bool)}
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def logits(x):
        return state.apply_fn(variables, tr.normalize_images(x, jnp.float32), train=False)

    for flip, want in ((True, 0.5 * (logits(images) + logits(images[:, :, ::-1]))),
                       (False, logits(images))):
        c = dataclasses.replace(cfg, eval_flip=flip)
        p_eval = jax.pmap(functools.partial(tr.eval_step, config=c), axis_name="batch",
                          in_axes=(None, 0), out_axes=None, devices=jax.local_devices()[:1])
        out = jax.device_get(p_eval(state, batch))
        loss = optax.softmax_cross_entropy_with_integer_labels(want, labels).sum()
        assert float(out["loss"]) == pytest.approx(float(loss), rel=1e-5)
        assert float(out["top1"]) == float(np.sum(np.argmax(want, -1) == labels))


def test_eval_batches_come_at_the_eval_size(tmp_path):
    write_jpeg_folder(tmp_path / "imgs", classes=2, per_class=4, size=(40, 32))
    pack_folder(tmp_path / "imgs", tmp_path / "packed",
                PackOptions(num_shards=1, val_fraction=0.5))
    result = pack_lib.load_pack_result(tmp_path / "packed")
    batches = list(ip.eval_batches(pack_lib.shard_paths(tmp_path / "packed", "validation"),
                                   result.split("validation").shard_lengths, batch=4,
                                   image_size=24, crop_fraction=0.875, threads=1))
    assert batches and all(b["image"].shape == (4, 24, 24, 3) for b in batches)
