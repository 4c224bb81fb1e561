"""The host feed (issue 12): ``trainers.feed.DeviceFeed`` / ``to_device_layout`` on the
8 fake CPU devices of conftest, and the preprocessing writing straight into the batch
buffer (``out=`` of ``trainers.preprocess``), bit-identical to a separate result."""

import itertools
import threading

import jax
import numpy as np
import pytest
import simplejpeg

from trainers import preprocess as P
from trainers.feed import DeviceFeed, batch_sharding, to_device_layout
from trainers.preprocess import BadImageError
from trainers.options import AugmentConfig

N = 8  # conftest's --xla_force_host_platform_device_count


def host_batch(k: int, per_device: int = 2, size: int = 4) -> dict:
    """Batch ``k``: every pixel of image ``i`` is ``(k * 31 + i) % 256``."""
    b = N * per_device
    ids = (k * 31 + np.arange(b)) % 256
    image = np.broadcast_to(ids[:, None, None, None], (b, size, size, 3)).astype(np.uint8)
    return {"image": image, "label": (k * 100 + np.arange(b)).astype(np.int32),
            "bad": np.int32(k)}


def test_eight_fake_devices():
    assert jax.local_device_count() == N


# ----------------------------------------------------------------------- to_device_layout

def test_to_device_layout_returns_views_and_host_scalars():
    batch = host_batch(3)
    arrays, scalars = to_device_layout(batch, N)
    assert arrays["image"].shape == (N, 2, 4, 4, 3) and arrays["label"].shape == (N, 2)
    assert np.shares_memory(arrays["image"], batch["image"])
    assert np.shares_memory(arrays["label"], batch["label"])
    assert scalars == {"bad": 3} and isinstance(scalars["bad"], int)
    assert np.array_equal(arrays["label"].reshape(-1), batch["label"])


def test_to_device_layout_rejects_an_indivisible_batch():
    msg = r"Batch size \(12\) must be divisible by device count \(8\)"
    with pytest.raises(ValueError, match=msg):
        to_device_layout({"image": np.zeros((12, 2, 2, 3), np.uint8)}, N)


# ----------------------------------------------------------------------------- DeviceFeed

def test_feed_yields_every_batch_in_order_sharded_over_the_devices():
    batches = [host_batch(k) for k in range(5)]
    want = batch_sharding()
    with DeviceFeed(iter(batches), depth=2) as feed:
        got = list(feed)
    assert len(got) == 5 and feed.batches_out == 5
    for k, (dev, scalars) in enumerate(got):
        assert scalars == {"bad": k}
        assert set(dev) == {"image", "label"}
        img, lab = dev["image"], dev["label"]
        assert img.shape == (N, 2, 4, 4, 3) and img.dtype == np.uint8
        assert lab.shape == (N, 2) and lab.dtype == np.int32
        assert img.sharding.is_equivalent_to(want, img.ndim)
        assert [s.device for s in img.addressable_shards] == jax.local_devices()
        for d, shard in enumerate(img.addressable_shards):  # device d holds slice d
            assert shard.data.shape == (1, 2, 4, 4, 3)
            assert np.array_equal(np.asarray(shard.data)[0], batches[k]["image"][2 * d:2 * d + 2])
        assert np.array_equal(np.asarray(lab).reshape(-1), batches[k]["label"])


def test_feed_stops_at_the_end_and_stays_stopped():
    feed = DeviceFeed(iter([host_batch(0), host_batch(1)]), depth=2)
    assert next(feed)[1] == {"bad": 0}
    assert next(feed)[1] == {"bad": 1}
    for _ in range(2):
        with pytest.raises(StopIteration):
            next(feed)
    feed.close()
    assert not feed._thread.is_alive()


def test_pipeline_error_is_raised_on_the_consumer_at_its_batch():
    class Broken(RuntimeError):
        pass

    def source():
        yield host_batch(0)
        yield host_batch(1)
        raise Broken("record 7 of shard 3 is damaged")

    feed = DeviceFeed(source(), depth=2)
    got = []
    with pytest.raises(Broken, match="record 7 of shard 3"):
        for _, scalars in feed:
            got.append(scalars["bad"])
    assert got == [0, 1]  # both batches before the error were delivered
    with pytest.raises(StopIteration):
        next(feed)
    feed.close()


def test_indivisible_batch_is_raised_on_the_consumer():
    feed = DeviceFeed(iter([{"image": np.zeros((12, 2, 2, 3), np.uint8)}]), depth=2)
    with pytest.raises(ValueError, match=r"Batch size \(12\) must be divisible"):
        next(feed)
    feed.close()


def test_close_returns_while_the_producer_waits_on_a_full_queue():
    depth = 1
    asked = threading.Event()
    pulled = []

    def endless():
        for k in itertools.count():
            pulled.append(k)
            if k == depth:  # the queue is full now: this batch's put will wait
                asked.set()
            yield host_batch(k)

    feed = DeviceFeed(endless(), depth=depth)
    assert asked.wait(timeout=60)
    feed.close(timeout_s=30)
    assert not feed._thread.is_alive()
    assert len(pulled) <= depth + 2  # it stopped pulling from the pipeline


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match=r"depth \(0\) must be >= 1"):
        DeviceFeed(iter([]), depth=0)


# ---------------------------------------- preprocessing straight into the batch buffer

