"""Data-stall attribution (DS-Analyzer): the arithmetic by hand, and a pipeline made
slow on purpose is named as the bottleneck."""

import threading
import time

import pytest

from conftest import packed_jpeg_folder, write_jpeg_folder
from probes.stall import attribute, measure_stall
from trainers import preprocess
from trainers import train as tr
from trainers.options import LoopOptions
from trainers.pack import pack_folder
from trainers.options import PackOptions


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


def _slowed_preprocess(seconds: float):
    """``preprocess.train_preprocess`` made slow on purpose: ``seconds`` per image, one
    image at a time whatever the pipeline's threads (the lock), holding no CPU and no
    GIL, as a real decoder releases it. A busy loop would make the figures depend on
    the machine's load, and unserialised sleeps on how many pipeline threads happen to
    overlap, which differs between two runs. Simulated work: it waits for nothing."""
    real = preprocess.train_preprocess
    one_at_a_time = threading.Lock()

    def slow(data, rng, cfg, **kw):
        with one_at_a_time:
            time.sleep(seconds)
        return real(data, rng, cfg, **kw)

    return slow


def test_slow_preprocessing_is_named_the_bottleneck(tmp_path, monkeypatch):
    write_jpeg_folder(tmp_path / "imgs", classes=2, per_class=40, size=(48, 40))
    pack_folder(tmp_path / "imgs", tmp_path / "packed", PackOptions(num_shards=2))
    slow = _slowed_preprocess(0.1)

    monkeypatch.setattr(preprocess, "train_preprocess", slow)
    config = tr.TrainConfig(arch="resnet_tiny", width=4, small_images=True, image_size=16,
                            num_classes=2, per_device_batch=1, epochs=5, warmup_epochs=0)
    # Shallow buffers: batches built ahead while the step compiles would otherwise hide
    # the slow input from a run this short.
    r = measure_stall(config, str(tmp_path / "packed"),
                      LoopOptions(decode_threads=1, prefetch_batches=1, device_prefetch=1),
                      steps=12)  # the first window (4 steps) outlasts the buffered batches
    assert r.bottleneck == "preprocessing", r
    assert r.prep_stall_pct > 50


@pytest.fixture(scope="module")
def stall_pack(tmp_path_factory):
    return packed_jpeg_folder(tmp_path_factory.mktemp("stall_loop"), classes=2, per_class=48,
                              size=(48, 40), num_shards=2)


def _loop_figures(packed, workdir, steps=12):
    from trainers.loop import train_and_evaluate
    from trainers.summaries import StepReport

    config = tr.TrainConfig(arch="resnet_tiny", width=4, small_images=True, image_size=16,
                            num_classes=2, per_device_batch=1, epochs=5, warmup_epochs=0,
                            log_every_steps=4)
    reports = []
    summary = train_and_evaluate(config, str(packed), str(workdir),
                                 LoopOptions(decode_threads=1, prefetch_batches=1, device_prefetch=1,
                                             max_steps=steps, eval_every_epochs=0,
                                             checkpoint_every_s=0, synthetic_steps=4),
                                 callback=lambda r: reports.append(r)
                                 if isinstance(r, StepReport) else None, eval_at_end=False)
    return summary, reports


def test_stall_rises_with_a_throttled_decode_and_is_low_on_instant_input(stall_pack, tmp_path,
                                                                          monkeypatch):
    """The data-stall figure is the accelerators' idle share (step time against the
    same step on on-device input), reported apart from host wait: a decode throttled
    on purpose (one thread, 20 ms per image) makes it rise; input that is ready
    at once (the same batch over and over) keeps it far lower."""
    from trainers import input_pipeline as ip

    throttled = _slowed_preprocess(0.02)

    with monkeypatch.context() as m:
        m.setattr(preprocess, "train_preprocess", throttled)
        slow, slow_reports = _loop_figures(stall_pack, tmp_path / "slow")
    real_iter = ip.make_train_iterator

    def instant(*args, **kw):  # one real batch, then the same object again and again
        first = next(iter(real_iter(*args, **kw)))
        return iter([first] * 10_000)

    monkeypatch.setattr(ip, "make_train_iterator", instant)
    fast, fast_reports = _loop_figures(stall_pack, tmp_path / "fast")
    for s in (slow, fast):
        assert s.synthetic_images_per_s > 0 and 0 <= s.data_stall_pct <= 100
        assert 0 <= s.host_wait_pct <= 100
    for r in slow_reports + fast_reports:  # every window carries both figures
        assert r.synthetic_step_s > 0 and r.data_stall_pct >= 0 and r.host_wait_pct >= 0
    # 8 devices x 1 image x 20 ms on one thread: >= 160 ms of input per step against
    # a step of a few ms, one batch buffered: the accelerators mostly wait.
    assert slow.data_stall_pct > 50, slow
    assert fast.data_stall_pct < slow.data_stall_pct - 30, (fast, slow)
