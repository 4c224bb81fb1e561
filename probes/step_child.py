"""Run a few real train steps at a given per-device batch in a child process, so an
out-of-memory kills only the child.

Used when the compiled memory analysis is unavailable (the fallback search of
``autotune.batch_search.find_max_batch_by_trial``), by the batch-search benchmark's
brute force, and to verify a chosen batch against the device's
``peak_bytes_in_use``.

On backends with memory statistics (GPU, TPU) the child reports
``peak_bytes_in_use`` of device 0. On CPU, where there are none, it reports the
analogue of that figure for the steps themselves: the bytes of the train state and
batch arrays (``nbytes``) plus the growth of the process's resident memory over the
steady-state steps. After the compile step and one warm-up step, freed heap is handed
back to the system (glibc ``malloc_trim``) and the kernel's peak resident size
(``VmHWM``) is reset to the current one (``5`` written to ``/proc/self/clear_refs``,
Linux >= 4.0), so neither import, compiler nor state-initialisation memory counts,
and the runtime's scratch memory outside XLA's buffer assignment (Eigen's convolution
packing buffers, thread pools) does. Where ``clear_refs`` is missing it falls back to
the growth of ``ru_maxrss`` over the whole child (compile included). A
``budget_bytes`` turns the figure into a fit / no-fit answer.

Child protocol: ``python -m probes.step_child '<json config>' BATCH STEPS`` prints one
line ``STEP_CHILD {json}`` with ``ok``, ``oom``, ``peak_bytes``, ``step_s``.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from probes.records import ChildStepResult

MARK = "STEP_CHILD "


def _status_bytes(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes.

    Raises:
      OSError: no such file or field (not Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {key}")


class SteadyPeak:
    """The peak resident-memory growth of a stretch of steps (Linux): :meth:`reset`
    before it, :meth:`growth` (bytes, or None where unsupported) after it."""

    def __init__(self):
        self.rss0: int | None = None

    def reset(self) -> None:
        """Free what can be freed, then reset the kernel's peak to the current RSS."""
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.rss0 = _status_bytes("VmRSS")
        except OSError:
            self.rss0 = None

    def growth(self) -> int | None:
        """``VmHWM`` now minus the RSS at :meth:`reset` (bytes, >= 0)."""
        if self.rss0 is None:
            return None
        return max(0, _status_bytes("VmHWM") - self.rss0)


def _child(config_json: str, batch: int, steps: int) -> dict:

    import jax

    from trainers import train as tr

    config = tr.TrainConfig.from_json(config_json)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    steady = SteadyPeak()
    try:
        import dataclasses

        cfg = dataclasses.replace(config, per_device_batch=batch)
        got = tr.measure_step_rate(cfg, steps=steps, warmup=1, devices=jax.local_devices()[:1],
                                   before_timed=steady.reset)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        text = str(exc)
        oom = "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
        return {"ok": False, "oom": oom, "peak_bytes": None, "peak_source": "",
                "step_s": None, "error": text.splitlines()[0][:500] if text else type(exc).__name__}
    stats = None
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        stats = None
    growth = steady.growth()
    if stats and "peak_bytes_in_use" in stats:
        peak, source = int(stats["peak_bytes_in_use"]), "peak_bytes_in_use"
    elif growth is not None:
        peak, source = int(got["live_bytes"]) + growth, "live arrays + steady-step RSS growth"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
        source = "ru_maxrss"
    return {"ok": True, "oom": False, "peak_bytes": peak, "peak_source": source,
            "step_s": got["step_s"], "error": ""}


def run_steps_in_child(config, per_device_batch: int, *, steps: int = 3,
                       timeout_s: float = 900.0, env: dict | None = None) -> ChildStepResult:
    """Run ``steps`` real train steps of ``config`` (a ``trainers.train.TrainConfig``)
    at ``per_device_batch`` on one device in a child process.

    A child killed by a signal (the kernel's OOM killer) counts as out of memory.
    """
    child_env = dict(os.environ)
    child_env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    child_env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1])] + [p for p in [child_env.get("PYTHONPATH")] if p])
    if env:
        child_env.update(env)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "probes.step_child", config.to_json(None), str(per_device_batch),
             str(steps)], capture_output=True, text=True, timeout=timeout_s, env=child_env)
    except subprocess.TimeoutExpired:
        return ChildStepResult(per_device_batch=per_device_batch, ok=False, oom=False,
                               peak_bytes=None, peak_source="", step_s=None,
                               error=f"timed out after {timeout_s:.0f} s")
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            d = json.loads(line[len(MARK):])
            return ChildStepResult(per_device_batch=per_device_batch, **d)
    killed = proc.returncode < 0
    tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return ChildStepResult(per_device_batch=per_device_batch, ok=False,
                           oom=killed or "RESOURCE_EXHAUSTED" in proc.stderr,
                           peak_bytes=None, peak_source="", step_s=None,
                           error=f"child {'killed by signal ' + str(-proc.returncode) if killed else 'failed'}: {tail[:300]}")


def fits_in_child(config, per_device_batch: int, *, budget_bytes: int | None = None,
                  steps: int = 3) -> bool:
    """True when real steps at ``per_device_batch`` run without running out of memory
    (and, with ``budget_bytes``, their measured peak stays within it)."""
    r = run_steps_in_child(config, per_device_batch, steps=steps)
    if not r.ok:
        return False
    if budget_bytes is not None and r.peak_bytes is not None:
        return r.peak_bytes <= budget_bytes
    return True


if __name__ == "__main__":
    out = _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    print(MARK + json.dumps(out), flush=True)
