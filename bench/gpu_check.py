"""One GPU check: every GPU figure the README and the issues ask for, in one run of
under 8 minutes on one H100/H200, written as JSON and a short text table.

    bash bench/gpu_check.sh OUT                # on the GPU machine (installs .whl/ first)
    bash bench/gpu_check.sh OUT --dry-run      # CPU, tiny shapes: the same stages in ~1.5 min
    python bench/gpu_check.py OUT [--dry-run] [--data DIR] [--stages a,b] [--total-s S]

``bench/gpu_check.sh`` installs the wheels the machine lacks and builds the region
decoder, then calls this script; the operator's preparation (wheels, data subset, the
device command) is in its header.

Stages, in order, each in its own process with a time budget (a stage that fails or
runs out of time is recorded with its error and the next one runs; the stages share
one deadline, ``--total-s`` seconds after the shell script started):

* ``setup``: the modules the run needs import (tensorflow-datasets, Grain,
  ArrayRecord, simplejpeg, the packer's features), which decoder the pipeline uses
  (``trainers._jpegcrop`` region decode or whole-image decode), what the shell script
  installed.
* ``throughput``: ResNet-50 v1.5 bf16 224 px synthetic images/s and compile time at
  per-device batch 128 and 256 (``trainers.train.measure_step_rate``).
* ``host_feed``: ``bench/host_feed.py`` at the real shapes (per-device batch 256,
  224 px) on the real device(s), JSON in ``raw/host_feed.json``.
* ``probe``: ``autotune probe --quick`` (NVML, device memory, the largest batch by
  compiled memory analysis, the step rate there, decode, disk) into ``OUT/runs``.
* ``train_auto``: ``autotune train --auto`` on the image folder for a few hundred
  steps (reusing the probe); images/s, data stall, host wait and the synthetic
  reference from the run folder's ``summary.json``. ``--batch`` 256: the plan's
  batch (the largest that fits) is larger than the few hundred images the device
  gets, and an epoch must hold one global batch.
* ``batch_pick``: the memory-analysis pick (``autotune.batch_search.find_max_batch``
  over ``trainers.train.compiled_step_memory``) from the probe's ``probe.json``;
  searched here when the probe has none (the CPU presets fix their batch).
* ``batch_trials``: brute force against the pick, real steps in child processes
  (``probes.step_child.run_steps_in_child``): at the pick (``peak_bytes_in_use``
  against the predicted bytes), at the largest batch the analysis says fits the
  whole budget, and 5% above it; as many as the time allows.

Then ``summary``: the batch knee (per-device images/s at 128, 256, the probe's rate curve
(the largest batch that fits and its halvings, what the planner's knee uses) and the pick; the
smallest batch within 3% of the best) and the compile times. Outputs:
``OUT/gpu_check.json`` (one object: a key per stage with ``status``, ``seconds``,
``budget_s``, ``error`` and the raw figures; versions, device, date, the command),
``OUT/gpu_check.txt`` (a short table), ``OUT/logs/<stage>.log``, ``OUT/runs/``
(the probe and train run folders, checkpoints removed), ``OUT/stages/`` (each
stage's own JSON). Both files are rewritten after every stage, so a run cut short
still leaves what it measured. Exit code 0 when every stage is ``ok``, 1 otherwise.

``--dry-run``: the same stages on the CPU (``JAX_PLATFORMS=cpu``, one host device)
with the ``cpu-tiny`` preset, per-device batches 8 and 16, 2 steps, a folder made on
the fly shaped like imagenet-samples (1,000 classes, one 48 x 40 JPEG each), host feed
at 8 x 32 px, train for 3 steps at 8, a 40 MiB memory budget and a cap of 32 for the
search (the CPU presets fix their batch, so the probe has no search), two trials;
``tests/test_gpu_check.py`` runs it (about 40-80 s on 2 cores).

The stages share a persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``, a
temporary folder unless one is set already): the second batch's model init, and the
trial at the pick (the probe compiled and timed that very step), come from it. A GPU
``batch_pick`` runs without it: when it has to search itself (no probe.json), its
memory analysis must come from a fresh compilation, not from an executable another
stage cached (which may carry no analysis). Packed shards go to a temporary
``AUTOTUNE_CACHE`` unless one is set; the temporary folder is removed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_SAMPLES = ROOT.parent / "shared" / "data" / "imagenet-samples"
LOCAL_SAMPLES = ROOT / ".gpudata" / "imagenet-samples"

STAGES = ("setup", "throughput", "host_feed", "probe", "train_auto", "batch_pick",
          "batch_trials")
#: Fraction of the best per-device images/s within which a batch counts for the knee.
KNEE_WITHIN = 0.03
#: A stage is not started with less time than this left.
MIN_STAGE_S = 8.0
#: Seconds a stage gets after SIGTERM before SIGKILL (train writes its checkpoint).
GRACE_S = 12.0


@dataclass(frozen=True)
class Settings:
    """The shapes and budgets of one mode (``gpu`` or ``dry-run``)."""

    mode: str
    preset: str
    batches: tuple[int, ...]
    rate_steps: int
    rate_warmup: int
    feed_per_device_batch: int
    feed_image_size: int
    feed_images: int
    feed_steps: int
    feed_warmup: int
    feed_step_ms: float
    train_batch: int
    train_steps: int
    memory_budget: str | None
    search_cap: int | None
    max_trials: int
    trial_steps: int
    total_s: float
    budgets: dict = field(default_factory=dict)

    @property
    def dry(self) -> bool:
        return self.mode == "dry-run"


GPU = Settings(
    mode="gpu", preset="resnet50", batches=(128, 256), rate_steps=10, rate_warmup=2,
    feed_per_device_batch=256, feed_image_size=224, feed_images=256, feed_steps=40,
    feed_warmup=3, feed_step_ms=85.0, train_batch=256, train_steps=200,
    memory_budget=None, search_cap=None, max_trials=3, trial_steps=3, total_s=465.0,
    budgets={"setup": 45, "throughput": 100, "host_feed": 45, "probe": 240, "train_auto": 110,
             "batch_pick": 150, "batch_trials": 150})

DRY = Settings(
    mode="dry-run", preset="cpu-tiny", batches=(8, 16), rate_steps=2, rate_warmup=1,
    feed_per_device_batch=8, feed_image_size=32, feed_images=16, feed_steps=5,
    feed_warmup=1, feed_step_ms=5.0, train_batch=8, train_steps=3,
    memory_budget="40MiB", search_cap=32, max_trials=2, trial_steps=2, total_s=420.0,
    budgets={"setup": 60, "throughput": 60, "host_feed": 60, "probe": 90, "train_auto": 90,
             "batch_pick": 90, "batch_trials": 90})


# ---------------------------------------------------------------- small helpers

def _utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clean(obj):
    """JSON-safe copy: NaN / inf -> None, tuples -> lists, Paths -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=1) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _r(x, nd=1):
    return None if x is None else round(float(x), nd)


