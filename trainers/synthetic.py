"""The built-in default data set: synthetic JPEGs in the ImageNet folder layout.

When no ``--data`` is given, ``autotune probe`` and ``autotune train --auto`` use a
synthetic data set generated once into a cache folder::

    <cache>/synthetic-v1-c{num_classes}-n{images_per_class}-s{seed}/
        n00000000/n00000000_0.JPEG ... n00000000_{images_per_class - 1}.JPEG
        n00000001/...

Class folders are named like ImageNet WordNet ids (``n`` + 8 digits); their sorted
order is the class index, as in ``torchvision.datasets.ImageFolder`` and TFDS.

The images are built to cost what photographs cost, and to be learnable:

* **Sizes like ImageNet's**: the shorter side is 330-400 px and the aspect ratio
  between 1.2 and 4:3, a quarter of them portrait (ImageNet train's median is
  500x375; mean here about 170 kpx per image); JPEG quality 90
  (``simplejpeg.encode_jpeg``), 4:2:0 chroma subsampling. Files are 58-114 KB
  (5-95%; median 84 KB), 0.50 bytes/pixel, and decode at about 6 ns/pixel with
  simplejpeg; 1,000 real ImageNet JPEGs (/work/shared/data/imagenet-samples):
  16-212 KB, median 107 KB, 0.54 bytes/pixel, about 7 ns/pixel.
* **Natural-image statistics**: the background is pink noise with a ``1/f**alpha``
  amplitude spectrum, ``alpha`` drawn in [0.7, 1.3] per image (photographs have an
  amplitude-spectrum slope of about 0.94 +- 0.21, i.e. power-spectrum slope
  1.88 +- 0.43: van der Schaaf & van Hateren, "Modelling the power spectra of
  natural images", Vision Research 36(17), 1996; Field, JOSA A 4(12), 1987). The
  three colour channels are correlated: one full-resolution luminance field carries
  most of the variance, two weaker half-resolution chroma fields the rest, as in
  photographs; a little luminance grain stands in for sensor noise. Filled,
  semi-transparent ellipses and polygons add hard edges.
* **Learnable classes**: every class has its own three-colour palette and its own
  dominant texture (band-pass noise around one orientation and spatial frequency,
  squashed into stripes that alternate between two palette colours). Orientations
  are spaced evenly over 180 degrees (a horizontal flip maps ``theta`` to
  ``pi - theta``, which may land near another class's orientation; the palettes
  still differ), so a class stays recognisable after a random-resized crop
  (scale 0.25-1), a flip and a downscale to 32x32. Hues are drawn at random, and
  each image jitters the palette, orientation, frequency, contrast and brightness,
  so classes overlap: on the default 10 x 100 set, split 80/20 per class into
  train/held-out images, with random-resized-crop (scale 0.25-1) + flip views at
  32x32, a nearest-class-mean classifier on raw pixels scores 73% (chance 10%),
  and ``resnet_tiny`` (width 16, AdamW) trained on 4 views per train image scores
  79% held-out after one pass over them and 94% after six.

Generation is deterministic: the same ``seed`` gives the same bytes on the same
numpy/Pillow/libjpeg-turbo install (each image draws from its own
``numpy.random.SeedSequence([seed, class, index])``, so the order or the number of
processes does not matter). About 10 ms per image on one core to generate and
encode; the default 1,000 images take about 12 s of CPU and 84 MB.

Public API: :func:`default_cache_dir`, :func:`class_names`,
:func:`synthetic_dataset_name`, :func:`generate_image`, :func:`encode_image`,
:func:`write_synthetic_dataset`, :func:`ensure_synthetic_dataset`.
"""

from __future__ import annotations

import colorsys
import math
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import simplejpeg
from PIL import Image, ImageDraw

from trainers import scan

