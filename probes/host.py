"""Host facts: OS, Python, CPU, memory, the data path's disk and file system, JAX
devices and NVIDIA GPUs.

:func:`probe_host` gathers them into one :class:`HostReport`. It measures nothing
that takes time beyond the JAX child process of :func:`probes.gpu.probe_jax_memory`
(about 1-3 s); throughput is measured by the other probes.

Sources: ``psutil`` (cores, RAM, mounted file systems, which on Linux come from
``/proc/self/mounts``), ``os.sched_getaffinity`` (cores this process may run on),
cgroup files under ``/sys/fs/cgroup`` (container CPU quota and memory limit, cgroup
v2 ``cpu.max`` / ``memory.max`` or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` /
``memory.limit_in_bytes``, see the kernel's Documentation/admin-guide/cgroup-v2.rst),
``shutil.disk_usage`` (free bytes), ``/proc/cpuinfo`` (CPU model), and
``importlib.metadata`` (JAX version, without importing JAX).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import psutil

from probes.gpu import probe_gpus, probe_jax_memory, probe_jax_memory_in_process
from probes.records import HostReport

__all__ = ["probe_host", "cpu_model", "mount_for_path", "cgroup_limits"]


def cpu_model(cpuinfo_path: str = "/proc/cpuinfo") -> str | None:
    """The CPU model name: the first ``model name`` line of ``/proc/cpuinfo`` (x86),
    else its ``Hardware`` / ``Processor`` / ``cpu model`` line (ARM, MIPS), else
    ``platform.processor()``; ``None`` when none says anything."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            fields: dict[str, str] = {}
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        fields = {}
    for key in ("model name", "hardware", "processor", "cpu model"):
        value = fields.get(key, "")
        if value and not value.isdigit():  # x86 "processor : 0" is an index
            return value
    return platform.processor() or None


def mount_for_path(path: str | os.PathLike) -> tuple[str, str, str] | None:
    """The mount holding ``path``: ``(mount_point, fstype, device)`` of the longest
    mount point that is ``path`` or one of its parents, from
    ``psutil.disk_partitions(all=True)`` (``/proc/self/mounts`` on Linux); ``None``
    when nothing matches. ``path`` is resolved (symlinks followed) first."""
    target = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    for part in psutil.disk_partitions(all=True):
        mp = part.mountpoint
        if mp == "/":
            inside = target.startswith("/")
        else:
            mp_norm = mp.rstrip(os.sep)
            inside = target == mp_norm or target.startswith(mp_norm + os.sep)
        # Later lines win on ties: a mount stacked on the same point hides the earlier.
        if inside and (best is None or len(mp) >= len(best[0])):
            best = (mp, part.fstype, part.device)
    return best


def _read_first_line(path: Path) -> str | None:
    try:
        return path.read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return None


def _cgroup_dirs(controller: str, root: Path) -> list[Path]:
    """Candidate cgroup folders for ``controller`` (v1) or the unified hierarchy (v2):
    this process's own cgroup path from ``/proc/self/cgroup`` first, then the root."""
    rel = None
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _hid, controllers, cg_path = line.split(":", 2)
            names = controllers.split(",") if controllers else [""]
            if controller in names:
                rel = cg_path.lstrip("/")
                break
    except (OSError, ValueError):
        pass
    base = root / controller if controller else root
    dirs = [base / rel] if rel else []
    dirs.append(base)
    return dirs