def _tail(path: Path, lines: int = 6, chars: int = 900) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join(kept)[-chars:]


def _round_down(x: float, multiple: int) -> int:
    return int(math.floor(x / multiple)) * multiple


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple)) * multiple


def train_config_dict(preset_name: str, num_classes: int) -> dict:
    """The train-step config the probe measures (``orchestrate._probe_accelerator``
    builds it the same way), as a dict: the trial at the pick then compiles the very
    program the probe timed (a persistent-cache hit)."""
    from autotune.presets import get_preset
    from trainers.options import TrainConfig

    p = get_preset(preset_name)
    return TrainConfig(arch=p.arch, width=p.width, small_images=p.small_images,
                       image_size=p.image_size, num_classes=num_classes, per_device_batch=32,
                       dtype=p.dtype).to_dict()


def knee(points: dict[int, float], within: float = KNEE_WITHIN) -> dict | None:
    """The batch knee of ``{per-device batch: per-device images/s}``: the best rate and
    the smallest batch within ``within`` of it."""
    pts = {int(b): float(v) for b, v in points.items() if v and v > 0}
    if not pts:
        return None
    best_b = max(pts, key=lambda b: pts[b])
    best = pts[best_b]
    knee_b = min(b for b, v in pts.items() if v >= (1 - within) * best)
    return {"points": {str(b): _r(pts[b]) for b in sorted(pts)}, "best_batch": best_b,
            "best_images_per_s_per_device": _r(best), "knee_batch": knee_b,
            "knee_images_per_s_per_device": _r(pts[knee_b]), "within": within,
            "rule": f"smallest per-device batch within {within:.0%} of the best images/s"}


def predicted_limit(pick: dict, multiple: int = 8) -> int | None:
    """The largest multiple of ``multiple`` whose train step alone fits the whole budget
    by the search's fitted line (``fixed_bytes + bytes_per_image x b``; no margin, no
    input prefetch, as in a child trial); None without a line."""
    fixed, per_image, budget = (pick.get("fixed_bytes"), pick.get("bytes_per_image"),
                                pick.get("budget_bytes"))
    if fixed is None or not per_image or per_image <= 0 or not budget:
        return None
    b = _round_down((budget - fixed) / per_image, multiple)
    return b if b >= multiple else None


def trial_batches(pick: dict, max_trials: int) -> list[tuple[str, int]]:
    """``[(label, per-device batch)]`` to run for real: the pick, the predicted limit of
    the whole budget and 5% above it (at least one multiple of 8 more)."""
    out = [("pick", int(pick["per_device_batch"]))]
    limit = predicted_limit(pick)
    if limit is not None and limit > out[0][1]:
        out.append(("predicted limit (margin 0)", limit))
        out.append(("5% above the predicted limit", max(limit + 8, _round_up(limit * 1.05, 8))))
    return out[:max_trials]


def trial_verdict(pick: int, limit: int | None, largest_fit: int | None,
                  smallest_fail: int | None) -> str:
    """One sentence: where the trials put the true largest batch, and how the
    analysis' whole-budget limit compares (within 5%, above it, or more than 5% below)."""
    if largest_fit is None:
        return (f"the pick {pick} did not fit" if smallest_fail == pick
                else "no trial fit" if smallest_fail is not None else "no conclusive trial")
    where = (f"true largest batch in [{largest_fit}, {smallest_fail})"
             if smallest_fail is not None and smallest_fail > largest_fit
             else f"true largest batch >= {largest_fit}")
    if limit is None:
        return where
    if smallest_fail is not None and smallest_fail <= limit:
        return f"{where}: the analysis' limit {limit} is ABOVE it"
    if largest_fit >= limit and smallest_fail is not None and smallest_fail <= 1.05 * limit + 8:
        return f"{where}: the analysis' limit {limit} is within 5% of it"
    if largest_fit > 1.05 * limit:
        return f"{where}: the analysis' limit {limit} is more than 5% below it"
    return where


def newest_run(runs: Path, before: set[str], marker: str) -> Path | None:
    """The newest folder under ``runs`` not in ``before`` that holds ``marker``."""
    if not runs.is_dir():
        return None
    new = sorted((p for p in runs.iterdir() if p.is_dir() and p.name not in before
                  and (p / marker).is_file()), key=lambda p: p.name)
    return new[-1] if new else None


def latest_probe(runs: Path) -> Path | None:
    """The newest ``probe.json`` of a probe run folder under ``runs``."""
    if not runs.is_dir():
        return None
    found = sorted((p for p in runs.iterdir() if p.is_dir() and p.name.endswith("-probe")
                    and (p / "probe.json").is_file()), key=lambda p: p.name)
    return found[-1] / "probe.json" if found else None


def make_tiny_folder(root: Path, classes: int = 1000, size=(48, 40), seed: int = 0) -> Path:
    """An ImageNet-layout folder shaped like imagenet-samples (1,000 classes, one JPEG
    each), of tiny images. 1,000 classes as in the throughput stage's config, so the
    stages compile the same model (persistent-cache hits)."""
    import numpy as np

    from trainers.preprocess import encode_jpeg

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[..., c % 3] = 60 + c % 150
        img = np.clip(img + rng.integers(0, 80, img.shape), 0, 255).astype(np.uint8)
        (d / f"n{c:08d}_sample.JPEG").write_bytes(encode_jpeg(img, quality=90))
    return root


