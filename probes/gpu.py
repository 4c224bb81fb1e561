"""NVIDIA GPU facts through NVML, and JAX device memory as JAX itself sees it.

Two independent views of the accelerators:

* :func:`probe_gpus` asks NVML (the NVIDIA Management Library, through the
  ``pynvml`` module of the ``nvidia-ml-py`` package) for per-GPU facts: name, UUID,
  memory, utilisation, PCIe link, power, clocks, driver versions. It never raises for
  a missing driver or library: the :class:`GpuReport` then has no GPUs and one
  status line that says why.
* :func:`probe_jax_memory` runs a short child Python process with
  ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (so the child does not grab 75 % of every
  GPU, see https://docs.jax.dev/en/latest/gpu_memory_allocation.html) and reads
  ``jax.devices()[i].memory_stats()``; :func:`probe_jax_memory_in_process` reads the
  same numbers in this process once JAX is initialised here anyway.

:func:`sample_utilisation` is the cheap call for a live view (several calls a second):
it initialises NVML once per module and reuses the device handles.

NVML units, from the NVML API reference
(https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html):
memory in bytes, utilisation in percent over the driver's last sample period, power
in milliwatts (converted to watts here), clocks in MHz, CUDA driver version as an
integer ``1000 * major + 10 * minor`` (converted to ``"major.minor"`` here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from probes.records import GpuInfo, GpuReport, GpuSample, JaxDeviceInfo, JaxDevicesReport

__all__ = [
    "GpuInfo",
    "GpuReport",
    "GpuSample",
    "JaxDeviceInfo",
    "JaxDevicesReport",
    "probe_gpus",
    "sample_utilisation",
    "reset_sampler",
    "probe_jax_memory",
    "probe_jax_memory_in_process",
    "nvml_unavailable_reason",
]


# --------------------------------------------------------------------------- records


# ---------------------------------------------------------------------------- NVML


_LIBRARY_NOT_FOUND = (
    "NVML unavailable: NVIDIA driver library libnvidia-ml.so.1 not found "
    "(no NVIDIA GPU or driver on this host)"
)

# NVMLError subclass name -> the status line. pynvml builds one subclass per NVML
# error code (NVMLError_LibraryNotFound, ...); names are matched so fakes work too.
_INIT_ERROR_STATUS = {
    "NVMLError_LibraryNotFound": _LIBRARY_NOT_FOUND,
    "NVMLError_DriverNotLoaded": (
        "NVML unavailable: NVIDIA kernel driver not loaded (no NVIDIA GPU, or the "
        "nvidia kernel module is not loaded)"
    ),
    "NVMLError_LibRmVersionMismatch": (
        "NVML unavailable: NVML library and NVIDIA kernel driver versions differ "
        "(driver updated without reboot or module reload)"
    ),
    "NVMLError_NoPermission": (
        "NVML unavailable: no permission to open the NVIDIA device files (/dev/nvidia*)"
    ),
}


def _import_pynvml() -> Any:
    import pynvml  # noqa: PLC0415 (optional at run time)

    return pynvml


def _resolve_nvml(nvml: Any | None) -> tuple[Any | None, str | None]:
    """Return (module, None) or (None, status line) when pynvml cannot be imported."""
    if nvml is not None:
        return nvml, None
    try:
        return _import_pynvml(), None
    except ImportError as exc:
        return None, (
            "NVML unavailable: Python module pynvml (package nvidia-ml-py) is not "
            f"installed ({exc})"
        )


def nvml_unavailable_reason(exc: BaseException) -> str:
    """The one-line status for an exception raised by ``nvmlInit``.

    Known NVML error classes (matched by class name along the MRO, so fakes with the
    same names map the same way) get a plain-language reason; anything else becomes
    ``"NVML unavailable: nvmlInit failed: <class>: <message>"``.
    """
    for cls in type(exc).__mro__:
        if cls.__name__ in _INIT_ERROR_STATUS:
            return _INIT_ERROR_STATUS[cls.__name__]
    return f"NVML unavailable: nvmlInit failed: {type(exc).__name__}: {exc}"


def _text(value: Any) -> str:
    """NVML strings: pynvml >= 11.5 returns str, older versions bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _field(fn: Callable[[], Any], convert: Callable[[Any], Any] | None = None) -> Any:
    """Call one NVML query; any exception (NotSupported, NoPermission, a missing
    symbol in an old driver: FunctionNotFound / AttributeError) gives ``None``."""
    try:
        value = fn()
        return convert(value) if convert is not None else value
    except Exception:  # noqa: BLE001 - one field failing must not fail the probe
        return None


