"""bench/gpu_check.sh: the one-script GPU check. The dry run takes every stage on the
CPU with tiny shapes; the helpers that read a GPU probe and plan the brute-force
trials are checked on hand-made numbers (no JAX)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up while it executes
    spec.loader.exec_module(mod)
    return mod


gc = _load_gpu_check()


@pytest.mark.slow
def test_dry_run_takes_every_stage(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not found")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    # timeout: a guard against a hang, not a timing assertion
    proc = subprocess.run([bash, str(ROOT / "bench" / "gpu_check.sh"), str(out), "--dry-run"],
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "dry-run" and report["preset"] == "cpu-tiny"
    assert list(report["stages"]) == list(gc.STAGES)
    for name, st in report["stages"].items():
        assert st["status"] == "ok", (name, st.get("error"), st.get("log_tail"))
        assert st["seconds"] > 0 and st["budget_s"] > 0, name
        assert (out / st["log"]).is_file(), name
    st = report["stages"]

    assert not st["setup"]["failed_imports"] and st["setup"]["decoder"]
    assert [p["per_device_batch"] for p in st["throughput"]["points"]] == [8, 16]
    for p in st["throughput"]["points"]:
        assert p["images_per_s"] > 0 and p["step_ms"] > 0 and p["compile_s"] > 0
    for variant in ("before", "after"):
        v = st["host_feed"]["variants"][variant]
        assert v["input_ms_median"] >= 0 and v["period_ms_median"] > 0
    assert (out / "raw" / "host_feed.json").is_file()
    probe = st["probe"]
    assert probe["step_rate"]["images_per_s"] > 0 and probe["memory"]["limit_bytes"] > 0
    assert (out / probe["run"] / "probe.json").is_file()
    train = st["train_auto"]
    assert train["run_status"] == "max_steps" and train["steps"] == 3
    assert train["images_per_s"] > 0 and train["synthetic_images_per_s"] > 0
    assert train["data_stall_pct"] >= 0 and train["host_wait_pct"] >= 0
    assert train["reused_probe"] is True
    assert (out / train["run"] / "summary.json").is_file()
    assert not (out / train["run"] / "checkpoints").exists()
    pick = st["batch_pick"]
    assert pick["per_device_batch"] > 0 and pick["predicted_bytes"] > 0
    assert pick["compilations"] > 0 and pick["budget_bytes"] > 0
    trials = st["batch_trials"]["trials"]
    assert trials and trials[0]["per_device_batch"] == pick["per_device_batch"]
    for t in trials:
        assert t["status"] in ("fits", "does not fit") and t["seconds"] > 0 and t["peak_bytes"] > 0
    knee = report["summary"]["knee"]
    assert knee["knee_batch"] > 0 and knee["best_images_per_s_per_device"] > 0
    assert all(v > 0 for v in report["summary"]["compile_s"].values())

    text = (out / "gpu_check.txt").read_text()
    for name in gc.STAGES:
        assert name in text
    assert "knee" in text


def test_knee_is_the_smallest_batch_within_3_percent_of_the_best():
    k = gc.knee({128: 2900.0, 256: 3050.0, 1024: 3100.0})
    assert k["best_batch"] == 1024 and k["knee_batch"] == 256
    assert gc.knee({128: 1000.0, 256: 1500.0})["knee_batch"] == 256
    assert gc.knee({}) is None


def _gpu_like_pick(tmp_path: Path) -> dict:
    """A probe.json as the GPU run writes it: ResNet-50's affine memory (2 GiB fixed,
    40 MiB per image) against a 100 GiB budget, capped at 1,024 per device."""
    from autotune.batch_search import find_max_batch

    gib, mib = 2 ** 30, 2 ** 20
    res = find_max_batch(lambda b: 2 * gib + 40 * mib * b, 100 * gib, max_batch=1024,
                         prefetch_bytes_per_image=2 * 224 * 224 * 3)
    run = tmp_path / "runs" / "20260101T000000Z-gpu-probe"
    run.mkdir(parents=True)
    rate = {"per_device_batch": 1024, "global_batch": 1024, "images_per_s": 3000.0,
            "images_per_s_per_device": 3000.0, "step_s": 0.34, "compile_s": 40.0, "steps": 5}
    probe = {"dataset": {"num_classes": 300}, "batch_search": res.to_dict(),
             "accelerator": {"backend": "gpu", "device_kind": "NVIDIA H200",
                             "memory_source": "bytes_limit", "step_rate": rate}}
    (run / "probe.json").write_text(json.dumps(probe))
    st = gc.Stage(tmp_path / "stages" / "batch_pick.json")
    gc.stage_batch_pick(st, gc.GPU, {"out": str(tmp_path)})
    return st.data


def test_batch_pick_reads_the_gpu_probe_and_plans_the_trials(tmp_path):
    pick = _gpu_like_pick(tmp_path)
    assert pick["per_device_batch"] == 1024 and pick["limited_by"] == "max_batch"
    assert pick["source"].startswith("autotune probe")
    assert pick["rate_at_pick"]["images_per_s_per_device"] == 3000.0
    # the trial config is the probe's own (the image folder's classes): a cache hit
    assert pick["config"]["num_classes"] == 300 and pick["config"]["arch"] == "resnet50"
    limit = gc.predicted_limit(pick)
    assert limit == (100 * 2 ** 30 - 2 * 2 ** 30) // (40 * 2 ** 20) // 8 * 8
    assert gc.trial_batches(pick, 3) == [("pick", 1024), ("predicted limit (margin 0)", limit),
                                         ("5% above the predicted limit", gc._round_up(limit * 1.05, 8))]
    assert gc.trial_batches(pick, 1) == [("pick", 1024)]


def test_trial_verdict():
    assert "within 5%" in gc.trial_verdict(1024, 2504, 2504, 2632)
    assert "ABOVE" in gc.trial_verdict(1024, 2504, 1024, 2504)
    assert "more than 5% below" in gc.trial_verdict(1024, 2504, 2632, None)
    assert gc.trial_verdict(1024, None, None, 1024) == "the pick 1024 did not fit"
    assert gc.trial_verdict(1024, None, None, None) == "no conclusive trial"


def test_stage_budgets_fit_the_deadline_order():
    for s in (gc.GPU, gc.DRY):
        assert set(s.budgets) == set(gc.STAGES)
    assert gc.GPU.total_s < 8 * 60  # the stages stop before 8 minutes after the start