#: Bumped whenever the generator changes what it writes, so old caches are not reused.
GENERATOR_VERSION = 1
#: JPEG quality passed to ``simplejpeg.encode_jpeg`` (ImageNet's own JPEGs are ~q90).
JPEG_QUALITY = 90
#: Shorter image side, inclusive range in pixels.
SHORT_SIDE_RANGE = (330, 400)
#: Aspect ratio (longer side / shorter side) range.
ASPECT_RANGE = (1.2, 4.0 / 3.0)
#: Fraction of images that are portrait (taller than wide).
PORTRAIT_FRACTION = 0.25
#: Pink-noise exponent range: amplitude ~ 1 / f**alpha (van der Schaaf & van Hateren 1996).
ALPHA_RANGE = (0.7, 1.3)
#: Class-texture wavelength range in pixels of the full-size image.
WAVELENGTH_RANGE = (40.0, 110.0)

_TEMP_MARK = ".partial-"
ProgressFn = Callable[[int, int], None]


def default_cache_dir() -> Path:
    """The cache folder: ``$AUTOTUNE_CACHE`` if set and non-empty, else ``~/.cache/autotune``.

    The folder is not created here.
    """
    env = os.environ.get("AUTOTUNE_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autotune"


def class_names(num_classes: int) -> list[str]:
    """WordNet-id-like class folder names ``["n00000000", "n00000001", ...]``.

    Sorted order equals class index. Raises ``ValueError`` unless
    ``1 <= num_classes <= 10**8``.
    """
    if not 1 <= num_classes <= 10**8:
        raise ValueError(f"trainers/synthetic.py: num_classes ({num_classes}) must be in [1, 1e8]")
    return [f"n{c:08d}" for c in range(num_classes)]


def synthetic_dataset_name(num_classes: int, images_per_class: int, seed: int) -> str:
    """Folder name of one synthetic data set in the cache, e.g. ``synthetic-v1-c10-n100-s0``."""
    return f"synthetic-v{GENERATOR_VERSION}-c{num_classes}-n{images_per_class}-s{seed}"


# --------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class _ClassStyle:
    """What makes one class recognisable: palette, texture orientation and wavelength."""

    palette: np.ndarray  # [3, 3] float32 RGB in 0..255: background, stripe A, stripe B
    theta: float  # texture orientation of the stripes' wave vector, radians in [0, pi)
    wavelength: float  # texture wavelength, pixels of the full-size image


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _class_style(seed: int, c: int, num_classes: int) -> _ClassStyle:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, c]))
    # Orientations evenly spaced over [0, pi) with a random global offset. A
    # horizontal flip maps theta to pi - theta, which may land near another class's
    # orientation; the palettes still tell such classes apart.
    offset = np.random.default_rng(np.random.SeedSequence([seed, 2])).uniform(0.0, math.pi)
    theta = (offset + math.pi * c / num_classes) % math.pi
    # Hues: random, so some classes share a colour family and need the texture too.
    hue = rng.uniform(0.0, 1.0)
    palette = np.stack(
        [
            _hsv(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.7)),
            _hsv(hue + rng.uniform(-0.12, 0.12), rng.uniform(0.5, 0.95), rng.uniform(0.6, 0.95)),
            _hsv(hue + rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.9), rng.uniform(0.15, 0.6)),
        ]
    )
    lo, hi = WAVELENGTH_RANGE
    wavelength = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return _ClassStyle(palette=palette, theta=float(theta), wavelength=wavelength)


# --------------------------------------------------------------------------- images


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    short = int(rng.integers(SHORT_SIDE_RANGE[0], SHORT_SIDE_RANGE[1] + 1))
    long = int(round(short * rng.uniform(*ASPECT_RANGE)))
    if rng.uniform() < PORTRAIT_FRACTION:
        return long, short  # (height, width)
    return short, long


def _noise_field(
    rng: np.random.Generator, height: int, width: int, spectrum_filter: np.ndarray
) -> np.ndarray:
    """A zero-mean, unit-std float32 field [height, width] whose amplitude spectrum is
    ``spectrum_filter`` ([height, width // 2 + 1], ``numpy.fft.rfft2`` layout) times
    white noise. The white spectrum uses uniform real and imaginary parts (cheaper
    than normals; the inverse FFT sums many of them, so the field is Gaussian)."""
    shape = spectrum_filter.shape
    noise = rng.random(shape, dtype=np.float32) - np.float32(0.5)
    noise = noise + 1j * (rng.random(shape, dtype=np.float32) - np.float32(0.5))
    field = np.fft.irfft2(noise * spectrum_filter, s=(height, width)).astype(np.float32)
    field -= field.mean()
    field /= field.std() + np.float32(1e-12)
    return field


