"""Training presets: model, resolution, schedule and recipe by name, each value from
one cited source (the preset's ``source`` and the comments beside its values).

* ``resnet50`` - Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet
  in 1 Hour" (arXiv:1706.02677), in every hyper-parameter: ResNet-50 (stride on the
  3x3, i.e. v1.5: their footnote), 224 px random-resized crops and flips, SGD momentum
  0.9 without Nesterov, 0.1 x global batch / 256, gradual warmup over 5 epochs from
  0.1 to the peak, x0.1 at epochs 30, 60 and 80 of 90, weight decay 1e-4 not applied
  to batch-norm parameters, zero-init of the last batch-norm scale of each residual
  block, no label smoothing, 224 px centre crop of the 256 px resize for evaluation;
  76.3% top-1 at 256 to 8k images per step.
* ``resnet50-16ep`` / ``-32ep`` / ``-88ep`` - FFCV's ResNet-50 configurations
  (libffcv/ffcv-imagenet ``rn50_configs/rn50_{16,32,88}_epochs.yaml`` and the
  ``train_imagenet.py`` that reads them): 8 GPUs x 512 images, LR 1.7 with the
  step-free linear ramp peaking at epoch 2, progressive resizing 160 -> 192 px,
  label smoothing 0.1, BlurPool, weight decay 1e-4 (not on batch norm), momentum 0.9,
  evaluation at 256 px with flip averaging: 73.8 / 76.6 / 78.4% top-1 (the repo's
  README table).
* ``resnet18`` - ResNet-18 at 224 px (a smaller GPU model), the flax
  ``examples/imagenet`` recipe.
* ``cpu-small`` - a 4-stage ResNet of width 16 at 32 px for a 2-core CPU: the
  default on CPU, learns Imagenette to ~70% held-out top-1 in about 8 epochs.
* ``cpu-tiny`` - width 8 at 32 px, for tests and smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainers.records import Record


@dataclass(frozen=True)
class Preset(Record):
    """A named recipe.

    Attributes:
      name: preset name.
      arch, width, small_images: the model (``trainers.models``).
      image_size: training side (pixels).
      dtype: compute dtype.
      epochs: schedule length.
      optimizer: ``sgd`` / ``lars`` / ``adamw``.
      base_lr, base_batch: learning rate at the reference batch (linear rule:
        lr = base_lr x global_batch / base_batch).
      warmup_epochs: linear warmup.
      weight_decay, label_smoothing, momentum, nesterov: the recipe.
      min_crop_scale: smallest random-resized-crop area.
      per_device_batch: None to search the largest that fits; a number to use it
        (checked against memory).
      global_batch: fixes the global batch instead (CPU presets: the same recipe on 1
        or 8 devices); per-device = global / (devices x hosts).
      max_per_device_batch: cap of the search.
      val_fraction: held-out fraction when no validation folder is given.
      log_every_steps: steps between metric fetches.
      description: one line.
      schedule, decay_epochs, decay_factor, warmup_start_fraction: the learning-rate
        schedule (``trainers.options.TrainConfig``); ``warmup_from_base_lr`` starts
        the warmup at ``base_lr`` (Goyal et al.: from eta to k x eta) instead.
      bn_group_devices: devices pooling batch statistics (None: the planner
        chooses, ``autotune.planner.choose_bn_group``).
      zero_init_last_bn, blurpool, eval_image_size, eval_crop_fraction, eval_flip,
        progressive_min_size, progressive_start_epoch, progressive_end_epoch: as in
        ``trainers.options.TrainConfig``.
      source: the reference the values come from.
    """

    name: str
    arch: str
    width: int
    small_images: bool
    image_size: int
    dtype: str
    epochs: float
    optimizer: str
    base_lr: float
    base_batch: int
    warmup_epochs: float
    weight_decay: float
    label_smoothing: float
    min_crop_scale: float
    per_device_batch: int | None
    max_per_device_batch: int
    val_fraction: float
    log_every_steps: int
    description: str
    momentum: float = 0.9
    nesterov: bool = True
    global_batch: int | None = None
    schedule: str = "cosine"
    decay_epochs: tuple[float, ...] = (30.0, 60.0, 80.0)
    decay_factor: float = 0.1
    warmup_start_fraction: float = 0.0
    warmup_from_base_lr: bool = False
    bn_group_devices: int | None = None
    zero_init_last_bn: bool = True
    blurpool: bool = False
    eval_image_size: int | None = None
    eval_crop_fraction: float = 0.875
    eval_flip: bool = False
    progressive_min_size: int | None = None
    progressive_start_epoch: float = 0.0
    progressive_end_epoch: float = 0.0
    source: str = ""

    @property
    def pack_image_size(self) -> int:
        """The side (pixels) stored images must serve: the larger of the training
        side and the evaluation side."""
        return max(self.image_size, self.eval_image_size or 0)

    def per_device_for(self, devices: int) -> int | None:
        """The fixed per-device batch on ``devices`` devices in all (None: search).

        Raises:
          ValueError: the preset's global batch is not divisible by the device count.
        """
        if self.global_batch is not None:
            if self.global_batch % devices:
                raise ValueError(f"Batch size ({self.global_batch}) must be divisible by "
                                 f"device count ({devices}) (preset {self.name})")
            return self.global_batch // devices
        return self.per_device_batch


_GOYAL = ('Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", '
          'arXiv:1706.02677, sections 2, 5.1')


def _goyal_resnet50() -> Preset:
    """ResNet-50, 90 epochs, every value from Goyal et al. 2017 (section in brackets)."""
    return Preset(
        name="resnet50", arch="resnet50", width=64, small_images=False,
        image_size=224,            # 224 px crops (5.1, after He et al. 2016)
        dtype="bfloat16",          # precision, not a hyper-parameter (they train fp32)
        epochs=90,                 # 90 epochs (5.1)
        optimizer="sgd", momentum=0.9, nesterov=False,  # momentum SGD, m = 0.9 (2.1, 5.1)
        base_lr=0.1, base_batch=256,  # eta = 0.1 x kn / 256 (2.1, 5.1)
        warmup_epochs=5.0, warmup_from_base_lr=True,  # gradual warmup eta -> k eta, 5 ep (2.2)
        schedule="step", decay_epochs=(30.0, 60.0, 80.0), decay_factor=0.1,  # /10 (5.1)
        weight_decay=1e-4,         # lambda = 0.0001, none on BN gamma / beta (5.1);
        # here none on the fc bias either (the trainer decays kernels only)
        label_smoothing=0.0,       # none in the paper
        min_crop_scale=0.08,       # scale augmentation of Szegedy et al. (5.1, [35])
        zero_init_last_bn=True,    # gamma = 0 for the last BN of each block (5.1)
        bn_group_devices=None,     # per-worker statistics over n = 32 images, not
        # synchronised (5.1): the planner's rule (per device from 32 images a device)
        eval_image_size=224, eval_crop_fraction=0.875,  # 224 centre crop of 256 (5.1)
        per_device_batch=None, max_per_device_batch=1024, val_fraction=0.01,
        log_every_steps=100, source=_GOYAL,
        description="ResNet-50 v1.5, 224 px, 90 epochs, step decay: Goyal et al. 2017")


_FFCV = "libffcv/ffcv-imagenet rn50_configs/rn50_{epochs}_epochs.yaml + train_imagenet.py"
#: FFCV's progressive-resize ramp per schedule: (start_ramp, end_ramp) epochs from
#: ``rn50_configs/rn50_{16,32,88}_epochs.yaml``.
FFCV_RAMPS = {16: (11, 13), 32: (23, 27), 88: (65, 76)}


def _ffcv_resnet50(epochs: int) -> Preset:
    """FFCV's ResNet-50 recipe at ``epochs`` (16, 32 or 88): every value from
    libffcv/ffcv-imagenet ``rn50_configs/rn50_<epochs>_epochs.yaml`` (yaml key in
    brackets) or, where the yaml does not set it, ``train_imagenet.py``'s default."""
    start, end = FFCV_RAMPS[epochs]
    return Preset(
        name=f"resnet50-{epochs}ep", arch="resnet50", width=64, small_images=False,
        image_size=192,            # resolution.max_res 192
        progressive_min_size=160,  # resolution.min_res 160
        progressive_start_epoch=start, progressive_end_epoch=end,  # start_ramp, end_ramp
        dtype="bfloat16",          # FFCV trains under torch autocast (fp16)
        epochs=epochs,             # training.epochs
        optimizer="sgd", momentum=0.9, nesterov=False,  # training.optimizer sgd,
        # momentum 0.9; torch.optim.SGD's default nesterov=False
        base_lr=1.7, base_batch=4096,  # lr.lr 1.7 at training.batch_size 512 per GPU x
        # dist.world_size 8 (FFCV's distributed Loader batches per process)
        schedule="triangular",     # lr.lr_schedule_type cyclic (get_cyclic_lr)
        warmup_epochs=2.0,         # lr.lr_peak_epoch, default 2
        warmup_start_fraction=1e-4,  # get_cyclic_lr starts at 1e-4 x lr
        weight_decay=1e-4,         # training.weight_decay 0.0001; bn_wd 0: no decay on
        # batch norm (nor, here, on biases; FFCV's name filter 'bn' misses the
        # shortcut's BN 'downsample.1' and the fc bias)
        label_smoothing=0.1,       # training.label_smoothing 0.1
        blurpool=True,             # training.use_blurpool 1 (BlurPoolConv2d)
        zero_init_last_bn=False,   # torchvision resnet50(): zero_init_residual=False
        min_crop_scale=0.08,       # RandomResizedCropRGBImageDecoder scale=(0.08, 1)
        bn_group_devices=1,        # DistributedDataParallel without SyncBatchNorm
        eval_image_size=256,       # validation.resolution 256
        eval_crop_fraction=0.875,  # CenterCropRGBImageDecoder ratio=DEFAULT_CROP_RATIO
        # = 224/256
        eval_flip=True,            # validation.lr_tta true
        per_device_batch=None, max_per_device_batch=1024, val_fraction=0.01,
        log_every_steps=100, source=_FFCV.format(epochs=epochs),
        description=f"ResNet-50, {epochs}-epoch FFCV recipe: 160->192 px, BlurPool, "
                    f"step-free ramp, 256 px flip-averaged eval")


