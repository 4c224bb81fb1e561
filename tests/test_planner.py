"""The planner's arithmetic on hand-made probe reports (expected numbers worked out in
the comments)."""

import dataclasses
import hashlib
import json

import pytest

import probe_fixtures as pf
from autotune.planner import (
    Plan, PlanRequest, choose_cache_decoded, choose_decode_threads, choose_decode_workers,
    choose_global_batch, choose_learning_rate, choose_num_shards, choose_pack_resize,
    choose_archive_shard_records, choose_pack_threads, choose_pack_workers, choose_per_device_batch, choose_prefetch, choose_read_mode,
    choose_shuffle_window, decode_rate, decode_thread_cap, fits_page_cache, loop_options,
    make_plan, pack_cache_key, pack_options, pack_resize_side, predict_throughput, read_rates,
    record_bytes_stored, resize_speedup, shard_count, step_bytes_at, stored_pixels,
    train_config)
from autotune.presets import get_preset
from probes.records import DecodeVariant

GiB = 2**30
# The decode curve used by the GPU cases: full-size 500x375 photos, 224 px output.
GPU_DECODE = {1: 400.0, 2: 800.0, 4: 1600.0, 8: 3150.0, 16: 6200.0, 32: 12000.0, 64: 14000.0}


def gpu_ssd_report(**kw):
    return pf.report(
        host_=pf.host(cores=32, ram_total=512 * GiB, ram_available=480 * GiB),
        disk_=pf.disk(seq_mb_s=2000.0, rand4k_p50_ms=0.1, record_iops=50_000.0, depth=4),
        decode_=pf.decode(GPU_DECODE, cores=32),
        acc=pf.accelerator(devices=8, step_ips=24_000.0, batch=256), **kw)


def test_gpu_ssd_imagenet():
    plan = make_plan(gpu_ssd_report(), get_preset("resnet50"))
    # Batch: no search in the report -> the batch the step rate was measured at, 256.
    # Global 256 x 8 devices x 1 host = 2048; LR linear 0.1 x 2048 / 256 = 0.8, warmup 5.
    assert (plan.per_device_batch, plan.global_batch) == (256, 2048)
    assert plan.lr.learning_rate == pytest.approx(0.8)
    assert plan.warmup_epochs == 5
    # Need 24,000 x 1.1 = 26,400 img/s; full-size decode peaks at 14,000 -> resize at pack
    # to shorter side ceil8(224 x 256/224) = 256. Stored pixels min(187,500, 256^2 x 4/3 =
    # 87,381.3); speed-up 187,500 / 87,381.3 = 2.146 (< the 4x cap).
    assert plan.pack_resize == 256
    speedup = 187_500 / (256 * 256 * 4 / 3)
    # Threads: 32 -> 12,000 x 2.146 = 25,748 < 26,400; 64 -> 30,040 >= 26,400 -> 64.
    assert plan.decode_threads == 64
    assert plan.decode_images_per_s == pytest.approx(14_000 * speedup)
    # Cache: 1,281,167 x 87,381.3 x 3 B = 312.8 GiB > 25% of 480 GiB = 120 GiB -> no.
    assert plan.cache_decoded is False
    # Record bytes as stored: 110,000 x 87,381.3 / 187,500 = 51,263.7 B.
    # Random reads: 50,000 IOPS >= 1.2 x 24,000 = 28,800 -> random.
    assert plan.read_mode == "random"
    assert plan.random_read_images_per_s == pytest.approx(50_000)
    assert plan.sequential_read_images_per_s == pytest.approx(2000e6 / (110_000 * speedup ** -1))
    # Shards (random mode: no seek bound): n_min = 1 x 64 x 4 = 256; data 51,263.7 x
    # 1,281,167 = 65.68e9 B -> ceil(65.68e9 / 268,435,456) = 245; max(245, 256) = 256.
    assert plan.num_shards == 256
    # Prefetch: 64 + 2 = 66 batches of 256 x 8 x 224^2 x 3 = 308,281,344 B (294 MiB);
    # 5% x 480 GiB = 25,769,803,776 B less 64 read buffers of 2,048 x 51,263.7 x 1.25
    # = 131,235,072 B (8,399,044,608 B) leaves 17,370,759,168 B = 56 batches -> 56.
    assert plan.prefetch_batches == 56
    # Data set 61 GiB fits half of 512 GiB RAM -> disk not a limit; compute 24,000 <
    # decode 30,040 -> compute-bound, predicted 24,000 img/s.
    assert plan.bottleneck == "compute"
    assert plan.predicted_images_per_s == pytest.approx(24_000)
    for name in ("per_device_batch", "learning_rate", "pack_resize", "decode_threads",
                 "read_mode", "num_shards", "prefetch", "cache_decoded", "bottleneck"):
        assert plan.decision(name).reason, name