def folder_stats(path: Path) -> dict:
    files = [p for p in Path(path).glob("*/*") if p.is_file()]
    return {"path": str(path), "classes": len({p.parent.name for p in files}),
            "images": len(files), "bytes": sum(p.stat().st_size for p in files)}


def versions() -> dict:
    import importlib.metadata as md

    names = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "protobuf",
             "tensorflow-datasets", "grain", "array-record", "simplejpeg",
             "opencv-python", "opencv-python-headless", "pillow", "rich", "psutil",
             "nvidia-ml-py", "matplotlib"]
    out = {}
    for d in md.distributions():
        name = (d.metadata.get("Name") or "").lower()
        if name.startswith(("jax-cuda", "jax_cuda", "jax-plugin")):
            names.append(name)
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            continue
    return out


def machine() -> dict:
    info = {"hostname": platform.node(), "platform": platform.platform(),
            "python": platform.python_version(), "python_executable": sys.executable,
            "cpus": os.cpu_count()}
    try:
        from probes.gpu import probe_gpus

        g = probe_gpus()
        info["nvml"] = g.status
        info["driver"] = g.driver_version
        info["cuda_driver"] = g.cuda_driver_version
        info["gpus"] = [{"name": x.name, "memory_total_bytes": x.memory_total_bytes}
                        for x in g.gpus]
    except Exception as exc:  # noqa: BLE001 - NVML is optional here
        info["nvml"] = f"{type(exc).__name__}: {exc}"
    return info


# ---------------------------------------------------------------- stages (child side)

class Stage:
    """What a stage child writes: its figures, saved after each piece of work."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {}

    def save(self, **kw) -> None:
        self.data.update(kw)
        _write_json(self.path, self.data)


def _jax_facts() -> dict:
    import jax

    d = jax.local_devices()[0]
    return {"backend": jax.default_backend(), "device_kind": d.device_kind,
            "local_devices": jax.local_device_count(), "jax": jax.__version__}


def _base_config(s: Settings, num_classes: int = 1000):
    from trainers.options import TrainConfig

    return TrainConfig.from_dict(train_config_dict(s.preset, num_classes))


def stage_setup(st: Stage, s: Settings, ctx: dict) -> None:
    imports = {}
    for mod in ("numpy", "jax", "flax", "optax", "orbax.checkpoint", "cv2", "PIL", "rich",
                "psutil", "pynvml", "simplejpeg", "array_record.python.array_record_module",
                "grain", "tensorflow_datasets", "trainers.input_pipeline", "trainers.pack"):
        t = time.perf_counter()
        try:
            __import__(mod)
            imports[mod] = f"ok ({time.perf_counter() - t:.1f} s)"
        except Exception as exc:  # noqa: BLE001 - reported, the other imports go on
            imports[mod] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    st.save(imports=imports)
    from trainers import pack, preprocess

    pack._features(["n0", "n1"])  # tensorflow-datasets' feature classes build
    failed = [m for m, v in imports.items() if not v.startswith("ok")]
    st.save(decoder=preprocess.decoder_description(), region_decode=bool(preprocess.ROI_DECODE),
            shell=ctx.get("setup", {}), failed_imports=failed)
    if failed:
        raise RuntimeError(f"imports failed: {', '.join(failed)}")


def stage_throughput(st: Stage, s: Settings, ctx: dict) -> None:
    from trainers import train as tr

    facts = _jax_facts()
    st.save(**facts, model=f"{s.preset}", points=[])
    if not s.dry and facts["backend"] == "cpu":
        raise RuntimeError("no GPU: JAX's backend is cpu (run with --dry-run on a CPU machine)")
    config = _base_config(s)
    points = []
    for b in s.batches:
        got = tr.measure_step_rate(dataclasses.replace(config, per_device_batch=b),
                                   steps=s.rate_steps, warmup=s.rate_warmup)
        n = facts["local_devices"]
        points.append({"per_device_batch": b, "global_batch": int(got["global_batch"]),
                       "images_per_s": _r(got["images_per_s"]),
                       "images_per_s_per_device": _r(got["images_per_s"] / n),
                       "step_ms": _r(got["step_s"] * 1e3, 2), "compile_s": _r(got["compile_s"], 2),
                       "steps": s.rate_steps, "warmup": s.rate_warmup})
        st.save(points=points)
    st.save(model=f"{config.arch} w{config.width} {config.image_size} px {config.dtype}, "
                  f"{config.num_classes} classes, synthetic input")


def stage_host_feed(st: Stage, s: Settings, ctx: dict) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_host_feed", ROOT / "bench" / "host_feed.py")
    host_feed = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = host_feed
    spec.loader.exec_module(host_feed)
    # The benchmark forces fake CPU devices; here the devices are the machine's own
    # (the GPU, or the dry run's host device set by the caller's environment).
    host_feed._set_device_count = lambda n: None
    import jax

    n = jax.local_device_count()
    raw = Path(ctx["out"]) / "raw" / "host_feed.json"
    argv = ["--devices", str(n), "--per-device-batch", str(s.feed_per_device_batch),
            "--image-size", str(s.feed_image_size), "--images", str(s.feed_images),
            "--steps", str(s.feed_steps), "--warmup", str(s.feed_warmup),
            "--step-ms", str(s.feed_step_ms), "--data", ctx["data"], "--json", str(raw)]
    st.save(command="python bench/host_feed.py " + " ".join(argv), raw="raw/host_feed.json",
            **_jax_facts())
    host_feed.main(argv)
    d = _read_json(raw) or {}
    variants = {}
    for name, r in (d.get("results") or {}).items():
        variants[name] = {k: r.get(k) for k in (
            "method", "input_ms_median", "input_ms_p90", "input_ms_max", "period_ms_median",
            "release_ms_median", "host_copies_per_image_after_decode")}
        variants[name]["host_bytes_copied_per_image"] = (r.get("host_bytes_copied_per_image")
                                                         or {}).get("total")
    st.save(config=d.get("config"), decoder=(d.get("decode") or {}).get("decoder"),
            components_ms=d.get("components_ms"), variants=variants,
            note=("devices are this machine's own: the benchmark's notes about fake CPU "
                  "devices and host memcpy puts apply only to the dry run"
                  if not s.dry else "dry run: host devices, tiny shapes"))


def stage_batch_pick(st: Stage, s: Settings, ctx: dict) -> None:
    from autotune.batch_search import BatchSearchResult

    runs = Path(ctx["out"]) / "runs"
    probe_path = latest_probe(runs)
    probe = _read_json(probe_path) if probe_path else None
    num_classes = ((probe or {}).get("dataset") or {}).get("num_classes") or 1000
    config = train_config_dict(s.preset, num_classes)
    rate = ((probe or {}).get("accelerator") or {}).get("step_rate")

    def rate_at(batch: int) -> dict | None:
        """The probe's step rate when it was measured at ``batch`` (same config)."""
        if not rate or rate.get("per_device_batch") != batch:
            return None  # then the trial at the pick gives it (batch_trials)
        return {"images_per_s_per_device": _r(rate["images_per_s_per_device"]),
                "step_ms": _r(rate["step_s"] * 1e3, 2), "compile_s": _r(rate["compile_s"], 2),
                "steps": rate.get("steps"), "source": "probe.json accelerator.step_rate"}

    if probe and probe.get("batch_search"):
        res = BatchSearchResult.from_dict(probe["batch_search"])
        acc = probe.get("accelerator") or {}
        st.save(source=f"autotune probe ({probe_path.parent.name}/probe.json)",
                backend=acc.get("backend"), device_kind=acc.get("device_kind"),
                memory_source=acc.get("memory_source"), search_seconds=None,
                rate_at_pick=rate_at(res.per_device_batch), config=config, **_pick_fields(res))
        return
    import jax

    from autotune import batch_search as bs
    from probes.accelerator import device_memory_limit
    from trainers import train as tr
    from trainers.options import TrainConfig

    cfg = TrainConfig.from_dict(config)
    budget = bs.parse_memory_budget(s.memory_budget) if s.memory_budget else None
    limit, source = device_memory_limit(budget)
    cap = s.search_cap or __import__("autotune.presets", fromlist=["get_preset"]).get_preset(
        s.preset).max_per_device_batch
    st.save(source="searched here (the probe has no batch search: the preset fixes its batch)"
                   if probe else "searched here (no probe.json)",
            backend=jax.default_backend(), device_kind=jax.local_devices()[0].device_kind,
            memory_source=source, config=config)
    t0 = time.perf_counter()
    res = bs.find_max_batch(lambda b: (tr.compiled_step_memory(cfg, b) or {}).get("total"),
                            limit, multiple=8, max_batch=cap,
                            prefetch_bytes_per_image=2 * cfg.image_size ** 2 * 3)
    st.save(search_seconds=_r(time.perf_counter() - t0, 2),
            rate_at_pick=rate_at(res.per_device_batch), **_pick_fields(res))


