"""Two real ``jax.distributed`` processes on CPU (2 fake devices each) running
``tests/tiny_run.py``, and the multi-host faults the training loop must survive:

1. timed checkpoints every second for 64 steps: no hang, identical parameters on both
   hosts (this run is also the reference of the resume checks);
2. SIGTERM to one process (1, and the coordinator 0): both stop at the same step with
   exit code 3, the same checkpoint and parameters, and (after the stop of process 1)
   a rerun in the same folder ends bit-identical to the uninterrupted run;
3. a second SIGTERM ends a process blocked in a collective at once (128 + 15);
4. a frozen (SIGSTOP) or killed (SIGKILL) process makes the other exit with
   ``EXIT_PEER_LOST`` within a bound, naming the lost process;
5. a NaN on one device of one process: the step is skipped on both, parameters stay
   identical.

Rules that keep these tests from flaking on a loaded machine:

* the coordinator's port is *reserved*, not probed: the test binds a socket with
  ``SO_REUSEPORT`` to an OS-chosen port and keeps it open (never listening) until
  both children have started training. While it is bound, no other socket without
  ``SO_REUSEPORT`` can bind that port and the kernel never hands it out as an
  ephemeral port, but the coordinator's gRPC server (which binds with
  ``SO_REUSEPORT``) can. There is no bind-release-reuse window. Should a gRPC build
  refuse the shared bind, process 0 fails at once ("Failed to start RPC server"); the
  launch is then retried on a fresh port, released just before the start;
* kill points are the ``{"step": N}`` lines the children print, and the one wait that
  cannot be seen in the output (the first SIGTERM delivered before the second is
  sent) polls the child's pending-signal mask in ``/proc``;
* every wait polls a condition under a generous deadline; nothing sleeps to
  synchronise;
* child stdout / stderr go to files (never a pipe that could fill and block);
* every child still running at the end of a test is SIGCONT-ed and SIGKILL-ed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import wait_for as _wait_for, packed_jpeg_folder, xla_flags
from trainers.distributed import EXIT_PEER_LOST

HERE = Path(__file__).parent
TINY_RUN = HERE / "tiny_run.py"

#: 66 images in 4 shards, 2 hosts x 2 devices x 2 images: 8 steps per epoch.
EPOCHS = 8
TOTAL_STEPS = 64
#: Exit code of tiny_run.py for a stopped run (the CLI's EXIT_STOPPED).
EXIT_STOPPED = 3

#: Seconds until both children report their first step (imports, jax.distributed,
#: compilation; the compile cache is usually warm).
START_TIMEOUT_S = 240
#: Seconds for a whole run of TOTAL_STEPS (about 35 s on an idle 2-core machine).
RUN_TIMEOUT_S = 400
#: Signal -> both processes out (clean stop at the next log step, checkpoint written).
STOP_BOUND_S = 120
#: Second signal -> out (immediate by design).
SECOND_SIGNAL_BOUND_S = 30
#: Peer timeout of the lost-process cases, and the bound on the survivor's exit.
PEER_TIMEOUT_S = 10
LOST_BOUND_S = 90

_STEP = re.compile(r'^\{"step": (\d+)\}\s*$', re.M)
_BIND_FAILED = ("Failed to start RPC server", "Failed to add port")


# ------------------------------------------------------------------ helpers


def _reserve_port() -> tuple[socket.socket, int]:
    """A socket bound (not listening) to an OS-chosen port of 127.0.0.1 with
    ``SO_REUSEPORT``, and that port: held, the port cannot be taken by anyone but a
    ``SO_REUSEPORT`` socket of this user (the coordinator's gRPC server)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


class Pair:
    """The two processes of one run; their stdout / stderr are files."""

    def __init__(self, procs: list[subprocess.Popen], logs: list[tuple[Path, Path]], port: int):
        self.procs = procs
        self.logs = logs
        self.port = port

    def out(self, i: int) -> str:
        return self.logs[i][0].read_text(errors="replace")

    def err(self, i: int) -> str:
        return self.logs[i][1].read_text(errors="replace")

    def step(self, i: int) -> int:
        """The last step process ``i`` reported (0 before any)."""
        steps = _STEP.findall(self.out(i))
        return int(steps[-1]) if steps else 0

    def summary(self, i: int) -> dict:
        """Process ``i``'s final JSON line."""
        for line in reversed(self.out(i).splitlines()):
            if line.startswith('{"loss"'):
                return json.loads(line)
        raise AssertionError(f"process {i} printed no summary:\n{self.tails()}")

    def tails(self, n: int = 2500) -> str:
        return "\n".join(f"--- process {i} {kind} (rc {p.poll()}):\n{text[-n:]}"
                         for i, p in enumerate(self.procs)
                         for kind, text in (("stdout", self.out(i)), ("stderr", self.err(i))))

    def wait_step(self, i: int, step: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until process ``i`` has reported ``step``; fails if it ends first."""
        def reached():
            if self.step(i) >= step:
                return True
            if self.procs[i].poll() is not None:
                raise AssertionError(f"process {i} ended before step {step}:\n{self.tails()}")
            return False

        _wait_for(reached, timeout_s, f"process {i} at step {step}")

    def wait(self, i: int, timeout_s: float) -> int:
        try:
            return self.procs[i].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process {i} still running after {timeout_s} s:\n"
                                 f"{self.tails()}") from None

    def finish(self, timeout_s: float = RUN_TIMEOUT_S) -> list[int]:
        deadline = time.monotonic() + timeout_s
        return [self.wait(i, max(1.0, deadline - time.monotonic())) for i in range(2)]

    def signal(self, i: int, sig: int) -> None:
        assert self.procs[i].poll() is None, f"process {i} already ended:\n{self.tails()}"
        self.procs[i].send_signal(sig)

    def kill(self) -> None:
        """End whatever still runs (a stopped process is continued first so that the
        kill is not queued behind the stop)."""
        for p in self.procs:
            if p.poll() is None:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        p.send_signal(sig)
                    except ProcessLookupError:
                        pass
                p.wait(timeout=60)

    def __enter__(self) -> "Pair":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def _launch(packed: Path, workdir: Path, logdir: Path, tag: str, args: tuple,
            port: int, devices: int) -> Pair:
    procs, logs = [], []
    for i in range(2):
        out, err = logdir / f"{tag}-p{i}.out", logdir / f"{tag}-p{i}.err"
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=xla_flags(devices),
                   AUTOTUNE_COORDINATOR=f"127.0.0.1:{port}", AUTOTUNE_NUM_PROCESSES="2",
                   AUTOTUNE_PROCESS_ID=str(i))
        with open(out, "wb") as fo, open(err, "wb") as fe:
            procs.append(subprocess.Popen(
                [sys.executable, str(TINY_RUN), str(packed), str(workdir), *args],
                stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env))
        logs.append((out, err))
    return Pair(procs, logs, port)


def start(packed: Path, workdir: Path, logdir: Path, tag: str, *args: str,
          devices: int = 2, attempts: int = 3) -> Pair:
    """Start both processes of a run of ``tiny_run.py`` (``devices`` fake CPU devices
    each; outputs ``logdir/<tag>-<attempt>-p<i>.out|.err``) and return once each has
    reported a step (or ended). The coordinator's port stays reserved until then (see
    the module docstring); a coordinator that cannot bind it makes the launch start
    again on a new port, released just before the start."""
    for attempt in range(attempts):
        sock, port = _reserve_port()
        if attempt or not hasattr(socket, "SO_REUSEPORT"):
            # Fallback (a gRPC server that refused to share the reserved port, or no
            # SO_REUSEPORT here): release it now; a lost race is retried.
            sock.close()
        pair = _launch(packed, workdir, logdir, f"{tag}-{attempt}", args, port, devices)
        try:
            def started():
                if pair.procs[0].poll() is not None and any(
                        s in pair.err(0) for s in _BIND_FAILED):
                    return "bind"
                return all(pair.step(i) or pair.procs[i].poll() is not None
                           for i in range(2))

            got = _wait_for(started, START_TIMEOUT_S, f"both processes of {tag!r} training")
        except BaseException:
            pair.kill()
            raise
        finally:
            sock.close()
        if got != "bind":
            return pair
        pair.kill()
    raise AssertionError(f"the coordinator could not bind a port in {attempts} attempts:\n"
                         f"{pair.tails()}")


def _checkpoint_steps(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _signal_pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` is pending (sent, not yet delivered) for process ``pid``."""
    mask = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("ShdPnd:", "SigPnd:")):
                    mask |= int(line.split()[1], 16)
    except OSError:  # gone (and reaped): nothing pending
        return False
    return bool(mask & (1 << (sig - 1)))


