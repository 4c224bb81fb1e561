"""The planner's arithmetic on hand-made probe reports (expected numbers worked out in
the comments)."""

import math

import pytest

import probe_fixtures as pf
from autotune.planner import Plan, PlanRequest, make_plan, pack_resize_side, shard_count
from autotune.presets import get_preset

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
    # Record bytes as stored: 110,000 x 87,381.3 / 187,500 = 51,264.4 B.
    # Random reads: 50,000 IOPS >= 1.2 x 24,000 = 28,800 -> random.
    assert plan.read_mode == "random"
    assert plan.random_read_images_per_s == pytest.approx(50_000)
    assert plan.sequential_read_images_per_s == pytest.approx(2000e6 / (110_000 * speedup ** -1))
    # Shards (random mode: no seek bound): n_min = 1 x 64 x 4 = 256; data 51,264.4 x
    # 1,281,167 = 65.68e9 B -> ceil(65.68e9 / 268,435,456) = 245; max(245, 256) = 256.
    assert plan.num_shards == 256
    # Prefetch: 64 + 2 = 66 batches of 256 x 8 x 224^2 x 3 = 308,281,344 B (294 MiB);
    # cap 5% x 480 GiB / 308,281,344 = 83 -> 66.
    assert plan.prefetch_batches == 66
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
    # Sequential: 150e6 B/s / 51,264.4 B = 2,926 img/s -> the disk is the bottleneck.
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


def test_cpu_small_preset_on_imagenette():
    rep = pf.report(
        host_=pf.host(cores=2, ram_total=24 * GiB, ram_available=23 * GiB), disk_=None,
        decode_=pf.decode({1: 6500.0, 2: 11000.0, 4: 10000.0}, mean_pixels=50_176.0, cores=2,
                          image_size=32),
        acc=pf.accelerator(backend="cpu", devices=1, step_ips=440.0, batch=128,
                           memory=11 * GiB, step_mem=137 * 2**20),
        num_images=9469, mean_bytes=10_450.0, classes=10, preset="cpu-small")
    plan = make_plan(rep, get_preset("cpu-small"))
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