def _pick_fields(res) -> dict:
    return {"per_device_batch": res.per_device_batch, "method": res.method,
            "limited_by": res.limited_by, "compilations": res.compilations,
            "predicted_bytes": res.predicted_bytes, "budget_bytes": res.budget_bytes,
            "usable_budget_bytes": res.usable_budget_bytes, "margin": res.margin,
            "prefetch_bytes": res.prefetch_bytes, "fixed_bytes": res.fixed_bytes,
            "bytes_per_image": res.bytes_per_image, "reason": res.reason,
            "evaluations": [e.to_dict() for e in res.evaluations],
            "verifications": [c.to_dict() for c in res.verifications],
            "calibration": res.calibration}


def stage_batch_trials(st: Stage, s: Settings, ctx: dict) -> None:
    from probes.step_child import run_steps_in_child
    from trainers.options import TrainConfig

    pick = _read_json(Path(ctx["out"]) / "stages" / "batch_pick.json") or {}
    if not pick.get("per_device_batch") or not pick.get("config"):
        raise RuntimeError("no batch pick (stage batch_pick did not finish)")
    config = TrainConfig.from_dict(pick["config"])
    cpu = pick.get("backend") == "cpu"
    fit_budget = pick.get("budget_bytes") if cpu else None
    limit = predicted_limit(pick)
    st.save(pick=pick["per_device_batch"], predicted_limit=limit, trials=[],
            fits_rule=("the child's peak host memory growth (peak_source) within the budget: on "
                       "CPU it also counts compiler and runtime memory, so it is not comparable "
                       "with the analysis (a smoke test of the mechanics only)"
                       if cpu else "the child's steps run without running out of memory; "
                                   "peak_bytes_in_use is device 0's peak"))
    trials = []
    deadline = ctx["deadline"]
    for label, b in trial_batches(pick, s.max_trials):
        left = deadline - time.time() - 2
        if left < MIN_STAGE_S:
            trials.append({"label": label, "per_device_batch": b, "status": "skipped: no time left"})
            st.save(trials=trials)
            continue
        t0 = time.perf_counter()
        r = run_steps_in_child(config, b, steps=s.trial_steps, timeout_s=left)
        secs = time.perf_counter() - t0
        conclusive = r.ok or r.oom
        fits = bool(r.ok and (fit_budget is None or r.peak_bytes is None
                              or r.peak_bytes <= fit_budget))
        predicted = (pick.get("predicted_bytes") if b == pick["per_device_batch"]
                     else (pick["fixed_bytes"] + pick["bytes_per_image"] * b
                           if pick.get("fixed_bytes") is not None and pick.get("bytes_per_image")
                           else None))
        trials.append({
            "label": label, "per_device_batch": b,
            "status": ("fits" if fits else "does not fit") if conclusive else "inconclusive",
            "ok": r.ok, "oom": r.oom, "peak_bytes": r.peak_bytes, "peak_source": r.peak_source,
            "predicted_bytes": None if predicted is None else int(predicted),
            "peak_over_predicted": (_r(r.peak_bytes / predicted, 3)
                                    if r.peak_bytes and predicted else None),
            "step_ms": _r(r.step_s * 1e3, 2) if r.step_s else None,
            "images_per_s_per_device": _r(b / r.step_s) if r.step_s else None,
            "seconds": _r(secs, 1), "error": r.error or ""})
        st.save(trials=trials)
    fit = [t["per_device_batch"] for t in trials if t.get("status") == "fits"]
    nofit = [t["per_device_batch"] for t in trials if t.get("status") == "does not fit"]
    largest, smallest_fail = (max(fit) if fit else None), (min(nofit) if nofit else None)
    st.save(largest_fitting_trial=largest, smallest_failing_trial=smallest_fail,
            verdict=trial_verdict(pick["per_device_batch"], limit, largest, smallest_fail)
            + (" (CPU rule: peak RSS growth against the budget)" if cpu else ""))
    if not any(t.get("status") in ("fits", "does not fit") for t in trials):
        raise RuntimeError("no trial was conclusive: " + "; ".join(
            f"{t['per_device_batch']}: {t.get('error') or t['status']}" for t in trials))


