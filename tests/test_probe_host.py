"""Tests for probes/host.py and probes/gpu.py: records round-trip through JSON, NVML
facts and failures through a fake NVML module, the JAX child probe on CPU, and
probe_host on a temporary folder."""

from __future__ import annotations

import builtins
import sys
import threading
from types import SimpleNamespace

import pytest

from probes import gpu as gpu_mod
from probes.gpu import probe_gpus, probe_jax_memory, reset_sampler, sample_utilisation
from probes.records import GpuInfo, GpuReport, GpuSample, JaxDeviceInfo, JaxDevicesReport
from probes.host import cpu_model, mount_for_path, probe_host
from probes.records import HostReport

GiB = 1024**3


# ------------------------------------------------------------------ fake NVML


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's naming
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
    pass


class NVMLError_DriverNotLoaded(NVMLError):  # noqa: N801
    pass


class NVMLError_LibRmVersionMismatch(NVMLError):  # noqa: N801
    pass


class FakeNVML:
    """The pynvml functions the probe calls, for two made-up H100s.

    ``init_error``: exception raised by nvmlInit. ``unsupported``: names of functions
    that raise NVMLError_NotSupported.
    """

    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def __init__(self, init_error: Exception | None = None, unsupported: tuple[str, ...] = ()):
        self.init_error = init_error
        self.unsupported = set(unsupported)
        self.init_calls = 0
        self.shutdown_calls = 0
        self.util_calls = 0

    def _check(self, fn: str) -> None:
        if fn in self.unsupported:
            raise NVMLError_NotSupported("Not Supported")

    def nvmlInit(self):
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self):
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"  # old pynvml returned bytes

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-0000000{h[1]}-aaaa-bbbb-cccc-dddddddddddd"

    def nvmlDeviceGetMemoryInfo(self, h):
        self._check("nvmlDeviceGetMemoryInfo")
        used = (h[1] + 1) * GiB
        return SimpleNamespace(total=80 * GiB, free=80 * GiB - used, used=used)

    def nvmlDeviceGetUtilizationRates(self, h):
        self._check("nvmlDeviceGetUtilizationRates")
        self.util_calls += 1
        return SimpleNamespace(gpu=90 + h[1], memory=40)

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        self._check("nvmlDeviceGetCurrPcieLinkGeneration")
        return 4

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h):
        return 5

    def nvmlDeviceGetCurrPcieLinkWidth(self, h):
        return 16

    def nvmlDeviceGetMaxPcieLinkWidth(self, h):
        return 16

    def nvmlDeviceGetPowerUsage(self, h):
        self._check("nvmlDeviceGetPowerUsage")
        return 312_500  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        self._check("nvmlDeviceGetEnforcedPowerLimit")
        return 700_000  # mW

    def nvmlDeviceGetPowerManagementLimit(self, h):
        return 650_000  # mW

    def nvmlDeviceGetClockInfo(self, h, kind):
        return {1: 1980, 2: 2619}[kind]

    def nvmlDeviceGetMaxClockInfo(self, h, kind):
        return {1: 1980, 2: 2619}[kind] + 10


@pytest.fixture(autouse=True)
def _fresh_sampler():
    reset_sampler()
    yield
    reset_sampler()


# ------------------------------------------------------------------- records


def test_records_round_trip_through_json():
    report = probe_gpus(nvml=FakeNVML())
    assert GpuReport.from_json(report.to_json()) == report
    jax_report = JaxDevicesReport(
        backend="gpu",
        devices=(
            JaxDeviceInfo(0, "gpu", "NVIDIA H100", 0, 60 * GiB, 1024, 4096),
            JaxDeviceInfo(1, "gpu", "NVIDIA H100", 0, None, None, None),
        ),
        status="JAX ok",
        jax_version="0.10.2",
    )
    assert JaxDevicesReport.from_json(jax_report.to_json()) == jax_report
    sample = GpuSample(index=0, gpu_utilisation_percent=None, memory_used_bytes=5)
    assert GpuSample.from_json(sample.to_json()) == sample


# ---------------------------------------------------------------------- NVML