def test_hard_disk_chooses_sequential_and_is_disk_bound():
    rep = pf.report(
        host_=pf.host(cores=32, ram_total=64 * GiB, ram_available=60 * GiB),
        disk_=pf.disk(seq_mb_s=150.0, rand4k_p50_ms=8.0, record_iops=180.0, depth=4),
        decode_=pf.decode(GPU_DECODE, cores=32),
        acc=pf.accelerator(devices=8, step_ips=24_000.0, batch=256))
    plan = make_plan(rep, get_preset("resnet50"))
    # Random reads 180 img/s << 28,800 needed; data 65.7e9 B > half of 64 GiB (34.4e9)
    # so the page cache does not save us -> sequential.
    assert plan.read_mode == "sequential"
    assert plan.shuffle_window > 0
    # Sequential: 150e6 B/s / 51,263.7 B = 2,926 img/s -> the disk is the bottleneck.
    seq = 150e6 / (110_000 * (256 * 256 * 4 / 3) / 187_500)
    assert plan.sequential_read_images_per_s == pytest.approx(seq)
    assert plan.bottleneck == "disk"
    assert plan.predicted_images_per_s == pytest.approx(seq)
    # Shards: seek bound 150e6 x 0.008 s x 19 = 22.8e6 B -> at most 65.68e9 / 22.8e6 =
    # 2,880; at least 256; target 245 -> 256.
    assert plan.num_shards == 256


def test_page_cache_rescues_random_reads():
    # Slow random reads but a 10,000-image set that fits in RAM -> random anyway.
    rep = pf.report(
        host_=pf.host(cores=32, ram_total=64 * GiB, ram_available=60 * GiB),
        disk_=pf.disk(seq_mb_s=150.0, rand4k_p50_ms=8.0, record_iops=180.0, depth=4),
        decode_=pf.decode(GPU_DECODE, cores=32),
        acc=pf.accelerator(devices=8, step_ips=24_000.0, batch=256), num_images=10_000)
    plan = make_plan(rep, get_preset("resnet50"))
    assert plan.read_mode == "random"
    assert "page cache" in plan.decision("read_mode").reason


def _cpu_small_report():
    return pf.report(
        host_=pf.host(cores=2, ram_total=24 * GiB, ram_available=23 * GiB), disk_=None,
        decode_=pf.decode({1: 6500.0, 2: 11000.0, 4: 10000.0}, mean_pixels=50_176.0, cores=2,
                          image_size=32),
        acc=pf.accelerator(backend="cpu", devices=1, step_ips=440.0, batch=128,
                           memory=11 * GiB, step_mem=137 * 2**20),
        num_images=9469, mean_bytes=10_450.0, classes=10, preset="cpu-small")


def test_cpu_small_preset_on_imagenette():
    plan = make_plan(_cpu_small_report(), get_preset("cpu-small"))
    # Fixed batch 128 (fits: 137 MiB of 11 GiB); LR 0.4 x 128 / 256 = 0.2; warmup
    # min(rule's 5, preset's 0.5) = 0.5.
    assert (plan.per_device_batch, plan.global_batch) == (128, 128)
    assert plan.lr.learning_rate == pytest.approx(0.2)
    assert plan.warmup_epochs == 0.5
    # 32 px training -> resize to ceil8(1.5 x 32) = 48; pixel ratio 50,176 / 3,072 = 16.3,
    # credited speed-up capped at 4.
    assert plan.pack_resize == 48
    # Cache: 9469 x 3072 x 3 = 87.3 MB <= 25% of 23 GiB -> yes.
    assert plan.cache_decoded is True
    # CPU backend: at most 2 // 2 = 1 decode thread; 6,500 x 4 = 26,000 >= 484.
    assert plan.decode_threads == 1
    # No disk figures -> random; shards max(ceil(6.06 MB / 256 MiB) = 1, 1 x 1 x 4) = 4.
    assert plan.read_mode == "random"
    assert plan.num_shards == 4
    assert plan.prefetch_batches == 3  # 1 thread + 2
    assert plan.bottleneck == "compute"


