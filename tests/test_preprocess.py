"""Decode edge cases and the training / evaluation preprocessing (trainers/preprocess.py)."""

import io
import math
import struct
import zlib

import cv2
import numpy as np
import pytest
import simplejpeg
from PIL import Image

from trainers import preprocess as P
from trainers.preprocess import BadImageError
from trainers.options import AugmentConfig


def gradient(h: int, w: int) -> np.ndarray:
    """A smooth ``uint8 [h, w, 3]`` image whose colour encodes the position."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([255 * x // max(1, w - 1), 255 * y // max(1, h - 1),
                     np.full_like(x, 128)], -1).astype(np.uint8)


def jpeg(img: np.ndarray, quality: int = 92) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=quality, colorspace="RGB")


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------- decode

def test_cmyk_jpeg_decodes_to_rgb_like_pillow():
    rng = np.random.default_rng(0)
    cmyk = Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), "CMYK")
    data = pil_bytes(cmyk, "JPEG", quality=95)
    out = P.decode_image(data)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref).mean() < 3  # same colour conversion as Pillow
    assert P.train_preprocess(data, np.random.default_rng(0), AugmentConfig(16)).shape == (16, 16, 3)


def test_greyscale_jpeg_becomes_rgb():
    grey = gradient(48, 64)[..., 0]
    out = P.decode_image(pil_bytes(Image.fromarray(grey, "L"), "JPEG", quality=95))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out[..., 0].astype(int) - grey).mean() < 3


def test_png_named_jpeg_decodes():
    img = gradient(40, 50)
    data = pil_bytes(Image.fromarray(img), "PNG")  # what a file called x.JPEG may hold
    assert P.image_header(data) == (40, 50)
    assert np.array_equal(P.decode_image(data), img)  # PNG is lossless
    assert P.train_preprocess(data, np.random.default_rng(1), AugmentConfig(32)).shape == (32, 32, 3)
    assert P.eval_preprocess(data, 32).shape == (32, 32, 3)


def test_rgba_png_drops_alpha():
    rgba = np.dstack([gradient(20, 30), np.full((20, 30), 7, np.uint8)])
    out = P.decode_image(pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out.shape == (20, 30, 3)


def test_truncated_jpeg_names_the_reason():
    data = jpeg(gradient(120, 160))
    with pytest.raises(BadImageError) as e:
        P.decode_image(data[: len(data) // 2])
    assert "truncated" in e.value.reason and "160x120" in e.value.reason
    with pytest.raises(BadImageError) as e:
        P.train_preprocess(data[: len(data) // 2], np.random.default_rng(0), AugmentConfig(32))
    assert "truncated" in e.value.reason


def test_header_only_jpeg_is_bad():
    data = jpeg(gradient(64, 64))
    with pytest.raises(BadImageError):
        P.decode_image(data[:40])


def test_zero_byte_file():
    with pytest.raises(BadImageError, match="empty file"):
        P.decode_image(b"")
    with pytest.raises(BadImageError, match="empty file"):
        P.image_header(b"")


def test_non_image():
    with pytest.raises(BadImageError) as e:
        P.decode_image(b"<html>this is not an image</html>\n" * 10)
    assert "not a decodable image" in e.value.reason
    assert isinstance(e.value, ValueError)  # callers may catch ValueError


def _jpeg_claiming(height: int, width: int) -> bytes:
    """A small valid JPEG whose SOF0 header is patched to claim ``height x width``."""
    data = jpeg(gradient(16, 16))
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height, width
    return data[:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


def _png_claiming(height: int, width: int) -> bytes:
    """An 8 x 8 PNG whose IHDR (CRC fixed) claims ``width x height``."""
    png = pil_bytes(Image.new("RGB", (8, 8)), "PNG")
    length, ihdr = png[8:12], png[12:33]
    body = b"IHDR" + struct.pack(">II", width, height) + ihdr[12:17]
    return png[:8] + length + body + struct.pack(">I", zlib.crc32(body)) + png[33:]


def test_jpeg_decompression_bomb_rejected_from_header():
    data = _jpeg_claiming(65000, 65000)  # 3 KB claiming 4.2 GPix (12.7 GB decoded)
    assert len(data) < 10_000
    with pytest.raises(BadImageError) as e:
        P.image_header(data)
    assert "too large" in e.value.reason and "65000x65000" in e.value.reason
    for fn in (lambda: P.decode_image(data),
               lambda: P.train_preprocess(data, np.random.default_rng(0), AugmentConfig(224)),
               lambda: P.eval_preprocess(data, 224)):
        with pytest.raises(BadImageError, match="too large"):
            fn()


def test_png_decompression_bomb_rejected():
    with pytest.raises(BadImageError) as e:  # 1e10 pixels: Pillow's own bomb check
        P.decode_image(_png_claiming(100_000, 100_000))
    assert "decompression bomb" in e.value.reason
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(BadImageError) as e:
        P.decode_image(_png_claiming(9_000, 12_000))  # 108 MPix: over our MAX_PIXELS only
    assert "too large" in e.value.reason and str(f"{P.MAX_PIXELS:,}") in e.value.reason


def test_decode_full_size_by_default():
    img = gradient(120, 160)
    out = P.decode_image(jpeg(img))
    assert out.shape == (120, 160, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.abs(out.astype(int) - img).mean() < 4


@pytest.mark.parametrize("h,w,min_h,min_w,expect", [
    (1000, 800, 200, 100, (250, 200)),   # 1/4 is the smallest that keeps 200 rows
    (1000, 800, 120, 90, (125, 100)),    # 1/8
    (1000, 800, 501, 10, (1000, 800)),   # needs more than 1/2: full size
    (1000, 800, 700, 560, (1000, 800)),  # 0.7: full size, never libjpeg's slow 7/8, 3/4
    (1001, 801, 501, 401, (501, 401)),   # ceil(1001 / 2) = 501
    (120, 160, 0, 0, (120, 160)),        # 0 = no reduction (as in simplejpeg)
    (1000, 800, 0, 100, (1000, 800)),
])
def test_dct_scaled_size_powers_of_two_only(h, w, min_h, min_w, expect):
    assert P.dct_scaled_size(h, w, min_h, min_w) == expect


def test_decode_with_minimum_uses_dct_scale():
    data = jpeg(gradient(480, 640))
    for min_h, min_w in ((60, 80), (100, 20), (200, 300), (300, 300), (0, 0)):
        out = P.decode_image(data, min_height=min_h, min_width=min_w)
        assert out.shape[:2] == P.dct_scaled_size(480, 640, min_h, min_w)
        assert out.shape[0] >= min_h and out.shape[1] >= min_w


# ------------------------------------------------------------------------------ train

def test_train_preprocess_shape_dtype():
    cfg = AugmentConfig(64)
    rng = np.random.default_rng(0)
    for h, w in ((375, 500), (500, 333), (20, 30), (64, 64), (1, 300), (900, 1200)):
        out = P.train_preprocess(jpeg(gradient(h, w)), rng, cfg)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_train_preprocess_deterministic_per_seed():
    data = jpeg(gradient(300, 400))
    cfg = AugmentConfig(48)
    a = [P.train_preprocess(data, np.random.default_rng(7), cfg) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    others = [P.train_preprocess(data, np.random.default_rng(s), cfg) for s in range(8)]
    assert any(not np.array_equal(a[0], o) for o in others)


def test_train_preprocess_equals_augment_of_full_decode():
    """Where no DCT reduction applies, the fused path is exactly decode + augment with
    the same random draws (crop, then flip)."""
    data = jpeg(gradient(200, 260))
    cfg = AugmentConfig(224)  # crops <= 260 px can never be halved
    full = P.decode_image(data)
    for seed in range(20):
        a = P.train_preprocess(data, np.random.default_rng(seed), cfg)
        b = P.augment_decoded(full, np.random.default_rng(seed), cfg)
        assert np.array_equal(a, b), seed


def test_train_preprocess_dct_scaled_close_to_full_decode():
    """On a large image the crop is decoded at 1/2..1/8 scale; the result stays close
    to the crop of the full decode (same crop box, same flip)."""
    img = gradient(1600, 2000)
    data = jpeg(img)
    cfg = AugmentConfig(64)
    full = P.decode_image(data)
    for seed in range(10):
        a = P.train_preprocess(data, np.random.default_rng(seed), cfg).astype(int)
        b = P.augment_decoded(full, np.random.default_rng(seed), cfg).astype(int)
        assert np.abs(a - b).mean() < 4, seed


def test_train_preprocess_flip():
    img = gradient(100, 100)
    data = P.encode_jpeg(img, quality=95)
    no_flip = AugmentConfig(100, min_scale=1.0, max_scale=1.0, flip=False)
    with_flip = AugmentConfig(100, min_scale=1.0, max_scale=1.0, flip=True)
    base = P.train_preprocess(data, np.random.default_rng(0), no_flip)
    seen = set()
    for seed in range(16):
        out = P.train_preprocess(data, np.random.default_rng(seed), with_flip)
        if np.array_equal(out, base):
            seen.add("same")
        else:
            assert np.array_equal(out, base[:, ::-1])
            seen.add("flipped")
    assert seen == {"same", "flipped"}


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.25, 0.5), (1.0, 1.0)])
def test_crop_box_inside_image_and_in_range(scale):
    """Property check over many seeds and shapes: the box lies inside the image, and
    unless it is the documented centre-crop fallback its area is within ``scale`` and
    its aspect within (3/4, 4/3), up to the rounding of its sides."""
    ratio = (3 / 4, 4 / 3)
    shapes = [(375, 500), (500, 375), (224, 224), (60, 1000), (1000, 60), (7, 9), (1, 1), (2000, 1500)]
    fallbacks = 0
    for h, w in shapes:
        for seed in range(300):
            top, left, ch, cw = P.random_resized_crop_box(h, w, np.random.default_rng(seed),
                                                          scale=scale, ratio=ratio)
            assert 0 <= top and 0 <= left and 1 <= ch and 1 <= cw, (h, w, seed)
            assert top + ch <= h and left + cw <= w, (h, w, seed)
            in_ratio = w / h
            fb_w = w if in_ratio <= ratio[1] else int(round(h * ratio[1]))
            fb_h = h if in_ratio >= ratio[0] else int(round(w / ratio[0]))
            if (ch, cw) == (fb_h, fb_w) and (top, left) == ((h - fb_h) // 2, (w - fb_w) // 2):
                fallbacks += 1
                continue
            slack = ch + cw + 1  # area change from rounding each side by <= 1/2
            assert scale[0] * h * w - slack <= ch * cw <= scale[1] * h * w + slack, (h, w, seed)
            assert ratio[0] * (ch - 0.5) / (ch + 0.5) <= (cw / ch) <= ratio[1] * (ch + 0.5) / (ch - 0.5) \
                or min(ch, cw) < 4, (h, w, seed, ch, cw)
    assert fallbacks < len(shapes) * 300  # the random path is taken


def test_crop_box_deterministic():
    a = P.random_resized_crop_box(375, 500, np.random.default_rng(3))
    b = P.random_resized_crop_box(375, 500, np.random.default_rng(3))
    assert a == b


def test_augment_config_validation():
    with pytest.raises(ValueError, match="image_size"):
        AugmentConfig(4)
    with pytest.raises(ValueError, match="min_scale"):
        AugmentConfig(min_scale=0.5, max_scale=0.2)


# ------------------------------------------------------------------------------- eval

def test_eval_preprocess_centre_crop():
    """256 x 256 image: a 16 px red frame around a green square. The 224 centre crop
    (256 = 224 / 0.875, so no resize) keeps only green."""
    img = np.zeros((256, 256, 3), np.uint8)
    img[..., 0] = 255
    img[16:240, 16:240] = (0, 255, 0)
    out = P.eval_preprocess(P.encode_jpeg(img, quality=95), 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out[2:-2, 2:-2, 0].max() < 60 and out[2:-2, 2:-2, 1].min() > 200


def test_eval_preprocess_geometry():
    """A 300 x 400 gradient: shorter side to 256 (x 0.853), centre 224 crop: the output's
    columns map back to the centre 262 source columns."""
    img = gradient(300, 400)
    out = P.eval_preprocess(P.encode_jpeg(img, quality=95), 224).astype(int)
    full = P.center_crop_decoded(P.decode_image(P.encode_jpeg(img, quality=95)), 224)
    assert np.array_equal(out, full)  # 300 px -> 256: no DCT reduction possible
    scale = 256 / 300
    x0 = (round(400 * scale) - 224) // 2 / scale  # first source column
    expect_red_left = 255 * x0 / 399
    assert abs(out[:, 0, 0].mean() - expect_red_left) < 4
    assert abs(out[:, -1, 0].mean() - (255 - expect_red_left)) < 4
    assert abs(out[0, :, 1].mean() - 255 * ((300 * scale - 224) / 2 / scale) / 299) < 4


def test_eval_preprocess_large_image_uses_reduced_decode():
    img = gradient(1200, 1600)
    data = P.encode_jpeg(img, quality=90)
    out = P.eval_preprocess(data, 64).astype(int)
    ref = P.center_crop_decoded(P.decode_image(data), 64).astype(int)
    assert out.shape == (64, 64, 3)
    assert np.abs(out - ref).mean() < 3


def test_resize_shorter_side_and_encode_roundtrip():
    img = gradient(300, 500)
    small = P.resize_shorter_side(img, 100)
    assert small.shape == (100, 167, 3)
    assert P.resize_shorter_side(img, 400) is img  # never upscales
    back = P.decode_image(P.encode_jpeg(small))
    assert back.shape == small.shape and math.isclose(back.mean(), small.mean(), abs_tol=3)


def test_large_downscale_is_antialiased():
    """Shrinking one axis by more than 2x box-filters it first: one-pixel stripes
    average to grey instead of aliasing into bands (plain bilinear keeps them)."""
    stripes = np.zeros((300, 470, 3), np.uint8)
    stripes[:, ::2] = 255
    out = P._resize(stripes, 224, 224).astype(float)
    plain = cv2.resize(stripes, (224, 224), interpolation=cv2.INTER_LINEAR).astype(float)
    assert abs(out.mean() - 127.5) < 2
    assert out.std() < 30 < plain.std()
    # At 2x or less the resize is plain bilinear.
    small = stripes[:, :400]
    assert np.array_equal(P._resize(small, 224, 224),
                          cv2.resize(small, (224, 224), interpolation=cv2.INTER_LINEAR))


# ------------------------------------------------------------------- decode mode

def test_decode_mode_defaults_to_fast_and_is_validated():
    assert AugmentConfig().decode_mode == "fast"
    assert AugmentConfig(decode_mode="exact").decode_mode == "exact"
    with pytest.raises(ValueError, match="decode_mode 'slow'"):
        AugmentConfig(decode_mode="slow")


def test_default_decode_mode_is_the_fast_decode():
    """The default training path is the fast one: the same pixels as asking for it."""
    data = jpeg(gradient(375, 500) ^ np.random.default_rng(1).integers(0, 40, (375, 500, 3),
                                                                       dtype=np.uint8))
    for seed in range(5):
        a = P.train_preprocess(data, np.random.default_rng(seed), AugmentConfig(224))
        b = P.train_preprocess(data, np.random.default_rng(seed), AugmentConfig(224, decode_mode="fast"))
        assert np.array_equal(a, b)


def test_train_preprocess_exact_mode_same_draws_close_pixels():
    """Same crop and flip draws in both modes (the rng is consumed alike); the exact
    decode is full scale, accurate and fancy-upsampled, so pixels differ a little."""
    img = gradient(480, 640) ^ np.random.default_rng(2).integers(0, 30, (480, 640, 3), dtype=np.uint8)
    data = simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=90, colorspace="RGB",
                                  colorsubsampling="420")
    for seed in range(6):
        r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
        fast = P.train_preprocess(data, r1, AugmentConfig(64))
        out = np.empty((64, 64, 3), np.uint8)
        exact = P.train_preprocess(data, r2, AugmentConfig(64, decode_mode="exact"), out=out)
        assert exact is out and exact.shape == fast.shape and exact.dtype == np.uint8
        assert r1.random() == r2.random()  # both consumed the same draws
        assert np.abs(exact.astype(int) - fast).mean() < 8


def test_exact_mode_whole_image_fallback_for_pillow_only_data():
    """What libjpeg-turbo rejects (a PNG named .JPEG) decodes through Pillow in the
    exact mode too."""
    img = gradient(40, 50)
    data = pil_bytes(Image.fromarray(img), "PNG")
    got = P.decode_crop(data, 40, 50, 5, 6, 20, 30, mode="exact")
    assert np.array_equal(got, img[5:25, 6:36])
