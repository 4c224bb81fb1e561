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
multi-host path. A lost peer makes JAX's coordination service end the survivors
after its heartbeat timeout (bounded, instead of hanging in a collective);
``heartbeat_timeout_seconds`` sets it.
"""

from __future__ import annotations

import os

_INITIALIZED = False


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


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, heartbeat_timeout_seconds: int = 60) -> bool:
    """Start the multi-host runtime when the run has several processes; call before
    anything touches a JAX device. Returns True when it initialised a multi-process
    run.

    Raises:
      ValueError: an incomplete or inconsistent explicit setting (e.g. process id
        outside [0, num_processes)).
    """
    global _INITIALIZED
    if _INITIALIZED:
        return True
    explicit = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(explicit) and not all(explicit):
        raise ValueError("--coordinator, --num-processes and --process-id go together")
    settings = ({"coordinator": coordinator, "num_processes": num_processes,
                 "process_id": process_id} if all(explicit) else cluster_from_env())
    import jax

    if settings is not None:
        if settings["num_processes"] < 1 or not 0 <= settings["process_id"] < settings["num_processes"]:
            raise ValueError(f"process id ({settings['process_id']}) must be in [0, "
                             f"{settings['num_processes']})")
        if settings["num_processes"] == 1:
            return False
        if ":" not in settings["coordinator"]:
            raise ValueError(f"coordinator {settings['coordinator']!r}: expected host:port")
        _cpu_collectives(jax)
        jax.distributed.initialize(coordinator_address=settings["coordinator"],
                                   num_processes=settings["num_processes"],
                                   process_id=settings["process_id"],
                                   heartbeat_timeout_seconds=heartbeat_timeout_seconds)
        _INITIALIZED = True
        return True
    if in_managed_cluster():
        _cpu_collectives(jax)
        jax.distributed.initialize()
        _INITIALIZED = True
        return True
    return False


def _cpu_collectives(jax) -> None:
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 - older/newer JAX without the option
        pass


class PeerLostError(RuntimeError):
    """A collective failed because another process of the run stopped responding;
    names the lost process(es)."""


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
