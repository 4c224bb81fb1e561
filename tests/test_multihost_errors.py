"""Bad multi-host settings fail within a bound with one line naming the host and the
value: an unreachable coordinator, processes that never all join, and hosts whose
packed data or plan differ."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import free_port, run_children, xla_flags

REPO = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(1)}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _autotune(tmp_path, *argv, timeout=120):
    out = tmp_path / "out.log"
    with open(out, "wb") as f:
        proc = subprocess.run([sys.executable, "-m", "autotune.cli", *argv], env=_env(),
                              stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    return proc.returncode, out.read_text(errors="replace")


def test_unreachable_coordinator_is_one_line_within_the_connect_timeout(tmp_path):
    port = free_port()  # nothing listens there
    rc, out = _autotune(tmp_path, "train", "--auto", "--data", str(tmp_path), "--coordinator",
                        f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1",
                        "--connect-timeout", "3")
    assert rc == 2, out[-2000:]
    lines = [l for l in out.splitlines() if l.strip()]
    assert len(lines) == 1, out[-2000:]
    assert "process 1 of 2" in lines[0] and f"127.0.0.1:{port}" in lines[0]
    assert "cannot be reached" in lines[0]


def test_coordinator_alone_says_not_every_process_joined(tmp_path):
    port = free_port()
    rc, out = _autotune(tmp_path, "train", "--auto", "--data", str(tmp_path), "--coordinator",
                        f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "0",
                        "--connect-timeout", "3")
    assert rc == 2, out[-2000:]
    assert "not every process joined" in out and "process 0 of 2" in out
    assert "Traceback" not in out


_AGREE_CHILD = textwrap.dedent("""
    import sys
    from types import SimpleNamespace
    pid, port, records = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    from trainers.distributed import initialize
    initialize(f"127.0.0.1:{port}", 2, pid, peer_timeout_s=30, connect_timeout_s=120)
    from autotune.orchestrate import SetupError, check_hosts_agree
    split = SimpleNamespace(shard_lengths=(records, 10))
    pack = SimpleNamespace(split=lambda name: split, num_classes=3)
    plan = SimpleNamespace(to_json=lambda indent=None: '{"batch": 8}')
    try:
        check_hosts_agree(plan, pack, f"/data/packed-{pid}")
        print("agreed", flush=True)
    except SetupError as exc:
        print(f"error: {exc}", flush=True)
""")


def test_hosts_with_different_data_both_stop_naming_the_host_and_values(tmp_path):
    port = free_port()
    rcs, outs = run_children(
        [[sys.executable, "-c", _AGREE_CHILD, str(i), str(port), str(records)]
         for i, records in enumerate((10, 12))], [tmp_path / f"p{i}.log" for i in range(2)],
        _env(), 180)
    assert rcs == [0, 0], outs
    for out in outs:  # every process takes the same decision
        assert "error: process 1 differs from process 0: train records 22 vs 20" in out, out
