"""Tests for autotune/report.py and autotune/plots.py: loading saved run folders
(complete, probe-only, in progress, damaged), the metrics averages and the cost
arithmetic worked by hand, the comparison's differences, Markdown, rendering to text,
the PNG plots, and ``autotune report`` through the CLI.

The fixture helpers here (``make_probe``, ``make_plan``, ``make_summary``,
``make_steps``, ``write_run``) build complete records without a probe or a training
run, and ``make_legacy`` rewrites a run folder the way runs were saved before the data
stall was measured against on-device input (its "data stall" then was host wait);
tests/test_render.py imports them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from autotune import plots
from autotune import report as rp
from autotune import results as res
from autotune.lr_rules import LrDecision
from autotune.planner import Decision, Plan
from autotune.probe_report import DatasetStats, ProbeReport
from probes.records import AcceleratorReport, StepMemory, StepRate
from probes.records import DecodePoint, DecodeReport
from probes.records import DiskReport, ReadStats
from probes.records import GpuInfo, GpuReport, JaxDeviceInfo, JaxDevicesReport
from probes.records import HostReport
from trainers.loop import stall_pct
from trainers.summaries import EvalReport, StepReport, TrainSummary
from trainers.summaries import PackResult, SplitSummary
from trainers.options import PackOptions

GiB = 2**30
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- fixtures


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
            dataset_bytes=140 * GiB, ram_bytes=256 * GiB, fits_page_cache=True,
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


# ---------------------------------------------------------------- cost


def test_estimate_cost_arithmetic_by_hand():
    # ImageNet train set, 90 epochs, 10,000 img/s on 8 GPUs at $3.90/GPU-hour:
    # 1,281,167 x 90 = 115,305,030 images; / 10,000 = 11,530.503 s;
    # / 3600 x 8 = 25.623340 GPU-h; x 3.90 = $99.931026.
    c = rp.estimate_cost(1_281_167, 90, 10_000.0, 8, 3.90, label="ImageNet")
    assert c.images == 115_305_030
    assert c.seconds == pytest.approx(11_530.503, rel=1e-12)
    assert c.gpu_hours == pytest.approx(25.62334, rel=1e-6)
    assert c.cost == pytest.approx(99.931026, rel=1e-6)
    assert "115,305,030 images" in c.arithmetic
    assert "x 8 GPUs" in c.arithmetic and "$99.93" in c.arithmetic
    assert c.label == "ImageNet" and c.price_source == "given"
    assert rp.CostEstimate.from_dict(c.to_dict()) == c


def test_estimate_cost_one_gpu_fractional_epochs():
    # 50,000 images x 0.5 epochs / 250 img/s = 100 s; 100 / 3600 x 1 = 0.02778 GPU-h;
    # x $1.50 = $0.041667.
    c = rp.estimate_cost(50_000, 0.5, 250.0, 1, 1.5)
    assert c.seconds == pytest.approx(100.0)
    assert c.cost == pytest.approx(100 / 3600 * 1.5)
    assert "x 1 GPU =" in c.arithmetic


@pytest.mark.parametrize("args, needle", [
    ((1000, 1, 0.0, 1, 1.0), "throughput (0.0 images/s)"),
    ((1000, 1, float("nan"), 1, 1.0), "throughput (nan"),
    ((1000, 1, 10.0, 0, 1.0), "GPU count (0)"),
    ((1000, 1, 10.0, 1, -2.0), "price (-2.0"),
    ((-1, 1, 10.0, 1, 1.0), "images per epoch (-1)"),
    ((1000, -1, 10.0, 1, 1.0), "epochs (-1)"),
])
def test_estimate_cost_rejects_bad_values(args, needle):
    with pytest.raises(ValueError, match=None) as exc:
        rp.estimate_cost(*args)
    assert needle in str(exc.value)


def test_resolve_price_numbers_and_presets():
    assert rp.resolve_price(None) is None
    assert rp.resolve_price("2.49") == (2.49, "given")
    assert rp.resolve_price("$3") == (3.0, "given")
    assert rp.resolve_price(1.25) == (1.25, "given")
    value, source = rp.resolve_price("h100:spot")
    assert value == 2.25 and "H100 spot" in source and "2026" in source
    assert rp.resolve_price("H100-spot")[0] == 2.25
    assert rp.resolve_price("A100")[0] == 1.50
    with pytest.raises(ValueError, match="no example spot price for L4"):
        rp.resolve_price("L4:spot")
    with pytest.raises(ValueError, match="known: H200, H100, A100, L4"):
        rp.resolve_price("TPUv5")
    with pytest.raises(ValueError, match=">= 0"):
        rp.resolve_price("-1")
    with pytest.raises(ValueError, match="price kind 'reserved'"):
        rp.resolve_price("H100:reserved")


@pytest.mark.parametrize("name, gpu", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100-SXM5", "H100"), ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-40GB", "A100"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", None),
    ("cpu", None), (None, None),
])
def test_example_price_matches_device_names(name, gpu):
    row = rp.example_price(name)
    assert (row.gpu if row else None) == gpu


# ---------------------------------------------------------------- metrics


def _step(step, ips, step_s, wait_s, synth_s=float("nan"), total=100, skipped=0):
    return StepReport(step=step, total_steps=total, epoch=step / 10, images_per_s=ips,
                      step_s=step_s, wait_s=wait_s,
                      data_stall_pct=stall_pct(synth_s, step_s), loss=1.0, accuracy=0.5,
                      learning_rate=0.1, bad_records=0, elapsed_s=float(step),
                      eta_s=0.0, host_wait_pct=100 * wait_s / step_s,
                      synthetic_step_s=synth_s, skipped_steps=skipped)


def test_metrics_stats_are_time_weighted_by_hand():
    # Report at step 10 covers steps 2..10 (9 steps; step 1 is compilation): 9 x 1.0 s
    # = 9 s, 900 images, 0.9 s host wait, 9 x 0.5 s on on-device input. Report at step
    # 20 covers 10 steps x 0.5 s = 5 s, 1,000 images, 0 s host wait, 10 x 0.5 s on
    # device. Mean = 1,900 / 14 = 135.71 img/s; host wait = 0.9 / 14 = 6.43% of wall
    # time; stall = 1 - (4.5 + 5) / 14 = 32.14% of step time; mean step = 14 / 19 s.
    m = rp.metrics_stats([_step(10, 100.0, 1.0, 0.1, 0.5),
                          _step(20, 200.0, 0.5, 0.0, 0.5, skipped=2)], 1)
    assert m.mean_images_per_s == pytest.approx(1900 / 14)
    assert m.mean_host_wait_pct == pytest.approx(100 * 0.9 / 14)
    assert m.mean_data_stall_pct == pytest.approx(100 * (1 - 9.5 / 14))
    assert (m.last_data_stall_pct, m.last_host_wait_pct) == (0.0, 0.0)
    assert m.mean_step_s == pytest.approx(14 / 19)
    assert m.mean_wait_s == pytest.approx(0.9 / 19)
    assert m.synthetic_step_s == pytest.approx(0.5)
    assert (m.stall_steps, m.window_steps, m.skipped_steps) == (19, 19, 2)
    assert m.peak_images_per_s == 200.0 and m.last_images_per_s == 200.0
    assert (m.step_reports, m.eval_reports, m.first_step, m.last_step, m.segments) == (2, 1, 10, 20, 1)


def test_metrics_stall_is_the_mean_step_against_the_reference():
    # Window 1: 9 steps x 1.0 s against 0.5 s on device (50% stall); window 2: 10 steps
    # x 0.4 s, faster than the 0.5 s reference (clipped to 0% on its own); window 3: no
    # reference (NaN), left out. Run stall = 1 - (9 x 0.5 + 10 x 0.5) / (9 x 1.0 + 10 x
    # 0.4) = 1 - 9.5 / 13 = 26.92%, not the time-weighted mean of the windows' clipped
    # percentages (9 x 50 / 13 = 34.6%) nor their step-weighted mean (23.7%).
    m = rp.metrics_stats([_step(10, 100.0, 1.0, 0.0, 0.5), _step(20, 250.0, 0.4, 0.0, 0.5),
                          _step(30, 100.0, 1.0, 0.0)])
    assert m.mean_data_stall_pct == pytest.approx(100 * (1 - 9.5 / 13))
    assert (m.stall_steps, m.window_steps) == (19, 29)
    assert m.synthetic_step_s == pytest.approx(0.5)
    # No window with a reference: the stall is unknown, host wait still known.
    m = rp.metrics_stats([_step(10, 100.0, 1.0, 0.25)])
    assert math.isnan(m.mean_data_stall_pct) and m.stall_steps == 0
    assert m.mean_host_wait_pct == pytest.approx(25.0)


def test_metrics_stats_resumed_run_counts_segments():
    # After a resume the step count restarts lower (15 after 20): that window takes the
    # previous window's length (10 steps x 1 s = 10 s, 1,000 images).
    m = rp.metrics_stats([_step(10, 100.0, 1.0, 0.0), _step(20, 200.0, 0.5, 0.0),
                          _step(15, 100.0, 1.0, 0.0)])
    assert m.segments == 2
    assert m.mean_images_per_s == pytest.approx((900 + 1000 + 1000) / (9 + 5 + 10))
    assert rp.metrics_stats([]) is None


# ---------------------------------------------------------------- load_run


def test_load_full_run(tmp_path):
    run = rp.load_run(write_full_run(tmp_path / "r1"))
    assert run.kind == "train" and run.name == "r1" and run.problems == ()
    f = run.figures
    assert f.status == "completed"
    assert f.images_per_s == 10_000.0 and f.images_per_s_source == "summary.json"
    assert f.predicted_images_per_s == 12_000.0
    assert f.measured_vs_predicted_pct == pytest.approx(100 * 10_000 / 12_000)
    assert f.top1 == 0.70 and f.bottleneck == "compute"
    assert f.step_s == pytest.approx(2048 / 10_000)
    assert f.wait_s == pytest.approx(2048 / 10_000 * 0.1)
    assert len(run.steps) == 20 and len(run.evals) == 2
    assert run.metrics.step_reports == 20 and run.metrics.eval_reports == 2
    assert run.run_meta["argv"] == ["train"]
    # Costs at the example H100 prices (the probe saw 8 H100s), for the 90 planned
    # epochs at the measured 10,000 img/s: 625 x 2048 = 1,280,000 images/epoch;
    # x 90 / 10,000 = 11,520 s; x 8 / 3600 = 25.6 GPU-h; x $3.90 = $99.84 on demand,
    # x $2.25 = $57.60 spot.
    assert [c.label for c in run.costs] == ["all 90 planned epochs, on-demand",
                                            "all 90 planned epochs, spot"]
    assert run.costs[0].images_per_epoch == 1_280_000
    assert run.costs[0].cost == pytest.approx(99.84)
    assert run.costs[1].cost == pytest.approx(57.60)
    assert run.costs[0].rate_source == "measured (summary.json)"
    # The record round-trips through JSON (what --json prints).
    back = rp.SavedRun.from_dict(json.loads(json.dumps(run.to_dict())))
    assert back.to_dict() == run.to_dict()


def test_load_run_with_given_price_and_stopped_run(tmp_path):
    summary = make_summary(status="stopped", steps=6250)  # 10 of 90 epochs
    run = rp.load_run(write_full_run(tmp_path / "r", summary=summary), price="2")
    assert [c.label for c in run.costs] == ["all 90 planned epochs", "remaining 80.00 epochs"]
    assert all(c.price_source == "given" for c in run.costs)
    # 80 epochs x 1,280,000 / 10,000 img/s = 10,240 s x 8 GPUs / 3600 x $2 = $45.51
    assert run.costs[1].cost == pytest.approx(10_240 * 8 / 3600 * 2)
    with pytest.raises(ValueError, match="not a number of dollars"):
        rp.load_run(tmp_path / "r", price="cheap")


def test_load_probe_only_run(tmp_path):
    folder = write_run(tmp_path / "p", probe=make_probe(gpus=0))
    run = rp.load_run(folder)
    assert run.kind == "probe" and run.figures.status == "probe only"
    assert run.costs == ()  # a CPU host: no example price
    assert run.figures.probe_step_images_per_s == 12_000.0
    assert run.figures.decode_best_images_per_s == 5_200.0
    text = to_text(rp.render_run(run))
    assert "run p: probe, probe only" in text
    assert "train step rate 12,000 img/s" in text
    assert "Training summary" not in text


def test_load_run_in_progress_uses_metrics_and_skips_torn_line(tmp_path):
    folder = write_run(tmp_path / "live", probe=make_probe(), plan=make_plan(),
                       steps=make_steps(5, ips=8_000.0, stall=25.0))
    with open(folder / res.METRICS, "a") as f:
        f.write('{"kind": "StepReport", "step": 6')  # killed mid-line
    run = rp.load_run(folder)
    assert run.figures.status == "no summary"
    assert run.figures.images_per_s == pytest.approx(8_000.0)
    assert run.figures.images_per_s_source == "metrics.jsonl average"
    assert run.figures.images_per_s_per_device == pytest.approx(1_000.0)
    assert run.figures.data_stall_pct == pytest.approx(25.0)
    assert len(run.steps) == 5 and run.problems == ()
    # 90 epochs planned, 500 / 625 = 0.8 done: both the whole and the remaining.
    assert [c.label for c in run.costs][:2] == ["all 90 planned epochs, on-demand",
                                                "remaining 89.20 epochs, on-demand"]
    assert "still going, or was killed" in to_text(rp.render_run(run))


def test_load_run_lists_unreadable_files_and_keeps_the_rest(tmp_path):
    folder = write_full_run(tmp_path / "bad")
    (folder / res.PLAN).write_text('{"preset": "x"}')
    with open(folder / res.METRICS, "a") as f:
        f.write(json.dumps({"kind": "StepReport", "step": "x"}) + "\n")
    run = rp.load_run(folder)
    assert run.plan is None and run.summary is not None
    assert any(p.startswith("plan.json:") and "missing field" in p for p in run.problems)
    assert any(p.startswith("metrics.jsonl:") for p in run.problems)
    assert "could not read plan.json" in to_text(rp.render_run(run))


def test_load_run_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rp.load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty is not a run folder"):
        rp.load_run(tmp_path / "empty")


def test_fast_pipeline_high_host_wait_without_stall(tmp_path):
    # The accelerators are busy (0.2% stall against on-device input) while the loop
    # waits 40% of the wall time for the next batch (asynchronous dispatch): two
    # different figures, each under its own name, in every view.
    folder = write_full_run(tmp_path / "fast", steps=make_steps(stall=0.2, host_wait=40.0),
                            summary=make_summary(stall=0.2, host_wait=40.0))
    run = rp.load_run(folder)
    f = run.figures
    assert f.data_stall_pct == pytest.approx(0.2) and f.host_wait_pct == pytest.approx(40.0)
    assert f.data_stall_note == "" and not run.legacy_stall
    assert run.metrics.mean_data_stall_pct == pytest.approx(0.2)
    assert run.metrics.mean_host_wait_pct == pytest.approx(40.0)
    text = to_text(rp.render_run(run), 120)
    for needle in ("data stall       0.2% of step time accelerators idle for input",
                   "host wait        40.0% of wall time waiting for the next batch",
                   "40.0% of wall time waiting for the next batch, 81.9 ms per step",
                   "0.2% mean, 0.2% last", "40.0% mean, 40.0% last"):
        assert needle in text, needle
    md = rp.to_markdown([run])
    assert "| data stall (accelerators idle) | 0.2% |" in md
    assert "| host wait (% of wall time) | 40.0% |" in md
    assert "| host wait per step | 81.9 ms |" in md
    assert "host wait = share of wall time" in md
    assert plots.write_plots(folder)


def test_legacy_run_loads_without_claiming_a_stall(tmp_path):
    # Saved before the change: no host_wait_pct / synthetic / skipped fields, and the
    # 10% "data stall" in its files was host wait.
    folder = make_legacy(write_full_run(tmp_path / "old", steps=make_steps(stall=3.0),
                                        summary=make_summary(stall=3.0)))
    assert "host_wait_pct" not in (folder / res.SUMMARY).read_text()
    run = rp.load_run(folder)
    assert run.problems == () and run.legacy_stall
    f = run.figures
    assert f.data_stall_pct is None and f.host_wait_pct == pytest.approx(10.0)
    assert f.data_stall_note == rp.LEGACY_STALL_NOTE
    assert f.skipped_steps is None and f.synthetic_step_s is None
    assert math.isnan(run.summary.data_stall_pct) and run.summary.host_wait_pct == 10.0
    assert all(math.isnan(r.data_stall_pct) and r.host_wait_pct == 10.0 for r in run.steps)
    assert math.isnan(run.metrics.mean_data_stall_pct)
    assert run.metrics.mean_host_wait_pct == pytest.approx(10.0)
    text = to_text(rp.render_run(run), 120)
    assert "of step time accelerators idle" not in text
    assert "- mean, - last (accelerators idle for input, % of step time)" in text
    assert "data stall       not measured: this run was saved before" in text
    assert "host wait        10.0% of wall time waiting for the next batch" in text
    assert "skipped steps    not counted" in text
    md = rp.to_markdown([run])
    assert "| data stall" not in md and "| host wait (% of wall time) | 10.0% |" in md
    assert "`old`: data stall not measured: this run was saved before" in md
    assert plots.write_plots(folder)
    # Against a new run: the stall has no old side to compare with.
    new = rp.load_run(write_full_run(tmp_path / "new"))
    d = {x.name: x for x in rp.compare_runs(run, new)}
    stall = d["data stall (accelerators idle)"]
    assert (stall.a, stall.b, stall.verdict) == ("-", "10.0%", "n/a")
    assert d["host wait (% of wall time)"].verdict == "same"
    assert "A (old): data stall not measured" in to_text(rp.render_comparison(run, new), 120)
    # The JSON of the loaded run reads back.
    assert rp.SavedRun.from_dict(json.loads(json.dumps(run.to_dict()))).to_dict() == run.to_dict()


def test_example_run_is_an_old_format_run():
    run = rp.load_run(Path(__file__).parent.parent / "results" / "example")
    assert run.problems == () and run.legacy_stall
    assert run.figures.data_stall_pct is None
    assert run.figures.host_wait_pct == pytest.approx(4.134185720061127)


def test_resumed_old_run_stall_covers_the_new_windows(tmp_path):
    # An old run resumed by the new code: 5 old windows (99 + 4 x 100 steps: the first
    # step is compilation), then 5 new ones of 100 steps (no summary yet).
    folder = make_legacy(write_run(tmp_path / "mixed", plan=make_plan(),
                                   steps=make_steps(5, host_wait=30.0)))
    w = res.MetricsWriter(folder / res.METRICS)
    for r in make_steps(10, stall=4.0, host_wait=10.0)[5:]:
        w.write(r)
    w.close()
    run = rp.load_run(folder)
    f = run.figures
    assert f.data_stall_pct == pytest.approx(4.0)
    assert f.host_wait_pct == pytest.approx((499 * 30 + 500 * 10) / 999)
    assert f.data_stall_note == "over the 500 of 999 logged steps that have an on-device reference"
    assert f.skipped_steps == 0  # the last report is new: steps are counted
    assert "4.0% of step time accelerators idle for input (over the 500 of 999" in to_text(
        rp.render_run(run), 140)


def test_stopped_run_shows_the_reason_and_skipped_steps(tmp_path):
    summary = make_summary(status="stopped", steps=6250, skipped=3,
                           stop_reason="SIGTERM on process 1")
    run = rp.load_run(write_full_run(tmp_path / "s", summary=summary,
                                     steps=make_steps(skipped=3)))
    assert run.figures.stop_reason == "SIGTERM on process 1" and run.figures.skipped_steps == 3
    text = to_text(rp.render_run(run), 120)
    assert "status           stopped (SIGTERM on process 1)" in text
    assert "skipped steps    3 (non-finite loss or gradient)" in text
    other = rp.load_run(write_full_run(tmp_path / "c"))
    d = {x.name: x for x in rp.compare_runs(other, run)}
    assert (d["stop reason"].a, d["stop reason"].b, d["stop reason"].verdict) == (
        "-", "SIGTERM on process 1", "n/a")
    assert (d["skipped steps"].a, d["skipped steps"].b, d["skipped steps"].verdict) == (
        "0", "3", "worse")
    assert "| stop reason | - | SIGTERM on process 1 |" in rp.to_markdown([other, run])


# ---------------------------------------------------------------- comparison


def _pair(tmp_path):
    a = rp.load_run(write_full_run(tmp_path / "runA"))
    b = rp.load_run(write_full_run(
        tmp_path / "runB", plan=make_plan(threads=16, read_mode="sequential"),
        summary=make_summary(ips=12_000.0, stall=5.0, host_wait=25.0, top1=0.68),
        steps=make_steps(ips=12_000.0, stall=5.0, host_wait=25.0)))
    return a, b


def test_compare_runs_signs_and_verdicts(tmp_path):
    a, b = _pair(tmp_path)
    d = {x.name: x for x in rp.compare_runs(a, b)}
    ips = d["images/s"]
    assert (ips.a_value, ips.b_value) == (10_000.0, 12_000.0)
    assert ips.delta_pct == pytest.approx(20.0) and ips.verdict == "better"
    assert rp.format_delta(ips) == "+20.0%"
    stall = d["data stall (accelerators idle)"]
    assert stall.delta == pytest.approx(-5.0) and stall.verdict == "better"
    assert rp.format_delta(stall) == "-5.0 pp"
    wait = d["host wait (% of wall time)"]
    assert (wait.a, wait.b, wait.verdict) == ("10.0%", "25.0%", "worse")
    assert d["host wait per step"].verdict == "worse"
    assert d["on-device input step time"].b == "162 ms"  # 2048 / 12,000 x 0.95
    top1 = d["held-out top-1"]
    assert top1.delta == pytest.approx(-2.0) and top1.verdict == "worse"
    assert d["step time"].verdict == "better" and d["step time"].delta < 0
    assert d["decode threads"].verdict == "changed" and d["decode threads"].delta_pct == 100.0
    assert (d["read mode"].a, d["read mode"].b, d["read mode"].verdict) == (
        "random", "sequential", "changed")
    assert d["per-device batch"].verdict == "same"
    assert d["plan predicted"].verdict == "same"
    # Measured against the plan: 83.3% -> 100%.
    assert d["measured / predicted"].verdict == "better"
    # Cost: same epochs at a higher rate: 1/1.2 the cost.
    assert d["cost of the planned epochs"].delta_pct == pytest.approx(100 * (1 / 1.2 - 1))
    assert d["cost of the planned epochs"].verdict == "better"
    changes = rp.decision_changes(a, b)
    assert [c[0] for c in changes] == ["decode_threads", "read_mode"]
    assert changes[0][1:3] == ("8", "16")


def test_compare_runs_with_missing_sides(tmp_path):
    a = rp.load_run(write_run(tmp_path / "p", probe=make_probe()))
    b = rp.load_run(write_full_run(tmp_path / "t"))
    d = {x.name: x for x in rp.compare_runs(a, b)}
    assert d["images/s"].verdict == "n/a" and d["images/s"].a == "-"
    assert d["probe step rate"].verdict == "same"


def test_render_comparison_highlights_better_and_worse(tmp_path):
    a, b = _pair(tmp_path)
    text = to_text(rp.render_comparison(a, b))
    assert "A = runA   vs   B = runB" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("images/s "))
    assert "10,000 img/s" in line and "12,000 img/s" in line and "▲ +20.0% better" in line
    assert "▼ -2.0 pp worse" in text
    assert "≠ changed" in text and "sequential" in text
    assert "Plan decisions that differ" in text
    assert "A: images/s per logging window" in text and "B: data stall" in text
    # Colours: better in green, worse in red (ANSI from a colour console).
    console = Console(width=100, record=True, color_system="standard", force_terminal=True,
                      file=io.StringIO())
    console.print(rp.render_comparison(a, b))
    ansi = console.export_text(styles=True)
    better = next(ln for ln in ansi.splitlines() if "+20.0% better" in ln)
    worse = next(ln for ln in ansi.splitlines() if "pp worse" in ln)
    assert "\x1b[1;32m" in better and "\x1b[1;31m" in worse


def test_to_markdown(tmp_path):
    a, b = _pair(tmp_path)
    md = rp.to_markdown([a, b])
    assert md.startswith("**A** `runA` vs **B** `runB`")
    assert "| figure | A | B | change |" in md
    assert "| images/s | 10,000 img/s | 12,000 img/s | **+20.0% better** |" in md
    assert "| held-out top-1 | 70.0% | 68.0% | **-2.0 pp worse** |" in md
    assert "| per-device batch | 256 | 256 |  |" in md
    assert "| decode_threads | 8 | 16 |" in md
    one = rp.to_markdown([a])
    assert "| choice | value | reason |" in one
    assert "| read_mode | random | random reads deliver 21,000 img/s; need 12,000 img/s |" in one
    assert "Cost (all 90 planned epochs, on-demand):" in one and "$99.84" in one
    three = rp.to_markdown([a, b, a])
    assert three.splitlines()[0] == "| figure | `runA` | `runB` | `runA` |"
    with pytest.raises(ValueError):
        rp.to_markdown([])


def test_markdown_escapes_pipes(tmp_path):
    plan = make_plan()
    plan = dataclasses.replace(plan, decisions=(Decision("x", "a|b", "because | reasons"),))
    md = rp.to_markdown([rp.load_run(write_full_run(tmp_path / "r", plan=plan))])
    assert "| x | a\\|b | because \\| reasons |" in md


# ---------------------------------------------------------------- render_run


def test_render_run_shows_every_part_with_units(tmp_path):
    run = rp.load_run(write_full_run(tmp_path / "full"))
    text = to_text(rp.render_run(run))
    for needle in (
        "run full: train, completed",
        "Plan (resnet50): predicted 12,000 img/s, bottleneck compute",
        "random reads deliver 21,000 img/s; need 12,000 img/s",  # a decision's reason
        "rates per host: train step 12,000 img/s",
        "Decode vs the step rate",
        "train step rate 12,000 img/s",
        "sequential 1 MiB",  # disk chart
        "Training summary",
        "10,000 img/s (1,250 img/s per device, 8 devices, 1 hosts)",
        "10,000 img/s measured (summary.json) vs 12,000 img/s predicted = 83% of",
        "205 ms mean, 184 ms on on-device input",
        "10.0% of step time accelerators idle for input (on-device input: 11,111 img/s)",
        "10.0% of wall time waiting for the next batch, 20.5 ms per step",
        "10.0% mean, 10.0% last (accelerators idle for input, % of step time)",
        "data stall (accelerators idle for input, vs on-device input)",
        "host wait (training loop waiting for the next batch), % of wall time",
        "skipped steps    0 (non-finite loss or gradient)",
        "images/s per logging window",
        "╌ plan 12,000 img/s",
        "Held-out evaluations",
        "45.00%",
        "Time and cost to train",
        "$99.84", "$57.60", "25.6 GPU-h", "$3.90/GPU-h",
        "example list prices are approximate",
    ):
        assert needle in text, needle


# ---------------------------------------------------------------- plots


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_write_plots_full_run(tmp_path):
    folder = write_full_run(tmp_path / "r")
    paths = plots.write_plots(folder)
    assert sorted(p.name for p in paths) == sorted([plots.DECODE_PNG, plots.DISK_PNG,
                                                    plots.THROUGHPUT_PNG])
    for p in paths:
        assert p.parent == folder and _is_png(p), p
    assert not list(folder.glob(".*.tmp"))
    # The report lists them.
    assert rp.load_run(folder).plots == tuple(sorted(p.name for p in paths))


def test_write_plots_probe_only_without_disk(tmp_path):
    folder = write_run(tmp_path / "p", probe=make_probe(gpus=0, disk=False))
    paths = plots.write_plots(folder)
    assert [p.name for p in paths] == [plots.DECODE_PNG]
    assert _is_png(paths[0])


def test_write_plots_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        plots.write_plots(tmp_path / "none")
    with pytest.raises(ValueError, match="no step reports"):
        plots.plot_throughput([], tmp_path / "x.png")


# ---------------------------------------------------------------- CLI


def test_cli_report_one_two_json_markdown(tmp_path, capsys):
    from autotune.cli import main

    a, b = _pair(tmp_path)
    assert main(["report", a.path]) == 0
    out = capsys.readouterr().out
    assert "run runA: train, completed" in out and "Time and cost to train" in out
    assert main(["report", a.path, b.path]) == 0
    assert "+20.0% better" in capsys.readouterr().out
    assert main(["report", a.path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["figures"]["images_per_s"] == 10_000.0 and doc["costs"][0]["cost"] == pytest.approx(99.84)
    assert main(["report", a.path, b.path, "--markdown"]) == 0
    assert "| images/s | 10,000 img/s | 12,000 img/s | **+20.0% better** |" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
