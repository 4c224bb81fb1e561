"""Multi-host start-up with JAX's own runtime (``jax.distributed.initialize``).

Cluster detection, in order:

1. explicit ``--coordinator host:port --num-processes N --process-id i``;
2. the ``AUTOTUNE_COORDINATOR`` / ``AUTOTUNE_NUM_PROCESSES`` / ``AUTOTUNE_PROCESS_ID``
   environment variables (what the tests and wrapper scripts set);
3. SLURM or Open MPI: ``jax.distributed.initialize()`` with no arguments, which
   detects ``SLURM_JOB_ID`` / ``OMPI_*`` itself (JAX's cluster detection);
4. otherwise a single process: nothing to do.

On the CPU backend the cross-process collectives use gloo
(``jax_cpu_collectives_implementation``), so two local processes can test the
multi-host path.

Lost, frozen and failed hosts: a process blocked in a collective cannot notice that a
peer is gone, so every process runs a :class:`PeerWatchdog` (two daemon threads over
the coordination service's key-value store): each process bumps its own counter every
second and watches everyone else's. A peer whose counter has not moved for
``peer_timeout_s`` seconds (SIGKILL, SIGSTOP, a dead machine), or that announced it
failed, makes every other process print one line naming it and exit with
:data:`EXIT_PEER_LOST`, whatever its main thread is blocked in. JAX's own heartbeat
(set ``peer_timeout_s + 30`` s) is the backstop; a killed coordinator (process 0)
ends the others at once through JAX ("leader task was preempted/died").

Decisions that need every host (stop, checkpoint) are taken with :func:`agree`, a
collective that all processes call at the same step.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Callable, Sequence

_INITIALIZED = False

#: Exit code of a process that ends because another process of the run was lost
#: (EX_UNAVAILABLE).
EXIT_PEER_LOST = 69

#: Seconds without a sign of life before a peer is declared lost (``--peer-timeout``).
DEFAULT_PEER_TIMEOUT_S = 60.0


def cluster_from_env(env: dict | None = None) -> dict | None:
    """Explicit cluster settings from ``AUTOTUNE_*`` variables, or None.

    Raises:
      ValueError: some but not all of the three are set, or not integers.
    """
    env = os.environ if env is None else env
    keys = ("AUTOTUNE_COORDINATOR", "AUTOTUNE_NUM_PROCESSES", "AUTOTUNE_PROCESS_ID")
    present = [k for k in keys if env.get(k)]
    if not present:
        return None
    if len(present) != 3:
        raise ValueError(f"set all of {', '.join(keys)} or none (got {', '.join(present)})")
    try:
        return {"coordinator": env[keys[0]], "num_processes": int(env[keys[1]]),
                "process_id": int(env[keys[2]])}
    except ValueError:
        raise ValueError(f"{keys[1]} ({env[keys[1]]!r}) and {keys[2]} ({env[keys[2]]!r}) "
                         f"must be integers") from None


def in_managed_cluster(env: dict | None = None) -> bool:
    """True under SLURM (several tasks) or Open MPI (several ranks)."""
    env = os.environ if env is None else env
    slurm = env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1
    mpi = int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    return bool(slurm or mpi)


class ConnectError(RuntimeError):
    """The multi-host runtime could not start (coordinator unreachable, timed out)."""


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               peer_timeout_s: float = DEFAULT_PEER_TIMEOUT_S,
               connect_timeout_s: float = 300.0) -> bool:
    """Start the multi-host runtime when the run has several processes; call before
    anything touches a JAX device. Returns True when it initialised a multi-process
    run, and then starts the :class:`PeerWatchdog`.

    Args:
      coordinator, num_processes, process_id: explicit settings (all or none).
      peer_timeout_s: seconds without a sign of life after which a peer is lost.
      connect_timeout_s: seconds to wait for the coordinator and every process.

    Raises:
      ValueError: an incomplete or inconsistent explicit setting (e.g. process id
        outside [0, num_processes)).
      ConnectError: the coordinator could not be reached, or not every process
        joined, within ``connect_timeout_s``; names the address and this process.
    """
    global _INITIALIZED
    if _INITIALIZED:
        return True
    explicit = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(explicit) and not all(explicit):
        raise ValueError("--coordinator, --num-processes and --process-id go together")
    settings = ({"coordinator": coordinator, "num_processes": num_processes,
                 "process_id": process_id} if all(explicit) else cluster_from_env())
    if peer_timeout_s <= 0 or connect_timeout_s <= 0:
        raise ValueError(f"peer timeout ({peer_timeout_s} s) and connect timeout "
                         f"({connect_timeout_s} s) must be > 0")
    import jax

    kwargs = {"heartbeat_timeout_seconds": int(peer_timeout_s + 30),
              "initialization_timeout": max(1, int(connect_timeout_s))}
    if settings is not None:
        if settings["num_processes"] < 1 or not 0 <= settings["process_id"] < settings["num_processes"]:
            raise ValueError(f"process id ({settings['process_id']}) must be in [0, "
                             f"{settings['num_processes']})")
        if settings["num_processes"] == 1:
            return False
        if ":" not in settings["coordinator"]:
            raise ValueError(f"coordinator {settings['coordinator']!r}: expected host:port")
        kwargs.update(coordinator_address=settings["coordinator"],
                      num_processes=settings["num_processes"],
                      process_id=settings["process_id"])
        where = (f"process {settings['process_id']} of {settings['num_processes']}, "
                 f"coordinator {settings['coordinator']}")
    elif in_managed_cluster():
        where = "SLURM / MPI cluster"
    else:
        return False
    _cpu_collectives(jax)
    # JAX ends the process from a C++ thread (no Python exception) when the connection
    # times out, so our own deadline fires first, with one line that says why.
    kwargs["initialization_timeout"] = int(connect_timeout_s) + 10
    done = threading.Event()
    threading.Thread(target=_connect_deadline, name="autotune-connect-deadline", daemon=True,
                     args=(done, where, kwargs.get("coordinator_address"),
                           connect_timeout_s)).start()
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as exc:  # noqa: BLE001 - XLA raises several kinds
        done.set()
        reason = " ".join(str(exc).split())[:300]
        raise ConnectError(f"{where}: the multi-host runtime did not start: {reason}") from None
    done.set()
    _INITIALIZED = True
    global _WATCHDOG
    _WATCHDOG = PeerWatchdog(peer_timeout_s)
    _WATCHDOG.start()
    atexit.register(_WATCHDOG.stop)
    return True


def _connect_deadline(done: threading.Event, where: str, coordinator: str | None,
                      timeout_s: float) -> None:
    """Exit with one line (code 2) when ``jax.distributed.initialize`` has not returned
    after ``timeout_s`` seconds: the coordinator is unreachable, or not every process
    joined."""
    if done.wait(timeout_s):
        return
    why = "not every process joined"
    if coordinator:
        import socket

        host, _, port = coordinator.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
            why = (f"the coordinator {coordinator} answers, but not every process joined "
                   f"(are all --num-processes started, each with its own --process-id?)")
        except (OSError, ValueError) as exc:
            why = (f"the coordinator {coordinator} cannot be reached from this host "
                   f"({getattr(exc, 'strerror', None) or exc}; is the address right and "
                   f"process 0 started?)")
    if done.is_set():
        return
    os.write(2, f"autotune: error: {where}: the multi-host runtime did not start within "
                f"{timeout_s:g} s: {why}\n".encode())
    os._exit(2)


def _cpu_collectives(jax) -> None:
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 - older/newer JAX without the option
        pass


def lost_processes(timeout_s: float = 5.0) -> list[int] | None:
    """Which processes do not reach a barrier within ``timeout_s`` seconds.

    Returns ``[]`` when every process arrives, the lost process ids when the
    coordination service names them, and None when it cannot tell (single process,
    or the message has an unknown form). Uses JAX's distributed client
    (``jax._src.distributed.global_state.client.wait_at_barrier``); its timeout error
    lists the missing tasks after "timed out task names:".
    """
    import re

    import jax

    if jax.process_count() == 1:
        return None
    try:
        from jax._src import distributed as _dist

        client = _dist.global_state.client
        if client is None:
            return None
        client.wait_at_barrier("autotune-peer-check", int(timeout_s * 1000))
        return []
    except Exception as exc:  # noqa: BLE001 - the error text is what we parse
        m = re.search(r"timed out task names:\s*([\d\s,]+)", str(exc))
        if not m:
            return None
        return sorted({int(t) for t in re.findall(r"\d+", m.group(1))})


def agree(values: Sequence[int]) -> tuple[int, ...]:
    """Element-wise maximum of small non-negative integers over all processes.

    A collective: every process must call it at the same point of the run (the loop
    calls it at log steps), and all get the same answer, so a decision made from it
    (stop, checkpoint) is taken by every host at the same step. Identity on a single
    process (no communication).

    Args:
      values: this process's flags (int32 range).

    Returns:
      The maxima, one per value.
    """
    import jax

    if jax.process_count() == 1:
        return tuple(int(v) for v in values)
    import numpy as np
    from jax.experimental import multihost_utils

    got = np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int32)))
    return tuple(int(v) for v in got.reshape(jax.process_count(), -1).max(axis=0))


def all_gather_ints(values: Sequence[int]) -> list[tuple[int, ...]]:
    """Every process's ``values`` (same length everywhere), indexed by process; a
    collective like :func:`agree`. ``[tuple(values)]`` on a single process."""
    import jax

    if jax.process_count() == 1:
        return [tuple(int(v) for v in values)]
    import numpy as np
    from jax.experimental import multihost_utils

    got = np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int64)))
    return [tuple(int(v) for v in row) for row in got.reshape(jax.process_count(), -1)]


_WATCHDOG: "PeerWatchdog | None" = None


def watchdog() -> "PeerWatchdog | None":
    """The running :class:`PeerWatchdog` (None on a single process)."""
    return _WATCHDOG


def exit_now(code: int, message: str | None = None) -> None:
    """Print ``message`` (one line, stderr), flush, and end this process with ``code``
    at once, skipping the interpreter's exit handlers.

    On a multi-host run that ends on an error or a lost peer a normal exit would wait
    in JAX's shutdown barrier for processes that are gone (until the heartbeat timeout,
    then abort): the error is already told, so nothing is lost by leaving now.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    if message:
        os.write(2, (message + "\n").encode(errors="replace"))
    os._exit(code)


