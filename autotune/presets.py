"""Training presets: model, resolution, schedule and recipe by name.

* ``resnet50`` - the reference ImageNet recipe (Goyal et al. 2017, "Accurate, Large
  Minibatch SGD"; flax ``examples/imagenet`` reaches 76.3-76.7% top-1 this way):
  ResNet-50 v1.5, 224 px, SGD Nesterov momentum 0.9, 0.1 x global batch / 256, 5-epoch
  linear warmup then cosine, 90 epochs, weight decay 5e-5 without decay on batch norm
  and biases, label smoothing 0.1, bfloat16 compute with float32 parameters, zero-init
  of the last batch-norm scale of each block.
* ``resnet50-16ep`` / ``-32ep`` / ``-88ep`` - shorter FFCV-style schedules (FFCV's
  ResNet-50 configs: 16/32/88 epochs, reaching roughly 71/74/78% with their
  progressive resizing; here at fixed 224 px, so expect a little less).
* ``resnet18`` - ResNet-18 at 224 px (a smaller GPU model).
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


def _resnet50(name: str, epochs: float, desc: str) -> Preset:
    return Preset(name=name, arch="resnet50", width=64, small_images=False, image_size=224,
                  dtype="bfloat16", epochs=epochs, optimizer="sgd", base_lr=0.1, base_batch=256,
                  warmup_epochs=5.0, weight_decay=5e-5, label_smoothing=0.1,
                  min_crop_scale=0.08, per_device_batch=None, max_per_device_batch=1024,
                  val_fraction=0.01, log_every_steps=100, description=desc)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    _resnet50("resnet50", 90, "ResNet-50 v1.5, 224 px, 90 epochs, bf16 (Goyal et al. 2017)"),
    _resnet50("resnet50-16ep", 16, "ResNet-50, 16-epoch FFCV-style schedule"),
    _resnet50("resnet50-32ep", 32, "ResNet-50, 32-epoch FFCV-style schedule"),
    _resnet50("resnet50-88ep", 88, "ResNet-50, 88-epoch FFCV-style schedule"),
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