def test_fixed_batch_that_does_not_fit_is_an_error():
    rep = pf.report(acc=pf.accelerator(backend="cpu", devices=1, step_ips=440.0, batch=128,
                                       memory=100 * 2**20, step_mem=137 * 2**20),
                    num_images=9469, classes=10)
    with pytest.raises(ValueError, match="more than"):
        make_plan(rep, get_preset("cpu-small"))


def test_command_line_overrides_win():
    plan = make_plan(gpu_ssd_report(), get_preset("resnet50"),
                     PlanRequest(per_device_batch=128, decode_threads=8, read_mode="sequential",
                                 num_shards=1024, epochs=16))
    assert (plan.per_device_batch, plan.global_batch, plan.decode_threads) == (128, 1024, 8)
    assert (plan.read_mode, plan.num_shards, plan.epochs) == ("sequential", 1024, 16)
    assert plan.lr.learning_rate == pytest.approx(0.1 * 1024 / 256)
    assert plan.decision("decode_threads").reason == "given on the command line"


def test_multi_host_scales_global_batch_and_shards():
    plan = make_plan(gpu_ssd_report(), get_preset("resnet50"), PlanRequest(num_hosts=4))
    # 256 x 8 x 4 = 8192 -> still the linear rule (LARS above 8192): 0.1 x 32 = 3.2.
    assert plan.global_batch == 8192
    assert plan.lr.learning_rate == pytest.approx(3.2)
    # n_min = 4 x 64 x 4 = 1024 shards.
    assert plan.num_shards == 1024
    assert plan.predicted_global_images_per_s == pytest.approx(4 * 24_000)


@pytest.mark.parametrize("dataset_bytes,mode,bw,lat,expected", [
    # random mode: max(ceil(bytes / 256 MiB), n_min = 1 x 2 x 4 = 8)
    (10 * 2**30, "random", 1e9, 1e-4, 40),
    (100 * 2**20, "random", 1e9, 1e-4, 8),
    # sequential, bounds agree: n_max = 10 GiB / (1e9 x 1e-4 x 19 = 1.9e6) = 5651 -> 40
    (10 * 2**30, "sequential", 1e9, 1e-4, 40),
    # sequential HDD on 100 MiB: n_max = 104,857,600 / (150e6 x 0.008 x 19 = 22.8e6) = 4
    # < n_min 8 -> the seek bound wins: 4
    (100 * 2**20, "sequential", 150e6, 0.008, 4),
])
def test_shard_count_table(dataset_bytes, mode, bw, lat, expected):
    n, why = shard_count(dataset_bytes, num_images=10**6, hosts=1, threads=2, read_mode=mode,
                         seq_bytes_per_s=bw, latency_s=lat)
    assert n == expected, why
    assert why.endswith(f"-> {expected} shards")


def test_shard_count_never_below_hosts_or_above_images():
    n, _ = shard_count(100, num_images=3, hosts=1, threads=8, read_mode="random",
                       seq_bytes_per_s=None, latency_s=None)
    assert n == 3
    n, _ = shard_count(100 * 2**20, num_images=10**6, hosts=16, threads=1, read_mode="sequential",
                       seq_bytes_per_s=150e6, latency_s=0.008)
    assert n == 16


def test_pack_resize_side_rule():
    assert pack_resize_side(32) == 48      # ceil8(1.5 x 32)
    assert pack_resize_side(64) == 96      # ceil8(1.5 x 64)
    assert pack_resize_side(224) == 256    # ceil8(224 x 256 / 224)
    assert pack_resize_side(160) == 184    # ceil8(182.9)


def test_plan_round_trips_through_json():
    plan = make_plan(gpu_ssd_report(), get_preset("resnet50"))
    again = Plan.from_json(plan.to_json())
    assert again == plan


def test_gil_bound_threads_become_worker_processes():
    # 16 cores; threads stop scaling: 8 threads at 900 img/s = 900/400/8 = 28% efficiency.
    rep = pf.report(
        host_=pf.host(cores=16, ram_total=512 * GiB, ram_available=480 * GiB),
        disk_=pf.disk(seq_mb_s=2000.0, rand4k_p50_ms=0.1, record_iops=50_000.0, depth=4),
        decode_=pf.decode({1: 400.0, 2: 700.0, 4: 850.0, 8: 900.0, 16: 900.0, 32: 880.0}, cores=16),
        acc=pf.accelerator(devices=1, step_ips=2_000.0, batch=256))
    plan = make_plan(rep, get_preset("resnet50"))
    # Need 2,200 img/s; full-size best 900 -> resize 256 (speed-up 2.146): no thread
    # count covers it (900 x 2.146 = 1,931) -> the fastest point, 8 threads (the first at
    # 900). Efficiency there 900/400/8 = 28% < 50% on 16 cores -> 8 worker processes
    # x 400 x 2.146 x 0.9 = 6,180 img/s expected.
    assert plan.decode_threads == 8
    assert plan.decode_workers == 8
    assert plan.decode_images_per_s == pytest.approx(400 * (187_500 / (256 * 256 * 4 / 3)) * 8 * 0.9)
    assert "GIL" in plan.decision("decode_workers").reason
    assert plan.bottleneck == "compute"


