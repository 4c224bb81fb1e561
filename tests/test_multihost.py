"""Two local processes with ``jax.distributed`` (2 fake CPU devices each) train a few
steps and end with identical parameters; one process with 4 devices and the same
partitioning gives the same loss curve. (Faults of multi-host runs: stop signals,
lost processes, timed checkpoints, NaN: ``test_multihost_faults.py``, whose launcher,
with a reserved coordinator port and outputs in files, is used here too.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import packed_jpeg_folder, xla_flags
from test_multihost_faults import start

HERE = Path(__file__).parent



def _env(devices: int, **extra) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(devices)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _result(proc) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return packed_jpeg_folder(tmp_path_factory.mktemp("multihost"), classes=3, per_class=22,
                              size=(40, 32), num_shards=4)


#: The schedule of test_multihost_faults.py's runs (2 processes x 2 devices, 8 epochs),
#: so that one of the two files compiles the step and the other finds it in the cache;
#: 16 of its steps.
RUN = ("--epochs", "8", "--max-steps", "16")


def test_two_processes_match_each_other_and_one_process(packed, tmp_path):
    with start(packed, tmp_path / "two", tmp_path, "two", *RUN, devices=2) as pair:
        assert pair.finish() == [0, 0], pair.tails()
        a, b = pair.summary(0), pair.summary(1)
    assert a["status"] == b["status"] == "max_steps"
    assert a["steps"] == b["steps"] == 16
    assert a["params"] == b["params"]  # bit-identical parameters on both hosts
    assert a["loss"] == b["loss"]

    one = subprocess.Popen([sys.executable, str(HERE / "tiny_run.py"), str(packed),
                            str(tmp_path / "one"), *RUN, "--partitions", "2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(4))
    c = _result(one)
    assert c["steps"] == a["steps"]
    np.testing.assert_allclose(c["loss"], a["loss"], rtol=1e-4)
