"""What the trainer reports: the packed data set (:class:`PackResult`), each window of
steps (:class:`StepReport`), each evaluation (:class:`EvalReport`), each out-of-memory
step-down (:class:`OomEvent`) and the end of a run (:class:`TrainSummary`). Frozen
records that round-trip through JSON, stdlib only, so the reports read them without
importing JAX."""

from __future__ import annotations

from dataclasses import dataclass

from trainers.options import PackOptions
from trainers.records import Record


@dataclass(frozen=True)
class BadImage(Record):
    """One input file that was not packed: its path and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class SplitSummary(Record):
    """One packed split.

    Attributes:
      name: ``train`` or ``validation``.
      num_examples: records written.
      shard_lengths: records per shard.
      num_bytes: bytes of the shard files.
    """

    name: str
    num_examples: int
    shard_lengths: tuple[int, ...]
    num_bytes: int


@dataclass(frozen=True)
class PackResult(Record):
    """What ``pack_folder`` produced.

    Attributes:
      out_dir: the packed data set (``tfds.builder_from_directory`` reads it).
      source: the input folder.
      class_names: wnids in class-index order.
      input_images: files found under the class folders.
      packed: records written, all splits.
      skipped: files not packed (== len(bad_images)).
      bad_images: every skipped file with its reason.
      splits: per split counts and bytes.
      bytes_in: bytes of the packed input files.
      bytes_out: bytes of the records' image payloads.
      resize_shorter: pack-time resize (None: originals stored).
      seconds: wall time of this call (a resumed pack counts only its own time).
      resumed_shards: complete shards found and kept from an interrupted run.
      decode_speedup: with a pack-time resize, full decode time of a sample of the
        original files / of the same images as stored (measured, single thread).
      kind: the detected input kind (``trainers.sources``), with the validation
        input's after `` + `` when there is one (and the label file it used).
      class_words: the words of each class ('' when unknown), or () when no words
        file was found.
      stopped: where damaged archives ended early (member, byte offset), one line
        each; what was read before is packed.
      val_source: the separate validation input, if any.
      complete: False for the partial result of one of several processes that has
        written its shards while others are still packing (never saved).
    """

    out_dir: str
    source: str
    class_names: tuple[str, ...]
    input_images: int
    packed: int
    skipped: int
    bad_images: tuple[BadImage, ...]
    splits: tuple[SplitSummary, ...]
    bytes_in: int
    bytes_out: int
    resize_shorter: int | None
    options: PackOptions
    seconds: float
    resumed_shards: int = 0
    decode_speedup: float | None = None
    kind: str = ""
    class_words: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()
    val_source: str | None = None
    complete: bool = True

    def class_label(self, index: int) -> str:
        """``wnid (words)`` of class ``index``, or the wnid alone."""
        words = self.class_words[index] if index < len(self.class_words) else ""
        return f"{self.class_names[index]} ({words})" if words else self.class_names[index]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> SplitSummary:
        for s in self.splits:
            if s.name == name:
                return s
        raise KeyError(f"packed data set {self.out_dir} has no split {name!r}; "
                       f"it has {[s.name for s in self.splits]}")


@dataclass(frozen=True)
class StepReport(Record):
    """Throughput and training metrics over the last window of steps.

    Attributes:
      step: steps done (global).
      total_steps: steps in the schedule.
      epoch: epochs done (fractional).
      images_per_s: global images/s over the window (all hosts).
      step_s: mean wall seconds per step over the window.
      wait_s: mean seconds per step the training thread waited for the next
        device batch (host wait).
      data_stall_pct: share of the step time the accelerators were idle for want of
        input, ``100 x (1 - synthetic_step_s / step_s)`` clipped at 0
        (DS-Analyzer); NaN without a synthetic reference.
      loss, accuracy: training loss and top-1 averaged over the window's steps.
      learning_rate: at the last step.
      bad_records: records skipped so far on this host.
      elapsed_s: since the run (or the resume) started, compile included.
      eta_s: remaining steps x mean step seconds.
      host_wait_pct: ``100 x wait_s / step_s``.
      synthetic_step_s: step time on on-device input (the reference).
      skipped_steps: steps skipped for a non-finite loss or gradient so far.
      noise_scale: the gradient noise scale ``B_simple`` (examples) of the moving
        averages so far (``trainers.noise_scale.NoiseScaleEMA``; McCandlish et al.
        2018); NaN on one device (one batch size only) or before any step.
      noise_grad_sq, noise_trace_sigma: its averaged ``|G|^2`` and ``tr(Sigma)``.
    """

    step: int
    total_steps: int
    epoch: float
    images_per_s: float
    step_s: float
    wait_s: float
    data_stall_pct: float
    loss: float
    accuracy: float
    learning_rate: float
    bad_records: int
    elapsed_s: float
    eta_s: float
    host_wait_pct: float = float("nan")
    synthetic_step_s: float = float("nan")
    skipped_steps: int = 0
    noise_scale: float = float("nan")
    noise_grad_sq: float = float("nan")
    noise_trace_sigma: float = float("nan")


@dataclass(frozen=True)
class EvalReport(Record):
    """Held-out accuracy after ``epoch`` epochs (``count`` examples, all hosts)."""

    step: int
    epoch: float
    top1: float
    top5: float
    loss: float
    count: int
    bad_records: int
    seconds: float


@dataclass(frozen=True)
class OomEvent(Record):
    """The run ran out of device memory and continued at a smaller batch.

    Attributes:
      step: step at which the error surfaced.
      resumed_step: step the run continued from (the last checkpoint, converted to the
        new batch by images seen).
      old_per_device_batch / new_per_device_batch: the step-down.
      old_learning_rate / new_learning_rate: the rescaled peak learning rate.
      message: the first line of the allocator's error.
    """

    step: int
    resumed_step: int
    old_per_device_batch: int
    new_per_device_batch: int
    old_learning_rate: float
    new_learning_rate: float
    message: str


@dataclass(frozen=True)
class TrainSummary(Record):
    """The end of a run.

    Attributes:
      status: ``completed``, ``stopped`` (a signal on some process, checkpoint
        written by every process at the same step) or ``max_steps``.
      steps, epochs: done in total (resumed runs included).
      resumed_from_step: step of the checkpoint the run started from (0: fresh).
      wall_s: of this process's run, compile included.
      compile_s: first step (compilation) wall time.
      images_per_s: mean global images/s after compilation.
      images_per_s_per_device: the same per device.
      data_stall_pct: accelerator idle share over the run after compilation,
        ``100 x (1 - synthetic step s / mean step s)`` (see the module docstring).
      final_eval: the last evaluation (None when there is no held-out split).
      bad_records: records skipped while training on this host.
      num_devices, num_hosts, global_batch: the layout (after any OOM step-down).
      per_device_batch: the batch the run ended with.
      peak_bytes_in_use: device 0's ``memory_stats()['peak_bytes_in_use']`` after the
        first measured window (None where the backend has no stats), to compare with
        the compiled memory analysis the batch was chosen by.
      oom_events: out-of-memory step-downs the run survived.
      params_sha256: digest of this host's final parameters and batch statistics
        (identical across hosts, and across an interrupted and an uninterrupted run).
      host_wait_pct: share of wall time the training thread waited for input.
      synthetic_images_per_s: global images/s on on-device input (the reference).
      skipped_steps: steps skipped for a non-finite averaged loss or gradient.
      stop_reason: why a ``stopped`` run stopped (signal and process), else "".
      noise_scale, noise_grad_sq, noise_trace_sigma: the gradient noise scale
        ``B_simple`` (examples) and its averaged ``|G|^2`` and ``tr(Sigma)`` at the end
        of this attempt (see :class:`StepReport`; NaN on one device).
      noise_steps: steps folded into those averages (since the last start or resume).
    """

    status: str
    steps: int
    epochs: float
    resumed_from_step: int
    wall_s: float
    compile_s: float
    images_per_s: float
    images_per_s_per_device: float
    data_stall_pct: float
    final_eval: EvalReport | None
    bad_records: int
    num_devices: int
    num_hosts: int
    global_batch: int
    steps_per_epoch: int
    checkpoint_step: int | None
    per_device_batch: int = 0
    learning_rate: float = 0.0
    peak_bytes_in_use: int | None = None
    oom_events: tuple[OomEvent, ...] = ()
    params_sha256: str = ""
    host_wait_pct: float = float("nan")
    synthetic_images_per_s: float = float("nan")
    skipped_steps: int = 0
    stop_reason: str = ""
    noise_scale: float = float("nan")
    noise_grad_sq: float = float("nan")
    noise_trace_sigma: float = float("nan")
    noise_steps: int = 0