PRESETS: dict[str, Preset] = {p.name: p for p in [
    _goyal_resnet50(),
    _ffcv_resnet50(16),
    _ffcv_resnet50(32),
    _ffcv_resnet50(88),
    Preset(name="resnet18", arch="resnet18", width=64, small_images=False, image_size=224,
           dtype="bfloat16", epochs=90, optimizer="sgd", base_lr=0.1, base_batch=256,
           warmup_epochs=5, weight_decay=5e-5, label_smoothing=0.1, min_crop_scale=0.08,
           per_device_batch=None, max_per_device_batch=1024, val_fraction=0.01,
           log_every_steps=100, description="ResNet-18, 224 px, 90 epochs, bf16"),
    Preset(name="cpu-small", arch="resnet_tiny", width=16, small_images=True, image_size=32,
           dtype="float32", epochs=10, optimizer="sgd", base_lr=0.4, base_batch=256,
           warmup_epochs=0.5, weight_decay=5e-5, label_smoothing=0.1, min_crop_scale=0.35,
           per_device_batch=None, global_batch=128, max_per_device_batch=128,
           val_fraction=0.1, log_every_steps=10,
           description="4-stage ResNet, width 16, 32 px, global batch 128, 10 epochs: "
                       "minutes on a 2-core CPU"),
    Preset(name="cpu-tiny", arch="resnet_tiny", width=8, small_images=True, image_size=32,
           dtype="float32", epochs=1, optimizer="sgd", base_lr=0.4, base_batch=256,
           warmup_epochs=0.2, weight_decay=5e-5, label_smoothing=0.1, min_crop_scale=0.35,
           per_device_batch=None, global_batch=32, max_per_device_batch=32, val_fraction=0.2,
           log_every_steps=2, description="width-8 ResNet at 32 px, global batch 32: smoke tests"),
]}


class UnknownPresetError(ValueError):
    """A preset name that does not exist; lists the ones that do."""


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
      UnknownPresetError: no such preset (the message lists the valid names).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown preset {name!r}; expected one of "
                                 f"{', '.join(sorted(PRESETS))}") from None


def default_preset_name(backend: str) -> str:
    """``resnet50`` on GPU/TPU, ``cpu-small`` on CPU."""
    return "cpu-small" if backend == "cpu" else "resnet50"
