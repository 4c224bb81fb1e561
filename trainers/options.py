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
      warmup_epochs: linear warmup from 0 to the peak (Goyal et al. 2017).
      schedule: ``cosine`` (to 0 at the end, Loshchilov & Hutter 2017) or ``constant``.
      momentum, nesterov: SGD momentum.
      weight_decay: L2 on conv / dense kernels only (no decay on batch-norm
        parameters and biases).
      label_smoothing: 0.1 in the reference recipe (Szegedy et al. 2016).
      dtype: compute dtype, ``float32`` or ``bfloat16`` (parameters stay float32).
      min_crop_scale: smallest random-resized-crop area fraction.
      seed: parameter init and data order.
      log_every_steps: steps between metric fetches (the only host syncs).
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

    def __post_init__(self):
        if self.per_device_batch < 1:
            raise ValueError(f"per_device_batch ({self.per_device_batch}) must be >= 1")
        if self.epochs <= 0:
            raise ValueError(f"epochs ({self.epochs}) must be > 0")
        if self.optimizer not in ("sgd", "lars", "adamw"):
            raise ValueError(f"optimizer {self.optimizer!r}: expected sgd, lars or adamw")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule {self.schedule!r}: expected cosine or constant")
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


def pack_resize_side(image_size: int) -> int:
    """Shorter side (pixels) a pack-time resize stores for training at ``image_size``
    pixels: ``ceil8(1.5 x S)`` for S <= 64 px, else ``ceil8(S x 256 / 224)`` (256 for
    224 px: the ImageNet eval resize). The decode probe measures this resize; the
    planner chooses it."""
    side = 1.5 * image_size if image_size <= 64 else image_size * 256 / 224
    return int(math.ceil(side / 8) * 8)
