"""JPEG decode and the training / evaluation preprocessing.

This is the one preprocessing the trainer runs and the decode probe times, so what
is measured is what is run.

* Training decode: only the random crop's region, with libjpeg-turbo's partial
  decompression (``jpeg_skip_scanlines`` + ``jpeg_crop_scanline``, the fused
  decode-and-crop of ``tf.image.decode_and_crop_jpeg`` and DALI's ROI decoders) in
  the small C extension ``trainers/_jpegcrop.c``, combined with DCT-domain
  downscaling. Rows above the crop are entropy-decoded only, columns beside it are
  not transformed, rows below it are not read. Without the extension (no libjpeg
  headers at install time) the whole image is decoded instead; the pixels are the
  same either way (tested).
* Decode mode (``AugmentConfig.decode_mode``): ``"fast"`` (the default) trades a
  little fidelity for speed: integer-fast IDCT, plain (box) chroma upsampling and the
  DCT-domain downscaling below. ``"exact"`` decodes the crop as libjpeg's
  defaults do (accurate integer IDCT, fancy chroma upsampling, full scale: Pillow's
  pixels, and ``tf.image.decode_and_crop_jpeg``'s upsampling), bit-identical to the
  same box of a whole-image decode with those settings (tested); it costs more.
* Decode: libjpeg-turbo through ``simplejpeg`` (DCT-domain downscaling by 1/2, 1/4
  or 1/8 when the crop allows it, the trick DALI and FFCV use; CMYK/YCCK JPEGs are
  converted to RGB by simplejpeg, as Pillow does, Adobe-inverted), falling back to
  Pillow for what libjpeg-turbo rejects (PNG files named ``.JPEG``, arithmetic
  coding; ImageNet's train set has 22 CMYK files and one PNG). Greyscale becomes RGB.
  Both release the GIL while decoding, so threads scale.
* Resize: OpenCV bilinear (``cv2.resize``), flip ``cv2.flip``; both release the GIL.
* Train: Inception-style random-resized crop (Szegedy et al. 2015; the
  torchvision ``RandomResizedCrop`` algorithm: area scale in ``scale``, log-uniform
  aspect ratio in (3/4, 4/3), 10 tries, then a centre crop), bilinear resize to
  ``image_size`` and a horizontal flip with probability 1/2.
* Eval: resize the shorter side to ``image_size / 0.875`` and take the centre
  ``image_size`` crop (the 256 -> 224 ImageNet convention).

Outputs are ``uint8 [image_size, image_size, 3]``; normalisation to float happens on
the device inside the train step (4x fewer bytes across the host-device link). With
``out=`` (a row of the pipeline's batch array) the final resize or flip writes straight
into the batch: no copy of the image after decode (issue 12), same pixels.
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageFile
from trainers.options import AugmentConfig

try:  # Built from trainers/_jpegcrop.c when libjpeg(-turbo) headers are present.
    from trainers import _jpegcrop
except ImportError:  # pragma: no cover - depends on the build machine
    _jpegcrop = None

#: True when the region-of-interest decoder (``trainers/_jpegcrop.c``) is built:
#: training crops are then decoded without the pixels outside the crop.
ROI_DECODE = _jpegcrop is not None


def decoder_description() -> str:
    """One line naming the training decode path, for probe reports and benchmarks,
    e.g. ``"region decode (trainers._jpegcrop, libjpeg-turbo 2.1.5)"``."""
    if _jpegcrop is None:
        return ("whole-image decode (simplejpeg): trainers._jpegcrop is not built "
                "(install libjpeg headers and reinstall for region decode)")
    v = getattr(_jpegcrop, "LIBJPEG_TURBO_VERSION", 0)
    lib = f"libjpeg-turbo {v // 1000000}.{v // 1000 % 1000}.{v % 1000}" if v else "libjpeg"
    return f"region decode (trainers._jpegcrop, {lib})"

# Our own threads parallelise over images; OpenCV must not spawn more per call.
cv2.setNumThreads(1)

#: Largest image accepted, in pixels (width x height). Pillow's own bomb limit is
#: 89.5 MPix; the largest ImageNet training image is about 20 MPix.
MAX_PIXELS = 100_000_000

Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Register every Pillow plugin now, in the importing thread: Pillow otherwise imports
# them lazily on the first Image.open, and two decode threads doing that first import
# at once can hang on the import locks.
Image.init()
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: ImageNet channel mean / std in [0, 255] units (the values flax and torchvision use).
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class BadImageError(ValueError):
    """An image that cannot be decoded. ``reason`` is a short human-readable cause."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def image_header(data: bytes) -> tuple[int, int]:
    """Return ``(height, width)`` in pixels from the JPEG header, without decoding.

    Falls back to Pillow's lazy open for non-JPEG data.

    Raises:
      BadImageError: empty, unreadable, or absurdly large image.
    """
    if not data:
        raise BadImageError("empty file (0 bytes)")
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except Image.DecompressionBombError as exc:
            raise BadImageError(f"decompression bomb: {exc}") from None
        except Exception as exc:  # PIL raises many types for garbage input
            raise BadImageError(f"not a decodable image: {type(exc).__name__}: {exc}") from None
    if h <= 0 or w <= 0:
        raise BadImageError(f"invalid dimensions {w}x{h}")
    if h * w > MAX_PIXELS:
        raise BadImageError(f"image too large: {w}x{h} = {w * h:,} pixels > {MAX_PIXELS:,}")
    return int(h), int(w)


