"""The probes' records: frozen dataclasses that round-trip through JSON (stdlib only,
so the planner and the reports read them without importing JAX)."""

from __future__ import annotations

from dataclasses import dataclass

from trainers.records import Record


@dataclass(frozen=True)
class StepMemory(Record):
    """Compiled train-step memory at one per-device batch (bytes).

    ``total = argument + output + temp - alias``.
    """

    per_device_batch: int
    argument: int
    output: int
    temp: int
    alias: int
    total: int
    compile_s: float


@dataclass(frozen=True)
class StepRate(Record):
    """Measured train-step throughput on synthetic input.

    Attributes:
      per_device_batch: batch per device.
      global_batch: per_device_batch x local devices.
      images_per_s: global images/s of this host's devices.
      images_per_s_per_device: the same per device.
      step_s: mean seconds per step.
      compile_s: first call (compilation) wall time.
      steps: steps timed.
    """

    per_device_batch: int
    global_batch: int
    images_per_s: float
    images_per_s_per_device: float
    step_s: float
    compile_s: float
    steps: int


@dataclass(frozen=True)
class AcceleratorReport(Record):
    """What the probe measured on this host's accelerators.

    Attributes:
      backend: ``gpu``, ``tpu`` or ``cpu``.
      device_kind: e.g. ``NVIDIA H100 80GB HBM3`` or ``cpu``.
      local_devices: devices on this host.
      memory_limit_bytes: bytes the step may use per device.
      memory_source: where that figure comes from (``bytes_limit`` /
        ``cpu-ram-budget`` / ``user-budget``).
      model: ``arch/width/image_size/dtype`` the figures are for.
      step_memory: compiled memory at the batches evaluated (may be empty).
      step_rate: measured step throughput (None when skipped).
      rate_curve: the step's images/s at a few per-device batches (the batch knee;
        empty when the preset fixes the batch or in older reports), by batch.
    """

    backend: str
    device_kind: str
    local_devices: int
    memory_limit_bytes: int
    memory_source: str
    model: str
    step_memory: tuple[StepMemory, ...]
    step_rate: StepRate | None
    rate_curve: tuple[StepRate, ...] = ()


@dataclass(frozen=True)
class DecodePoint(Record):
    """Throughput at one thread count.

    Attributes:
      threads: worker threads.
      images_per_s: images preprocessed per second, all threads.
      speedup: images_per_s / the 1-thread figure.
      efficiency: speedup / threads (1.0 = perfect scaling).
    """

    threads: int
    images_per_s: float
    speedup: float
    efficiency: float


@dataclass(frozen=True)
class DecodeVariant(Record):
    """Decode + augmentation throughput of one way the trainer may get its images
    (what the planner may choose), timed with the function the input pipeline runs
    on those bytes (:func:`probes.decode.probe_decode`).

    Attributes:
      name: ``"originals"`` (the bytes the pack stores without a resize),
        ``"resized-<R>"`` (packed with ``resize_shorter=R``), ``"cached"`` /
        ``"cached-resized-<R>"`` (decoded once, kept in RAM: later epochs only crop
        and flip).
      resize_shorter: the pack-time resize, pixels (None: no resize).
      cached: True for the decoded-image cache (``PipelineConfig.cache_decoded``):
        ``preprocess.augment_decoded`` timed on decoded images; False for
        ``preprocess.train_preprocess`` timed on the packed bytes.
      best_images_per_s: the highest images/s among ``points``.
      points: one per thread count timed, increasing (fewer counts than the
        report's main curve for the variants other than ``originals``).
    """

    name: str
    resize_shorter: int | None
    cached: bool
    best_images_per_s: float
    points: tuple[DecodePoint, ...]

    def rate_at(self, threads: int) -> float:
        """Images/s at ``threads`` (the nearest measured count not above it; the
        1-thread figure below the first)."""
        return _rate_at(self.points, threads)


def _rate_at(points: tuple[DecodePoint, ...], threads: int) -> float:
    best = points[0].images_per_s
    for p in points:
        if p.threads <= threads:
            best = p.images_per_s
    return best