def _frequencies(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (cycles/pixel) of the rfft2 grid: fy [h, 1], fx [1, w//2+1]."""
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    return fy, fx


def _pink_filter(height: int, width: int, alpha: float) -> np.ndarray:
    """Amplitude ``1 / f**alpha`` on the rfft2 grid, zero at DC."""
    fy, fx = _frequencies(height, width)
    f2 = fy * fy + fx * fx
    f2[0, 0] = 1.0
    pink = f2 ** np.float32(-alpha / 2)
    pink[0, 0] = 0.0
    return pink


def _band_filter(height: int, width: int, theta: float, f0: float, rel_sigma: float) -> np.ndarray:
    """Gaussian bumps at the wave vectors +-(f0 cos theta, f0 sin theta) (cycles/pixel,
    x right, y down) with standard deviation ``rel_sigma * f0``, on the rfft2 grid."""
    fy, fx = _frequencies(height, width)
    fx0, fy0 = f0 * math.cos(theta), f0 * math.sin(theta)
    inv = np.float32(-0.5 / (rel_sigma * f0) ** 2)
    # rfft2 stores only fx >= 0; writing both bumps keeps whichever lies there.
    band = np.exp(((fx - fx0) ** 2 + (fy - fy0) ** 2) * inv)
    band += np.exp(((fx + fx0) ** 2 + (fy + fy0) ** 2) * inv)
    return band


def _upscale(field: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float32 field to [height, width] (Pillow, mode "F")."""
    img = Image.fromarray(field, mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _shape_labels(rng: np.random.Generator, height: int, width: int, count: int) -> np.ndarray:
    """A uint8 label map [height, width]: 0 = background, k = k-th drawn shape."""
    labels = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(labels)
    for k in range(1, count + 1):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.05, 0.22) * min(width, height)
        if rng.uniform() < 0.5:
            ry = r * rng.uniform(0.5, 1.5)
            draw.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=k)
        else:
            n = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * math.pi, n))
            radii = r * rng.uniform(0.6, 1.3, n)
            pts = [(cx + q * math.cos(a), cy + q * math.sin(a)) for a, q in zip(angles, radii)]
            draw.polygon(pts, fill=k)
    return np.asarray(labels)


def generate_image(
    class_index: int, image_index: int, *, num_classes: int = 10, seed: int = 0
) -> np.ndarray:
    """One synthetic image of class ``class_index``: uint8 RGB array [height, width, 3].

    ``height, width`` are ImageNet-like (shorter side 330-400 px, aspect 1.2 to 4/3,
    a quarter portrait). Deterministic in ``(seed, num_classes, class_index,
    image_index)``. Raises ``ValueError`` if ``class_index`` is not in
    ``[0, num_classes)``, or ``image_index`` or ``seed`` is negative.
    """
    if not 0 <= class_index < num_classes:
        raise ValueError(
            f"trainers/synthetic.py: class_index ({class_index}) must be in [0, {num_classes})"
        )
    if image_index < 0 or seed < 0:
        raise ValueError(
            f"trainers/synthetic.py: image_index ({image_index}) and seed ({seed}) must be >= 0"
        )
    style = _class_style(seed, class_index, num_classes)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3, class_index, image_index]))
    height, width = _image_size(rng)

    # Per-image jitter of the class's style (the within-class variation).
    alpha = rng.uniform(*ALPHA_RANGE)
    theta = style.theta + rng.normal(0.0, math.radians(8.0))
    wavelength = style.wavelength * math.exp(rng.normal(0.0, 0.15))
    palette = style.palette + rng.normal(0.0, 20.0, size=(3, 3)).astype(np.float32)

    # Luminance pink noise at full resolution; chroma at half resolution (photographs
    # and JPEG 4:2:0 carry little fine chroma); the class texture at quarter
    # resolution (its wavelength is >= 40 px), all upscaled bilinearly.
    lum = _noise_field(rng, height, width, _pink_filter(height, width, alpha))
    h2, w2 = (height + 1) // 2, (width + 1) // 2
    chroma_filter = _pink_filter(h2, w2, alpha)
    chroma_a = _upscale(_noise_field(rng, h2, w2, chroma_filter), height, width)
    chroma_b = _upscale(_noise_field(rng, h2, w2, chroma_filter), height, width)
    h4, w4 = (height + 3) // 4, (width + 3) // 4
    band = _noise_field(rng, h4, w4, _band_filter(h4, w4, theta, 4.0 / wavelength, 0.22))
    # Stripes: the band-pass field squashed towards +-1.
    band = np.tanh(np.float32(rng.uniform(1.0, 3.0)) * band)
    stripes = _upscale(band, height, width)
    grain = rng.random((height, width), dtype=np.float32) - np.float32(0.5)

    # The background is linear in the per-pixel fields: [1, stripes, lum, chroma_a,
    # chroma_b, grain] @ weights[6, 3], one BLAS call instead of many passes.
    coverage = np.float32(rng.uniform(0.35, 0.85))  # weight of the class texture
    lum_amp = np.float32(rng.uniform(22.0, 40.0))
    chroma_amp = np.float32(rng.uniform(4.0, 10.0))
    gain = np.float32(rng.uniform(0.8, 1.2))  # exposure/contrast jitter about mid-grey
    offset = np.float32(rng.normal(0.0, 12.0))
    weights = np.stack(
        [
            (1 - coverage) * palette[0] + coverage * 0.5 * (palette[1] + palette[2]),
            coverage * 0.5 * (palette[1] - palette[2]),
            lum_amp * np.array([1.0, 1.0, 1.0], np.float32),
            chroma_amp * np.array([1.0, -0.5, -0.5], np.float32),
            chroma_amp * np.array([0.0, 0.7, -0.7], np.float32),
            np.full(3, 16.0, np.float32),  # grain: uniform, std 16 / sqrt(12) ~ 4.6 levels
        ]
    ).astype(np.float32)
    weights *= gain
    weights[0] += (1 - gain) * 128.0 + offset
    fields = np.stack([np.ones_like(lum), stripes, lum, chroma_a, chroma_b, grain], axis=-1)
    img = fields @ weights  # [height, width, 3]

    # Shapes with hard edges: jittered palette colours that keep the luminance noise.
    count = int(rng.integers(2, 7))
    labels = _shape_labels(rng, height, width, count)
    inside = labels > 0
    if inside.any():
        fills = palette[rng.integers(0, 3, size=count)] + rng.normal(0.0, 30.0, (count, 3))
        opacity = rng.uniform(0.5, 0.9, size=count).astype(np.float32)
        k = labels[inside] - 1
        a = opacity[k][:, None]
        shade = (gain * (fills[k] - 128.0) + 128.0 + offset).astype(np.float32)
        shade += (0.6 * gain * lum_amp) * lum[inside][:, None]
        img[inside] = (1 - a) * img[inside] + a * shade
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)


def encode_image(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of a uint8 RGB array [height, width, 3] (``simplejpeg.encode_jpeg``,
    4:2:0 chroma subsampling like most camera JPEGs)."""
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(image), quality=quality, colorspace="RGB", colorsubsampling="420"
    )


def _check_args(num_classes: int, images_per_class: int, seed: int) -> None:
    if num_classes < 1 or images_per_class < 1:
        raise ValueError(
            f"trainers/synthetic.py: num_classes ({num_classes}) and images_per_class "
            f"({images_per_class}) must be >= 1"
        )
    if seed < 0:
        raise ValueError(f"trainers/synthetic.py: seed ({seed}) must be >= 0 (numpy SeedSequence)")


def write_synthetic_dataset(
    dest: Path,
    *,
    num_classes: int = 10,
    images_per_class: int = 100,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> None:
    """Write the data set into ``dest`` (created; may exist but should be empty).

    Writes ``num_classes * images_per_class`` files ``dest/<wnid>/<wnid>_<i>.JPEG``.
    Not atomic: use :func:`ensure_synthetic_dataset` for the cached copy.
    ``progress(done, total)`` is called after each image (and once with ``0``).
    Raises ``ValueError`` for ``num_classes < 1``, ``images_per_class < 1`` or
    ``seed < 0``.
    """
    _check_args(num_classes, images_per_class, seed)
    names = class_names(num_classes)
    total = num_classes * images_per_class
    done = 0
    if progress is not None:
        progress(0, total)
    dest = Path(dest)
    for c, name in enumerate(names):
        folder = dest / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            data = encode_image(generate_image(c, i, num_classes=num_classes, seed=seed))
            (folder / f"{name}_{i}.JPEG").write_bytes(data)
            done += 1
            if progress is not None:
                progress(done, total)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _clean_stale_partials(cache: Path, name: str) -> None:
    """Remove ``<cache>/.<name>.partial-<host>-<pid>-*`` folders of dead local processes.

    Folders of live processes, or of other hosts (a shared cache), are left alone.
    """
    host = socket.gethostname()
    for path in cache.glob(f".{name}{_TEMP_MARK}*"):
        rest = path.name[len(f".{name}{_TEMP_MARK}") :]
        parts = rest.rsplit("-", 2)  # host may contain '-'
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if not _pid_alive(int(parts[1])):
            shutil.rmtree(path, ignore_errors=True)


def ensure_synthetic_dataset(
    root: Path | None = None,
    *,
    num_classes: int = 10,
    images_per_class: int = 100,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Path:
    """Return the folder of the synthetic data set, generating it first if needed.

    Args:
      root: the cache folder (created if missing); default :func:`default_cache_dir`.
        The data set lives in ``root / synthetic_dataset_name(...)``.
      num_classes, images_per_class, seed: what to generate (defaults: 10 x 100 =
        1,000 images, about 84 MB, about 12-20 s on one core).
      progress: optional ``callable(done: int, total: int)``, called while generating.

    The images are written into a temporary sibling folder
    ``.<name>.partial-<host>-<pid>-<random>`` and renamed into place only when all
    are written (``os.rename`` of a folder is atomic on POSIX), so an interrupted
    run is never mistaken for a finished one; its partial folder is removed by a
    later call once its process is gone. If the final folder already exists the
    call returns at once without touching it. If another process finishes first,
    its copy is kept and ours discarded.

    Raises:
      ValueError: ``num_classes`` or ``images_per_class`` < 1, or ``seed`` < 0.
      RuntimeError: the final folder exists but lacks some class folders (it was not
        made here; delete it to regenerate).
      OSError: the cache folder is not writable.
    """
    _check_args(num_classes, images_per_class, seed)
    cache = Path(root) if root is not None else default_cache_dir()
    name = synthetic_dataset_name(num_classes, images_per_class, seed)
    final = cache / name
    if final.is_dir():
        present = set(scan.list_class_folders(final))
        missing = [n for n in class_names(num_classes) if n not in present]
        if missing:
            raise RuntimeError(
                f"trainers/synthetic.py: {final} exists but lacks {len(missing)} of "
                f"{num_classes} class folders (first: {missing[0]}); it was not made by "
                "ensure_synthetic_dataset. Delete it to regenerate."
            )
        return final
    cache.mkdir(parents=True, exist_ok=True)
    _clean_stale_partials(cache, name)
    tmp = Path(
        tempfile.mkdtemp(
            prefix=f".{name}{_TEMP_MARK}{socket.gethostname()}-{os.getpid()}-", dir=cache
        )
    )
    try:
        write_synthetic_dataset(
            tmp,
            num_classes=num_classes,
            images_per_class=images_per_class,
            seed=seed,
            progress=progress,
        )
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            # Another process won the race: keep its complete copy.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
