"""Hand-made probe reports for the planner tests: every figure is chosen in the test,
so the expected plan can be worked out by hand."""

from __future__ import annotations

from autotune.probe_report import ProbeReport
from probes.records import DatasetStats
from probes.records import AcceleratorReport, StepMemory, StepRate
from probes.records import DecodePoint, DecodeReport
from probes.records import DiskReport, ReadStats
from probes.records import GpuReport, JaxDevicesReport
from probes.records import HostReport

GiB = 2**30


def host(*, cores=2, ram_total=24 * GiB, ram_available=23 * GiB) -> HostReport:
    return HostReport(
        hostname="testhost", os_name="Linux", os_release="6", kernel="6", python_version="3.11",
        python_executable="python", cpu_model="test cpu", logical_cores=cores,
        physical_cores=cores, usable_cores=cores, cpu_quota_cores=None,
        ram_total_bytes=ram_total, ram_available_bytes=ram_available, memory_limit_bytes=None,
        data_path="/data", disk_total_bytes=1000 * GiB, disk_free_bytes=500 * GiB,
        fs_type="ext4", fs_mount_point="/", fs_device="/dev/x", jax_version="0", jaxlib_version="0",
        jax=JaxDevicesReport(backend="cpu", devices=(), status="ok"),
        gpu=GpuReport(status="NVML unavailable: test", driver_version=None, gpus=()))


def stats(*, iops=1000.0, mb_s=100.0, block=4096, depth=1, p50_ms=1.0) -> ReadStats:
    return ReadStats(pattern="rand", requested_bytes=block, block_bytes=block, queue_depth=depth,
                     direct=True, ops=100, bytes_read=100 * block, seconds=1.0, iops=iops,
                     mb_per_s=mb_s, p50_ms=p50_ms, p99_ms=p50_ms * 3, mean_ms=p50_ms)


def disk(*, seq_mb_s=1000.0, rand4k_p50_ms=0.1, record_iops=5000.0, record_bytes=110_000,
         depth=4, dataset_bytes=10 * GiB, ram=24 * GiB) -> DiskReport:
    return DiskReport(
        path="/data", method="O_DIRECT", source="test-file", file_bytes=GiB,
        record_bytes=record_bytes, queue_depth=depth,
        sequential=stats(iops=seq_mb_s, mb_s=seq_mb_s, block=1 << 20),
        random_4k=stats(p50_ms=rand4k_p50_ms),
        random_record=stats(iops=record_iops / depth, block=record_bytes),
        random_record_qd=stats(iops=record_iops, block=record_bytes, depth=depth),
        buffered_random_record=stats(iops=record_iops * 10, block=record_bytes),
        dataset_bytes=dataset_bytes, ram_bytes=ram)


def decode(points: dict[int, float], *, mean_pixels=187_500.0, cores=2, image_size=224) -> DecodeReport:
    base = points[min(points)]
    pts = tuple(DecodePoint(threads=t, images_per_s=r, speedup=r / base, efficiency=r / base / t)
                for t, r in sorted(points.items()))
    return DecodeReport(
        data_path="/data", sample_images=100, median_bytes=110_000, median_width=500,
        median_height=375, mean_pixels=mean_pixels, image_size=image_size, min_crop_scale=0.08,
        points=pts, knee_threads=max(points), raw_decode_images_per_s=base * 1.2,
        usable_cores=cores, ceiling_images_per_s=base * 1.2 * cores, bad_images=(),
        seconds_per_point=1.0)


def accelerator(*, backend="gpu", devices=8, step_ips=24_000.0, batch=256,
                memory=80 * GiB, step_mem=None) -> AcceleratorReport:
    mems = () if step_mem is None else (StepMemory(per_device_batch=batch, argument=0, output=0,
                                                   temp=step_mem, alias=0, total=step_mem,
                                                   compile_s=1.0),)
    return AcceleratorReport(
        backend=backend, device_kind="test", local_devices=devices, memory_limit_bytes=memory,
        memory_source="bytes_limit", model="resnet50/w64/224px/bfloat16", step_memory=mems,
        step_rate=StepRate(per_device_batch=batch, global_batch=batch * devices,
                           images_per_s=step_ips, images_per_s_per_device=step_ips / devices,
                           step_s=batch * devices / step_ips, compile_s=10.0, steps=10))


def report(*, host_=None, disk_=None, decode_=None, acc=None, num_images=1_281_167,
           total_bytes=None, mean_bytes=110_000.0, classes=1000, search=None,
           preset="resnet50") -> ProbeReport:
    total_bytes = total_bytes if total_bytes is not None else int(num_images * mean_bytes)
    return ProbeReport(
        created_utc="2026-11-23T00:00:00Z", data_path="/data", preset=preset,
        host=host_ or host(), dataset=DatasetStats(path="/data", num_classes=classes,
                                                   num_images=num_images, total_bytes=total_bytes,
                                                   median_bytes=int(mean_bytes),
                                                   mean_bytes=mean_bytes, sampled=2000),
        disk=disk_, decode=decode_ or decode({1: 400.0, 2: 800.0}), accelerator=acc or accelerator(),
        batch_search=search, seconds=1.0)