def cgroup_limits(root: str | os.PathLike = "/sys/fs/cgroup") -> tuple[float | None, int | None]:
    """Container limits as ``(cpu_quota_cores, memory_limit_bytes)``.

    cgroup v2: ``cpu.max`` (``"<quota> <period>"`` in microseconds, or ``"max ..."``)
    and ``memory.max`` (bytes or ``"max"``). cgroup v1: ``cpu/cpu.cfs_quota_us`` (-1 =
    none) over ``cpu/cpu.cfs_period_us`` and ``memory/memory.limit_in_bytes`` (a value
    near 2**63 = none). Each is ``None`` when unlimited or unreadable. A memory limit
    at or above physical RAM is reported as ``None`` (no real limit).
    """
    root = Path(root)
    cpu: float | None = None
    mem: int | None = None
    # cgroup v2 (unified)
    for d in _cgroup_dirs("", root):
        line = _read_first_line(d / "cpu.max")
        if line is not None and cpu is None:
            quota, _, period = line.partition(" ")
            if quota != "max" and period:
                try:
                    cpu = int(quota) / int(period)
                except (ValueError, ZeroDivisionError):
                    pass
        line = _read_first_line(d / "memory.max")
        if line is not None and mem is None and line != "max":
            try:
                mem = int(line)
            except ValueError:
                pass
    # cgroup v1
    if cpu is None:
        for d in _cgroup_dirs("cpu", root):
            q = _read_first_line(d / "cpu.cfs_quota_us")
            p = _read_first_line(d / "cpu.cfs_period_us")
            if q is not None and p is not None:
                try:
                    if int(q) > 0 and int(p) > 0:
                        cpu = int(q) / int(p)
                except ValueError:
                    pass
                break
    if mem is None:
        for d in _cgroup_dirs("memory", root):
            v = _read_first_line(d / "memory.limit_in_bytes")
            if v is not None:
                try:
                    mem = int(v)
                except ValueError:
                    pass
                break
    if mem is not None and mem >= psutil.virtual_memory().total:
        mem = None
    return cpu, mem


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _os_release() -> str:
    try:
        info = platform.freedesktop_os_release()
        return info.get("PRETTY_NAME") or info.get("NAME") or platform.platform()
    except (OSError, AttributeError):
        return platform.platform()


def _usable_cores(logical: int) -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return logical


def probe_host(
    data_path: str | os.PathLike,
    *,
    nvml: Any | None = None,
    jax_in_child: bool = True,
    jax_timeout_s: float = 120.0,
) -> HostReport:
    """Gather host facts for the data at ``data_path`` (see :class:`HostReport`).

    Args:
      data_path: folder (or file) holding the training data; its disk's free space and
        file system type are reported.
      nvml: NVML module for :func:`probes.gpu.probe_gpus` (tests pass fakes); ``None``
        imports ``pynvml``.
      jax_in_child: ``True`` reads JAX devices and memory in a child process with
        preallocation off (:func:`probes.gpu.probe_jax_memory`, ~1-3 s, does not
        initialise JAX here); ``False`` reads them in this process
        (:func:`probes.gpu.probe_jax_memory_in_process`), for when JAX is already
        initialised.
      jax_timeout_s: timeout for the JAX child process, seconds.

    Returns:
      The :class:`HostReport`. A missing NVIDIA driver or a failing JAX child is not
      an error: ``gpu.status`` / ``jax.status`` say why.

    Raises:
      FileNotFoundError: ``data_path`` does not exist (the message names it).
    """
    path = Path(data_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"probes/host.py: data path {str(data_path)!r} does not exist "
            f"(resolved to {str(path.resolve())!r}); pass the folder holding the "
            "training data"
        )
    real = os.path.realpath(path)
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    vm = psutil.virtual_memory()
    disk = shutil.disk_usage(real)
    mount = mount_for_path(real)
    cpu_quota, mem_limit = cgroup_limits()
    jax_report = probe_jax_memory(timeout_s=jax_timeout_s) if jax_in_child else (
        probe_jax_memory_in_process()
    )
    return HostReport(
        hostname=socket.gethostname(),
        os_name=platform.system(),
        os_release=_os_release(),
        kernel=platform.release(),
        python_version=platform.python_version(),
        python_executable=sys.executable,
        cpu_model=cpu_model(),
        logical_cores=int(logical),
        physical_cores=psutil.cpu_count(logical=False),
        usable_cores=_usable_cores(int(logical)),
        cpu_quota_cores=cpu_quota,
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        memory_limit_bytes=mem_limit,
        data_path=real,
        disk_total_bytes=int(disk.total),
        disk_free_bytes=int(disk.free),
        fs_type=mount[1] if mount else None,
        fs_mount_point=mount[0] if mount else None,
        fs_device=mount[2] if mount else None,
        jax_version=_dist_version("jax"),
        jaxlib_version=_dist_version("jaxlib"),
        jax=jax_report,
        gpu=probe_gpus(nvml=nvml),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m probes.host [DATA_PATH]``: print the :class:`HostReport` as JSON."""
    args = sys.argv[1:] if argv is None else argv
    report = probe_host(args[0] if args else ".")
    print(report.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