# ---------------------------------------------------------------- one decision each

def test_fits_page_cache_is_half_the_ram_per_host():
    # 100 GiB <= 0.5 x 256 GiB = 128 GiB; 300 GiB is not; over 4 hosts 75 GiB each is.
    assert fits_page_cache(100 * GiB, 256 * GiB, 1)
    assert fits_page_cache(128 * GiB, 256 * GiB, 1)            # the boundary fits
    assert not fits_page_cache(129 * GiB, 256 * GiB, 1)
    assert fits_page_cache(300 * GiB, 256 * GiB, 4)


def test_global_batch_and_learning_rate():
    g, d = choose_global_batch(256, 8, 4)
    assert g == 8192 and d.reason == "256 per device x 8 devices x 4 hosts"
    # resnet50: linear 0.1 x 2048 / 256 = 0.8, warmup min(5, 5) = 5.
    lr, warmup, d = choose_learning_rate(get_preset("resnet50"), 2048)
    assert (lr.learning_rate, warmup, d.value) == (pytest.approx(0.8), 5.0, "0.8")
    # cpu-small: 0.4 x 128 / 256 = 0.2, warmup min(rule's 5, preset's 0.5) = 0.5.
    lr, warmup, _ = choose_learning_rate(get_preset("cpu-small"), 128)
    assert (lr.learning_rate, warmup) == (pytest.approx(0.2), 0.5)


def test_per_device_batch_sources_and_step_bytes():
    rep = gpu_ssd_report()
    assert choose_per_device_batch(rep, get_preset("resnet50"), all_devices=8,
                                   requested=96)[0] == 96
    # No search, no fixed preset batch: the step rate's batch, 256.
    b, d = choose_per_device_batch(rep, get_preset("resnet50"), all_devices=8)
    assert b == 256 and d.reason == "fixed by preset resnet50"
    # cpu-small fixes a global 128: 128 / (2 devices x 2 hosts) = 32 per device.
    assert choose_per_device_batch(rep, get_preset("cpu-small"), all_devices=4)[0] == 32
    rep = pf.report(acc=pf.accelerator(batch=128, step_mem=3 * GiB))
    assert step_bytes_at(rep, 128) == 3 * GiB and step_bytes_at(rep, 64) is None


def test_stored_pixels_and_record_bytes():
    assert stored_pixels(187_500, 256) == pytest.approx(256 * 256 * 4 / 3)  # 87,381.3
    assert stored_pixels(1_000, 256) == 1_000      # never more than the originals
    assert stored_pixels(187_500, None) == 187_500
    # 110,000 B x 87,381.3 / 187,500 = 51,263.7 B.
    assert record_bytes_stored(110_000, 187_500,
                               256 * 256 * 4 / 3) == pytest.approx(51_263.7, abs=0.1)


def test_resize_speedup_measured_or_modelled():
    # Modelled: pixel ratio 187,500 / 87,381.3 = 2.146.
    s, why = resize_speedup(256, mean_pixels=187_500, originals_ips=3_000)
    assert s == pytest.approx(2.1458, abs=1e-4) and "pixel ratio 2.1x" in why
    # Modelled at 48 px: 50,176 / 3,072 = 16.3 -> capped at 4.
    assert resize_speedup(48, mean_pixels=50_176, originals_ips=3_000)[0] == 4.0
    # Measured: 9,000 / 3,000 = 3.0, not capped; 15,000 / 3,000 = 5.0.
    s, why = resize_speedup(256, mean_pixels=187_500, originals_ips=3_000, resized_ips=9_000)
    assert s == 3.0 and "measured" in why
    assert resize_speedup(48, mean_pixels=50_176, originals_ips=3_000,
                          resized_ips=15_000)[0] == 5.0