def _samples(shared_data, n: int):
    files = sorted((shared_data / "imagenet-samples").glob("*/*.JPEG"))
    if not files:
        pytest.skip("imagenet-samples absent")
    return files[:n]


def _greyscale(shared_data):
    out = []
    for f in sorted((shared_data / "imagenet-samples").glob("*/*.JPEG")):
        data = f.read_bytes()
        if simplejpeg.decode_jpeg_header(data)[2] == "Gray":
            out.append(data)
        if len(out) == 4:
            break
    return out


def _check_train(datas, cfg: AugmentConfig, seeds=range(3)):
    """``train_preprocess`` / ``augment_decoded`` with ``out=batch[1]`` equal their
    result without ``out``, write only ``batch[1]`` and return it."""
    s = cfg.image_size
    for i, data in enumerate(datas):
        decoded = P.decode_image(data)
        for seed in seeds:
            ref = P.train_preprocess(data, np.random.default_rng([i, seed]), cfg)
            batch = np.full((3, s, s, 3), 7, np.uint8)
            got = P.train_preprocess(data, np.random.default_rng([i, seed]), cfg, out=batch[1])
            assert np.shares_memory(got, batch[1]) and got.shape == (s, s, 3)
            assert np.array_equal(batch[1], ref), (i, seed)
            assert (batch[0] == 7).all() and (batch[2] == 7).all()

            ref = P.augment_decoded(decoded, np.random.default_rng([i, seed]), cfg)
            got = P.augment_decoded(decoded, np.random.default_rng([i, seed]), cfg, out=batch[2])
            assert np.shares_memory(got, batch[2]) and np.array_equal(batch[2], ref), (i, seed)
            assert (batch[0] == 7).all()


def test_out_is_bit_identical_on_real_imagenet_files(shared_data):
    datas = [f.read_bytes() for f in _samples(shared_data, 24)]
    _check_train(datas, AugmentConfig(224))  # resize, flip or not, DCT-scaled decodes
    _check_train(datas[:8], AugmentConfig(128, flip=False))


def test_out_is_bit_identical_on_greyscale_files(shared_data):
    datas = _greyscale(shared_data)
    assert datas, "imagenet-samples holds 23 greyscale JPEGs"
    _check_train(datas, AugmentConfig(224))


def test_out_when_the_crop_needs_no_resize(shared_data):
    # Imagenette is stored at 224 x 224: a full-image crop is already the output size,
    # so the pixels are copied (no flip) or flipped (flip) from the decode into ``out``.
    files = sorted((shared_data / "imagenette" / "train").glob("*/*.JPEG"))[:6]
    datas = [f.read_bytes() for f in files]
    assert all(P.image_header(d) == (224, 224) for d in datas)
    cfg = AugmentConfig(224, min_scale=1.0)
    _check_train(datas, cfg, seeds=range(4))
    # out aliasing the decoded image itself (augment_decoded(img, out=img)): the flip
    # must not read pixels it has already overwritten.
    for seed in range(4):
        img = P.decode_image(datas[0])
        ref = P.augment_decoded(img.copy(), np.random.default_rng(seed), cfg)
        got = P.augment_decoded(img, np.random.default_rng(seed), cfg, out=img)
        assert np.array_equal(got, ref)


def test_out_on_images_smaller_than_the_output(shared_data):
    # Upscaling: 224 x 224 Imagenette files to 320 px, and a tiny JPEG to 64 px.
    files = sorted((shared_data / "imagenette" / "train").glob("*/*.JPEG"))[:3]
    tiny = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    datas = [f.read_bytes() for f in files]
    _check_train(datas, AugmentConfig(320))
    _check_train([simplejpeg.encode_jpeg(tiny, quality=90)], AugmentConfig(64), seeds=range(6))


def test_eval_out_is_bit_identical(shared_data):
    datas = [f.read_bytes() for f in _samples(shared_data, 8)]
    datas += [f.read_bytes() for f in
              sorted((shared_data / "imagenette" / "train").glob("*/*.JPEG"))[:2]]
    for data in datas:
        for size, frac in [(224, 0.875), (224, 1.0), (160, 1.0)]:
            ref = P.eval_preprocess(data, size, frac)
            batch = np.zeros((2, size, size, 3), np.uint8)
            got = P.eval_preprocess(data, size, frac, out=batch[0])
            assert np.shares_memory(got, batch[0]) and np.array_equal(batch[0], ref)
            assert not batch[1].any()


def test_bad_out_and_bad_image_leave_out_alone():
    cfg = AugmentConfig(32)
    data = simplejpeg.encode_jpeg(np.full((40, 50, 3), 90, np.uint8), quality=90)
    for bad in (np.zeros((32, 32, 3), np.float32), np.zeros((32, 31, 3), np.uint8),
                np.zeros((32, 64, 3), np.uint8)[:, ::2]):
        with pytest.raises(ValueError, match="out must be a writable C-contiguous uint8"):
            P.train_preprocess(data, np.random.default_rng(0), cfg, out=bad)
    out = np.full((32, 32, 3), 7, np.uint8)
    with pytest.raises(BadImageError):
        P.train_preprocess(data[: len(data) // 2], np.random.default_rng(0), cfg, out=out)
    with pytest.raises(BadImageError):
        P.eval_preprocess(b"", 32, out=out)
    assert (out == 7).all()
