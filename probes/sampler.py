"""Live utilisation samples for the training view: host CPU and RAM (psutil) and
per-GPU utilisation and memory (NVML through :func:`probes.gpu.sample_utilisation`).

These read counters; they decide nothing. :class:`UtilisationSampler` takes both
readings at most once per interval and never raises: a failing or missing sampler
(no psutil, no NVML driver) gives no reading, so a live view can call it from any
thread without stopping training. psutil is imported on first use.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from probes.records import GpuSample


@dataclass(frozen=True)
class HostSample:
    """One live reading of the host (psutil).

    Attributes:
      cpu_percent: all CPUs busy, 0..100 (``psutil.cpu_percent``, since the previous
        call).
      process_cpu_percent: this process, 100 = one core (``Process.cpu_percent``).
      cores: logical CPUs.
      ram_used_bytes, ram_total_bytes: ``total - available`` and total (bytes).
      process_rss_bytes: this process's resident memory (bytes).
    """

    cpu_percent: float
    process_cpu_percent: float
    cores: int
    ram_used_bytes: int
    ram_total_bytes: int
    process_rss_bytes: int


class HostSampler:
    """Reads a :class:`HostSample` per call (CPU percentages since the previous call;
    the first interval starts at construction).

    Raises:
      ImportError: psutil is not installed (at construction).
    """

    def __init__(self):
        import psutil

        self.psutil = psutil
        self.proc = psutil.Process()
        psutil.cpu_percent(None)  # start the interval
        self.proc.cpu_percent(None)

    def __call__(self) -> HostSample:
        """The host now (see :class:`HostSample` for the units)."""
        ps = self.psutil
        vm = ps.virtual_memory()
        return HostSample(cpu_percent=ps.cpu_percent(None),
                          process_cpu_percent=self.proc.cpu_percent(None),
                          cores=ps.cpu_count() or 1, ram_used_bytes=vm.total - vm.available,
                          ram_total_bytes=vm.total, process_rss_bytes=self.proc.memory_info().rss)


def default_gpu_sampler() -> Callable[[], tuple[GpuSample, ...]]:
    """:func:`probes.gpu.sample_utilisation` (NVML; ``()`` without a driver), or a
    callable returning ``()`` when the GPU probe module cannot be imported."""
    try:
        from probes.gpu import sample_utilisation
    except Exception:  # noqa: BLE001 - no GPU readings without the probe module
        return lambda: ()
    return sample_utilisation


def default_host_sampler() -> Callable[[], HostSample | None]:
    """A :class:`HostSampler`, or a callable returning None when psutil is missing."""
    try:
        return HostSampler()
    except Exception:  # noqa: BLE001 - psutil missing: no host reading
        return lambda: None


class UtilisationSampler:
    """GPU and host readings, taken at most once every ``every_s`` seconds (a call
    in between returns the last readings).

    Args:
      gpu: callable returning ``probes.records.GpuSample`` tuples (default:
        :func:`default_gpu_sampler`, chosen on the first reading).
      host: callable returning a :class:`HostSample` or None (default:
        :func:`default_host_sampler`).
      every_s: the shortest time between two readings (seconds).
    """

    def __init__(self, gpu: Callable[[], tuple] | None = None,
                 host: Callable[[], HostSample | None] | None = None, every_s: float = 1.0):
        self._gpu = gpu
        self._host = host
        self.every_s = every_s
        self._last: tuple[float, tuple[GpuSample, ...], HostSample | None] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> tuple[tuple[GpuSample, ...], HostSample | None]:
        """``(GPU samples, host sample)``: ``()`` / None for a sampler that is missing
        or raised."""
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self.every_s:
                return self._last[1], self._last[2]
            if self._gpu is None:
                self._gpu = default_gpu_sampler()
            if self._host is None:
                self._host = default_host_sampler()
            try:
                gpus = tuple(self._gpu())
            except Exception:  # noqa: BLE001 - a failing NVML must not stop training
                gpus = ()
            try:
                host = self._host()
            except Exception:  # noqa: BLE001
                host = None
            self._last = (now, gpus, host)
            return gpus, host