@pytest.mark.parametrize("kw, resize, speedup", [
    # 32 px training: always ceil8(1.5 x 32) = 48; modelled speed-up capped at 4.
    (dict(image_size=32, mean_pixels=50_176, originals_ips=6_500, step_ips=440), 48, 4.0),
    # The originals cover 1,000 x 1.1 = 1,100 img/s: keep them.
    (dict(image_size=224, mean_pixels=187_500, originals_ips=2_000, step_ips=1_000), None, 1.0),
    # Short (14,000 < 26,400): 256 px, modelled 2.146x.
    (dict(image_size=224, mean_pixels=187_500, originals_ips=14_000, step_ips=24_000), 256,
     187_500 / (256 * 256 * 4 / 3)),
    # Short, and measured at 256 px: 42,000 / 14,000 = 3x.
    (dict(image_size=224, mean_pixels=187_500, originals_ips=14_000, step_ips=24_000,
          resized_ips=42_000), 256, 3.0),
    # Short, but the measured resize is no faster (12,600 / 14,000 = 0.9): keep originals.
    (dict(image_size=224, mean_pixels=187_500, originals_ips=14_000, step_ips=24_000,
          resized_ips=12_600), None, 1.0),
    # Originals already small (80,000 px < 87,381): no pixel gain, keep them.
    (dict(image_size=224, mean_pixels=80_000, originals_ips=14_000, step_ips=24_000), None, 1.0),
    # Given: 0 keeps the originals; 320 px -> 187,500 / 136,533.3 = 1.373 modelled.
    (dict(image_size=224, mean_pixels=187_500, originals_ips=2_000, step_ips=1_000,
          requested=0), None, 1.0),
    (dict(image_size=224, mean_pixels=187_500, originals_ips=2_000, step_ips=1_000,
          requested=320), 320, 187_500 / (320 * 320 * 4 / 3)),
])
def test_choose_pack_resize(kw, resize, speedup):
    got, s, d = choose_pack_resize(**kw)
    assert (got, s) == (resize, pytest.approx(speedup))
    assert d.value == (f"{resize} px" if resize else "none")


def test_decode_thread_cap_and_choice():
    points = pf.decode(GPU_DECODE).points
    assert decode_thread_cap(points, cpu_backend=True, usable_cores=2) == 1    # 2 // 2
    assert decode_thread_cap(points, cpu_backend=True, usable_cores=16) == 8
    assert decode_thread_cap(points, cpu_backend=False, usable_cores=16) == 64  # measured max
    # Need 10,000 x 1.1 = 11,000: 16 threads give 6,200, 32 give 12,000 -> 32.
    t, d = choose_decode_threads(points, speedup=1.0, step_ips=10_000, cpu_backend=False,
                                 usable_cores=64)
    assert t == 32 and "20% margin" in d.reason          # 12,000 / 10,000 - 1
    # x 2 speed-up: 8 threads give 3,150 x 2 = 6,300 >= 5,500 needed for 5,000.
    assert choose_decode_threads(points, speedup=2.0, step_ips=5_000, cpu_backend=False,
                                 usable_cores=64)[0] == 8
    # Nothing covers 20,000 x 1.1 within 8 threads (CPU, 16 cores): the fastest, 8.
    t, d = choose_decode_threads(points, speedup=1.0, step_ips=20_000, cpu_backend=True,
                                 usable_cores=16)
    assert t == 8 and "decode-bound" in d.reason
    assert choose_decode_threads(points, speedup=1.0, step_ips=1, cpu_backend=False,
                                 usable_cores=64, requested=3)[0] == 3


def test_decode_workers_and_rate():
    # 8 threads at 900 img/s vs 400 at 1: 900 / 400 / 8 = 28% < 50% -> 8 workers.
    points = pf.decode({1: 400.0, 2: 700.0, 4: 850.0, 8: 900.0}).points
    w, d = choose_decode_workers(points, threads=8, usable_cores=16, cpu_backend=False)
    assert w == 8 and "28% parallel efficiency" in d.reason
    # min(threads, cores): 8 threads on 6 cores -> 6.
    assert choose_decode_workers(points, threads=8, usable_cores=6, cpu_backend=False)[0] == 6
    # Not on 2 cores, not on a CPU backend, not when threads or the cache were given,
    # not where threads scale (GPU_DECODE: 6,200 / 400 / 16 = 97%).
    assert choose_decode_workers(points, threads=8, usable_cores=2, cpu_backend=False)[0] == 0
    assert choose_decode_workers(points, threads=8, usable_cores=16, cpu_backend=True)[0] == 0
    assert choose_decode_workers(points, threads=8, usable_cores=16, cpu_backend=False,
                                 threads_given=True)[0] == 0
    assert choose_decode_workers(points, threads=8, usable_cores=16, cpu_backend=False,
                                 cache_given=True)[0] == 0
    assert choose_decode_workers(pf.decode(GPU_DECODE).points, threads=16, usable_cores=32,
                                 cpu_backend=False)[0] == 0
    # Threads: 900 x 2 = 1,800; workers: 400 x 2 x 8 x 0.9 = 5,760.
    assert decode_rate(thread_ips=900, one_thread_ips=400, workers=0, speedup=2.0) == 1_800
    assert decode_rate(thread_ips=900, one_thread_ips=400, workers=8,
                       speedup=2.0) == pytest.approx(5_760)


