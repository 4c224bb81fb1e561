"""The CPU memory ruler of the batch-search truth (``probes.step_child``): the peak of
the steps themselves, not of imports, compilation or memory freed before them."""

import sys

import numpy as np
import pytest

from probes.step_child import SteadyPeak, run_steps_in_child
from trainers.options import TrainConfig

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
MiB = 2 ** 20


@linux
def test_steady_peak_counts_memory_touched_after_the_reset():
    peak = SteadyPeak()
    peak.reset()
    a = np.ones(64 * MiB, np.uint8)  # touched: 64 MiB resident
    del a
    assert peak.growth() >= 60 * MiB


@linux
def test_steady_peak_ignores_a_peak_before_the_reset():
    a = np.ones(200 * MiB, np.uint8)
    del a  # a freed 200 MiB peak, as a compile or an import leaves behind
    peak = SteadyPeak()
    peak.reset()
    b = np.ones(8 * MiB, np.uint8)
    del b
    assert peak.growth() < 100 * MiB


@linux
def test_child_reports_live_arrays_plus_step_growth_on_cpu():
    cfg = TrainConfig(arch="resnet_tiny", width=8, image_size=32, num_classes=10,
                      per_device_batch=8, dtype="float32")
    r = run_steps_in_child(cfg, 8, steps=2)
    assert r.ok, r.error
    assert r.peak_source == "live arrays + steady-step RSS growth"
    # at least the train state on the device: parameters and SGD momentum (float32)
    import jax

    from trainers import train as tr

    model = tr.create_model(cfg, num_devices=1)
    shapes = jax.eval_shape(lambda k: model.init(k, np.zeros((1, 32, 32, 3), np.float32),
                                                 train=False), jax.random.PRNGKey(0))
    param_bytes = sum(x.size * 4 for x in jax.tree_util.tree_leaves(shapes["params"]))
    assert r.peak_bytes >= 2 * param_bytes
