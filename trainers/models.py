"""ResNet models in Flax (linen).

Adapted from flax ``examples/imagenet/models.py`` (ResNet v1.5: the stride-2 sits
on the 3x3 convolution of the bottleneck, He et al. 2016 / NVIDIA's "v1.5"), with:

* ``zero_init_last_bn``: the last batch-norm scale of every residual block starts
  at zero (Goyal et al. 2017, section 5.1), so each block starts as the identity.
* ``small_images``: a CIFAR-style stem (3x3 conv, stride 1, no max-pool) for the
  32-64 px CPU presets, where the ImageNet stem would shrink 32 px to 8 px at once.
* ``dtype``: the compute dtype (``jnp.bfloat16`` for mixed precision); parameters
  are always float32 (``param_dtype``) and the logits are returned in float32.
* ``bn_axis_name`` / ``bn_axis_index_groups``: which devices' batch statistics each
  batch norm pools (``None``: each device its own; ``"batch"``: all devices of the
  pmap axis; with groups: each group of devices).
* ``blurpool``: BlurPool (Zhang 2019, "Making Convolutional Networks
  Shift-Invariant Again", arXiv:1904.11486) as FFCV applies it (libffcv/ffcv-imagenet
  ``train_imagenet.py``: ``BlurPoolConv2d`` replaces every ``Conv2d`` with stride > 1
  and >= 16 input channels by a depthwise 3x3 ``[1,2,1] x [1,2,1] / 16`` blur,
  stride 1, zero padding 1, followed by the original convolution): here the strided
  3x3 of each down-sampling block and its strided 1x1 projection; the stem (3
  channels) is left alone. No parameters: checkpoints keep their tree.

Inputs are ``[batch, height, width, 3]`` float arrays already normalised; outputs
are ``[batch, num_classes]`` float32 logits.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any

#: FFCV's ``BlurPoolConv2d`` filter: the binomial ``[1, 2, 1]`` outer product / 16.
BLUR_FILTER = ((1.0, 2.0, 1.0), (2.0, 4.0, 2.0), (1.0, 2.0, 1.0))
#: FFCV blurs only convolutions with at least this many input channels.
BLUR_MIN_CHANNELS = 16


def blur(x):
    """Depthwise 3x3 binomial blur, stride 1, zero padding 1 (FFCV's
    ``F.conv2d(x, blur_filter, stride=1, padding=(1, 1), groups=C)``).

    ``x``: ``[B, H, W, C]`` of any float dtype; returns the same shape and dtype."""
    c = x.shape[-1]
    k = jnp.asarray(BLUR_FILTER, x.dtype) / 16.0
    k = jnp.broadcast_to(k[:, :, None, None], (3, 3, 1, c))
    return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=c)


def _maybe_blur(x, strides, enabled: bool):
    """``blur(x)`` before a strided convolution with >= 16 input channels when
    ``enabled`` (FFCV's rule), else ``x``."""
    if enabled and max(strides) > 1 and x.shape[-1] >= BLUR_MIN_CHANNELS:
        return blur(x)
    return x


class ResNetBlock(nn.Module):
    """Basic residual block (two 3x3 convolutions), used by ResNet-18/34 and tiny nets."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)
    zero_init_last_bn: bool = True
    blurpool: bool = False

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(_maybe_blur(x, self.strides,
                                                                       self.blurpool))
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init() if self.zero_init_last_bn
                      else nn.initializers.ones_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(
                _maybe_blur(residual, self.strides, self.blurpool))
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
    """Bottleneck block (1x1, 3x3 with the stride, 1x1 x4), ResNet v1.5."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)
    zero_init_last_bn: bool = True
    blurpool: bool = False

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (1, 1))(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3), self.strides)(_maybe_blur(y, self.strides,
                                                                       self.blurpool))
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init() if self.zero_init_last_bn
                      else nn.initializers.ones_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(
                _maybe_blur(residual, self.strides, self.blurpool))
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """ResNet v1.5.

    Attributes:
      stage_sizes: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
      block_cls: ``ResNetBlock`` or ``BottleneckResNetBlock``.
      num_classes: output classes (1,000 for ImageNet-1k, 21,841 for ImageNet-21k).
      num_filters: width of the first stage (64 for the ImageNet models).
      dtype: compute dtype; parameters stay float32.
      small_images: 3x3 stride-1 stem without max-pool (for 32-64 px inputs).
      zero_init_last_bn: zero-init the last batch-norm scale of each block.
      blurpool: blur before strided convolutions (FFCV's BlurPool, see the module).
      bn_axis_name: pmap axis whose devices pool batch statistics (None: per device).
      bn_axis_index_groups: groups of axis indices pooling together (None: all).
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int
    num_filters: int = 64
    dtype: Any = jnp.float32
    act: Callable = nn.relu
    small_images: bool = False
    zero_init_last_bn: bool = True
    blurpool: bool = False
    bn_axis_name: str | None = "batch"
    bn_axis_index_groups: Any = None

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                                 param_dtype=jnp.float32)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                                 momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                                 param_dtype=jnp.float32, axis_name=self.bn_axis_name,
                                 axis_index_groups=self.bn_axis_index_groups)
        x = x.astype(self.dtype)
        if self.small_images:
            x = conv(self.num_filters, (3, 3), name="conv_init")(x)
            x = norm(name="bn_init")(x)
            x = nn.relu(x)
        else:
            x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
                     name="conv_init")(x)
            x = norm(name="bn_init")(x)
            x = nn.relu(x)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2**i, strides=strides, conv=conv,
                                   norm=norm, act=self.act,
                                   zero_init_last_bn=self.zero_init_last_bn,
                                   blurpool=self.blurpool)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)
        return jnp.asarray(x, jnp.float32)


#: Architectures by name: (stage_sizes, block class). Width comes from the preset.
ARCHITECTURES: dict[str, tuple[tuple[int, ...], ModuleDef]] = {
    "resnet18": ((2, 2, 2, 2), ResNetBlock),
    "resnet34": ((3, 4, 6, 3), ResNetBlock),
    "resnet50": ((3, 4, 6, 3), BottleneckResNetBlock),
    "resnet101": ((3, 4, 23, 3), BottleneckResNetBlock),
    "resnet_tiny": ((1, 1, 1, 1), ResNetBlock),
}


def create_model(arch: str, num_classes: int, *, width: int = 64, dtype: Any = jnp.float32,
                 small_images: bool = False, zero_init_last_bn: bool = True,
                 blurpool: bool = False, bn_axis_name: str | None = "batch",
                 bn_axis_index_groups: Any = None) -> ResNet:
    """Build a ResNet by name.

    Args:
      arch: a key of ``ARCHITECTURES`` (``resnet50``, ``resnet18``, ``resnet_tiny`` ...).
      num_classes: number of output classes.
      width: filters of the first stage (64 for the ImageNet ResNets).
      dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``).
      small_images: use the stride-1 3x3 stem for small inputs.
      zero_init_last_bn, blurpool, bn_axis_name, bn_axis_index_groups: see
        :class:`ResNet`.

    Raises:
      ValueError: unknown ``arch``, or ``num_classes`` < 2.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    if num_classes < 2:
        raise ValueError(f"num_classes ({num_classes}) must be at least 2")
    stages, block = ARCHITECTURES[arch]
    return ResNet(stage_sizes=stages, block_cls=block, num_classes=num_classes,
                  num_filters=width, dtype=dtype, small_images=small_images,
                  zero_init_last_bn=zero_init_last_bn, blurpool=blurpool,
                  bn_axis_name=bn_axis_name, bn_axis_index_groups=bn_axis_index_groups)