STAGE_FUNCS = {"setup": stage_setup, "throughput": stage_throughput,
               "host_feed": stage_host_feed, "batch_pick": stage_batch_pick,
               "batch_trials": stage_batch_trials}


def run_stage_child(name: str, out: Path, s: Settings, ctx: dict) -> int:
    st = Stage(out / "stages" / f"{name}.json")
    st.save(complete=False)
    try:
        STAGE_FUNCS[name](st, s, ctx)
    except BaseException as exc:  # noqa: BLE001 - recorded for the parent
        st.save(error=f"{type(exc).__name__}: {exc}"[:1500],
                traceback=traceback.format_exc()[-4000:])
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        return 1
    st.save(complete=True)
    return 0


# ---------------------------------------------------------------- the run (parent side)

class Runner:
    """Runs the stages one after the other against one deadline."""

    def __init__(self, out: Path, s: Settings, data: str, deadline: float, env: dict,
                 ctx: dict):
        self.out, self.s, self.data, self.deadline = out, s, data, deadline
        self.env, self.ctx = env, ctx

    def env_for(self, name: str) -> dict:
        """The stage's environment: the persistent compilation cache for every stage but
        a GPU ``batch_pick``, whose search must compile afresh (its memory analysis is
        not read from executables another stage cached)."""
        if name != "batch_pick" or self.s.dry:
            return self.env
        env = {k: v for k, v in self.env.items() if not k.startswith("JAX_PERSISTENT_CACHE")
               and k != "JAX_COMPILATION_CACHE_DIR"}
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
        return env

    def _budget(self, name: str) -> float:
        return min(float(self.s.budgets.get(name, 60)), self.deadline - time.time() - GRACE_S)

    def _spawn(self, name: str, cmd: list[str], timeout: float, env: dict) -> dict:
        log = self.out / "logs" / f"{name}.log"
        t0 = time.time()
        with open(log, "w") as f:
            f.write("$ " + shlex.join(cmd) + "\n")
            f.flush()
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    cwd=str(ROOT), start_new_session=True)
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = self._stop(proc)
            except BaseException:  # SIGTERM / Ctrl-C to this script: stop the stage too
                self._stop(proc, grace_s=5.0)
                raise
        return {"rc": rc, "timed_out": timed_out, "seconds": round(time.time() - t0, 1),
                "log": f"logs/{name}.log"}

    @staticmethod
    def _stop(proc: subprocess.Popen, grace_s: float = GRACE_S) -> int:
        """SIGTERM to the stage's process group (train checkpoints and writes its
        summary), SIGKILL after ``grace_s``."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                return proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return proc.wait()

    def _status(self, r: dict, ok: bool, name: str, error: str = "") -> dict:
        status = "ok" if ok else ("timeout" if r["timed_out"] else "failed")
        out = {"status": status, "seconds": r["seconds"], "budget_s": round(r["budget_s"], 1),
               "log": r["log"]}
        if status != "ok":
            out["error"] = (error or (f"ran past its {r['budget_s']:.0f} s budget"
                                      if r["timed_out"] else f"exit code {r['rc']}"))
            if r["timed_out"] and error:
                out["error"] = f"ran past its {r['budget_s']:.0f} s budget; {error}"
            tail = _tail(self.out / r["log"])
            if tail:
                out["log_tail"] = tail
        return out

    def python_stage(self, name: str, timeout: float) -> dict:
        stage_json = self.out / "stages" / f"{name}.json"
        stage_json.unlink(missing_ok=True)
        ctx = dict(self.ctx, deadline=time.time() + timeout - 3)
        cmd = [sys.executable, str(Path(__file__).resolve()), str(self.out), "--stage", name,
               "--settings", json.dumps(dataclasses.asdict(self.s)), "--data", self.data,
               "--ctx", json.dumps(ctx)]
        r = self._spawn(name, cmd, timeout, self.env_for(name))
        r["budget_s"] = timeout
        got = _read_json(stage_json) or {}
        ok = r["rc"] == 0 and got.get("complete") is True
        res = self._status(r, ok, name, got.get("error", ""))
        res.update({k: v for k, v in got.items()
                    if k not in ("complete", "error", "traceback") and k not in res})
        return res

    def probe(self, timeout: float) -> dict:
        runs = self.out / "runs"
        before = {p.name for p in runs.iterdir()} if runs.is_dir() else set()
        cmd = [sys.executable, "-m", "autotune.cli", "probe", "--quick", "--data", self.data,
               "--preset", self.s.preset, "--results", str(runs)]
        r = self._spawn("probe", cmd, timeout, self.env_for("probe"))
        r["budget_s"] = timeout
        run = newest_run(runs, before, "probe.json")
        ok = r["rc"] == 0 and run is not None
        res = self._status(r, ok, "probe", "" if run else "no probe.json written")
        res["command"] = "autotune " + shlex.join(cmd[3:])
        if run is not None:
            res["run"] = str(run.relative_to(self.out))
            res.update(probe_figures(_read_json(run / "probe.json") or {}))
        return res

    def train_auto(self, timeout: float) -> dict:
        runs = self.out / "runs"
        before = {p.name for p in runs.iterdir()} if runs.is_dir() else set()
        s = self.s
        # epochs: enough that the schedule outlasts --max-steps on a small folder
        cmd = [sys.executable, "-m", "autotune.cli", "train", "--auto", "--quiet", "--new-run",
               "--data", self.data, "--preset", s.preset, "--results", str(runs),
               "--batch", str(s.train_batch), "--max-steps", str(s.train_steps),
               "--epochs", str(max(100, 2 * s.train_steps))]
        r = self._spawn("train_auto", cmd, timeout, self.env_for("train_auto"))
        r["budget_s"] = timeout
        run = newest_run(runs, before, "summary.json")
        summary = _read_json(run / "summary.json") if run else None
        ok = r["rc"] == 0 and bool(summary) and summary.get("status") in ("completed", "max_steps")
        res = self._status(r, ok, "train_auto", "" if summary else "no summary.json written")
        res["command"] = "autotune " + shlex.join(cmd[3:])
        if run is not None:
            res["run"] = str(run.relative_to(self.out))
            res.update(train_figures(run, summary or {}))
            probe_path = latest_probe(runs)
            if probe_path and (run / "probe.json").is_file():
                a, b = _read_json(probe_path) or {}, _read_json(run / "probe.json") or {}
                res["reused_probe"] = a.get("created_utc") == b.get("created_utc")
            ckpt = run / "checkpoints"
            if ckpt.is_dir():  # hundreds of MB for ResNet-50: not worth bringing back
                shutil.rmtree(ckpt, ignore_errors=True)
                res["checkpoints"] = "removed to keep OUT small"
        return res

    def run(self, name: str) -> dict:
        budget = self._budget(name)
        if budget < MIN_STAGE_S:
            return {"status": "skipped", "seconds": 0.0, "budget_s": round(max(0.0, budget), 1),
                    "error": f"not started: {max(0.0, self.deadline - time.time()):.0f} s left "
                             f"before the deadline"}
        try:
            if name == "probe":
                return self.probe(budget)
            if name == "train_auto":
                return self.train_auto(budget)
            return self.python_stage(name, budget)
        except Exception as exc:  # noqa: BLE001 - one stage never stops the others
            return {"status": "failed", "seconds": 0.0, "budget_s": round(budget, 1),
                    "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}


def probe_figures(d: dict) -> dict:
    """The GPU-relevant figures of a ``probe.json``."""
    host, acc = d.get("host") or {}, d.get("accelerator") or {}
    gpu, jx = host.get("gpu") or {}, host.get("jax") or {}
    out = {"nvml": {"status": gpu.get("status"), "driver": gpu.get("driver_version"),
                    "cuda_driver": gpu.get("cuda_driver_version"),
                    "gpus": [{k: g.get(k) for k in ("name", "memory_total_bytes",
                                                     "memory_used_bytes", "pcie_gen_max",
                                                     "pcie_width_max", "power_limit_watts",
                                                     "sm_clock_max_mhz")}
                             for g in gpu.get("gpus") or []]},
           "jax_devices": jx.get("status"),
           "memory": {"limit_bytes": acc.get("memory_limit_bytes"),
                      "source": acc.get("memory_source"),
                      "step_memory": acc.get("step_memory")},
           "device_kind": acc.get("device_kind"), "backend": acc.get("backend"),
           "model": acc.get("model"), "step_rate": acc.get("step_rate"),
           "rate_curve": [{k: r.get(k) for k in ("per_device_batch", "images_per_s_per_device",
                                                  "compile_s")} for r in acc.get("rate_curve") or []],
           "noise_scale": d.get("noise_scale"),
           "probe_seconds": _r(d.get("seconds"), 1)}
    bs = d.get("batch_search")
    if bs:
        out["batch_search"] = {k: bs.get(k) for k in ("per_device_batch", "method", "limited_by",
                                                      "compilations", "predicted_bytes",
                                                      "budget_bytes", "reason")}
    dec = d.get("decode") or {}
    if dec:
        pts = dec.get("points") or []
        out["decode"] = {"decoder": dec.get("decoder"), "image_size": dec.get("image_size"),
                         "knee_threads": dec.get("knee_threads"),
                         "best_images_per_s": _r(max((p["images_per_s"] for p in pts), default=0)),
                         "raw_decode_images_per_s": _r(dec.get("raw_decode_images_per_s"))}
    disk = d.get("disk") or {}
    if disk:
        out["disk"] = {k: {"iops": _r((disk.get(k) or {}).get("iops")),
                           "mb_per_s": _r((disk.get(k) or {}).get("mb_per_s"))}
                       for k in ("sequential", "random_record", "random_record_qd")}
    return out


def train_figures(run: Path, summary: dict) -> dict:
    keys = ("steps", "global_batch", "per_device_batch", "num_devices", "images_per_s",
            "images_per_s_per_device", "data_stall_pct", "host_wait_pct",
            "synthetic_images_per_s", "compile_s", "wall_s", "peak_bytes_in_use",
            "skipped_steps", "steps_per_epoch", "stop_reason")
    out = {k: summary.get(k) for k in keys if k in summary}
    out["run_status"] = summary.get("status")
    plan = _read_json(run / "plan.json") or {}
    out["plan"] = {k: plan.get(k) for k in ("per_device_batch", "decode_threads", "decode_workers",
                                            "prefetch_batches", "read_mode", "cache_decoded",
                                            "pack_resize", "num_shards", "bottleneck",
                                            "predicted_images_per_s") if k in plan}
    return out


def summarize(report: dict) -> dict:
    st = report["stages"]
    points, sources = {}, {}
    for p in (st.get("throughput") or {}).get("points") or []:
        points[p["per_device_batch"]] = p["images_per_s_per_device"]
        sources[str(p["per_device_batch"])] = "throughput"
    for p in (st.get("probe") or {}).get("rate_curve") or []:  # the planner's own curve
        if p.get("images_per_s_per_device") and p["per_device_batch"] not in points:
            points[p["per_device_batch"]] = p["images_per_s_per_device"]
            sources[str(p["per_device_batch"])] = "probe rate curve"
    pick = st.get("batch_pick") or {}
    rate = pick.get("rate_at_pick") or {}
    if not rate.get("images_per_s_per_device"):
        for t in (st.get("batch_trials") or {}).get("trials") or []:
            if t.get("label") == "pick" and t.get("images_per_s_per_device"):
                rate = {"images_per_s_per_device": t["images_per_s_per_device"],
                        "source": "the trial at the pick (batch_trials)"}
    if pick.get("per_device_batch") and rate.get("images_per_s_per_device") \
            and pick["per_device_batch"] not in points:
        points[pick["per_device_batch"]] = rate["images_per_s_per_device"]
        sources[str(pick["per_device_batch"])] = f"batch_pick ({rate.get('source')})"
    out = {"knee": knee(points)}
    if out["knee"]:
        out["knee"]["sources"] = sources
        classes = (pick.get("config") or {}).get("num_classes")
        if classes and classes != 1000 and any(v != "throughput" for v in sources.values()):
            out["knee"]["note"] = (f"the pick's rate is for the probe's config ({classes} classes, "
                                   "the image folder's); the others use 1,000 classes")
    comp = {}
    for p in (st.get("throughput") or {}).get("points") or []:
        comp[f"throughput step, per-device batch {p['per_device_batch']}"] = p.get("compile_s")
    sr = (st.get("probe") or {}).get("step_rate") or {}
    if sr:
        comp[f"probe step, per-device batch {sr.get('per_device_batch')}"] = _r(sr.get("compile_s"), 2)
    if rate.get("compile_s") is not None and "probe" not in str(rate.get("source")):
        comp[f"batch_pick step, per-device batch {pick.get('per_device_batch')}"] = rate["compile_s"]
    tr = st.get("train_auto") or {}
    if tr.get("compile_s") is not None:
        comp[f"train --auto step, per-device batch {tr.get('per_device_batch')}"] = _r(tr["compile_s"], 2)
    if pick.get("search_seconds") is not None:
        comp[f"memory-analysis search ({pick.get('compilations')} compilations)"] = pick["search_seconds"]
    out["compile_s"] = comp
    out["stages_ok"] = sum(1 for v in st.values() if v.get("status") == "ok")
    out["stages"] = len(st)
    return out


def _fmt_n(x, nd=0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def _gib(x) -> str:
    return "-" if not x else f"{x / 2 ** 30:.2f} GiB"


def stage_line(name: str, v: dict) -> str:
    """One line of figures for the text table."""
    if v.get("status") != "ok" and not any(k in v for k in ("points", "variants", "step_rate",
                                                             "images_per_s", "per_device_batch",
                                                             "trials")):
        return (v.get("error") or "").splitlines()[0][:110] if v.get("error") else ""
    if name == "setup":
        return f"{v.get('decoder', '')}"[:110]
    if name == "throughput":
        return "; ".join(f"pd {p['per_device_batch']}: {_fmt_n(p['images_per_s_per_device'])} img/s/dev, "
                         f"{p['step_ms']} ms, compile {p['compile_s']} s" for p in v.get("points", []))
    if name == "host_feed":
        parts = []
        for k, r in (v.get("variants") or {}).items():
            parts.append(f"{k}: input {r.get('input_ms_median')} ms/step (p90 {r.get('input_ms_p90')}), "
                         f"{r.get('host_copies_per_image_after_decode')} copies/img")
        return "; ".join(parts)
    if name == "probe":
        sr, bs = v.get("step_rate") or {}, v.get("batch_search") or {}
        g = ((v.get("nvml") or {}).get("gpus") or [{}])[0]
        return (f"{g.get('name') or v.get('device_kind')}, memory {_gib((v.get('memory') or {}).get('limit_bytes'))}"
                f" ({(v.get('memory') or {}).get('source')}); step {_fmt_n(sr.get('images_per_s_per_device'))} "
                f"img/s/dev at pd {sr.get('per_device_batch')} (compile {_r(sr.get('compile_s'), 1)} s)"
                + (f"; search pick {bs.get('per_device_batch')}" if bs else ""))
    if name == "train_auto":
        return (f"{_fmt_n(v.get('images_per_s'))} img/s ({v.get('steps')} steps, pd {v.get('per_device_batch')}), "
                f"stall {_fmt_n(v.get('data_stall_pct'), 1)}%, host wait {_fmt_n(v.get('host_wait_pct'), 1)}%, "
                f"synthetic {_fmt_n(v.get('synthetic_images_per_s'))} img/s")
    if name == "batch_pick":
        rate = v.get("rate_at_pick") or {}
        return (f"pick {v.get('per_device_batch')} ({v.get('limited_by')}, {v.get('compilations')} "
                f"compilations), predicted {_gib(v.get('predicted_bytes'))} of {_gib(v.get('budget_bytes'))}; "
                f"{_fmt_n(rate.get('images_per_s_per_device'))} img/s/dev")
    if name == "batch_trials":
        parts = [f"{t['per_device_batch']}: {t.get('status')}"
                 + (f" peak {_gib(t.get('peak_bytes'))}" if t.get("peak_bytes") else "")
                 for t in v.get("trials", [])]
        return "; ".join(parts) + (f" -> {v.get('verdict')}" if v.get("verdict") else "")
    return ""


def render_text(report: dict) -> str:
    m = report.get("machine", {})
    gpus = ", ".join(g.get("name") or "?" for g in m.get("gpus") or []) or "no NVML GPU"
    lines = [f"gpu_check {report['date_utc']}  mode {report['mode']}  {gpus}  "
             f"jax {report.get('versions', {}).get('jax', '?')}  python {m.get('python')}",
             f"data {report['data']['path']} ({report['data']['images']} images)",
             f"{'stage':<13} {'status':<11} {'s':>6} {'budget':>6}  figures"]
    for name, v in report["stages"].items():
        lines.append(f"{name:<13} {v.get('status', '?'):<11} {_fmt_n(v.get('seconds'), 1):>6} "
                     f"{_fmt_n(v.get('budget_s'), 0):>6}  {stage_line(name, v)}")
    k = (report.get("summary") or {}).get("knee")
    if k:
        pts = ", ".join(f"{b}: {_fmt_n(x)}" for b, x in k["points"].items())
        lines.append(f"knee: per-device images/s {pts} -> knee at per-device batch "
                     f"{k['knee_batch']} (best {k['best_batch']}, within {k['within']:.0%})")
    comp = (report.get("summary") or {}).get("compile_s") or {}
    if comp:
        lines.append("compile s: " + "; ".join(f"{n} {x}" for n, x in comp.items()))
    lines.append(f"total {report.get('seconds', 0):.0f} s (deadline {report['total_s']:.0f} s "
                 f"after the start)")
    return "\n".join(lines) + "\n"


def _setup_info(text: str | None) -> dict:
    out = {}
    for part in (text or "").split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _child_env(s: Settings, work: Path) -> dict:
    env = dict(os.environ)
    paths = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != ROOT]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("AUTOTUNE_CACHE", str(work / "autotune-cache"))
    if s.dry:
        env["JAX_PLATFORMS"] = "cpu"
        flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                       env.get("XLA_FLAGS", "")).strip()
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=1".strip()
    if not env.get("JAX_COMPILATION_CACHE_DIR"):
        env["JAX_COMPILATION_CACHE_DIR"] = str(work / "jax-cache")
        if s.dry:  # the tiny model's many small programs (state init) are worth caching too
            env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
            env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    return env


def _settings(a) -> Settings:
    s = DRY if a.dry_run else GPU
    over = {}
    if a.batches:
        over["batches"] = tuple(int(x) for x in a.batches.split(","))
    if a.train_steps:
        over["train_steps"] = a.train_steps
    if a.train_batch:
        over["train_batch"] = a.train_batch
    if a.total_s:
        over["total_s"] = float(a.total_s)
    return dataclasses.replace(s, **over)


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder for gpu_check.json, gpu_check.txt, logs/, runs/")
    ap.add_argument("--dry-run", action="store_true", help="CPU, cpu-tiny, tiny shapes")
    ap.add_argument("--data", help="image folder <root>/<wnid>/*.JPEG (default: "
                                   "../shared/data/imagenet-samples, else .gpudata/imagenet-samples; "
                                   "dry run: a tiny folder made on the fly)")
    ap.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--total-s", type=float, help="deadline in seconds after --start-time "
                                                  "(default 465; dry run 420)")
    ap.add_argument("--batches", help="throughput per-device batches (default 128,256; dry 8,16)")
    ap.add_argument("--train-steps", type=int, help="train --auto --max-steps (default 200; dry 3)")
    ap.add_argument("--train-batch", type=int, help="train --auto --batch (default 256; dry 8)")
    ap.add_argument("--start-time", type=float, help="epoch seconds the shell script started")
    ap.add_argument("--setup", help="what the shell script did, k=v;k=v")
    ap.add_argument("--command", help="the command line, for the report")
    # child side
    ap.add_argument("--stage", choices=sorted(STAGE_FUNCS), help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    ap.add_argument("--ctx", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = _args(argv)
    out = Path(a.out).resolve()
    if a.stage:
        d = json.loads(a.settings)
        d["batches"] = tuple(d["batches"])
        return run_stage_child(a.stage, out, Settings(**d), dict(json.loads(a.ctx), data=a.data))

    t_start = a.start_time or time.time()
    s = _settings(a)

    def stop(signum, frame):  # the shell's safety-net timeout: write what we have
        raise SystemExit(f"gpu_check: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    deadline = t_start + s.total_s
    for sub in ("logs", "stages", "raw", "runs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    env = _child_env(s, work)
    if a.data:
        data = Path(a.data).resolve()
    elif s.dry:
        data = make_tiny_folder(work / "tiny-data" / "imagenet-tiny")
    else:
        data = SHARED_SAMPLES if SHARED_SAMPLES.is_dir() else LOCAL_SAMPLES
    selected = [x.strip() for x in a.stages.split(",")] if a.stages else list(STAGES)
    unknown = [x for x in selected if x not in STAGES]
    if unknown:
        print(f"gpu_check: unknown stage(s) {', '.join(unknown)}; expected {', '.join(STAGES)}",
              file=sys.stderr)
        return 2
    report = {
        "tool": "bench/gpu_check.py", "mode": s.mode, "date_utc": _utc(),
        "command": a.command or shlex.join([sys.executable] + sys.argv),
        "preset": s.preset, "total_s": s.total_s, "settings": dataclasses.asdict(s),
        "data": folder_stats(data) if data.is_dir() else {"path": str(data), "images": 0,
                                                          "error": "no such folder"},
        "setup": _setup_info(a.setup), "versions": versions(), "machine": machine(),
        "env": {k: env.get(k) for k in ("JAX_PLATFORMS", "XLA_FLAGS", "PYTHONPATH",
                                        "JAX_COMPILATION_CACHE_DIR",
                                        "XLA_PYTHON_CLIENT_MEM_FRACTION",
                                        "XLA_PYTHON_CLIENT_PREALLOCATE", "AUTOTUNE_CACHE")
                if env.get(k)},
        "stages": {}, "summary": {}}
    ctx = {"out": str(out), "setup": report["setup"]}
    runner = Runner(out, s, str(data), deadline, env, ctx)
    no_gpu = ""

    def write():
        report["seconds"] = round(time.time() - t_start, 1)
        report["summary"] = summarize(report)
        _write_json(out / "gpu_check.json", report)
        (out / "gpu_check.txt").write_text(render_text(report))

    try:
        for name in STAGES:
            if name not in selected:
                report["stages"][name] = {"status": "not run", "error": "not in --stages"}
                continue
            if no_gpu:
                report["stages"][name] = {"status": "skipped", "error": no_gpu}
                continue
            print(f"gpu_check: {name} ...", flush=True)
            try:
                res = runner.run(name)
            except BaseException as exc:  # stopped by a signal: say so, then stop
                report["stages"][name] = {"status": "interrupted", "error": str(exc) or type(exc).__name__}
                raise
            report["stages"][name] = res
            print(f"gpu_check: {name}: {res['status']} in {res.get('seconds', 0)} s"
                  + (f" ({res['error'].splitlines()[0][:200]})" if res.get("error") else ""),
                  flush=True)
            if name == "throughput" and not s.dry and res.get("backend") == "cpu":
                no_gpu = "no GPU (JAX's backend is cpu); use --dry-run"
            write()
    finally:
        for name in STAGES:
            report["stages"].setdefault(name, {"status": "skipped",
                                               "error": "the script was stopped before it"})
        write()
        shutil.rmtree(work, ignore_errors=True)
    print((out / "gpu_check.txt").read_text(), end="")
    print(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.txt'}")
    return 0 if all(v.get("status") in ("ok", "not run") for v in report["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