#: DCT scale denominators tried, largest first. Only powers of two: libjpeg-turbo's
#: other scales use its generic C IDCT; on ImageNet files 7/8, 3/4 and 5/8 decoded
#: *slower* than full size (7/8 at about 0.6x the full-size rate) and 3/8 no faster
#: than 1/2, which is why ``simplejpeg``'s own choice among all 16 factors is not used.
DCT_DENOMINATORS = (8, 4, 2)


def dct_denominator(height: int, width: int, min_height: int, min_width: int) -> int:
    """The largest power-of-two DCT scale denominator ``d`` (8, 4, 2, else 1) whose
    decode, ``ceil(height / d) x ceil(width / d)`` pixels, is still at least
    ``min_height x min_width``. A minimum <= 0 means the full size on that side."""
    min_height = height if min_height <= 0 else min_height
    min_width = width if min_width <= 0 else min_width
    for d in DCT_DENOMINATORS:
        if -(-height // d) >= min_height and -(-width // d) >= min_width:
            return d
    return 1


def dct_scaled_size(height: int, width: int, min_height: int, min_width: int) -> tuple[int, int]:
    """Output ``(height, width)`` of the cheapest power-of-two DCT-domain scale
    (1/8, 1/4, 1/2, else 1) that keeps the decoded image at least
    ``min_height x min_width`` pixels.

    libjpeg-turbo scales by ``1/d`` rounding up (``TJSCALED``: ``ceil(size / d)``).
    As in ``simplejpeg``, a minimum <= 0 means the full size on that side.
    """
    d = dct_denominator(height, width, min_height, min_width)
    return -(-height // d), -(-width // d)


def _decode(data: bytes, height: int, width: int, min_height: int, min_width: int, *,
            exact: bool = False) -> np.ndarray:
    """Decode with the header already read (``height x width``); see :func:`decode_image`.
    ``exact``: full scale, accurate IDCT, fancy upsampling (the ``"exact"`` decode mode)."""
    sh, sw = (height, width) if exact else dct_scaled_size(height, width, min_height, min_width)
    try:
        if exact:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)
        if sh == height and sw == width:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True)
        # Asking for exactly the power-of-two size makes simplejpeg pick that scale:
        # it takes the smallest factor whose output reaches the minimum.
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True,
                                      min_height=sh, min_width=sw)
    except (ValueError, RuntimeError):
        pass  # PNG-as-JPEG, arithmetic coding, truncated ...: Pillow below says why.
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgb = im.convert("RGB")
        return np.asarray(rgb, dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"decompression bomb: {exc}") from None
    except Exception as exc:
        raise BadImageError(f"cannot decode ({width}x{height}): {type(exc).__name__}: {exc}") from None