def _cuda_version_text(v: int) -> str:
    """NVML/CUDA encode versions as ``1000 * major + 10 * minor`` (12040 -> "12.4")."""
    v = int(v)
    return f"{v // 1000}.{(v % 1000) // 10}"


def _mw_to_w(mw: Any) -> float:
    return float(mw) / 1000.0


def _device_info(nvml: Any, index: int, handle: Any) -> GpuInfo:
    mem = _field(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    util = _field(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    clock_sm = getattr(nvml, "NVML_CLOCK_SM", 1)
    clock_mem = getattr(nvml, "NVML_CLOCK_MEM", 2)
    power_limit = _field(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle), _mw_to_w)
    if power_limit is None:
        power_limit = _field(lambda: nvml.nvmlDeviceGetPowerManagementLimit(handle), _mw_to_w)
    return GpuInfo(
        index=index,
        name=_field(lambda: nvml.nvmlDeviceGetName(handle), _text),
        uuid=_field(lambda: nvml.nvmlDeviceGetUUID(handle), _text),
        memory_total_bytes=_field(lambda: int(mem.total)),
        memory_free_bytes=_field(lambda: int(mem.free)),
        memory_used_bytes=_field(lambda: int(mem.used)),
        gpu_utilisation_percent=_field(lambda: int(util.gpu)),
        memory_utilisation_percent=_field(lambda: int(util.memory)),
        pcie_gen_current=_field(lambda: nvml.nvmlDeviceGetCurrPcieLinkGeneration(handle), int),
        pcie_gen_max=_field(lambda: nvml.nvmlDeviceGetMaxPcieLinkGeneration(handle), int),
        pcie_width_current=_field(lambda: nvml.nvmlDeviceGetCurrPcieLinkWidth(handle), int),
        pcie_width_max=_field(lambda: nvml.nvmlDeviceGetMaxPcieLinkWidth(handle), int),
        power_draw_watts=_field(lambda: nvml.nvmlDeviceGetPowerUsage(handle), _mw_to_w),
        power_limit_watts=power_limit,
        sm_clock_mhz=_field(lambda: nvml.nvmlDeviceGetClockInfo(handle, clock_sm), int),
        memory_clock_mhz=_field(lambda: nvml.nvmlDeviceGetClockInfo(handle, clock_mem), int),
        sm_clock_max_mhz=_field(lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, clock_sm), int),
        memory_clock_max_mhz=_field(
            lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, clock_mem), int
        ),
    )