def leave_on_error(exc: BaseException, code: int, *, print_traceback: bool = False) -> None:
    """On a multi-host run, tell the other processes this one ends on ``exc`` (they
    exit at once naming it, instead of waiting in a collective), then end this process
    with ``code`` (:func:`exit_now`; with the traceback printed first when asked).
    Returns (does nothing) on a single process."""
    dog = watchdog()
    if dog is None:
        return
    dog.announce_failure(f"{type(exc).__name__}: {exc}")
    if print_traceback:
        import traceback

        traceback.print_exception(exc)
    exit_now(code)


def _default_on_lost(message: str) -> None:
    exit_now(EXIT_PEER_LOST, message)


class PeerWatchdog:
    """Notices a lost, frozen or failed peer while this process's main thread may be
    blocked in a collective, and ends this process with one line naming it.

    Two daemon threads. The *beat* thread, every ``period_s``, writes this process's
    counter to the coordination service's key-value store
    (``autotune/alive/<process>``) and reads everyone's in one call. The *judge*
    thread, every ``period_s``, declares lost a peer whose counter has not changed for
    ``timeout_s`` seconds of this process's clock (no clock sync needed), a peer whose
    value starts with ``failed`` (it announced an error, :meth:`announce_failure`),
    or, when the store itself has not answered for ``timeout_s`` seconds, the
    coordinator (process 0, which hosts the store). A peer that wrote ``exited``
    finished normally and is no longer watched.

    Args:
      timeout_s: seconds without a sign of life.
      period_s: seconds between beats (default ``min(1, timeout_s / 10)``).
      on_lost: called once with the message (default: print it to stderr and
        ``os._exit(EXIT_PEER_LOST)``).
      client, process_id, num_processes: the distributed client and layout (default:
        JAX's).
    """

    PREFIX = "autotune/alive/"

    def __init__(self, timeout_s: float = DEFAULT_PEER_TIMEOUT_S, period_s: float | None = None,
                 on_lost: Callable[[str], None] | None = None, *, client=None,
                 process_id: int | None = None, num_processes: int | None = None):
        if client is None:
            import jax
            from jax._src import distributed as _dist

            client = _dist.global_state.client
            process_id, num_processes = jax.process_index(), jax.process_count()
        self.client = client
        self.me = int(process_id)
        self.n = int(num_processes)
        self.timeout_s = float(timeout_s)
        self.period_s = float(period_s if period_s is not None else min(1.0, timeout_s / 10))
        self.on_lost = on_lost or _default_on_lost
        self._stop = threading.Event()
        self._lock = threading.Lock()
        now = time.monotonic()
        self._seen = {p: (None, now) for p in range(self.n) if p != self.me}
        self._finished: set[int] = set()
        self._last_round = now
        self._count = 0
        self._fired = False
        self._threads = [threading.Thread(target=self._beat, name="autotune-peer-beat",
                                          daemon=True),
                         threading.Thread(target=self._judge, name="autotune-peer-judge",
                                          daemon=True)]

    def start(self) -> "PeerWatchdog":
        for t in self._threads:
            t.start()
        return self

    def _set(self, value: str) -> None:
        self.client.key_value_set(f"{self.PREFIX}{self.me}", value, allow_overwrite=True)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self._count += 1
                self._set(str(self._count))
                entries = self.client.key_value_dir_get(self.PREFIX)
            except Exception:  # noqa: BLE001 - the judge notices the silence
                self._stop.wait(self.period_s)
                continue
            now = time.monotonic()
            with self._lock:
                self._last_round = now
                for key, value in entries:
                    try:
                        p = int(str(key).rsplit("/", 1)[-1])
                    except ValueError:
                        continue
                    if p not in self._seen:
                        continue
                    if value == "exited":
                        self._finished.add(p)
                    elif value.startswith("failed"):
                        self._fire(f"process {p} of {self.n} failed: "
                                   f"{value[len('failed'):].lstrip(': ')}")
                        return
                    if value != self._seen[p][0]:
                        self._seen[p] = (value, now)
            self._stop.wait(self.period_s)

    def _judge(self) -> None:
        while not self._stop.wait(self.period_s):
            now = time.monotonic()
            with self._lock:
                if now - self._last_round > self.timeout_s and self.me != 0:
                    self._fire(f"the coordinator (process 0 of {self.n}) has not answered "
                               f"for {now - self._last_round:.0f} s")
                    return
                lost = sorted(p for p, (_, t) in self._seen.items()
                              if p not in self._finished and now - t > self.timeout_s)
                if lost:
                    ages = ", ".join(f"{now - self._seen[p][1]:.0f} s" for p in lost)
                    self._fire(f"process(es) {', '.join(map(str, lost))} of {self.n} stopped "
                               f"responding (no sign of life for {ages}; killed, frozen or "
                               f"unreachable)")
                    return

    def _fire(self, what: str) -> None:
        if self._fired:
            return
        self._fired = True
        self._stop.set()
        self.on_lost(f"autotune: process {self.me}: {what}; exiting with code "
                     f"{EXIT_PEER_LOST}. Every process resumes from the last checkpoint when "
                     f"the same command is run again (or with --resume RUN).")

    def announce_failure(self, reason: str) -> None:
        """Tell the peers this process is ending on an error (they exit at once,
        naming it, instead of waiting in a collective)."""
        try:
            self._set("failed: " + " ".join(str(reason).split())[:300])
        except Exception:  # noqa: BLE001 - the peers will see the silence instead
            pass
        self._stop.set()

    def stop(self) -> None:
        """Stop watching and mark this process finished (at normal exit)."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self._set("exited")
        except Exception:  # noqa: BLE001
            pass


def barrier(name: str, timeout_s: float) -> bool:
    """Wait until every process reaches the barrier ``name`` (unique per use).

    Returns True when all arrived within ``timeout_s`` seconds (and at once on a
    single process), False when some did not.
    """
    import jax

    if jax.process_count() == 1:
        return True
    from jax._src import distributed as _dist

    try:
        _dist.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))
        return True
    except Exception:  # noqa: BLE001 - a timeout names the missing tasks; we only need no
        return False


def broadcast_text(text: str, max_bytes: int = 1 << 20) -> str:
    """Process 0's ``text`` on every process (identity on a single process); a
    collective every process calls at the same point.

    Raises:
      ValueError: ``text`` longer than ``max_bytes`` bytes (UTF-8).
    """
    import jax

    if jax.process_count() == 1:
        return text
    import numpy as np
    from jax.experimental import multihost_utils

    raw = text.encode()
    if len(raw) > max_bytes:
        raise ValueError(f"text of {len(raw):,} bytes is too long to broadcast ({max_bytes:,})")
    buf = np.zeros(max_bytes, np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return bytes(got[got != 0].astype(np.uint8)).decode()