def decode_image(data: bytes, *, min_height: int = 0, min_width: int = 0) -> np.ndarray:
    """Decode JPEG (or any Pillow format) bytes to ``uint8 [H, W, 3]`` RGB.

    With ``min_height`` / ``min_width`` (pixels) the JPEG is decoded at the smallest
    DCT scale (1, 1/2, 1/4, 1/8) whose result is still at least that large
    (:func:`dct_scaled_size`), which saves the IDCT, upsampling and colour conversion
    of the pixels not produced (the entropy decoding is not saved). JPEGs go through
    libjpeg-turbo (``simplejpeg``; CMYK/YCCK included); what it rejects (PNG named
    ``.JPEG``, arithmetic coding...) goes through Pillow at full size.
    Greyscale becomes RGB.

    Raises:
      BadImageError: truncated, corrupt, empty, too large (> ``MAX_PIXELS``) or not
        an image; ``reason`` says which.
    """
    h, w = image_header(data)
    return _decode(data, h, w, min_height, min_width)


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator, *,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Pick an Inception-style crop ``(top, left, crop_height, crop_width)`` in pixels.

    The torchvision ``RandomResizedCrop.get_params`` algorithm: up to 10 draws of an
    area fraction uniform in ``scale`` and an aspect ratio log-uniform in ``ratio``;
    if none fits, a centre crop clamped to ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= width and 0 < ch <= height:
            top = int(rng.integers(0, height - ch + 1))
            left = int(rng.integers(0, width - cw + 1))
            return top, left, ch, cw
    in_ratio = width / height
    if in_ratio < ratio[0]:
        cw, ch = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = height, int(round(height * ratio[1]))
    else:
        cw, ch = width, height
    return (height - ch) // 2, (width - cw) // 2, ch, cw


def _resize(img: np.ndarray, height: int, width: int, out: np.ndarray | None = None
            ) -> np.ndarray:
    """Bilinear resize ``uint8 [h, w, 3]`` -> ``uint8 [height, width, 3]`` (OpenCV
    ``INTER_LINEAR``, about 5x faster than Pillow's here).

    An axis shrunk by more than 2x is first box-filtered over ``ceil(factor)`` pixels
    (``cv2.blur``), so it does not alias: the same anti-aliasing as ``INTER_AREA``
    at a fraction of its cost (OpenCV's ``INTER_AREA`` takes about 1 ms for a
    non-integer factor on a 300x470 crop, box filter + bilinear about 0.2 ms). With
    the DCT-scaled decode this happens to about 3% of ImageNet training crops (a
    side above 2x the output while the other side is too short to halve).

    With ``out`` (a C-contiguous ``uint8 [height, width, 3]`` array) the resize
    writes into it and returns it; when no resize is needed ``img`` itself is
    returned and ``out`` is left alone (the caller copies or flips into it).
    """
    h, w = img.shape[:2]
    if h == height and w == width:
        return img
    kx = math.ceil(w / width) if w > 2 * width else 1
    ky = math.ceil(h / height) if h > 2 * height else 1
    if kx > 1 or ky > 1:
        img = cv2.blur(img, (kx, ky))
    if out is None:
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    got = cv2.resize(img, (width, height), dst=out, interpolation=cv2.INTER_LINEAR)
    if not np.shares_memory(got, out):  # pragma: no cover - only if cv2 reallocated dst
        np.copyto(out, got)
    return out


def _check_out(out: np.ndarray, size: int) -> None:
    """Raise ValueError unless ``out`` is a writable C-contiguous ``uint8 [size, size, 3]``."""
    if (not isinstance(out, np.ndarray) or out.shape != (size, size, 3)
            or out.dtype != np.uint8 or not out.flags.c_contiguous or not out.flags.writeable):
        what = (f"{out.dtype} {list(out.shape)}, C-contiguous={out.flags.c_contiguous}, "
                f"writeable={out.flags.writeable}" if isinstance(out, np.ndarray)
                else type(out).__name__)
        raise ValueError(f"out must be a writable C-contiguous uint8 [{size}, {size}, 3] "
                         f"array, got {what}")


