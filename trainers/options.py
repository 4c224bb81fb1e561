"""The option vocabulary of the trainer: frozen records that say their units, passed
from the plan (``autotune.planner``) to the trainer as they are (grain-style: small,
self-validating, stdlib only, so the planner and the reports import no JAX).

* :class:`TrainConfig`: model, optimizer and schedule.
* :class:`LoopOptions`: the input pipeline and the run's bookkeeping.
* :class:`PackOptions`: how a folder is packed into shards.
* :class:`AugmentConfig`: the training crop and flip.

One name per knob from plan to pipeline: ``decode_threads``, ``prefetch_batches``,
``device_prefetch``, ``decode_workers``, ``read_mode``, ``shuffle_window``,
``cache_decoded``, ``pack_threads``; times in seconds end in ``_s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainers.records import Record

#: Learning-rate schedules the trainer runs (``trainers.train.create_learning_rate_fn``).
SCHEDULES = ("cosine", "constant", "step", "poly", "triangular")


@dataclass(frozen=True)
class TrainConfig(Record):
    """Model, optimizer and schedule of one run.

    Attributes:
      arch: ``resnet50``, ``resnet18``, ``resnet_tiny`` ... (see ``trainers.models``).
      width: filters of the first stage.
      small_images: stride-1 3x3 stem without max-pool (for <= 64 px).
      image_size: training side in pixels.
      num_classes: from the data (1,000 for ImageNet-1k, 21,841 for ImageNet-21k).
      per_device_batch: images per device per step.
      epochs: epochs to train (may be fractional).
      optimizer: ``sgd`` (momentum, Nesterov optional), ``lars`` or ``adamw``.
      learning_rate: peak learning rate, already scaled to the global batch.
      warmup_epochs: linear warmup from ``warmup_start_fraction x learning_rate``
        to the peak (Goyal et al. 2017); for ``triangular`` FFCV's ``lr_peak_epoch``.
      schedule: what the learning rate does (one of :data:`SCHEDULES`, formulas in
        ``trainers.train.create_learning_rate_fn``): ``cosine`` (to 0 at the end,
        Loshchilov & Hutter 2017), ``constant``, ``step`` (x ``decay_factor`` at each
        of ``decay_epochs``: Goyal et al. 2017 / He et al. 2016), ``poly`` (MLPerf
        ResNet-50 LARS: polynomial decay of power ``poly_power`` to
        ``end_learning_rate``) or ``triangular`` (FFCV's step-free ramp: linear up
        to the peak at ``warmup_epochs``, linear down to 0 at the end).
      warmup_start_fraction: learning rate at step 0 as a fraction of the peak (0:
        from 0; Goyal et al.: base_lr / peak; FFCV: 1e-4).
      decay_epochs, decay_factor: the ``step`` schedule's boundaries (epochs) and
        factor.
      end_learning_rate, poly_power: the ``poly`` schedule's end rate and power
        (MLPerf: 1e-4, 2).
      momentum, nesterov: SGD / LARS momentum.
      weight_decay: L2 on conv / dense kernels only (no decay on batch-norm
        parameters and biases).
      label_smoothing: 0.1 in the reference recipe (Szegedy et al. 2016).
      dtype: compute dtype, ``float32`` or ``bfloat16`` (parameters stay float32).
      min_crop_scale: smallest random-resized-crop area fraction.
      seed: parameter init and data order.
      log_every_steps: steps between metric fetches (the only host syncs).
      bn_group_devices: devices whose batch statistics batch norm pools: 1 = each
        device its own (the default; NVIDIA DeepLearningExamples, Goyal et al.'s
        per-worker statistics), k = groups of k consecutive devices of one host
        (``axis_index_groups``), 0 = every device (synchronised batch norm). The
        running statistics are averaged over all devices once per step either way.
      zero_init_last_bn: zero-init the last batch-norm scale of each residual block
        (Goyal et al. 2017 section 5.1; torchvision's default, used by FFCV, does not).
      blurpool: a fixed 3x3 binomial blur before every strided convolution with >= 16
        input channels (Zhang 2019; FFCV's ``BlurPoolConv2d``).
      eval_image_size: evaluation side in pixels (None: ``image_size``); FFCV
        evaluates at 256 after training at 192.
      eval_crop_fraction: evaluation centre crop as a fraction of the resized shorter
        side (0.875 = 224/256, the ImageNet convention and FFCV's ratio).
      eval_flip: average the logits of each image and its horizontal mirror at
        evaluation (FFCV's ``lr_tta``).
      progressive_min_size: first training side of progressive resizing (FFCV's
        ``min_res``; None: train at ``image_size`` throughout); the side grows to
        ``image_size`` (FFCV's ``max_res``) between ``progressive_start_epoch`` and
        ``progressive_end_epoch``, rounded to ``progressive_multiple`` pixels
        (:meth:`image_size_at`).
    """

    arch: str = "resnet50"
    width: int = 64
    small_images: bool = False
    image_size: int = 224
    num_classes: int = 1000
    per_device_batch: int = 128
    epochs: float = 90.0
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    warmup_epochs: float = 5.0
    schedule: str = "cosine"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-5
    label_smoothing: float = 0.1
    dtype: str = "float32"
    min_crop_scale: float = 0.08
    seed: int = 0
    log_every_steps: int = 20
    warmup_start_fraction: float = 0.0
    decay_epochs: tuple[float, ...] = (30.0, 60.0, 80.0)
    decay_factor: float = 0.1
    end_learning_rate: float = 1e-4
    poly_power: float = 2.0
    bn_group_devices: int = 1
    zero_init_last_bn: bool = True
    blurpool: bool = False
    eval_image_size: int | None = None
    eval_crop_fraction: float = 0.875
    eval_flip: bool = False
    progressive_min_size: int | None = None
    progressive_start_epoch: float = 0.0
    progressive_end_epoch: float = 0.0
    progressive_multiple: int = 32

    def image_size_at(self, epoch: int) -> int:
        """Training side (pixels) in ``epoch`` (0-based): FFCV's ``get_resolution``
        (libffcv/ffcv-imagenet ``train_imagenet.py``): ``progressive_min_size`` up to
        ``progressive_start_epoch``, ``image_size`` from ``progressive_end_epoch``,
        between them ``np.interp`` of the two rounded to the nearest multiple of
        ``progressive_multiple`` (32 in FFCV). ``image_size`` when not progressive."""
        lo, hi = self.progressive_min_size, self.image_size
        if lo is None:
            return hi
        if epoch <= self.progressive_start_epoch:  # FFCV's order of the two tests
            return lo
        if epoch >= self.progressive_end_epoch:
            return hi
        t = (epoch - self.progressive_start_epoch) / (self.progressive_end_epoch
                                                       - self.progressive_start_epoch)
        m = self.progressive_multiple
        return int(round((lo + t * (hi - lo)) / m)) * m

    @property
    def eval_size(self) -> int:
        """The evaluation side in pixels: ``eval_image_size`` or ``image_size``."""
        return self.eval_image_size or self.image_size

    def __post_init__(self):
        if self.per_device_batch < 1:
            raise ValueError(f"per_device_batch ({self.per_device_batch}) must be >= 1")
        if self.epochs <= 0:
            raise ValueError(f"epochs ({self.epochs}) must be > 0")
        if self.optimizer not in ("sgd", "lars", "adamw"):
            raise ValueError(f"optimizer {self.optimizer!r}: expected sgd, lars or adamw")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup_start_fraction <= 1:
            raise ValueError(f"warmup_start_fraction ({self.warmup_start_fraction}) must be "
                             f"in [0, 1]")
        if self.bn_group_devices < 0:
            raise ValueError(f"bn_group_devices ({self.bn_group_devices}) must be >= 0 "
                             f"(0: all devices)")
        if self.progressive_min_size is not None and not (
                8 <= self.progressive_min_size <= self.image_size
                and self.progressive_start_epoch <= self.progressive_end_epoch
                and self.progressive_multiple >= 1):
            raise ValueError(
                f"progressive resizing needs 8 <= progressive_min_size "
                f"({self.progressive_min_size}) <= image_size ({self.image_size}), "
                f"progressive_start_epoch ({self.progressive_start_epoch}) <= "
                f"progressive_end_epoch ({self.progressive_end_epoch}) and "
                f"progressive_multiple ({self.progressive_multiple}) >= 1")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype {self.dtype!r}: expected float32 or bfloat16")


@dataclass(frozen=True)
class LoopOptions(Record):
    """How the run is executed (the input pipeline and the bookkeeping).

    Attributes:
      decode_threads: input pipeline threads (decode + augment).
      prefetch_batches: batches prepared ahead on the host.
      device_prefetch: batches put on the devices ahead of the step by the feed
        thread (2 = double buffering).
      read_mode: ``random`` or ``sequential`` (see ``trainers.input_pipeline``).
      shuffle_window: records shuffled together in sequential mode.
      cache_decoded: keep decoded images in RAM after the first epoch.
      on_bad_record: ``skip`` or ``fail``.
      eval_every_epochs: evaluate every this many epochs (0: only at the end).
      checkpoint_every_s: seconds between checkpoints by process 0's clock, taken
        at the next log step by every host (0: only at the end / stop).
      max_steps: stop after this many steps (None: the whole schedule); for probes
        and tests.
      partitions: shard groups with their own order (default: one per host); the
        same value gives the same batches on any number of hosts that divides it.
      decode_workers: decode worker processes (0: threads only), see the input pipeline.
      synthetic_steps: steps timed on on-device input after compilation, the
        reference of the data-stall figure (0: no reference, stall reported as NaN).
    """

    decode_threads: int = 2
    prefetch_batches: int = 4
    device_prefetch: int = 2
    read_mode: str = "random"
    shuffle_window: int = 4096
    cache_decoded: bool = False
    on_bad_record: str = "skip"
    eval_every_epochs: int = 1
    checkpoint_every_s: float = 600.0
    max_steps: int | None = None
    partitions: int | None = None
    decode_workers: int = 0
    synthetic_steps: int = 10

    RENAMED = {"threads": "decode_threads", "prefetch": "prefetch_batches",
               "workers": "decode_workers"}


@dataclass(frozen=True)
class PackOptions(Record):
    """What to pack and how.

    Attributes:
      num_shards: shards of the train split (validation gets proportionally fewer,
        at least 1).
      val_fraction: fraction of each class held out as the ``validation`` split by a
        seeded split (0 when a separate validation folder is given).
      resize_shorter: re-encode images whose shorter side exceeds this many pixels at
        that size (None: store the original bytes untouched).
      quality: JPEG quality of re-encoded images (90-95 is the MXNet im2rec / FFCV
        habit).
      seed: seed of the shuffle that assigns images to shards and of the held-out
        split.
      pack_threads: read/verify/serialize threads of this process (unused when
        ``pack_workers`` > 0: the worker processes read, verify and serialize).
      pack_workers: worker processes that read, verify, resize and re-encode (unit:
        processes; 0: threads of this process only). Processes are started with
        ``spawn`` and never import JAX; the output bytes do not depend on the count.
      archive_shard_records: records per shard of a streamed archive input (a tar:
        its length is unknown until read, so the shard count follows from it).
      archive_group_shards: shards of a streamed archive written at once: consecutive
        members are dealt over them (seeded), so each holds members of
        ``archive_group_shards x archive_shard_records`` consecutive ones (several
        classes of a tar of per-class tars). A group is the unit of resume and of
        the split between processes.

    Raises:
      ValueError: a value out of range (the message names it and the range).
    """

    num_shards: int = 16
    val_fraction: float = 0.0
    resize_shorter: int | None = None
    quality: int = 90
    seed: int = 0
    pack_threads: int = 2
    pack_workers: int = 0
    archive_shard_records: int = 1024
    archive_group_shards: int = 16

    RENAMED = {"threads": "pack_threads"}
    #: Fields that change how fast a pack runs, never its bytes (left out of its
    #: fingerprint).
    EXECUTION_ONLY = ("pack_threads", "pack_workers")

    def __post_init__(self):
        if self.num_shards < 1:
            raise ValueError(f"num_shards ({self.num_shards}) must be at least 1")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction ({self.val_fraction}) must be in [0, 1)")
        if self.resize_shorter is not None and self.resize_shorter < 8:
            raise ValueError(f"resize_shorter ({self.resize_shorter}) must be >= 8 pixels")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality ({self.quality}) must be in 1..100")
        if self.pack_threads < 1:
            raise ValueError(f"pack_threads ({self.pack_threads}) must be at least 1")
        if self.pack_workers < 0:
            raise ValueError(f"pack_workers ({self.pack_workers}) must be >= 0")
        if self.archive_shard_records < 1 or self.archive_group_shards < 1:
            raise ValueError(f"archive_shard_records ({self.archive_shard_records}) and "
                             f"archive_group_shards ({self.archive_group_shards}) must be >= 1")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation.

    Attributes:
      image_size: output side in pixels.
      min_scale: smallest crop area as a fraction of the image (0.08 in the
        Inception / Goyal et al. recipe; larger for short CPU schedules).
      max_scale: largest crop area fraction.
      flip: random horizontal flip.
      decode_mode: ``"fast"`` (the default): integer-fast IDCT, plain chroma
        upsampling and a power-of-two DCT-domain downscale when the crop allows it;
        ``"exact"``: accurate integer IDCT, fancy (triangle-filter) chroma upsampling,
        full scale: the pixels of libjpeg's default decode (Pillow's), at a higher
        cost. Applies to the region decode of ``preprocess.train_preprocess``; the
        decoded-image cache (``cache_decoded``) decodes in the fast mode.
    """

    image_size: int = 224
    min_scale: float = 0.08
    max_scale: float = 1.0
    flip: bool = True
    decode_mode: str = "fast"

    def __post_init__(self):
        if self.image_size < 8:
            raise ValueError(f"image_size ({self.image_size}) must be at least 8 pixels")
        if self.decode_mode not in ("fast", "exact"):
            raise ValueError(f"decode_mode {self.decode_mode!r}: expected 'fast' or 'exact'")
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ValueError(f"need 0 < min_scale ({self.min_scale}) <= max_scale "
                             f"({self.max_scale}) <= 1")


#: The training pipeline reads a batch's records into one buffer per thread, kept
#: across batches and grown to this multiple of the largest batch's record bytes
#: (``trainers.input_pipeline._Records``); the planner counts it in the RAM it keeps
#: for prefetching (``autotune.planner.choose_prefetch``).
READ_BUFFER_GROWTH = 1.25


def read_buffer_bytes(host_batch: int, record_bytes: float) -> float:
    """Bytes of one pipeline thread's read buffer for ``host_batch`` records of
    ``record_bytes`` bytes on average: ``host_batch x record_bytes x``
    :data:`READ_BUFFER_GROWTH` (a batch of larger records than the mean needs more; the
    mean is what a plan knows)."""
    return host_batch * record_bytes * READ_BUFFER_GROWTH


def pack_resize_side(image_size: int) -> int:
    """Shorter side (pixels) a pack-time resize stores for training at ``image_size``
    pixels: ``ceil8(1.5 x S)`` for S <= 64 px, else ``ceil8(S x 256 / 224)`` (256 for
    224 px: the ImageNet eval resize). The decode probe measures this resize; the
    planner chooses it."""
    side = 1.5 * image_size if image_size <= 64 else image_size * 256 / 224
    return int(math.ceil(side / 8) * 8)
