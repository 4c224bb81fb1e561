"""Kill-and-resume (SIGKILL after a checkpoint, rerun, bit-identical parameters) and
recovery from an out-of-memory error in the middle of training."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import packed_jpeg_folder, xla_flags
from trainers import train as tr
from trainers.checkpoint import Checkpointer
from trainers.loop import train_and_evaluate
from trainers.summaries import OomEvent
from trainers.options import LoopOptions

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return packed_jpeg_folder(tmp_path_factory.mktemp("resume"), classes=3, per_class=27,
                              size=(40, 32), num_shards=2)


def _run(packed, workdir, *extra):
    # 2 devices (not the session's 8): the same check, a smaller compilation.
    env = dict(os.environ, XLA_FLAGS=xla_flags(2))
    return subprocess.Popen([sys.executable, str(HERE / "tiny_run.py"), str(packed), str(workdir),
                             "--epochs", "1", "--per-device-batch", "4", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _final_params(workdir):
    ck = Checkpointer(Path(workdir) / "checkpoints")
    config = tr.TrainConfig(arch="resnet_tiny", width=4, small_images=True, image_size=16,
                            num_classes=3, per_device_batch=2)
    lr = tr.create_learning_rate_fn(config, 10)
    abstract = tr.create_train_state(jax.random.PRNGKey(0), config, tr.create_model(config), lr)
    state, _, _, step = ck.restore(abstract)
    return step, jax.device_get(state.params), jax.device_get(state.batch_stats)


def test_sigkill_after_checkpoint_then_resume_is_bit_identical(packed, tmp_path):
    ref = _run(packed, tmp_path / "ref")
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-2000:]
    ref_summary = json.loads(out.strip().splitlines()[-1])
    assert ref_summary["status"] == "completed"

    victim = _run(packed, tmp_path / "killed", "--every", "0.001")
    ckdir = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 240
    killed_at = None
    while time.monotonic() < deadline and victim.poll() is None:
        steps = [int(p.name) for p in ckdir.glob("*") if p.name.isdigit()] if ckdir.exists() else []
        if steps and max(steps) >= 4:
            victim.send_signal(signal.SIGKILL)
            killed_at = max(steps)
            break
        time.sleep(0.05)  # polling a condition with a deadline, not waiting for time
    victim.wait(timeout=60)
    assert killed_at is not None, "the run finished before it could be killed"
    assert victim.returncode == -signal.SIGKILL

    again = _run(packed, tmp_path / "killed", "--every", "0.001")
    out2, err2 = again.communicate(timeout=300)
    assert again.returncode == 0, err2[-2000:]
    assert json.loads(out2.strip().splitlines()[-1])["steps"] == ref_summary["steps"]

    step_a, params_a, stats_a = _final_params(tmp_path / "ref")
    step_b, params_b, stats_b = _final_params(tmp_path / "killed")
    assert step_a == step_b == ref_summary["steps"]
    for a, b in zip(jax.tree_util.tree_leaves((params_a, stats_a)),
                    jax.tree_util.tree_leaves((params_b, stats_b))):
        np.testing.assert_array_equal(a, b)  # bit-identical on CPU


def test_out_of_memory_mid_run_steps_down_and_finishes(packed, tmp_path):
    config = tr.TrainConfig(arch="resnet_tiny", width=4, small_images=True, image_size=16,
                            num_classes=3, per_device_batch=2, epochs=2, learning_rate=0.1,
                            warmup_epochs=0, log_every_steps=1)
    fired = []

    def inject(step):
        if step == 3 and not fired:
            fired.append(step)
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                               "123456 bytes (injected)")

    # The rule the run really uses (autotune.orchestrate.train passes it): the
    # planner's step-down, with the plan's learning-rate rule, over this run's devices.
    from functools import partial

    from autotune.lr_rules import rescale_after_batch_change
    from autotune.planner import PlanRequest, make_plan, step_down
    from autotune.presets import get_preset
    from probe_fixtures import accelerator, report

    n = jax.local_device_count()
    plan = make_plan(report(acc=accelerator(backend="cpu", devices=n, batch=2), classes=3,
                            num_images=81, preset="cpu-tiny"),
                     get_preset("cpu-tiny"), PlanRequest(per_device_batch=2, local_devices=n))
    seen = []
    summary = train_and_evaluate(config, str(packed), str(tmp_path / "run"),
                                 LoopOptions(decode_threads=1, checkpoint_every_s=0.001,
                                             eval_every_epochs=0),
                                 callback=seen.append, on_oom=partial(step_down, plan=plan),
                                 step_hook=inject)
    assert summary.status == "completed"
    # 2 -> 1 (the next smaller batch below 8 is a multiple of 1), the learning rate
    # rescaled by the plan's rule from global batch 2n to n.
    want_lr = rescale_after_batch_change(0.1, 2 * n, 1 * n, plan.lr.rule)
    assert summary.per_device_batch == 1 and summary.learning_rate == pytest.approx(want_lr)
    assert want_lr < 0.1
    (event,) = summary.oom_events
    assert (event.old_per_device_batch, event.new_per_device_batch) == (2, 1)
    assert event.step == 3 and "injected" in event.message
    # Continued from the last checkpoint (step 3 at batch 16 = step 6 at batch 8), not
    # from scratch: same images seen.
    assert event.resumed_step == 6
    assert any(isinstance(r, OomEvent) for r in seen)
    # 81 images in 2 shards of 41 + 40 (host has both), batch 8 x 1 = 8 -> 10 steps/epoch.
    assert summary.steps == 2 * summary.steps_per_epoch


def test_out_of_memory_without_a_smaller_batch_is_a_clear_error(packed, tmp_path):
    from trainers.loop import DeviceOutOfMemory

    config = tr.TrainConfig(arch="resnet_tiny", width=4, small_images=True, image_size=16,
                            num_classes=3, per_device_batch=2, epochs=1, warmup_epochs=0)

    def inject(step):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory (injected)")

    with pytest.raises(DeviceOutOfMemory, match="out of device memory at step 0"):
        train_and_evaluate(config, str(packed), str(tmp_path / "run"),
                           LoopOptions(decode_threads=1, eval_every_epochs=0), step_hook=inject)