def _resize_flip(crop: np.ndarray, size: int, flip: bool, out: np.ndarray | None) -> np.ndarray:
    """Resize ``crop`` to ``uint8 [size, size, 3]``, flipped horizontally if ``flip``,
    into ``out`` when given (C-contiguous; checked by the caller) else into a new
    array. Always returns a C-contiguous array (``out`` itself when given).

    ``cv2.flip`` is about 6x faster than ``np.ascontiguousarray(out[:, ::-1])`` for a
    224 x 224 x 3 image. With ``out`` exactly one write of the final pixels lands in
    it: the resize (no flip), the flip of the resized temporary or of the crop (flip),
    or a copy of the crop (crop already ``size x size``, no flip). The flip never
    reads from ``out`` (source and destination of ``cv2.flip`` never alias).
    """
    if out is None:
        img = _resize(crop, size, size)
        return cv2.flip(img, 1) if flip else np.ascontiguousarray(img)
    if not flip:
        img = _resize(crop, size, size, out=out)
        if img is not out:  # no resize needed: the crop is a view of the decode
            np.copyto(out, img)
        return out
    img = _resize(crop, size, size)  # a temporary, or the crop itself
    if np.shares_memory(img, out):  # only when the caller's image is ``out`` itself
        img = img.copy()
    got = cv2.flip(img, 1, dst=out)
    if not np.shares_memory(got, out):  # pragma: no cover - only if cv2 reallocated dst
        np.copyto(out, got)
    return out


