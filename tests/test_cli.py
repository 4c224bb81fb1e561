"""The CLI's commands end to end on a tiny preset and a generated folder, and its
one-line errors for bad arguments (exit code 2, no traceback)."""

import json

import pytest

from autotune import cli, results
from autotune.planner import Plan
from autotune.probe_report import ProbeReport
from conftest import write_jpeg_folder
from trainers.summaries import TrainSummary


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "imgs"
    write_jpeg_folder(root, classes=4, per_class=24, size=(80, 60))
    (root / "n00000001" / "truncated.JPEG").write_bytes(
        (root / "n00000001" / "n00000001_0.JPEG").read_bytes()[:200])
    return root


def test_probe_writes_probe_json(images, tmp_path, capsys):
    rc = cli.main(["probe", "--data", str(images), "--preset", "cpu-tiny", "--quick",
                   "--results", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Decode + augment" in out and "Accelerator" in out and "img/s" in out
    (probe,) = tmp_path.glob("*/probe.json")
    rep = ProbeReport.load(probe)
    assert rep.dataset.num_images == 4 * 24 + 1 and rep.dataset.num_classes == 4
    assert rep.accelerator.local_devices == 8
    assert rep.accelerator.step_rate.per_device_batch == 4  # global 32 / 8 devices
    assert rep.disk is not None and rep.disk.sequential.bytes_read > 0


def test_train_auto_runs_the_whole_path(images, tmp_path, capsys):
    rc = cli.main(["train", "--auto", "--data", str(images), "--preset", "cpu-tiny",
                   "--results", str(tmp_path), "--epochs", "2"])
    assert rc == 0
    (run,) = [p for p in tmp_path.iterdir() if (p / "summary.json").exists()]
    for name in (results.PROBE, results.PLAN, results.PACK, results.METRICS, results.SUMMARY,
                 results.BAD_IMAGES):
        assert (run / name).is_file(), name
    plan = Plan.load(run / results.PLAN)
    summary = TrainSummary.load(run / results.SUMMARY)
    assert summary.status == "completed" and summary.num_devices == 8
    assert summary.global_batch == 32 == plan.global_batch
    assert summary.final_eval is not None and summary.final_eval.count > 0
    bad = json.loads((run / results.BAD_IMAGES).read_text())
    assert [b["path"].endswith("truncated.JPEG") for b in bad] == [True]
    kinds = {json.loads(l)["kind"] for l in (run / results.METRICS).read_text().splitlines()}
    assert kinds == {"StepReport", "EvalReport"}
    out = capsys.readouterr().out
    assert "Training summary" in out and "held-out top-1" in out


@pytest.mark.parametrize("argv,needle", [
    (["train", "--auto", "--data", "/nonexistent/folder"], "no such folder"),
    (["train", "--auto", "--preset", "resnet9000", "--data", "{images}"], "unknown preset"),
    (["train", "--data", "{images}"], "needs --auto"),
    (["train", "--auto", "--epochs", "-1", "--data", "{images}"], "--epochs -1"),
    (["probe", "--memory-budget", "lots", "--data", "{images}"], "--memory-budget lots"),
    (["train", "--auto", "--data", "{plain}"], "no class folders"),
    (["report", "/nonexistent/run"], "no such run folder"),
])
def test_bad_arguments_are_one_line_errors(argv, needle, capsys, images, tmp_path):
    (tmp_path / "a.JPEG").write_bytes(b"x")
    argv = [a.format(images=images, plain=tmp_path) for a in argv]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_rerunning_the_same_command_continues_an_unfinished_run(images, tmp_path):
    argv = ["train", "--auto", "--data", str(images), "--preset", "cpu-tiny",
            "--results", str(tmp_path), "--epochs", "4", "--max-steps", "3", "--quiet"]
    assert cli.main(argv) == 0
    (run,) = [p for p in tmp_path.iterdir() if (p / "summary.json").exists()]
    (run / "summary.json").unlink()  # as if the process had been killed
    assert cli.main(argv) == 0
    assert [p for p in tmp_path.iterdir() if (p / "run.json").exists()] == [run]
    summary = TrainSummary.load(run / "summary.json")
    assert summary.resumed_from_step == 3 and summary.steps == 6
    # A completed run is not continued: the same command starts a new one.
    assert cli.main(argv) == 0
    assert len([p for p in tmp_path.iterdir() if (p / "run.json").exists()]) == 2


def test_the_cli_gives_openblas_one_thread_unless_the_user_set_it():
    """Set before NumPy loads (the CLI's imports do not load it), so the spawned pack
    workers inherit it too; a value the user set is kept."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; import autotune.cli; "
            "print(os.environ['OPENBLAS_NUM_THREADS'], 'numpy' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["1", "False"]
    env["OPENBLAS_NUM_THREADS"] = "3"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["3", "False"]
