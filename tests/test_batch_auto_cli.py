"""``autotune train --auto --batch auto`` end to end on 8 fake CPU devices: the probe
searches the batch and times the rate curve, the noise scale is measured on the packed
data, the plan takes the smallest of the three; ``autotune plan --batch N`` on that
probe says what the plan would have chosen."""

from autotune import cli, planner, results
from autotune.planner import Plan
from autotune.probe_report import ProbeReport
from conftest import write_jpeg_folder


def test_batch_auto_measures_and_takes_the_smallest(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(planner, "NOISE_PROBE_STEPS_CPU", 6)  # a short probe for the test
    images = tmp_path / "imgs"
    write_jpeg_folder(images, classes=4, per_class=24, size=(80, 60))
    argv = ["train", "--auto", "--data", str(images), "--preset", "cpu-tiny", "--results",
            str(tmp_path / "r"), "--epochs", "2", "--max-steps", "2", "--batch", "auto"]
    assert cli.main(argv) == 0
    (run,) = [p for p in (tmp_path / "r").iterdir() if (p / "summary.json").exists()]
    probe = ProbeReport.load(run / results.PROBE)
    plan = Plan.load(run / results.PLAN)
    assert probe.batch_search is not None and probe.batch_search.per_device_batch == 32
    assert [p.per_device_batch for p in probe.accelerator.rate_curve] == [8, 16, 32]
    noise = probe.noise_scale
    # 76 training images / (6 steps x 8 devices) = 1 per device: one epoch at most.
    assert (noise.steps, noise.averaged_steps, noise.per_device_batch) == (6, 5, 1)
    assert not (run / "noise-probe").exists()  # the throwaway run's folder is removed
    cands = [plan.decision(n).value for n in ("batch_fit", "batch_knee", "batch_critical",
                                              "batch_data")]
    known = [int(v) for v in cands if v != "-"]
    assert plan.per_device_batch == min(known)
    # 96 images less the preset's hold-out, over 2 steps x 8 devices: the data's cap
    train = int(96 * (1 - plan.val_fraction))
    assert plan.decision("batch_data").value == str(max(1, train // 16))
    assert plan.critical_batch == (None if noise.b_simple is None
                                   else planner.critical_batch(noise.b_simple))
    capsys.readouterr()
    assert cli.main(["plan", "--probe", str(run), "--batch", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"(--batch 2); the plan would have chosen {plan.per_device_batch}" in out
    # a batch the data cannot fill: one line, exit 2, naming the largest it allows
    assert cli.main(["plan", "--probe", str(run), "--batch", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"use --batch {plan.per_device_batch} or less" in err