def augment_decoded(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, *,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Random-resized crop + flip of an already decoded ``uint8 [H, W, 3]`` image.

    Args:
      img: decoded image, ``uint8 [H, W, 3]`` (any strides).
      rng: draws the crop box, then the flip (when ``cfg.flip``).
      cfg: augmentation.
      out: optional destination, a writable C-contiguous ``uint8 [S, S, 3]`` array
        (``S = cfg.image_size``), for example ``batch[i]``: the final pixels are
        written straight into it (no copy into the batch afterwards). The pixels are
        bit-identical to those returned without ``out``.

    Returns:
      ``uint8 [S, S, 3]``, C-contiguous: ``out`` itself when given.

    Raises:
      ValueError: ``out`` of the wrong shape, dtype or layout, or read-only.
    """
    s = cfg.image_size
    if out is not None:
        _check_out(out, s)
    top, left, ch, cw = random_resized_crop_box(img.shape[0], img.shape[1], rng,
                                                scale=(cfg.min_scale, cfg.max_scale))
    flip = cfg.flip and rng.random() < 0.5
    return _resize_flip(img[top:top + ch, left:left + cw], s, flip, out)


def train_preprocess(data: bytes, rng: np.random.Generator, cfg: AugmentConfig, *,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Decode + random-resized crop + flip: encoded bytes -> ``uint8 [S, S, 3]``
    (``S = cfg.image_size``).

    The crop is chosen on the header's dimensions first, so the JPEG can be decoded
    at the smallest power-of-two DCT scale that keeps the crop at least ``S`` pixels
    on each side (never below the resolution the crop needs). Draws from ``rng`` in
    the order of :func:`augment_decoded` (crop, then flip, the flip after a
    successful decode), so the same seed gives the same crop whichever of the two runs.

    Args:
      data: encoded image bytes.
      rng: random source of the crop and flip.
      cfg: augmentation.
      out: optional destination, a writable C-contiguous ``uint8 [S, S, 3]`` array
        (the input pipeline passes ``batch[i]``): the resize or flip writes straight
        into it, bit-identical to the result without ``out``. Left untouched when
        the image cannot be decoded.

    Returns:
      ``uint8 [S, S, 3]``, C-contiguous: ``out`` itself when given.

    Raises:
      BadImageError: the image cannot be decoded.
      ValueError: ``out`` of the wrong shape, dtype or layout, or read-only.
    """
    s = cfg.image_size
    if out is not None:
        _check_out(out, s)
    h, w = image_header(data)
    top, left, ch, cw = random_resized_crop_box(h, w, rng, scale=(cfg.min_scale, cfg.max_scale))
    crop = decode_crop(data, h, w, top, left, ch, cw, min_side=s, mode=cfg.decode_mode)
    flip = cfg.flip and rng.random() < 0.5
    return _resize_flip(crop, s, flip, out)


def _scaled_box(h: int, w: int, sh: int, sw: int, top: int, left: int, ch: int, cw: int
                ) -> tuple[int, int, int, int]:
    """The crop box ``(top, left, height, width)`` of an ``h x w`` image mapped onto
    its ``sh x sw`` DCT-scaled decode (at least 1 pixel on each side)."""
    if sh == h and sw == w:
        return top, left, ch, cw
    sy, sx = sh / h, sw / w
    t, l = int(top * sy), int(left * sx)
    b, r = max(t + 1, int(round((top + ch) * sy))), max(l + 1, int(round((left + cw) * sx)))
    return t, l, b - t, r - l


def decode_crop(data: bytes, height: int, width: int, top: int, left: int,
                crop_height: int, crop_width: int, *, min_side: int = 0,
                mode: str = "fast") -> np.ndarray:
    """Decode the box ``(top, left, crop_height, crop_width)`` (pixels of the
    ``height x width`` image, from :func:`image_header`) of an encoded image.

    With ``min_side`` > 0 the JPEG is decoded at the smallest power-of-two DCT scale
    that keeps the box at least ``min_side`` pixels on each side, and the returned
    box is at that scale (the caller resizes it anyway).

    ``mode="exact"`` (see ``AugmentConfig.decode_mode``) decodes at full scale
    (``min_side`` is ignored) with the accurate IDCT and fancy upsampling: exactly the
    box of ``simplejpeg.decode_jpeg(data, fastdct=False, fastupsample=False)`` (and of
    Pillow's decode).

    Returns ``uint8 [h', w', 3]`` RGB, possibly a strided view (rows padded to
    libjpeg's iMCU boundary); exactly the box cut from :func:`decode_image` at the
    same scale. Uses the region decoder when it is built and the data is a
    complete JPEG (ends with the EOI marker, so truncated files still go through the
    whole-image decode and are reported); otherwise decodes the whole image.

    Raises:
      BadImageError: the image cannot be decoded.
      ValueError: an unknown ``mode``.
    """
    if mode == "exact":
        return _decode_crop_exact(data, height, width, top, left, crop_height, crop_width)
    if mode != "fast":
        raise ValueError(f"decode mode {mode!r}: expected 'fast' or 'exact'")
    need = max(min_side / crop_height, min_side / crop_width) if min_side > 0 else 1.0
    denom = (dct_denominator(height, width, math.ceil(height * need), math.ceil(width * need))
             if need < 1 else 1)
    sh, sw = -(-height // denom), -(-width // denom)
    t, l, bh, bw = _scaled_box(height, width, sh, sw, top, left, crop_height, crop_width)
    if _jpegcrop is not None and data[-2:] == b"\xff\xd9":
        try:
            pix, oh, ow, dx = _jpegcrop.decode_crop(data, t, l, bh, bw, denom)
        except ValueError:
            pass  # CMYK, arithmetic coding, corrupt data...: the whole-image path below.
        else:
            return np.frombuffer(pix, np.uint8).reshape(oh, ow, 3)[:, dx:dx + bw]
    img = _decode(data, height, width, sh, sw)
    if img.shape[0] != sh or img.shape[1] != sw:  # Pillow fallback decodes full size
        t, l, bh, bw = _scaled_box(height, width, img.shape[0], img.shape[1],
                                   top, left, crop_height, crop_width)
    return img[t:t + bh, l:l + bw]


def _decode_crop_exact(data: bytes, height: int, width: int, top: int, left: int,
                       crop_height: int, crop_width: int) -> np.ndarray:
    """:func:`decode_crop` in the ``"exact"`` mode (full scale, ISLOW, fancy upsampling).

    Fancy upsampling interpolates each pixel's chroma from the samples on both sides,
    and libjpeg upsamples the decoded column range as if it were the whole image
    (replicating its edge samples), so the window asked of the region decoder is one
    pixel wider on each side where the image goes on: the box's first and last
    columns then get their real neighbours (rows need nothing: libjpeg decodes the
    context rows above and below the output rows itself). The window is also at least
    8 pixels wide (or the image's width): libjpeg switches to plain upsampling for
    a chroma row of 2 samples or fewer.
    """
    if _jpegcrop is not None and data[-2:] == b"\xff\xd9":
        l0 = max(0, left - 1)
        r0 = min(width, max(left + crop_width + 1, l0 + 8))
        l0 = max(0, min(l0, r0 - 8))
        try:
            pix, oh, ow, dx = _jpegcrop.decode_crop(data, top, l0, crop_height, r0 - l0, 1, True)
        except ValueError:
            pass  # CMYK, arithmetic coding, corrupt data...: the whole-image path below.
        else:
            x = dx + left - l0
            return np.frombuffer(pix, np.uint8).reshape(oh, ow, 3)[:, x:x + crop_width]
    img = _decode(data, height, width, height, width, exact=True)
    return img[top:top + crop_height, left:left + crop_width]


def center_crop_decoded(img: np.ndarray, image_size: int, crop_fraction: float = 0.875, *,
                        out: np.ndarray | None = None) -> np.ndarray:
    """Resize the shorter side to ``image_size / crop_fraction`` and take the centre
    ``image_size`` square: ``uint8 [H, W, 3]`` -> ``uint8 [image_size, image_size, 3]``.

    With ``out`` (a writable C-contiguous ``uint8 [image_size, image_size, 3]``
    array, for example ``batch[i]``) the square is written into it (the resize itself
    when no cropping is left to do, else one copy of the centre) and ``out`` is
    returned; the pixels are the same as without it.

    Raises:
      ValueError: ``out`` of the wrong shape, dtype or layout, or read-only.
    """
    if out is not None:
        _check_out(out, image_size)
    h, w = img.shape[:2]
    short = image_size / crop_fraction
    scale = short / min(h, w)
    nh, nw = max(image_size, int(round(h * scale))), max(image_size, int(round(w * scale)))
    if out is not None and nh == image_size and nw == image_size:
        got = _resize(img, nh, nw, out=out)
        if got is not out:  # already image_size x image_size
            np.copyto(out, got)
        return out
    img = _resize(img, nh, nw)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    square = img[top:top + image_size, left:left + image_size]
    if out is None:
        return np.ascontiguousarray(square)
    np.copyto(out, square)
    return out


def eval_preprocess(data: bytes, image_size: int, crop_fraction: float = 0.875, *,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Decode, resize the shorter side to ``image_size / crop_fraction``, centre crop.

    Returns ``uint8 [image_size, image_size, 3]``: ``out`` itself when given (a
    writable C-contiguous array of that shape, written in place, same pixels; left
    untouched when the image cannot be decoded).

    Raises:
      BadImageError: the image cannot be decoded.
      ValueError: ``out`` of the wrong shape, dtype or layout, or read-only.
    """
    if out is not None:
        _check_out(out, image_size)
    h, w = image_header(data)
    short = image_size / crop_fraction
    factor = min(1.0, short / min(h, w))
    img = _decode(data, h, w, math.ceil(h * factor), math.ceil(w * factor))
    return center_crop_decoded(img, image_size, crop_fraction, out=out)


def resize_shorter_side(img: np.ndarray, shorter: int) -> np.ndarray:
    """Downscale so the shorter side is ``shorter`` pixels (never upscales).

    Used at pack time (the MXNet im2rec / FFCV habit of storing ImageNet at a
    reduced resolution). ``uint8 [H, W, 3]`` -> ``uint8 [H', W', 3]``.
    """
    h, w = img.shape[:2]
    if min(h, w) <= shorter:
        return img
    scale = shorter / min(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    return np.asarray(Image.fromarray(img).resize((nw, nh), Image.LANCZOS, reducing_gap=3.0))


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    """Encode ``uint8 [H, W, 3]`` RGB as JPEG (libjpeg-turbo via simplejpeg)."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=quality, colorspace="RGB")