def _is_stopped(pid: int) -> bool:
    """Whether ``pid`` is in the stopped state (T) after a SIGSTOP."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return packed_jpeg_folder(tmp_path_factory.mktemp("multihost_faults"), classes=3, per_class=22,
                              size=(40, 32), num_shards=4)


#: The runs of 1., 2. and 3. The peer timeout is the product's default, well above any
#: stall of a healthy process on a loaded machine (tiny_run's own default is 20 s).
BASE_ARGS = ("--epochs", str(EPOCHS), "--every", "1")
RUN_ARGS = BASE_ARGS + ("--peer-timeout", "60")


@pytest.fixture(scope="module")
def reference(packed, tmp_path_factory):
    """An uninterrupted two-process run of TOTAL_STEPS steps with timed checkpoints
    every second: ``(summaries of process 0 and 1, workdir)``."""
    root = tmp_path_factory.mktemp("reference")
    with start(packed, root / "work", root, "ref", *RUN_ARGS) as pair:
        rcs = pair.finish()
        assert rcs == [0, 0], pair.tails()
        return [pair.summary(0), pair.summary(1)], root / "work"


# ------------------------------------------------------------------ 0. the port reservation


def test_a_reserved_port_is_refused_to_a_plain_bind_and_shared_with_reuseport():
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT: start() releases the port before the launch")
    sock, port = _reserve_port()
    try:
        with socket.socket() as plain:
            with pytest.raises(OSError):
                plain.bind(("127.0.0.1", port))
        with socket.socket() as server:  # what the coordinator's gRPC server does
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            server.bind(("127.0.0.1", port))
            server.listen()
            with socket.create_connection(("127.0.0.1", port), timeout=30):
                conn, _ = server.accept()  # the connection reaches the listener
                conn.close()
    finally:
        sock.close()


# ------------------------------------------------------------------ 1. timed checkpoints


def test_timed_checkpoints_every_second_for_60_steps_no_hang_same_params(reference):
    (a, b), workdir = reference
    assert a["status"] == b["status"] == "completed"
    assert a["steps"] == b["steps"] == TOTAL_STEPS >= 60
    assert a["params"] == b["params"]  # bit-identical parameters on both hosts
    assert a["loss"] == b["loss"]
    assert a["skipped"] == b["skipped"] == 0
    assert a["checkpoint_step"] == b["checkpoint_step"] == TOTAL_STEPS
    assert _checkpoint_steps(workdir)[-1] == TOTAL_STEPS


# ------------------------------------------------------------------ 2. SIGTERM, resume


# The resume does not depend on which process was signalled (the checkpoint is the one
# agreed step); it is run after the stop of process 1 only, to save a launch.
@pytest.mark.parametrize("victim,resume", [(1, True), (0, False)],
                         ids=["sigterm-1", "sigterm-coordinator"])
def test_sigterm_stops_both_at_one_step_and_resume_is_bit_identical(packed, reference,
                                                                    tmp_path, victim, resume):
    (ref, _), _ = reference
    work = tmp_path / "work"
    with start(packed, work, tmp_path, "stop", *RUN_ARGS) as pair:
        pair.wait_step(victim, 3)
        pair.signal(victim, signal.SIGTERM)
        t0 = time.monotonic()
        rcs = pair.finish(STOP_BOUND_S)
        took = time.monotonic() - t0
        assert rcs == [EXIT_STOPPED, EXIT_STOPPED], pair.tails()
        assert took < STOP_BOUND_S
        a, b = pair.summary(0), pair.summary(1)
    assert a["status"] == b["status"] == "stopped"
    assert a["stop_reason"] == b["stop_reason"] == f"SIGTERM on process {victim}"
    assert a["steps"] == b["steps"] == a["checkpoint_step"] == b["checkpoint_step"]
    assert 3 <= a["steps"] < TOTAL_STEPS
    assert a["params"] == b["params"]
    assert _checkpoint_steps(work)[-1] == a["checkpoint_step"]
    if not resume:
        return

    with start(packed, work, tmp_path, "resume", *RUN_ARGS) as pair:
        assert pair.finish() == [0, 0], pair.tails()
        c, d = pair.summary(0), pair.summary(1)
    assert c["status"] == d["status"] == "completed"
    assert c["steps"] == d["steps"] == TOTAL_STEPS
    # Resumed (not restarted): fewer steps reported, the same losses as the
    # uninterrupted run over them, and bit-identical parameters at the end.
    assert 0 < len(c["loss"]) < len(ref["loss"])
    assert c["loss"] == d["loss"] == ref["loss"][-len(c["loss"]):]
    assert c["params"] == d["params"] == ref["params"]


# ------------------------------------------------------------------ 3. second SIGTERM


def test_second_sigterm_ends_a_process_blocked_in_a_collective_at_once(packed, tmp_path):
    if not Path(f"/proc/{os.getpid()}/status").exists():
        pytest.skip("needs /proc to see a signal delivered")
    # A peer timeout far beyond the test: nothing but the second signal may end process 1.
    with start(packed, tmp_path / "work", tmp_path, "second", *BASE_ARGS,
               "--peer-timeout", "600") as pair:
        pair.wait_step(0, 2)
        pair.wait_step(1, 2)
        pair.signal(0, signal.SIGSTOP)  # process 1 now blocks in its next collective
        _wait_for(lambda: _is_stopped(pair.procs[0].pid), 30, "process 0 stopped")
        p1 = pair.procs[1]
        pair.signal(1, signal.SIGTERM)
        # The first SIGTERM must be delivered before the second is sent, or the kernel
        # merges the two into one pending signal.
        _wait_for(lambda: p1.poll() is not None or not _signal_pending(p1.pid, signal.SIGTERM),
                  30, "the first SIGTERM delivered to process 1")
        # A clean stop needs process 0 (frozen): process 1 cannot end on its own.
        assert p1.poll() is None, pair.tails()
        pair.signal(1, signal.SIGTERM)
        t0 = time.monotonic()
        rc = pair.wait(1, SECOND_SIGNAL_BOUND_S)
        took = time.monotonic() - t0
        err = pair.err(1)
        assert rc == 128 + signal.SIGTERM, pair.tails()
        assert took < SECOND_SIGNAL_BOUND_S
        assert "second SIGTERM" in err, err[-2000:]
        assert '{"loss"' not in pair.out(1)  # no summary: it did not stop cleanly
        assert pair.procs[0].poll() is None  # still frozen; the context kills it


# ------------------------------------------------------------------ 4. lost process

#: (signal to the victim, victim, what the survivor's stderr must contain). A frozen
#: coordinator is normally named as such (its key-value store stops answering); the
#: watchdog may also see process 0's own counter go stale a beat earlier and name it
#: as a peer, which names the same process: both are accepted.
LOST_CASES = [
    (signal.SIGSTOP, 1, r"process 0: process\(es\) 1 of 2 stopped responding"),
    (signal.SIGSTOP, 0, r"process 1: (the coordinator \(process 0 of 2\)|process\(es\) 0 of 2 "
                        r"stopped responding)"),
    (signal.SIGKILL, 1, r"process\(es\) \[?1\b"),
]


@pytest.mark.parametrize("sig,victim,needle", LOST_CASES,
                         ids=["sigstop-1", "sigstop-coordinator", "sigkill-1"])
def test_a_lost_process_ends_the_other_with_exit_peer_lost_naming_it(packed, tmp_path, sig,
                                                                     victim, needle):
    survivor = 1 - victim
    with start(packed, tmp_path / "work", tmp_path, "lost", *BASE_ARGS,
               "--peer-timeout", str(PEER_TIMEOUT_S)) as pair:
        pair.wait_step(victim, 2)
        pair.wait_step(survivor, 2)
        pair.signal(victim, sig)
        t0 = time.monotonic()
        rc = pair.wait(survivor, LOST_BOUND_S)
        took = time.monotonic() - t0
        err = pair.err(survivor)
        assert rc == EXIT_PEER_LOST, pair.tails()
        assert took < LOST_BOUND_S
        assert re.search(needle, err), err[-3000:]
        if sig == signal.SIGSTOP:
            assert pair.procs[victim].poll() is None  # frozen, not dead: the context kills it


# ------------------------------------------------------------------ 5. NaN on one device


def test_nan_on_one_device_of_one_process_is_skipped_on_both(packed, tmp_path):
    # The reference's schedule (its compiled step is in the cache), one epoch of it.
    with start(packed, tmp_path / "work", tmp_path, "nan", "--epochs", str(EPOCHS), "--max-steps",
               str(TOTAL_STEPS // EPOCHS), "--nan-batch", "3", "--nan-process", "1") as pair:
        assert pair.finish() == [0, 0], pair.tails()
        a, b = pair.summary(0), pair.summary(1)
    assert a["status"] == b["status"] == "max_steps"
    assert a["steps"] == b["steps"] == TOTAL_STEPS // EPOCHS
    assert a["skipped"] == b["skipped"] == 1
    assert a["params"] == b["params"]
    assert np.isfinite(a["loss"][-1])  # the NaN step left the parameters finite
