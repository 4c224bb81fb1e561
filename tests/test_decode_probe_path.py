"""What the decode probe measures is what the trainer runs: for each way the trainer
may get its images (original bytes, a pack-time resize, the decoded-image cache) the
probe times the same preprocessing function on the same bytes (or the same decoded
pixels) as ``TrainBatches`` calls on a pack of the same folder."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import write_jpeg_folder
from probes import decode
from probes.records import DecodeReport
from trainers import input_pipeline as ip
from trainers import preprocess
from trainers.options import AugmentConfig, PackOptions
from trainers.options import pack_resize_side
from trainers.pack import load_pack_result, pack_folder, shard_paths

IMAGE_SIZE = 32
R = pack_resize_side(IMAGE_SIZE)  # 48 px: the resize the planner picks at 32 px


def _digest(x) -> str:
    if isinstance(x, np.ndarray):
        x = repr((x.shape, x.dtype.str)).encode() + np.ascontiguousarray(x).tobytes()
    return hashlib.sha256(bytes(x)).hexdigest()


@pytest.fixture
def calls(monkeypatch):
    """Every call of the two per-image functions of the input pipeline, as
    ``(function, sha256 of its image input, cfg, whether out= was given)``."""
    log: list[tuple] = []
    real = {name: getattr(preprocess, name) for name in ("train_preprocess", "augment_decoded")}

    def recorder(name):
        def call(image, rng, cfg, **kw):
            log.append((name, _digest(image), cfg, kw.get("out") is not None))
            return real[name](image, rng, cfg, **kw)
        return call

    for name in real:
        monkeypatch.setattr(preprocess, name, recorder(name))
    return log


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # 96 x 72 px: the shorter side (72) is above R, so the resize changes every image.
    return write_jpeg_folder(tmp_path_factory.mktemp("probe_path") / "imgs", classes=2,
                             per_class=3, size=(96, 72))


def _probe_calls(folder, calls, monkeypatch) -> tuple[DecodeReport, dict[str, set]]:
    """Run the decode probe; the calls each variant's timing made, by variant name."""
    timed = []
    real = decode.time_variant

    def time_variant(*args, **kw):
        start = len(calls)
        points = real(*args, **kw)
        timed.append((points, set(calls[start:])))
        return points

    monkeypatch.setattr(decode, "time_variant", time_variant)
    report = decode.probe_decode(folder, image_size=IMAGE_SIZE, min_crop_scale=0.08,
                                 seconds_per_point=0.1, max_threads=2)
    by_variant = {v.name: next(seen for points, seen in timed if points is v.points)
                  for v in report.variants}
    return report, by_variant


def _trainer_calls(folder, out, calls, *, resize: int | None, cache: bool) -> set:
    """The calls ``TrainBatches`` makes over two epochs of a pack of ``folder``."""
    pack_folder(folder, out, PackOptions(num_shards=1, resize_shorter=resize))
    lengths = load_pack_result(out).split("train").shard_lengths
    cfg = ip.PipelineConfig(host_batch=2, augment=AugmentConfig(image_size=IMAGE_SIZE,
                                                                min_scale=0.08),
                            cache_decoded=cache)
    steps = ip.steps_per_epoch(lengths, cfg.host_batch)
    assert steps * cfg.host_batch == sum(lengths)  # every record is read each epoch
    batches = ip.TrainBatches(shard_paths(out, "train"), lengths, cfg, steps, epochs=2)
    start = len(calls)
    for k in range(len(batches)):
        assert batches[k]["bad"] == 0
    return set(calls[start:])


def test_probe_and_trainer_run_the_same_function_on_the_same_bytes(folder, tmp_path, calls,
                                                                   monkeypatch):
    report, probed = _probe_calls(folder, calls, monkeypatch)
    assert [(v.name, v.resize_shorter, v.cached) for v in report.variants] == [
        ("originals", None, False), ("cached", None, True),
        (f"resized-{R}", R, False), (f"cached-resized-{R}", R, True)]
    cases = {"originals": (None, False), "cached": (None, True),
             f"resized-{R}": (R, False), f"cached-resized-{R}": (R, True)}
    for name, (resize, cache) in cases.items():
        trained = _trainer_calls(folder, tmp_path / name, calls, resize=resize, cache=cache)
        function = "augment_decoded" if cache else "train_preprocess"
        assert {c[0] for c in trained} == {function}, name
        assert len({c[1] for c in trained}) == 6, name  # each of the 6 images
        assert all(c[3] for c in trained), name  # written straight into the batch row
        assert probed[name] == trained, name
    # The four variants fed four different inputs (the resize and the cache matter).
    inputs = [frozenset(c[1] for c in probed[name]) for name in cases]
    assert len(set(inputs)) == 4


def test_resize_that_changes_nothing_reuses_the_figures(tmp_path):
    small = write_jpeg_folder(tmp_path / "small", classes=1, per_class=2, size=(40, 30))
    report = decode.probe_decode(small, image_size=IMAGE_SIZE, seconds_per_point=0.05,
                                 max_threads=1, resizes=(R,), cache=False)
    originals, resized = report.variants
    assert resized.name == f"resized-{R}" and resized.points is originals.points
    assert report.variant(R, False) is resized and report.variant(None, True) is None


def test_report_with_variants_round_trips_and_old_reports_load(folder):
    report = decode.probe_decode(folder, image_size=IMAGE_SIZE, seconds_per_point=0.05,
                                 max_threads=1, resizes=(), cache=True)
    assert [v.name for v in report.variants] == ["originals", "cached"]
    assert report.variants[0].points == report.points
    best = report.variant(None, True)
    assert best.best_images_per_s == max(p.images_per_s for p in best.points)
    assert DecodeReport.from_json(report.to_json()) == report
    old = report.to_dict()
    del old["variants"]
    assert DecodeReport.from_dict(old).variants == ()