def probe_gpus(nvml: Any | None = None) -> GpuReport:
    """Read per-GPU facts from NVML (see :class:`GpuInfo` for fields and units).

    Args:
      nvml: a module (or object) with the pynvml functions used here (``nvmlInit``,
        ``nvmlShutdown``, ``nvmlSystemGetDriverVersion``,
        ``nvmlSystemGetCudaDriverVersion``, ``nvmlDeviceGetCount``,
        ``nvmlDeviceGetHandleByIndex``, ``nvmlDeviceGetName``, ``nvmlDeviceGetUUID``,
        ``nvmlDeviceGetMemoryInfo``, ``nvmlDeviceGetUtilizationRates``,
        ``nvmlDeviceGetCurrPcieLinkGeneration``, ``nvmlDeviceGetMaxPcieLinkGeneration``,
        ``nvmlDeviceGetCurrPcieLinkWidth``, ``nvmlDeviceGetMaxPcieLinkWidth``,
        ``nvmlDeviceGetPowerUsage``, ``nvmlDeviceGetEnforcedPowerLimit``,
        ``nvmlDeviceGetPowerManagementLimit``, ``nvmlDeviceGetClockInfo``,
        ``nvmlDeviceGetMaxClockInfo``, constants ``NVML_CLOCK_SM`` /
        ``NVML_CLOCK_MEM``). ``None`` imports ``pynvml``.

    Returns:
      A :class:`GpuReport`. Never raises for a missing pynvml, a missing driver
      library, a failing ``nvmlInit`` or a driver/library mismatch: the report then has
      ``gpus == ()`` and a status line saying why. A single query that fails gives
      ``None`` for that field only; a device whose handle cannot be had is listed with
      its ``error`` set.
    """
    nvml, why = _resolve_nvml(nvml)
    if nvml is None:
        return GpuReport(status=why or "NVML unavailable", driver_version=None, gpus=())
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - report, never raise
        return GpuReport(status=nvml_unavailable_reason(exc), driver_version=None, gpus=())
    try:
        driver = _field(nvml.nvmlSystemGetDriverVersion, _text)
        cuda = _field(nvml.nvmlSystemGetCudaDriverVersion, _cuda_version_text)
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:  # noqa: BLE001
            return GpuReport(
                status=f"NVML unavailable: nvmlDeviceGetCount failed: {type(exc).__name__}: {exc}",
                driver_version=driver,
                gpus=(),
                cuda_driver_version=cuda,
                nvml_available=True,
            )
        gpus = []
        for i in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
            except Exception as exc:  # noqa: BLE001
                gpus.append(GpuInfo(index=i, error=f"{type(exc).__name__}: {exc}"))
                continue
            gpus.append(_device_info(nvml, i, handle))
    finally:
        _field(nvml.nvmlShutdown)
    if count == 0:
        status = f"NVML ok: no NVIDIA GPUs found (driver {driver}, CUDA {cuda})"
    else:
        status = f"NVML ok: {count} GPU(s), driver {driver}, CUDA {cuda}"
        bad = [g.index for g in gpus if g.error is not None]
        if bad:
            status += f"; no handle for GPU(s) {bad}"
    return GpuReport(
        status=status,
        driver_version=driver,
        gpus=tuple(gpus),
        cuda_driver_version=cuda,
        nvml_available=True,
    )


# ------------------------------------------------------------------ live sampler


class _Sampler:
    """NVML initialised once, with its device handles; ``handles is None`` records a
    failed init so later calls return ``()`` without retrying NVML every tick."""

    def __init__(self, nvml: Any | None, handles: tuple[tuple[int, Any], ...] | None):
        self.nvml = nvml
        self.handles = handles


_SAMPLER_LOCK = threading.Lock()
_SAMPLERS: dict[int, tuple[Any, _Sampler]] = {}  # id(module) -> (module, sampler)
_DEFAULT_NVML = object()  # key for "import pynvml"


def _sampler_for(nvml: Any | None) -> _Sampler:
    key_obj = nvml if nvml is not None else _DEFAULT_NVML
    key = id(key_obj)
    entry = _SAMPLERS.get(key)
    if entry is not None and entry[0] is key_obj:
        return entry[1]
    module, _why = _resolve_nvml(nvml)
    sampler = _Sampler(module, None)
    if module is not None:
        try:
            module.nvmlInit()
        except Exception:  # noqa: BLE001
            module = None
            sampler = _Sampler(None, None)
    if module is not None:
        handles = []
        try:
            for i in range(int(module.nvmlDeviceGetCount())):
                try:
                    handles.append((i, module.nvmlDeviceGetHandleByIndex(i)))
                except Exception:  # noqa: BLE001
                    handles.append((i, None))
        except Exception:  # noqa: BLE001
            handles = []
        sampler = _Sampler(module, tuple(handles))
    _SAMPLERS[key] = (key_obj, sampler)
    return sampler


