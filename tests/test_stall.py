"""Data-stall attribution (DS-Analyzer): the arithmetic by hand, and a pipeline made
slow on purpose is named as the bottleneck."""

import time

import pytest

from conftest import write_jpeg_folder
from probes.stall import attribute, measure_stall
from trainers import preprocess
from trainers import train as tr
from trainers.loop import LoopOptions
from trainers.pack import PackOptions, pack_folder


@pytest.mark.parametrize("syn,cached,cold,expected,shares", [
    # per-image times 1/1000, 1/800, 1/400 s: compute 0.001/0.0025 = 40%,
    # prep (0.00125-0.001)/0.0025 = 10%, fetch (0.0025-0.00125)/0.0025 = 50%
    (1000, 800, 400, "fetch", (40, 10, 50)),
    # 1/1000, 1/250, 1/240: compute 24%, prep (0.004-0.001)/0.0041667 = 72%, fetch 4%
    (1000, 250, 240, "preprocessing", (24, 72, 4)),
    # input keeps up: all compute
    (500, 500, 500, "compute", (100, 0, 0)),
    # noise (cached faster than synthetic) counts as no stall
    (500, 520, 510, "compute", (100, 0, 0)),
])
def test_attribution_arithmetic(syn, cached, cold, expected, shares):
    r = attribute(syn, cached, cold)
    assert r.bottleneck == expected
    assert (r.compute_pct, r.prep_stall_pct, r.fetch_stall_pct) == pytest.approx(shares, abs=0.01)
    assert r.compute_pct + r.prep_stall_pct + r.fetch_stall_pct == pytest.approx(100)


def test_non_positive_rate_is_an_error():
    with pytest.raises(ValueError, match="cold images/s"):
        attribute(100, 100, 0)


def test_slow_preprocessing_is_named_the_bottleneck(tmp_path, monkeypatch):
    write_jpeg_folder(tmp_path / "imgs", classes=2, per_class=40, size=(48, 40))
    pack_folder(tmp_path / "imgs", tmp_path / "packed", PackOptions(num_shards=2))
    real = preprocess.train_preprocess

    def slow(data, rng, cfg):  # simulates an expensive augmentation: 20 ms of CPU
        t = time.perf_counter()
        while time.perf_counter() - t < 0.02:
            pass
        return real(data, rng, cfg)

    monkeypatch.setattr(preprocess, "train_preprocess", slow)
    config = tr.TrainConfig(arch="resnet_tiny", width=4, small_images=True, image_size=16,
                            num_classes=2, per_device_batch=1, epochs=5, warmup_epochs=0)
    r = measure_stall(config, str(tmp_path / "packed"), LoopOptions(threads=1), steps=6)
    assert r.bottleneck == "preprocessing", r
    assert r.prep_stall_pct > 50