def test_choose_cache_decoded():
    # 10,000 images x 3,072 px x 3 B = 92,160,000 B <= 25% of 1 GiB (268,435,456) -> yes.
    kw = dict(num_images=10_000, num_hosts=1, stored_pixels=3_072, ram_available=GiB)
    assert choose_cache_decoded(**kw)[0] is True
    # ... but not when worker processes decode (the cache lives in this process).
    cache, d = choose_cache_decoded(**kw, decode_workers=4)
    assert cache is False and "worker processes" in d.reason
    # 25% of 256 MiB = 67,108,864 B < 92,160,000 -> no; over 2 hosts 46,080,000 -> yes.
    assert choose_cache_decoded(**{**kw, "ram_available": 256 * 2**20})[0] is False
    assert choose_cache_decoded(**{**kw, "ram_available": 256 * 2**20, "num_hosts": 2})[0]
    assert choose_cache_decoded(**kw, requested=False)[1].reason == "given on the command line"


def test_read_rates_and_mode():
    disk = pf.disk(seq_mb_s=2000.0, record_iops=50_000.0)
    # Random: 50,000 reads/s; sequential: 2,000e6 B/s / 50,000 B = 40,000 img/s.
    assert read_rates(disk, 50_000) == (50_000.0, 40_000.0)
    assert read_rates(None, 50_000) == (None, None)
    kw = dict(sequential_ips=40_000, step_ips=24_000, dataset_bytes=GiB, record_bytes=50_000)
    # 30,000 >= 1.2 x 24,000 = 28,800 -> random.
    assert choose_read_mode(random_ips=30_000, in_page_cache=False, **kw)[0] == "random"
    # 28,000 < 28,800: random only if the page cache holds the data set.
    assert choose_read_mode(random_ips=28_000, in_page_cache=True, **kw)[0] == "random"
    assert choose_read_mode(random_ips=28_000, in_page_cache=False, **kw)[0] == "sequential"
    assert choose_read_mode(random_ips=None, in_page_cache=False, **kw)[0] == "random"
    assert choose_read_mode(random_ips=30_000, in_page_cache=False, requested="sequential",
                            **kw)[0] == "sequential"


def test_shuffle_window_shards_prefetch_and_pack_threads():
    assert choose_shuffle_window("sequential")[0] == choose_shuffle_window("random")[0] == 4096
    # Random mode, 1 host x 2 threads x 4 = 8 shards at least; 10 GiB / 256 MiB = 40.
    n, d = choose_num_shards(10 * GiB, num_images=10**6, hosts=1, threads=2,
                             read_mode="random", disk=None)
    assert n == 40 and d.reason.endswith("-> 40 shards")
    assert choose_num_shards(10 * GiB, num_images=10**6, hosts=1, threads=2,
                             read_mode="random", disk=None, requested=7)[0] == 7
    # 64 + 2 = 66 batches of 256 x 8 x 224^2 x 3 = 308,281,344 B; 5% of 480 GiB allows 83.
    kw = dict(threads=64, per_device_batch=256, local_devices=8, image_size=224)
    assert choose_prefetch(**kw, ram_available=480 * GiB)[0] == 66
    # 5% of 16 GiB = 858,993,459 B -> 2 batches.
    n, d = choose_prefetch(**kw, ram_available=16 * GiB)
    assert n == 2 and "capped at 2" in d.reason
    # Each thread's read buffer: 2,048 records x 110 KB x 1.25 = 281,600,000 B, x 64
    # threads = 18,022,400,000 B; 5% of 480 GiB = 25,769,803,776 B leaves
    # 7,747,403,776 B = 25 batches of 308,281,344 B.
    n, d = choose_prefetch(**kw, ram_available=480 * GiB, record_bytes=110e3)
    assert n == 25 and "capped at 25" in d.reason and "read buffer of 268.6 MiB" in d.reason
    # Buffers alone past 5% of RAM: still 2 batches, and the plan says why.
    n, d = choose_prefetch(**kw, ram_available=64 * GiB, record_bytes=110e3)
    assert n == 2 and "less the buffers'" in d.reason
    # 4 threads x 128 x 110 KB x 1.25 = 70,400,000 B of 858,993,459 B: the 6 wanted fit.
    n, d = choose_prefetch(threads=4, per_device_batch=128, local_devices=1, image_size=224,
                           ram_available=16 * GiB, record_bytes=110e3)
    assert n == 6 and "capped" not in d.reason and "128 records x 110 KB x 1.25" in d.reason
    assert choose_pack_threads(32)[0] == 32 and choose_pack_threads(0)[0] == 1