def sample_utilisation(nvml: Any | None = None) -> tuple[GpuSample, ...]:
    """Cheap live sample of every GPU: utilisation (%) and memory used (bytes).

    NVML is initialised on the first call for a given ``nvml`` module and the handles
    are kept for later calls (two NVML queries per GPU per call, well under a
    millisecond each on a local driver), so a live view can call this several times a
    second. Thread-safe: calls are serialised by a module lock.

    Args:
      nvml: as in :func:`probe_gpus`; ``None`` imports ``pynvml``.

    Returns:
      One :class:`GpuSample` per GPU in NVML index order; ``()`` when NVML is
      unavailable (the failure is remembered: no retry until :func:`reset_sampler`).
      A failing query gives ``None`` for that value.
    """
    with _SAMPLER_LOCK:
        sampler = _sampler_for(nvml)
        if sampler.nvml is None or not sampler.handles:
            return ()
        mod = sampler.nvml
        out = []
        for i, handle in sampler.handles:
            if handle is None:
                out.append(GpuSample(index=i, gpu_utilisation_percent=None, memory_used_bytes=None))
                continue
            util = _field(lambda h=handle: int(mod.nvmlDeviceGetUtilizationRates(h).gpu))
            used = _field(lambda h=handle: int(mod.nvmlDeviceGetMemoryInfo(h).used))
            out.append(GpuSample(index=i, gpu_utilisation_percent=util, memory_used_bytes=used))
        return tuple(out)


def reset_sampler() -> None:
    """Forget every NVML session :func:`sample_utilisation` opened (calling
    ``nvmlShutdown`` on each), so the next call initialises NVML afresh."""
    with _SAMPLER_LOCK:
        for _key_obj, sampler in _SAMPLERS.values():
            if sampler.nvml is not None:
                _field(sampler.nvml.nvmlShutdown)
        _SAMPLERS.clear()


# ---------------------------------------------------------------- JAX memory

_JSON_MARKER = "AUTOTUNE_JAX_PROBE_JSON:"
_STDERR_TAIL_CHARS = 2000


def _collect_jax_facts() -> dict:
    """Read backend, version and per-device memory stats from the JAX of this process.

    Returns a JSON-compatible dict with keys ``backend``, ``jax_version`` and
    ``devices`` (list of dicts with the :class:`JaxDeviceInfo` fields).
    """
    import jax  # noqa: PLC0415 (heavy; only when asked)

    devices = []
    for d in jax.devices():
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 - some backends raise instead of returning None
            stats = None
        stats = stats or {}

        def _stat(key: str, stats: dict = stats) -> int | None:
            v = stats.get(key)
            return int(v) if v is not None else None

        devices.append(
            {
                "id": int(d.id),
                "platform": str(d.platform),
                "device_kind": str(d.device_kind),
                "process_index": int(getattr(d, "process_index", 0)),
                "bytes_limit": _stat("bytes_limit"),
                "bytes_in_use": _stat("bytes_in_use"),
                "peak_bytes_in_use": _stat("peak_bytes_in_use"),
            }
        )
    return {
        "backend": str(jax.default_backend()),
        "jax_version": str(jax.__version__),
        "devices": devices,
    }


def _report_from_facts(facts: dict, in_child: bool) -> JaxDevicesReport:
    devices = tuple(JaxDeviceInfo.from_dict(d) for d in facts["devices"])
    backend = facts["backend"]
    kinds = sorted({d.device_kind for d in devices})
    return JaxDevicesReport(
        backend=backend,
        devices=devices,
        status=f"JAX ok: backend {backend}, {len(devices)} device(s) ({', '.join(kinds)})",
        jax_version=facts.get("jax_version"),
        in_child=in_child,
    )


def _tail(text: str | bytes | None, n: int = _STDERR_TAIL_CHARS) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip()
    return text[-n:]