def test_fake_nvml_gives_numbers_in_documented_units():
    fake = FakeNVML()
    report = probe_gpus(nvml=fake)
    assert report.nvml_available
    assert report.driver_version == "550.54.15"
    assert report.cuda_driver_version == "12.4"  # 12040 = 1000*12 + 10*4
    assert report.status.startswith("NVML ok: 2 GPU(s)")
    assert [g.index for g in report.gpus] == [0, 1]
    g0, g1 = report.gpus
    assert g0.name == "NVIDIA H100 80GB HBM3"  # bytes decoded
    assert g1.uuid.startswith("GPU-00000001")
    assert g0.memory_total_bytes == 80 * GiB
    assert g1.memory_used_bytes == 2 * GiB
    assert g1.memory_free_bytes == 78 * GiB
    assert (g0.gpu_utilisation_percent, g1.gpu_utilisation_percent) == (90, 91)
    assert g0.memory_utilisation_percent == 40
    assert (g0.pcie_gen_current, g0.pcie_gen_max) == (4, 5)
    assert (g0.pcie_width_current, g0.pcie_width_max) == (16, 16)
    assert g0.power_draw_watts == pytest.approx(312.5)  # from mW
    assert g0.power_limit_watts == pytest.approx(700.0)
    assert (g0.sm_clock_mhz, g0.memory_clock_mhz) == (1980, 2619)
    assert (g0.sm_clock_max_mhz, g0.memory_clock_max_mhz) == (1990, 2629)
    assert g0.error is None
    assert fake.init_calls == 1 and fake.shutdown_calls == 1


@pytest.mark.parametrize(
    "exc, words",
    [
        (NVMLError_LibraryNotFound("NVML Shared Library Not Found"), "libnvidia-ml.so.1 not found"),
        (NVMLError_DriverNotLoaded("Driver Not Loaded"), "driver not loaded"),
        (NVMLError_LibRmVersionMismatch("mismatch"), "versions differ"),
        (RuntimeError("weird failure 42"), "RuntimeError: weird failure 42"),
    ],
)
def test_nvml_init_failure_gives_empty_list_and_one_status_line(exc, words):
    report = probe_gpus(nvml=FakeNVML(init_error=exc))
    assert report.gpus == ()
    assert not report.nvml_available
    assert report.driver_version is None
    assert report.status.startswith("NVML unavailable:")
    assert words in report.status
    assert "\n" not in report.status


def test_real_pynvml_without_driver_is_a_status_line_not_a_traceback():
    # On a host with a driver this reports GPUs; either way it must not raise.
    report = probe_gpus()
    assert report.status.startswith(("NVML ok", "NVML unavailable"))
    assert "\n" not in report.status
    if not report.nvml_available:
        assert report.gpus == ()


def test_one_unsupported_field_gives_none_for_that_field_only():
    fake = FakeNVML(unsupported=("nvmlDeviceGetPowerUsage", "nvmlDeviceGetCurrPcieLinkGeneration"))
    g0 = probe_gpus(nvml=fake).gpus[0]
    assert g0.power_draw_watts is None
    assert g0.pcie_gen_current is None
    assert g0.pcie_gen_max == 5
    assert g0.power_limit_watts == pytest.approx(700.0)
    assert g0.memory_total_bytes == 80 * GiB
    assert g0.gpu_utilisation_percent == 90


def test_enforced_power_limit_unsupported_falls_back_to_management_limit():
    g0 = probe_gpus(nvml=FakeNVML(unsupported=("nvmlDeviceGetEnforcedPowerLimit",))).gpus[0]
    assert g0.power_limit_watts == pytest.approx(650.0)


def test_memory_info_unsupported_gives_none_for_all_three_memory_fields():
    g0 = probe_gpus(nvml=FakeNVML(unsupported=("nvmlDeviceGetMemoryInfo",))).gpus[0]
    assert (g0.memory_total_bytes, g0.memory_free_bytes, g0.memory_used_bytes) == (None,) * 3
    assert g0.name == "NVIDIA H100 80GB HBM3"


def test_failing_device_handle_is_listed_with_its_error():
    class OneLost(FakeNVML):
        def nvmlDeviceGetHandleByIndex(self, i):
            if i == 1:
                raise NVMLError("GPU is lost")
            return super().nvmlDeviceGetHandleByIndex(i)

    report = probe_gpus(nvml=OneLost())
    assert len(report.gpus) == 2
    assert report.gpus[0].name is not None and report.gpus[0].error is None
    assert report.gpus[1].name is None and "GPU is lost" in report.gpus[1].error
    assert "no handle for GPU(s) [1]" in report.status