@dataclass(frozen=True)
class DecodeReport(Record):
    """Decode + augmentation throughput on a sample of the user's images.

    Attributes:
      data_path: folder sampled.
      sample_images: images timed (decodable ones).
      median_bytes: median file size of the sample (bytes).
      median_width, median_height: median dimensions (pixels).
      mean_pixels: mean width x height of the sample.
      image_size: output side of the timed preprocessing (pixels).
      min_crop_scale: smallest crop area fraction used.
      points: one per thread count, increasing: ``train_preprocess`` on the bytes
        the pack stores without a resize (the user's JPEGs as they are).
      knee_threads: thread count past which adding threads stops paying.
      raw_decode_images_per_s: full-size single-thread libjpeg-turbo decodes/s.
      usable_cores: cores this process may use.
      ceiling_images_per_s: raw_decode_images_per_s x usable_cores.
      bad_images: ``"path: reason"`` for sampled files that did not decode.
      seconds_per_point: time budget of each measurement.
      decoder: which JPEG decode the timed preprocessing used
        (:func:`trainers.preprocess.decoder_description`); empty in older reports.
      variants: the same measurement for each way the trainer may get its images
        (:class:`DecodeVariant`): ``originals`` (the ``points`` above), the
        candidate pack-time resizes and the decoded-image cache; empty in older
        reports.
    """

    data_path: str
    sample_images: int
    median_bytes: int
    median_width: int
    median_height: int
    mean_pixels: float
    image_size: int
    min_crop_scale: float
    points: tuple[DecodePoint, ...]
    knee_threads: int
    raw_decode_images_per_s: float
    usable_cores: int
    ceiling_images_per_s: float
    bad_images: tuple[str, ...]
    seconds_per_point: float
    decoder: str = ""
    variants: tuple[DecodeVariant, ...] = ()

    def rate_at(self, threads: int) -> float:
        """Images/s at ``threads`` (the nearest measured count not above it)."""
        return _rate_at(self.points, threads)

    def variant(self, resize_shorter: int | None, cached: bool) -> DecodeVariant | None:
        """The measured variant with this pack-time resize (pixels, None: none) and
        cache choice, or None when it was not measured."""
        return next((v for v in self.variants
                     if v.resize_shorter == resize_shorter and v.cached == cached), None)

    @property
    def best(self) -> DecodePoint:
        return max(self.points, key=lambda p: p.images_per_s)


@dataclass(frozen=True)
class ReadStats(Record):
    """One read measurement.

    Fields:
      pattern: ``'seq'`` (consecutive blocks, wrapping at the end), ``'rand'``
        (uniform offsets, multiples of :data:`ALIGN`, inside the read space, with
        replacement) or ``'shuffle'`` (each block-sized slot once, in random order);
        see :func:`measure_reads`.
      requested_bytes: block size asked for, bytes.
      block_bytes: bytes per read as issued (``requested_bytes`` rounded up to
        :data:`ALIGN` for ``O_DIRECT``); ``bytes_read == ops * block_bytes`` unless a
        read came back short (``short_reads``).
      queue_depth: concurrent reader threads, each with one blocking read in flight.
      direct: True when the page cache was bypassed (``O_DIRECT`` or the fadvise drop);
        False for the buffered, "as the loader sees it" figure.
      ops: completed reads.
      bytes_read: sum of the byte counts the read calls returned.
      seconds: wall time from the start of the measurement to the last read's end.
      iops: ``ops / seconds``.
      mb_per_s: ``bytes_read / seconds / 1e6`` (1 MB = 1e6 bytes).
      p50_ms, p99_ms, mean_ms: per-read latency in milliseconds (NaN when ``ops == 0``;
        percentiles by linear interpolation, ``numpy.percentile``).
      short_reads: reads that returned fewer bytes than ``block_bytes``.
    """

    pattern: str
    requested_bytes: int
    block_bytes: int
    queue_depth: int
    direct: bool
    ops: int
    bytes_read: int
    seconds: float
    iops: float
    mb_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    short_reads: int = 0