def test_pack_workers_are_one_process_per_core_from_two_cores():
    n, d = choose_pack_workers(32, 4, 3000.0, 20000.0)
    assert n == 32 and d.name == "pack_workers" and "4 of 32" in d.reason
    # even where the training decode's threads scale to every core: the pack's own
    # per-file Python holds the GIL
    assert choose_pack_workers(8, 8, 8000.0, 8000.0)[0] == 8
    assert choose_pack_workers(2, 2, 1700.0, 1700.0)[0] == 2
    # one core: threads
    n, d = choose_pack_workers(1, 1, 900.0, 900.0)
    assert n == 0 and "one usable core" in d.reason


def test_archive_shards_hold_the_plans_share_of_images():
    n, d = choose_archive_shard_records(1_281_167, 1024, streamed=True)
    assert n == 1252 and d.name == "archive_shard_records" and "1,024 shards" in d.reason
    assert choose_archive_shard_records(10, 64, streamed=True)[0] == 1
    assert choose_archive_shard_records(5000, 16, streamed=False) == (313, None)


@pytest.mark.parametrize("kw, bottleneck, predicted", [
    (dict(step_ips=24_000, decode_ips=30_040, disk_ips=None, cache_decoded=False),
     "compute", 24_000),
    (dict(step_ips=24_000, decode_ips=30_040, disk_ips=2_926, cache_decoded=False),
     "disk", 2_926),
    (dict(step_ips=24_000, decode_ips=19_000, disk_ips=None, cache_decoded=False),
     "decode", 19_000),
    # Cached and decode keeps up: later epochs only crop and flip -> compute, even with
    # a slow disk; a measured cached path at 20,000 img/s is then the limit.
    (dict(step_ips=24_000, decode_ips=30_000, disk_ips=2_926, cache_decoded=True),
     "compute", 24_000),
    (dict(step_ips=24_000, decode_ips=30_000, disk_ips=None, cache_decoded=True,
          cached_ips=20_000), "decoded cache", 20_000),
    # Cached but the first epoch's decode is short: decode stays the bottleneck.
    (dict(step_ips=24_000, decode_ips=19_000, disk_ips=None, cache_decoded=True),
     "decode", 19_000),
])
def test_predict_throughput(kw, bottleneck, predicted):
    name, rate, d = predict_throughput(**kw)
    assert (name, rate) == (bottleneck, pytest.approx(predicted)) and d.value == bottleneck


def test_plan_request_validation():
    for bad in (dict(local_devices=0), dict(num_hosts=0), dict(read_mode="shuffled"),
                dict(decode_threads=0), dict(epochs=0)):
        with pytest.raises(ValueError):
            PlanRequest(**bad)


def test_local_devices_come_from_the_request():
    # The probe saw 8 devices; this run has 4: 256 x 4 x 1 = 1024; LR 0.1 x 4 = 0.4.
    plan = make_plan(gpu_ssd_report(), get_preset("resnet50"), PlanRequest(local_devices=4))
    assert (plan.local_devices, plan.global_batch) == (4, 1024)
    assert plan.lr.learning_rate == pytest.approx(0.4)
    assert make_plan(gpu_ssd_report(), get_preset("resnet50")).local_devices == 8


def _variant(name, resize, cached, rates):
    pts = pf.decode(rates).points
    return DecodeVariant(name=name, resize_shorter=resize, cached=cached,
                         best_images_per_s=max(rates.values()), points=pts)