def test_missing_pynvml_module_is_a_status_line(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    report = probe_gpus()
    assert report.gpus == ()
    assert report.status.startswith("NVML unavailable:")
    assert "nvidia-ml-py" in report.status
    assert sample_utilisation() == ()


# ------------------------------------------------------------------ sampler


def test_sample_utilisation_inits_once_and_reuses_handles():
    fake = FakeNVML()
    first = sample_utilisation(nvml=fake)
    second = sample_utilisation(nvml=fake)
    assert first == second == (
        GpuSample(index=0, gpu_utilisation_percent=90, memory_used_bytes=1 * GiB),
        GpuSample(index=1, gpu_utilisation_percent=91, memory_used_bytes=2 * GiB),
    )
    assert fake.init_calls == 1
    assert fake.util_calls == 4
    reset_sampler()
    assert fake.shutdown_calls == 1


def test_sample_utilisation_field_failure_and_init_failure():
    samples = sample_utilisation(nvml=FakeNVML(unsupported=("nvmlDeviceGetUtilizationRates",)))
    assert [s.gpu_utilisation_percent for s in samples] == [None, None]
    assert [s.memory_used_bytes for s in samples] == [GiB, 2 * GiB]

    broken = FakeNVML(init_error=NVMLError_LibraryNotFound("x"))
    assert sample_utilisation(nvml=broken) == ()
    assert sample_utilisation(nvml=broken) == ()
    assert broken.init_calls == 1  # failure remembered, not retried every tick


def test_sample_utilisation_is_thread_safe():
    fake = FakeNVML()
    results: list[tuple[GpuSample, ...]] = []
    lock = threading.Lock()

    def worker():
        for _ in range(50):
            r = sample_utilisation(nvml=fake)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.init_calls == 1
    assert len(results) == 200 and all(len(r) == 2 for r in results)


# ----------------------------------------------------------------------- JAX


def test_jax_child_probe_on_cpu():
    report = probe_jax_memory(extra_env={"JAX_PLATFORMS": "cpu"})
    assert report.backend == "cpu", report.status
    assert report.status.startswith("JAX ok")
    assert report.in_child
    assert len(report.devices) >= 1
    d = report.devices[0]
    assert d.platform == "cpu"
    assert d.bytes_limit is None and d.bytes_in_use is None  # CPU gives no memory_stats
    assert report.jax_version


def test_jax_child_failure_gives_status_with_stderr_tail(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'boom: no backend here' >&2\nexit 3\n")
    fake_python.chmod(0o755)
    report = probe_jax_memory(python=str(fake_python))
    assert report.backend is None and report.devices == ()
    assert "exited with code 3" in report.status
    assert "boom: no backend here" in report.status


def test_jax_child_timeout_gives_status(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'still starting' >&2\nexec sleep 30\n")
    fake_python.chmod(0o755)
    report = probe_jax_memory(python=str(fake_python), timeout_s=0.5)
    assert report.backend is None
    assert "timed out after 0.5 s" in report.status


def test_jax_child_without_result_line(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho hello\n")
    fake_python.chmod(0o755)
    report = probe_jax_memory(python=str(fake_python))
    assert report.backend is None
    assert "no result line" in report.status and "hello" in report.status


# ---------------------------------------------------------------------- host


def test_probe_host_on_temp_dir(tmp_path):
    report = probe_host(tmp_path, nvml=FakeNVML(), jax_in_child=False)
    assert report.logical_cores >= 1
    assert 1 <= report.usable_cores <= report.logical_cores
    assert report.physical_cores is None or report.physical_cores >= 1
    assert report.ram_total_bytes > 0
    assert 0 < report.ram_available_bytes <= report.ram_total_bytes
    assert report.disk_free_bytes > 0
    assert report.disk_total_bytes >= report.disk_free_bytes
    assert report.fs_type  # some mount holds every path on Linux
    assert report.data_path == str(tmp_path.resolve())
    assert report.python_version.count(".") == 2
    assert report.jax.backend == "cpu" and not report.jax.in_child
    assert report.jax_backend == "cpu"
    assert report.jax_version == report.jax.jax_version
    assert len(report.gpu.gpus) == 2
    assert HostReport.from_json(report.to_json()) == report


def test_probe_host_missing_path_names_it(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        probe_host(missing, nvml=FakeNVML(), jax_in_child=False)


def test_mount_for_path_picks_longest_mount_point(monkeypatch):
    parts = [
        SimpleNamespace(mountpoint="/", fstype="ext4", device="/dev/vda"),
        SimpleNamespace(mountpoint="/data", fstype="nfs4", device="srv:/export"),
        SimpleNamespace(mountpoint="/data/fast", fstype="xfs", device="/dev/nvme0n1"),
        SimpleNamespace(mountpoint="/dat", fstype="tmpfs", device="tmpfs"),
    ]
    monkeypatch.setattr("probes.host.psutil.disk_partitions", lambda all=True: parts)
    monkeypatch.setattr("probes.host.os.path.realpath", lambda p: str(p))
    assert mount_for_path("/data/imagenet/train") == ("/data", "nfs4", "srv:/export")
    assert mount_for_path("/data/fast") == ("/data/fast", "xfs", "/dev/nvme0n1")
    assert mount_for_path("/data/faster/x")[0] == "/data"  # prefix, not path parent
    assert mount_for_path("/home/u") == ("/", "ext4", "/dev/vda")


def test_cpu_model_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert cpu_model(str(info)) == "AMD EPYC 9654 96-Core Processor"


def test_gpu_module_exports():
    assert set(gpu_mod.__all__) >= {"GpuInfo", "GpuReport", "probe_gpus", "sample_utilisation"}
    assert GpuInfo(index=3).name is None