@dataclass(frozen=True)
class DiskReport(Record):
    """What :func:`probe_disk` measured.

    Fields:
      path: the data path probed (absolute).
      method: ``'O_DIRECT'`` or ``'fadvise'`` (buffered reads after
        ``POSIX_FADV_DONTNEED``): how the page cache was bypassed.
      source: ``'test-file'`` (the probe wrote, read and deleted a file of random bytes)
        or ``'existing-files'`` (the folder was not writable; the largest data files were
        read, concatenated, and nothing was written).
      file_bytes: bytes of the read space (test file size, or the usable bytes of the
        existing files read).
      record_bytes: record size asked for (median bytes per record of the data set).
      queue_depth: N, the reader threads of the input pipeline.
      sequential: 1 MiB sequential reads at depth 1.
      random_4k: 4 KiB random reads at depth 1.
      random_record: record-size random reads at depth 1.
      random_record_qd: record-size random reads at depth N.
      buffered_random_record: record-size reads at depth N through the page cache,
        as the loader sees them in its first epoch: the read space's cache dropped,
        then every record-size slot read once in shuffled order (pattern
        ``'shuffle'``; kernel readahead and caching as they come). The measurement ends
        early when the read space is exhausted.
      dataset_bytes: bytes of the data set (given, or summed over the files under
        ``path`` when 0 was given).
      ram_bytes: total RAM (``psutil.virtual_memory().total``), bytes. Whether the
        data set fits in the page cache is the planner's call, not the probe's.
      notes: human-readable remarks (units, fallbacks, what the cache figure means).
    """

    path: str
    method: str
    source: str
    file_bytes: int
    record_bytes: int
    queue_depth: int
    sequential: ReadStats
    random_4k: ReadStats
    random_record: ReadStats
    random_record_qd: ReadStats
    buffered_random_record: ReadStats
    dataset_bytes: int
    ram_bytes: int
    notes: tuple[str, ...] = ()

    #: Decided by the probe before the planner owned the page-cache rule.
    DROPPED = {"fits_page_cache"}


@dataclass(frozen=True)
class GpuInfo(Record):
    """Facts about one NVIDIA GPU from NVML. Any field NVML could not give (for example
    ``NVMLError_NotSupported`` on a given board or driver) is ``None``.

    Fields:
      index: NVML device index (0-based; NVML order is PCI bus order, which can differ
        from ``CUDA_VISIBLE_DEVICES`` / JAX order unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``).
      name: product name, e.g. ``"NVIDIA H100 80GB HBM3"``.
      uuid: ``"GPU-xxxxxxxx-..."``.
      memory_total_bytes / memory_free_bytes / memory_used_bytes: device memory, bytes.
      gpu_utilisation_percent: percent of the last sample period (1/6 s to 1 s, driver
        dependent) in which one or more kernels ran; 0..100.
      memory_utilisation_percent: percent of that period in which device memory was
        read or written; 0..100.
      pcie_gen_current / pcie_gen_max: PCIe link generation now and the most the link
        (GPU and slot together) supports; the link drops generation when idle.
      pcie_width_current / pcie_width_max: PCIe lanes now and at most (e.g. 16).
      power_draw_watts: board power draw, W (NVML gives mW).
      power_limit_watts: enforced power limit, W (falls back to the management limit).
      sm_clock_mhz / memory_clock_mhz: current SM and memory clocks, MHz.
      sm_clock_max_mhz / memory_clock_max_mhz: maximum SM and memory clocks, MHz.
      error: why the device handle itself could not be had (then every other field is
        ``None``); ``None`` when the handle was fine.
    """

    index: int
    name: str | None = None
    uuid: str | None = None
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_used_bytes: int | None = None
    gpu_utilisation_percent: int | None = None
    memory_utilisation_percent: int | None = None
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    power_draw_watts: float | None = None
    power_limit_watts: float | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
    sm_clock_max_mhz: int | None = None
    memory_clock_max_mhz: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class GpuReport(Record):
    """What NVML says about this host's NVIDIA GPUs.

    Fields:
      status: one human-readable line: ``"NVML ok: 8 GPU(s), driver 550.54.15, CUDA
        12.4"`` or, with ``gpus == ()``, why NVML is unavailable (``"NVML unavailable:
        ..."``).
      driver_version: NVIDIA kernel driver version string, e.g. ``"550.54.15"``; ``None``
        without NVML.
      gpus: one :class:`GpuInfo` per GPU NVML lists, in NVML index order.
      cuda_driver_version: highest CUDA version the driver supports, ``"12.4"``;
        ``None`` without NVML or where NVML cannot say.
      nvml_available: ``True`` when ``nvmlInit`` succeeded (even with zero GPUs).
    """

    status: str
    driver_version: str | None
    gpus: tuple[GpuInfo, ...]
    cuda_driver_version: str | None = None
    nvml_available: bool = False


@dataclass(frozen=True)
class GpuSample(Record):
    """One cheap live sample of one GPU (see :func:`sample_utilisation`).

    Fields:
      index: NVML device index.
      gpu_utilisation_percent: 0..100, or ``None`` where NVML cannot say.
      memory_used_bytes: device memory in use, bytes, or ``None``.
    """

    index: int
    gpu_utilisation_percent: int | None
    memory_used_bytes: int | None