def test_measured_resize_speedup_feeds_the_plan():
    # Originals 14,000 img/s at best; the sample stored at 256 px 42,000: 3x measured
    # (the model would say 2.146x). Need 26,400: 16 threads x 3 = 18,600 < 26,400; 32
    # threads 12,000 x 3 = 36,000 -> 32 threads.
    rep = gpu_ssd_report()
    variants = (_variant("originals", None, False, GPU_DECODE),
                _variant("resized-256", 256, False, {1: 1_200.0, 64: 42_000.0}))
    rep = dataclasses.replace(rep, decode=dataclasses.replace(rep.decode, variants=variants))
    plan = make_plan(rep, get_preset("resnet50"))
    assert (plan.pack_resize, plan.resize_speedup, plan.decode_threads) == (256, 3.0, 32)
    assert plan.decode_images_per_s == pytest.approx(36_000)
    assert "measured" in plan.decision("pack_resize").reason
    # Without variants (older probe.json): the modelled 2.146x and 64 threads.
    assert make_plan(gpu_ssd_report(), get_preset("resnet50")).decode_threads == 64


def test_measured_cached_rate_limits_later_epochs():
    # cpu-small: cache chosen, decode 26,000 >= step 440; the cached path at 48 px was
    # measured at 300 img/s at 1 thread -> bottleneck "decoded cache", 300 img/s.
    rep = _cpu_small_report()
    variants = (_variant("cached-resized-48", 48, True, {1: 300.0, 2: 550.0}),)
    rep = dataclasses.replace(rep, decode=dataclasses.replace(rep.decode, variants=variants))
    plan = make_plan(rep, get_preset("cpu-small"))
    assert (plan.cache_decoded, plan.bottleneck) == (True, "decoded cache")
    assert plan.predicted_images_per_s == pytest.approx(300)


def test_plan_resolves_cache_against_workers():
    # The GIL case on 10,000 images: the decoded set would fit (10,000 x 87,381 x 3 B =
    # 2.4 GiB <= 120 GiB) but 8 worker processes decode -> no cache.
    rep = pf.report(
        host_=pf.host(cores=16, ram_total=512 * GiB, ram_available=480 * GiB),
        decode_=pf.decode({1: 400.0, 2: 700.0, 4: 850.0, 8: 900.0}, cores=16),
        acc=pf.accelerator(devices=1, step_ips=2_000.0, batch=256), num_images=10_000)
    plan = make_plan(rep, get_preset("resnet50"))
    assert (plan.decode_workers, plan.cache_decoded) == (8, False)
    assert loop_options(plan).cache_decoded is False


# ---------------------------------------------------------------- plan -> trainer

def test_train_config_from_plan_and_preset():
    preset = get_preset("resnet50")
    plan = make_plan(gpu_ssd_report(), preset, PlanRequest(epochs=16))
    cfg = train_config(plan, preset, num_classes=100)
    assert (cfg.arch, cfg.image_size, cfg.num_classes, cfg.dtype) == ("resnet50", 224, 100,
                                                                       "bfloat16")
    assert (cfg.per_device_batch, cfg.epochs, cfg.optimizer) == (256, 16, "sgd")
    assert (cfg.learning_rate, cfg.warmup_epochs) == (pytest.approx(0.8), 5.0)


def test_loop_and_pack_options_are_renames():
    plan = make_plan(gpu_ssd_report(), get_preset("resnet50"))
    opts = loop_options(plan, max_steps=7, checkpoint_every_s=60.0)
    assert (opts.decode_threads, opts.prefetch_batches, opts.device_prefetch) == (64, 56, 2)
    assert (opts.read_mode, opts.shuffle_window, opts.cache_decoded,
            opts.decode_workers) == ("random", 4096, False, 0)
    assert (opts.max_steps, opts.checkpoint_every_s) == (7, 60.0)
    # pack_threads: the probe's 32 usable cores.
    pack = pack_options(plan)
    assert (pack.num_shards, pack.resize_shorter, pack.val_fraction,
            pack.pack_threads) == (256, 256, 0.01, 32)
    assert pack_options(plan, separate_val=True, pack_threads=3).val_fraction == 0.0
    assert pack_options(plan, pack_threads=3).pack_threads == 3


def test_pack_cache_key_is_the_digest_of_the_pack_settings():
    plan = make_plan(gpu_ssd_report(), get_preset("resnet50"))
    key = json.dumps(["/data", None, 256, 256, 0.01])
    assert pack_cache_key(plan, "/data") == hashlib.sha256(key.encode()).hexdigest()[:12]
    assert pack_cache_key(plan, "/data", "/val") != pack_cache_key(plan, "/data")
    other = make_plan(gpu_ssd_report(), get_preset("resnet50"), PlanRequest(num_shards=512))
    assert pack_cache_key(other, "/data") != pack_cache_key(plan, "/data")
