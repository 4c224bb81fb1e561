"""Builders of complete records and run folders for the tests of saved runs, their
rendering and comparison (tests/test_runs.py, test_costs.py, test_compare.py,
test_render.py, test_live.py), without a probe or a training run.

``make_probe``, ``make_plan``, ``make_pack``, ``make_summary``, ``make_steps`` and
``make_eval`` build records; ``write_run`` / ``write_full_run`` lay them out as
``autotune train`` does; ``make_legacy`` rewrites a run folder the way runs were saved
before the data stall was measured against on-device input (its "data stall" then
was host wait); ``to_text`` renders a rich renderable to plain text.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from autotune import results as res
from autotune.lr_rules import LrDecision
from autotune.planner import Decision, Plan
from autotune.probe_report import ProbeReport
from probes.records import DatasetStats
from probes.records import AcceleratorReport, StepMemory, StepRate
from probes.records import DecodePoint, DecodeReport
from probes.records import DiskReport, ReadStats
from probes.records import GpuInfo, GpuReport, JaxDeviceInfo, JaxDevicesReport
from probes.records import HostReport
from trainers.summaries import EvalReport, StepReport, TrainSummary
from trainers.summaries import PackResult, SplitSummary
from trainers.options import PackOptions

GiB = 2**30


def _read(pattern: str, block: int, depth: int, iops: float, mbs: float, p50: float,
          direct: bool = True) -> ReadStats:
    return ReadStats(pattern=pattern, requested_bytes=block, block_bytes=block, queue_depth=depth,
                     direct=direct, ops=int(iops), bytes_read=int(mbs * 1e6), seconds=1.0,
                     iops=iops, mb_per_s=mbs, p50_ms=p50, p99_ms=p50 * 3, mean_ms=p50 * 1.2)


def make_probe(*, gpus: int = 8, gpu_name: str = "NVIDIA H100 80GB HBM3", disk: bool = True,
               step_ips: float = 12_000.0, decode: tuple[float, ...] = (900.0, 1700.0, 3100.0,
                                                                        5200.0)) -> ProbeReport:
    """A probe report of a made-up machine: ``gpus`` GPUs (0: a CPU host)."""
    cpu = gpus == 0
    gpu_infos = tuple(GpuInfo(index=i, name=gpu_name, memory_total_bytes=80 * GiB,
                              memory_free_bytes=79 * GiB, gpu_utilisation_percent=0)
                      for i in range(gpus))
    host = HostReport(
        hostname="box", os_name="Linux", os_release="Debian 12", kernel="6.1", python_version="3.11",
        python_executable="/usr/bin/python3", cpu_model="Made-up CPU", logical_cores=32,
        physical_cores=16, usable_cores=32, cpu_quota_cores=None, ram_total_bytes=256 * GiB,
        ram_available_bytes=240 * GiB, memory_limit_bytes=None, data_path="/data/train",
        disk_total_bytes=4000 * GiB, disk_free_bytes=1000 * GiB, fs_type="ext4",
        fs_mount_point="/", fs_device="/dev/nvme0n1",
        jax_version="0.10.2", jaxlib_version="0.10.2",
        jax=JaxDevicesReport(backend="cpu" if cpu else "gpu",
                             devices=(JaxDeviceInfo(id=0, platform="cpu" if cpu else "gpu",
                                                    device_kind="cpu" if cpu else gpu_name),),
                             status="JAX ok"),
        gpu=GpuReport(status=f"NVML ok: {gpus} GPU(s)" if gpus else "NVML unavailable: no driver",
                      driver_version="550.54" if gpus else None, gpus=gpu_infos,
                      nvml_available=bool(gpus)))
    disk_report = None
    if disk:
        disk_report = DiskReport(
            path="/data/train", method="O_DIRECT", source="test-file", file_bytes=1 << 30,
            record_bytes=110_000, queue_depth=8,
            sequential=_read("seq", 1 << 20, 1, 2900.0, 3040.0, 0.33),
            random_4k=_read("rand", 4096, 1, 12_000.0, 49.2, 0.08),
            random_record=_read("rand", 110_592, 1, 4_000.0, 442.0, 0.24),
            random_record_qd=_read("rand", 110_592, 8, 21_000.0, 2322.0, 0.37),
            buffered_random_record=_read("rand", 110_000, 8, 60_000.0, 6600.0, 0.05, direct=False),
            dataset_bytes=140 * GiB, ram_bytes=256 * GiB,
            notes=("MB/s uses 1 MB = 1e6 bytes",))
    points = tuple(DecodePoint(threads=t, images_per_s=v, speedup=v / decode[0],
                               efficiency=v / decode[0] / t)
                   for t, v in zip((1, 2, 4, 8), decode))
    dec = DecodeReport(data_path="/data/train", sample_images=200, median_bytes=110_000,
                       median_width=500, median_height=375, mean_pixels=187_500.0, image_size=224,
                       min_crop_scale=0.08, points=points, knee_threads=4,
                       raw_decode_images_per_s=1100.0, usable_cores=32,
                       ceiling_images_per_s=35_200.0, bad_images=(), seconds_per_point=1.5)
    n = max(1, gpus)
    acc = AcceleratorReport(
        backend="cpu" if cpu else "gpu", device_kind="cpu" if cpu else gpu_name, local_devices=n,
        memory_limit_bytes=79 * GiB, memory_source="bytes_limit", model="resnet50/w64/224px/bfloat16",
        step_memory=(StepMemory(per_device_batch=256, argument=1, output=1, temp=1, alias=0,
                                total=40 * GiB, compile_s=30.0),),
        step_rate=StepRate(per_device_batch=256, global_batch=256 * n, images_per_s=step_ips,
                           images_per_s_per_device=step_ips / n, step_s=256 * n / step_ips,
                           compile_s=30.0, steps=10))
    return ProbeReport(created_utc="2026-11-23T00:00:00Z", data_path="/data/train",
                       preset="resnet50", host=host,
                       dataset=DatasetStats(path="/data/train", num_classes=1000,
                                            num_images=1_281_167, total_bytes=140 * GiB,
                                            median_bytes=110_000, mean_bytes=114_000.0,
                                            sampled=2000),
                       disk=disk_report, decode=dec, accelerator=acc, batch_search=None,
                       seconds=95.0)


def make_plan(*, threads: int = 8, read_mode: str = "random", batch: int = 256, devices: int = 8,
              predicted: float = 12_000.0, epochs: float = 90.0) -> Plan:
    """A plan with a reason for every decision."""
    gb = batch * devices
    lr = LrDecision(optimizer="sgd", requested_optimizer="sgd", rule="linear", base_lr=0.1,
                    base_batch=256, global_batch=gb, learning_rate=0.1 * gb / 256,
                    warmup_epochs=5.0, schedule="cosine", formula=f"0.1 x {gb} / 256",
                    source="Goyal et al. 2017", note="")
    decisions = (
        Decision("per_device_batch", str(batch), "fixed by preset resnet50"),
        Decision("global_batch", str(gb), f"{batch} per device x {devices} devices x 1 hosts"),
        Decision("learning_rate", f"{lr.learning_rate:.4g}", "linear rule: 0.1 x 2048 / 256 = 0.8"),
        Decision("decode_threads", str(threads), f"{threads} threads: 5,200 img/s covers the step "
                                                 f"rate with 8% margin"),
        Decision("read_mode", read_mode, "random reads deliver 21,000 img/s; need 12,000 img/s"),
        Decision("bottleneck", "compute", "compute 12,000 img/s, decode 13,000 img/s per host"),
    )
    return Plan(preset="resnet50", data_path="/data/train", num_classes=1000, image_size=224,
                epochs=epochs, per_device_batch=batch, local_devices=devices, num_hosts=1,
                global_batch=gb, lr=lr, warmup_epochs=5.0, decode_threads=threads,
                prefetch_batches=2 * threads, device_prefetch=2, read_mode=read_mode,
                shuffle_window=0 if read_mode == "random" else 4096, num_shards=128,
                shard_bytes=1 << 30, pack_resize=None, cache_decoded=False, val_fraction=0.0,
                step_images_per_s=12_000.0, decode_images_per_s=13_000.0,
                random_read_images_per_s=21_000.0, sequential_read_images_per_s=27_600.0,
                predicted_images_per_s=predicted, predicted_global_images_per_s=predicted,
                bottleneck="compute", decisions=decisions)


def make_pack(train: int = 1_281_024) -> PackResult:
    return PackResult(out_dir="/cache/packed", source="/data/train", class_names=("a", "b"),
                      input_images=train + 10, packed=train, skipped=10, bad_images=(),
                      splits=(SplitSummary(name="train", num_examples=train,
                                           shard_lengths=(train // 2, train - train // 2),
                                           num_bytes=140 * GiB),),
                      bytes_in=140 * GiB, bytes_out=140 * GiB, resize_shorter=None,
                      options=PackOptions(), seconds=1200.0)


def make_eval(step: int = 625, epoch: float = 1.0, top1: float = 0.70,
              top5: float = 0.90) -> EvalReport:
    return EvalReport(step=step, epoch=epoch, top1=top1, top5=top5, loss=1.25, count=50_000,
                      bad_records=0, seconds=40.0)


def make_summary(*, ips: float = 10_000.0, stall: float = 10.0, host_wait: float = 10.0,
                 top1: float = 0.70, status: str = "completed", steps: int = 56_250,
                 devices: int = 8, skipped: int = 0, stop_reason: str = "") -> TrainSummary:
    """A run summary: data stall ``stall`` % (on-device input runs at
    ``ips / (1 - stall / 100)``), host wait ``host_wait`` %."""
    spe = 625
    return TrainSummary(status=status, steps=steps, epochs=steps / spe, resumed_from_step=0,
                        wall_s=12_000.0, compile_s=35.0, images_per_s=ips,
                        images_per_s_per_device=ips / devices, data_stall_pct=stall,
                        final_eval=make_eval(steps, steps / spe, top1), bad_records=3,
                        num_devices=devices, num_hosts=1, global_batch=2048, steps_per_epoch=spe,
                        checkpoint_step=steps, host_wait_pct=host_wait,
                        synthetic_images_per_s=ips / (1 - stall / 100), skipped_steps=skipped,
                        stop_reason=stop_reason)


def make_steps(n: int = 20, *, every: int = 100, ips: float = 10_000.0, stall: float = 10.0,
               host_wait: float = 10.0, total: int = 56_250,
               skipped: int = 0) -> list[StepReport]:
    """``n`` windows of ``every`` steps at ``ips`` (global batch 2048): data stall
    ``stall`` % (on-device step time ``(1 - stall / 100) x`` the step time), host wait
    ``host_wait`` %."""
    out = []
    for i in range(1, n + 1):
        step = i * every
        step_s = 2048 / ips
        out.append(StepReport(step=step, total_steps=total, epoch=step / 625, images_per_s=ips,
                              step_s=step_s, wait_s=step_s * host_wait / 100,
                              data_stall_pct=stall, loss=6.9 - 0.1 * i, accuracy=0.01 * i,
                              learning_rate=0.8, bad_records=0, elapsed_s=step * step_s,
                              eta_s=(total - step) * step_s, host_wait_pct=host_wait,
                              synthetic_step_s=step_s * (1 - stall / 100),
                              skipped_steps=skipped))
    return out


#: Fields the records gained when the data stall became "accelerators idle for input".
NEW_STEP_FIELDS = ("host_wait_pct", "synthetic_step_s", "skipped_steps")
NEW_SUMMARY_FIELDS = ("host_wait_pct", "synthetic_images_per_s", "skipped_steps", "stop_reason")


def make_legacy(folder: Path) -> Path:
    """Rewrite a run folder's metrics.jsonl and summary.json the way runs were saved
    before the change: no new fields, and ``data_stall_pct`` = host wait / wall time."""
    lines = []
    for line in (folder / res.METRICS).read_text().splitlines():
        obj = json.loads(line)
        if obj["kind"] == "StepReport":
            obj["data_stall_pct"] = obj["host_wait_pct"]
            obj = {k: v for k, v in obj.items() if k not in NEW_STEP_FIELDS}
        lines.append(json.dumps(obj))
    (folder / res.METRICS).write_text("\n".join(lines) + "\n")
    if (folder / res.SUMMARY).is_file():
        doc = json.loads((folder / res.SUMMARY).read_text())
        doc["data_stall_pct"] = doc["host_wait_pct"]
        doc = {k: v for k, v in doc.items() if k not in NEW_SUMMARY_FIELDS}
        (folder / res.SUMMARY).write_text(json.dumps(doc, indent=2) + "\n")
    return folder


def write_run(folder: Path, *, probe: ProbeReport | None = None, plan: Plan | None = None,
              pack: PackResult | None = None, summary: TrainSummary | None = None,
              steps=(), evals=(), bad_images=(), run_meta: dict | None = None) -> Path:
    """Write a run folder the way ``autotune train`` lays it out."""
    folder.mkdir(parents=True, exist_ok=True)
    if probe is not None:
        probe.save(folder / res.PROBE)
    if plan is not None:
        plan.save(folder / res.PLAN)
    if pack is not None:
        pack.save(folder / res.PACK)
        res.save_json(folder / res.BAD_IMAGES, list(bad_images))
    if run_meta is not None:
        res.save_json(folder / res.RUN, run_meta)
    if steps or evals:
        w = res.MetricsWriter(folder / res.METRICS)
        for r in steps:
            w.write(r)
        for e in evals:
            w.write(e)
        w.close()
    if summary is not None:
        summary.save(folder / res.SUMMARY)
    return folder


def write_full_run(folder: Path, **kw) -> Path:
    """A complete training run on 8 made-up H100s."""
    return write_run(folder, probe=kw.pop("probe", make_probe()), plan=kw.pop("plan", make_plan()),
                     pack=kw.pop("pack", make_pack()), summary=kw.pop("summary", make_summary()),
                     steps=kw.pop("steps", make_steps()),
                     evals=kw.pop("evals", [make_eval(625, 1.0, 0.3), make_eval(1250, 2.0, 0.45)]),
                     run_meta=kw.pop("run_meta", {"data": "/data/train", "argv": ["train"]}), **kw)


def to_text(renderable, width: int = 100) -> str:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()