@dataclass(frozen=True)
class JaxDeviceInfo(Record):
    """One ``jax.Device`` and its allocator statistics.

    The memory fields come from ``Device.memory_stats()`` (XLA's allocator: on GPU the
    BFC allocator's ``bytes_limit`` / ``bytes_in_use`` / ``peak_bytes_in_use``, bytes).
    They are ``None`` where JAX gives no statistics (``memory_stats()`` returns
    ``None`` on CPU) or omits that key.

    Fields:
      id: ``Device.id``.
      platform: ``"cpu"``, ``"gpu"``, ``"tpu"``.
      device_kind: e.g. ``"NVIDIA H100 80GB HBM3"``, ``"cpu"``.
      process_index: host process the device belongs to (0 on one host).
      bytes_limit / bytes_in_use / peak_bytes_in_use: bytes, or ``None``.
    """

    id: int
    platform: str
    device_kind: str
    process_index: int = 0
    bytes_limit: int | None = None
    bytes_in_use: int | None = None
    peak_bytes_in_use: int | None = None


@dataclass(frozen=True)
class JaxDevicesReport(Record):
    """The JAX backend and its devices.

    Fields:
      backend: ``jax.default_backend()`` (``"cpu"``, ``"gpu"``, ``"tpu"``); ``None``
        when the probe failed.
      devices: one :class:`JaxDeviceInfo` per ``jax.devices()`` entry.
      status: one line: ``"JAX ok: backend gpu, 8 device(s)"`` or why the probe failed
        (with the child's stderr tail).
      jax_version: ``jax.__version__`` as the probed interpreter saw it, or ``None``.
      in_child: ``True`` when read in a child process with preallocation off, ``False``
        when read in this process (where ``bytes_limit`` reflects this process's
        allocator settings).
    """

    backend: str | None
    devices: tuple[JaxDeviceInfo, ...]
    status: str
    jax_version: str | None = None
    in_child: bool = True


@dataclass(frozen=True)
class HostReport(Record):
    """Facts about this host, for the planner and the report.

    Fields:
      hostname: ``socket.gethostname()``.
      os_name: ``platform.system()``, e.g. ``"Linux"``.
      os_release: distribution name from ``/etc/os-release`` (``PRETTY_NAME``), or
        ``platform.platform()`` where there is none.
      kernel: ``platform.release()``, e.g. ``"5.15.0-105-generic"``.
      python_version: ``platform.python_version()``, e.g. ``"3.11.7"``.
      python_executable: ``sys.executable``.
      cpu_model: CPU model name from ``/proc/cpuinfo``, or ``platform.processor()``;
        ``None`` where neither says.
      logical_cores: ``psutil.cpu_count(logical=True)`` (hardware threads).
      physical_cores: ``psutil.cpu_count(logical=False)``; ``None`` where unknown.
      usable_cores: cores this process may run on, ``len(os.sched_getaffinity(0))``
        (``taskset``, cpusets); ``logical_cores`` where the OS has no affinity call.
      cpu_quota_cores: container CPU quota in cores (cgroup quota / period, e.g. 2.5
        for ``docker --cpus 2.5``); ``None`` when unlimited or unknown.
      ram_total_bytes / ram_available_bytes: ``psutil.virtual_memory()`` total and
        available, bytes.
      memory_limit_bytes: container memory limit (cgroup), bytes; ``None`` when
        unlimited or unknown.
      data_path: the probed data path, absolute and with symlinks resolved.
      disk_total_bytes / disk_free_bytes: ``shutil.disk_usage(data_path)`` total and
        free (free to this user), bytes.
      fs_type: file system type of the data path (``"ext4"``, ``"nfs4"``,
        ``"overlay"``...), from the longest mount point containing it; ``None`` if no
        mount matched.
      fs_mount_point / fs_device: that mount point and its device or source
        (``"/dev/nvme0n1p1"``, ``"server:/export"``).
      jax_version / jaxlib_version: installed distribution versions, ``None`` if not
        installed.
      jax: backend, devices and memory stats (:class:`probes.gpu.JaxDevicesReport`).
      gpu: NVML facts (:class:`probes.gpu.GpuReport`).
    """

    hostname: str
    os_name: str
    os_release: str
    kernel: str
    python_version: str
    python_executable: str
    cpu_model: str | None
    logical_cores: int
    physical_cores: int | None
    usable_cores: int
    cpu_quota_cores: float | None
    ram_total_bytes: int
    ram_available_bytes: int
    memory_limit_bytes: int | None
    data_path: str
    disk_total_bytes: int
    disk_free_bytes: int
    fs_type: str | None
    fs_mount_point: str | None
    fs_device: str | None
    jax_version: str | None
    jaxlib_version: str | None
    jax: JaxDevicesReport
    gpu: GpuReport

    @property
    def jax_backend(self) -> str | None:
        """``jax.default_backend()`` as the JAX probe saw it (``"cpu"``, ``"gpu"``...)."""
        return self.jax.backend