def probe_jax_memory(
    timeout_s: float = 120.0,
    extra_env: dict[str, str] | None = None,
    python: str | None = None,
) -> JaxDevicesReport:
    """Read JAX backend, devices and allocator memory stats in a short child process.

    The child runs ``python -c`` with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so it
    neither grabs 75 % of each GPU (JAX's default, which would make ``bytes_in_use``
    and the NVML numbers of the parent's later run misleading) nor keeps it: the
    memory is freed when the child exits. It prints one JSON line that is parsed into
    a :class:`JaxDevicesReport`. Importing JAX and initialising the backend takes
    about 1-3 s on CPU, longer on many GPUs.

    Args:
      timeout_s: seconds to wait for the child before killing it.
      extra_env: variables set in the child on top of this process's environment (for
        example ``{"JAX_PLATFORMS": "cpu"}``); they override the preallocation setting
        too.
      python: interpreter to run; default ``sys.executable``.

    Returns:
      The report. Never raises for a failing child: a non-zero exit, a timeout or
      unparsable output give ``backend=None``, ``devices=()`` and a status line with
      the reason and the tail of the child's stderr.
    """
    env = dict(os.environ)
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    # Make this package importable in the child even when it is not installed.
    pkg_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (pkg_root, env.get("PYTHONPATH", "")) if p
    )
    if extra_env:
        env.update(extra_env)
    code = (
        "import json, probes.gpu as g; "
        f"print({_JSON_MARKER!r} + json.dumps(g._collect_jax_facts()), flush=True)"
    )
    cmd = [python or sys.executable, "-c", code]
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        return JaxDevicesReport(
            backend=None,
            devices=(),
            status=(
                f"JAX probe failed: child process timed out after {timeout_s:g} s; "
                f"stderr tail: {_tail(exc.stderr) or '(empty)'}"
            ),
        )
    except OSError as exc:
        return JaxDevicesReport(
            backend=None,
            devices=(),
            status=f"JAX probe failed: could not start {cmd[0]!r}: {exc}",
        )
    if proc.returncode != 0:
        return JaxDevicesReport(
            backend=None,
            devices=(),
            status=(
                f"JAX probe failed: child process exited with code {proc.returncode}; "
                f"stderr tail: {_tail(proc.stderr) or '(empty)'}"
            ),
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_JSON_MARKER)]
    if not lines:
        return JaxDevicesReport(
            backend=None,
            devices=(),
            status=(
                "JAX probe failed: child printed no result line; "
                f"stdout tail: {_tail(proc.stdout) or '(empty)'}; "
                f"stderr tail: {_tail(proc.stderr) or '(empty)'}"
            ),
        )
    try:
        facts = json.loads(lines[-1][len(_JSON_MARKER):])
        return _report_from_facts(facts, in_child=True)
    except Exception as exc:  # noqa: BLE001 - malformed child output
        return JaxDevicesReport(
            backend=None,
            devices=(),
            status=f"JAX probe failed: could not parse child output ({exc}): {lines[-1][:500]}",
        )


def probe_jax_memory_in_process() -> JaxDevicesReport:
    """Read JAX backend, devices and ``memory_stats()`` in this process.

    Use this once JAX is initialised here anyway (a trainer mid-run): it imports JAX
    and, if not done yet, initialises its backend, which on GPU preallocates memory as
    configured for this process (75 % per GPU unless
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false``); ``bytes_limit`` then reflects that.

    Returns:
      The report with ``in_child=False``. An error while importing JAX or listing
      devices gives ``backend=None``, ``devices=()`` and a status line saying why.
    """
    try:
        facts = _collect_jax_facts()
    except Exception as exc:  # noqa: BLE001
        return JaxDevicesReport(
            backend=None,
            devices=(),
            status=f"JAX probe failed in process: {type(exc).__name__}: {exc}",
            in_child=False,
        )
    return _report_from_facts(facts, in_child=False)