@dataclass(frozen=True)
class StallReport(Record):
    """Data-stall attribution of a short training run.

    Attributes:
      synthetic_images_per_s: compute only.
      cached_images_per_s: real input, page cache warm.
      cold_images_per_s: real input, page cache dropped.
      compute_pct: share of the cold step time that is compute.
      prep_stall_pct: share spent waiting on decode/augmentation.
      fetch_stall_pct: share spent waiting on storage.
      bottleneck: ``compute``, ``preprocessing`` or ``fetch``.
      steps: steps timed per real-input run.
      cache_dropped: whether the page cache could be dropped for the cold run.
    """

    synthetic_images_per_s: float
    cached_images_per_s: float
    cold_images_per_s: float
    compute_pct: float
    prep_stall_pct: float
    fetch_stall_pct: float
    bottleneck: str
    steps: int
    cache_dropped: bool


@dataclass(frozen=True)
class ChildStepResult(Record):
    """What the child saw.

    Attributes:
      per_device_batch: the batch run.
      ok: the steps ran.
      oom: the child ran out of memory (allocator error, or killed by the kernel).
      peak_bytes: device peak bytes in use (GPU) or peak RSS growth (CPU); None if
        unknown.
      peak_source: ``peak_bytes_in_use``, ``live arrays + steady-step RSS growth`` (CPU,
        ``probes.step_child``) or ``ru_maxrss`` (CPU without ``/proc``).
      step_s: mean seconds per step after the first.
      error: the last line of the child's error output when not ok.
    """

    per_device_batch: int
    ok: bool
    oom: bool
    peak_bytes: int | None
    peak_source: str
    step_s: float | None
    error: str


@dataclass(frozen=True)
class DatasetStats(Record):
    """The input folder at a glance.

    Attributes:
      path: the folder.
      num_classes: class folders.
      num_images: files under the class folders.
      total_bytes: estimated bytes of all files (mean of a sample x count, exact for
        small folders).
      median_bytes / mean_bytes: file size statistics of the sample.
      sampled: files whose size was read.
      kind: the input kind (``trainers.sources``: class folders, a tar of per-class
        tars, the Kaggle folder or zip).
      estimated: ``num_images`` is an estimate (a streamed archive: its bytes / the
        sample's mean image bytes), not a count.
    """

    path: str
    num_classes: int
    num_images: int
    total_bytes: int
    median_bytes: int
    mean_bytes: float
    sampled: int
    kind: str = ""
    estimated: bool = False


@dataclass(frozen=True)
class NoiseScaleReport(Record):
    """The gradient noise scale measured over the first steps of a real run on the
    user's data (``probes.noise_scale``; McCandlish et al. 2018, ``B_simple =
    tr(Sigma) / |G|^2``, estimated from the per-device and the averaged gradients).

    Attributes:
      per_device_batch, global_batch: the batches of the run (``B_small``, ``B_big``).
      devices: devices the step ran on (all hosts).
      steps: steps trained (the compile step included; its gradients are not used).
      averaged_steps: steps folded into the moving averages.
      learning_rate: peak learning rate of the run (linear rule at ``global_batch``).
      b_simple: ``tr(Sigma) / |G|^2`` of the averages at the end, in examples (None:
        not measured, see ``note``).
      grad_sq, trace_sigma: the averaged ``|G|^2`` and ``tr(Sigma)``.
      per_window: ``B_simple`` at each log window, in order (how it moved).
      ema_decay: per-step decay of the moving averages.
      seconds: wall time of the measurement (compile included).
      note: why it was not measured, else "".
    """

    per_device_batch: int
    global_batch: int
    devices: int
    steps: int
    averaged_steps: int
    learning_rate: float
    b_simple: float | None
    grad_sq: float | None
    trace_sigma: float | None
    per_window: tuple[float, ...]
    ema_decay: float
    seconds: float
    note: str = ""
