"""The region-of-interest JPEG decoder (trainers/_jpegcrop.c) and its use by
``preprocess.decode_crop`` / ``train_preprocess``: the crop it returns must be exactly
the crop of the whole-image decode, whatever the subsampling, scale or box, and what it
cannot decode must go through the whole-image path."""

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from trainers import preprocess as P
from trainers.preprocess import BadImageError
from trainers.options import AugmentConfig

HEADERS = any(Path(d, "jpeglib.h").exists() for d in ("/usr/include", "/usr/local/include"))
needs_roi = pytest.mark.skipif(not P.ROI_DECODE, reason="trainers._jpegcrop not built")
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A ``uint8 [h, w, 3]`` image with edges and noise (so every DCT block differs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255) // max(1, w - 1), (y * 255) // max(1, h - 1),
                     ((x // 7 + y // 5) % 2) * 200], -1)
    return np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def encode(img: np.ndarray, subsampling: str = "420", quality: int = 90) -> bytes:
    if subsampling == "Gray":
        return simplejpeg.encode_jpeg(np.ascontiguousarray(img[..., :1]), quality=quality,
                                      colorspace="GRAY", colorsubsampling="Gray")
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=quality, colorspace="RGB",
                                  colorsubsampling=subsampling)


def whole_decode_crop(data, h, w, box, min_side, monkeypatch):
    """The same call with the region decoder switched off (the whole-image path)."""
    with monkeypatch.context() as m:
        m.setattr(P, "_jpegcrop", None)
        return P.decode_crop(data, h, w, *box, min_side=min_side)


def test_roi_decoder_is_built_where_libjpeg_headers_exist():
    """A silently failed build would quietly cost ~20% of the pipeline's speed."""
    if not HEADERS:
        pytest.skip("no jpeglib.h on this machine: the extension is optional")
    assert P.ROI_DECODE, "libjpeg headers exist but trainers._jpegcrop was not built"


@needs_roi
@pytest.mark.parametrize("subsampling", ["444", "422", "420", "440", "411", "Gray"])
def test_roi_equals_whole_image_crop(subsampling, monkeypatch):
    h, w = 203, 317  # not multiples of the 8/16-pixel iMCU
    data = encode(textured(h, w), subsampling)
    rng = np.random.default_rng(1)
    boxes = [(0, 0, h, w), (0, 0, 1, 1), (h - 1, w - 1, 1, 1), (5, 9, 50, 60),
             (h - 40, 0, 40, w), (0, w - 17, h, 17)]
    boxes += [P.random_resized_crop_box(h, w, rng) for _ in range(30)]
    for box in boxes:
        for min_side in (0, 16, 40, 100):
            got = P.decode_crop(data, h, w, *box, min_side=min_side)
            ref = whole_decode_crop(data, h, w, box, min_side, monkeypatch)
            assert got.shape == ref.shape and got.dtype == np.uint8, (box, min_side)
            assert np.array_equal(got, ref), (subsampling, box, min_side)


@needs_roi
def test_roi_dct_scale_is_used_and_keeps_min_side(monkeypatch):
    h, w = 1200, 1600
    data = encode(textured(h, w, seed=3))
    box = (100, 200, 1000, 1200)
    got = P.decode_crop(data, h, w, *box, min_side=224)
    # 1000 / 4 = 250 >= 224 but 1000 / 8 = 125 < 224: a quarter-scale decode.
    assert got.shape == (250, 300, 3)
    assert np.array_equal(got, whole_decode_crop(data, h, w, box, 224, monkeypatch))


@needs_roi
def test_roi_progressive_jpeg(monkeypatch):
    img = textured(120, 150, seed=5)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90, progressive=True)
    data = buf.getvalue()
    box = (30, 40, 60, 70)
    got = P.decode_crop(data, 120, 150, *box)
    assert np.array_equal(got, whole_decode_crop(data, 120, 150, box, 0, monkeypatch))


@needs_roi
def test_cmyk_falls_back_to_the_whole_image_path():
    rng = np.random.default_rng(0)
    cmyk = Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), "CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    with pytest.raises(ValueError, match="CMYK"):
        P._jpegcrop.decode_crop(data, 0, 0, 10, 10, 1)
    got = P.decode_crop(data, 30, 40, 5, 6, 10, 12)
    assert np.array_equal(got, P.decode_image(data)[5:15, 6:18])


@needs_roi
def test_extension_errors_name_the_reason():
    data = encode(textured(64, 80))
    with pytest.raises(ValueError, match="outside the scaled image.*80x64"):
        P._jpegcrop.decode_crop(data, 60, 0, 10, 10, 1)
    with pytest.raises(ValueError, match="outside the scaled image"):
        P._jpegcrop.decode_crop(data, 0, 0, 10, 11, 8)  # 1/8 scale: 10x8 pixels
    with pytest.raises(ValueError, match="scale_denom"):
        P._jpegcrop.decode_crop(data, 0, 0, 1, 1, 3)
    with pytest.raises(ValueError, match="bad crop box"):
        P._jpegcrop.decode_crop(data, 0, 0, 0, 5, 1)
    with pytest.raises(ValueError, match="libjpeg"):
        P._jpegcrop.decode_crop(b"\x89PNG\r\n\x1a\n" + bytes(100), 0, 0, 1, 1, 1)
    # Truncated inside the crop: an error, never grey rows.
    with pytest.raises(ValueError, match="libjpeg"):
        P._jpegcrop.decode_crop(data[: len(data) // 2], 0, 0, 64, 80, 1)


def test_truncated_jpeg_is_reported_even_when_the_crop_is_above_the_cut():
    """The region decoder would stop before the missing data; decode_crop sends files
    without the EOI marker through the whole-image decode, which reports them."""
    data = encode(textured(160, 160))
    cut = data[: int(len(data) * 0.8)]
    with pytest.raises(BadImageError, match="truncated"):
        P.decode_crop(cut, 160, 160, 0, 0, 16, 16)


@needs_roi
@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_train_preprocess_identical_with_and_without_roi(monkeypatch, mode):
    datas = [encode(textured(h, w, seed=h), s) for h, w, s in
             [(375, 500, "420"), (500, 333, "444"), (240, 320, "Gray"), (900, 1200, "422")]]
    cfg = AugmentConfig(64, min_scale=0.08, decode_mode=mode)
    for seed in range(6 if mode == "fast" else 4):
        with_roi = [P.train_preprocess(d, np.random.default_rng(seed), cfg) for d in datas]
        with monkeypatch.context() as m:
            m.setattr(P, "_jpegcrop", None)
            without = [P.train_preprocess(d, np.random.default_rng(seed), cfg) for d in datas]
        for a, b in zip(with_roi, without):
            assert np.array_equal(a, b), seed


@needs_roi
def test_roi_decode_is_thread_safe():
    datas = [encode(textured(200 + 8 * i, 300, seed=i)) for i in range(8)]
    boxes = [(10 + i, 20 + i, 150, 200) for i in range(8)]
    ref = [P._jpegcrop.decode_crop(d, *b, 1) for d, b in zip(datas, boxes)]
    results: dict[int, list] = {}

    def work(t):
        results[t] = [P._jpegcrop.decode_crop(d, *b, 1) for _ in range(5)
                      for d, b in zip(datas, boxes)]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in range(4):
        assert results[t] == ref * 5


@needs_roi
@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/imagenet-samples absent")
def test_roi_on_real_imagenet_files(monkeypatch):
    files = sorted(SAMPLES.rglob("*.JPEG"))[:40]
    rng = np.random.default_rng(0)
    for f in files:
        data = f.read_bytes()
        h, w = P.image_header(data)
        box = P.random_resized_crop_box(h, w, rng)
        got = P.decode_crop(data, h, w, *box, min_side=224)
        assert np.array_equal(got, whole_decode_crop(data, h, w, box, 224, monkeypatch)), f.name


def test_decoder_description_names_the_path(monkeypatch):
    if P.ROI_DECODE:
        assert P.decoder_description().startswith("region decode (trainers._jpegcrop")
    monkeypatch.setattr(P, "_jpegcrop", None)
    assert P.decoder_description().startswith("whole-image decode")


# ------------------------------------------------------------ the "exact" decode mode
# ISLOW IDCT + fancy upsampling at full scale (AugmentConfig.decode_mode="exact"), the
# decode tf.data's decode_and_crop_jpeg does. The reference is a whole-image decode with
# those settings: simplejpeg with fastdct=False, fastupsample=False, which is also
# Pillow's decode, pixel for pixel (checked below).

def accurate_decode(data: bytes) -> np.ndarray:
    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)


def exact_boxes(h: int, w: int, rng) -> list[tuple[int, int, int, int]]:
    """Edge boxes (image borders, 1-pixel and narrow boxes, iMCU-aligned lefts), random
    small boxes and random-resized crops."""
    boxes = [(0, 0, h, w), (0, 0, 1, 1), (h - 1, w - 1, 1, 1), (0, w - 1, h, 1),
             (0, 0, h, 1), (h // 2, 16 % w, 1, min(3, w - 16 % w)), (0, 32 % w, h, min(17, w - 32 % w))]
    boxes += [P.random_resized_crop_box(h, w, rng) for _ in range(25)]
    for _ in range(15):
        t, l = int(rng.integers(0, h)), int(rng.integers(0, w))
        boxes.append((t, l, int(rng.integers(1, h - t + 1)), int(rng.integers(1, min(9, w - l) + 1))))
    return boxes


def test_accurate_simplejpeg_decode_is_pillows_decode():
    for sub in ("444", "422", "420", "440", "Gray"):
        data = encode(textured(77, 131, seed=2), sub)
        pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(accurate_decode(data), pil), sub


@needs_roi
@pytest.mark.parametrize("subsampling", ["444", "422", "420", "440", "411", "Gray"])
@pytest.mark.parametrize("hw", [(203, 317), (64, 80), (17, 33), (9, 5), (1, 1)])
def test_exact_mode_equals_the_box_of_an_accurate_whole_decode(subsampling, hw, monkeypatch):
    h, w = hw
    data = encode(textured(h, w, seed=h * w), subsampling)
    ref = accurate_decode(data)
    rng = np.random.default_rng(h + w)
    for t, l, ch, cw in exact_boxes(h, w, rng):
        ch, cw = max(1, min(ch, h - t)), max(1, min(cw, w - l))
        got = P.decode_crop(data, h, w, t, l, ch, cw, min_side=224, mode="exact")
        assert got.dtype == np.uint8 and got.shape == (ch, cw, 3), (t, l, ch, cw)
        assert np.array_equal(got, ref[t:t + ch, l:l + cw]), (subsampling, hw, (t, l, ch, cw))
        with monkeypatch.context() as m:  # the whole-image path gives the same pixels
            m.setattr(P, "_jpegcrop", None)
            whole = P.decode_crop(data, h, w, t, l, ch, cw, mode="exact")
        assert np.array_equal(whole, got), (subsampling, hw, (t, l, ch, cw))


@needs_roi
def test_exact_mode_needs_the_widened_window():
    """Without the extra pixel on each side, libjpeg's fancy upsampling replicates the
    edge of the decoded range: the box's first or last column would differ."""
    h, w = 203, 317
    data = encode(textured(h, w), "420")
    ref = accurate_decode(data)
    t, l, ch, cw = 36, 66, 160, 162  # its right edge is the decoded range's
    pix, oh, ow, dx = P._jpegcrop.decode_crop(data, t, l, ch, cw, 1, True)
    narrow = np.frombuffer(pix, np.uint8).reshape(oh, ow, 3)[:, dx:dx + cw]
    assert not np.array_equal(narrow, ref[t:t + ch, l:l + cw])
    assert np.array_equal(P.decode_crop(data, h, w, t, l, ch, cw, mode="exact"),
                          ref[t:t + ch, l:l + cw])


@needs_roi
def test_exact_flag_of_the_extension():
    data = encode(textured(120, 150, seed=4), "420")
    pix, oh, ow, dx = P._jpegcrop.decode_crop(data, 0, 0, 120, 150, 1, True)
    assert (oh, ow, dx) == (120, 150, 0)
    assert np.array_equal(np.frombuffer(pix, np.uint8).reshape(120, 150, 3), accurate_decode(data))
    fast = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True)
    for flag in ((), (False,), (0,)):  # the default is the fast mode
        pix, *_ = P._jpegcrop.decode_crop(data, 0, 0, 120, 150, 1, *flag)
        assert np.array_equal(np.frombuffer(pix, np.uint8).reshape(120, 150, 3), fast), flag
    assert not np.array_equal(fast, accurate_decode(data))


@needs_roi
def test_exact_mode_progressive_and_restart_markers():
    img = textured(120, 150, seed=5)
    for kw in ({"progressive": True}, {"restart_marker_rows": 1}):
        buf = io.BytesIO()
        try:
            Image.fromarray(img).save(buf, "JPEG", quality=90, **kw)
        except TypeError:  # pragma: no cover - an old Pillow without restart markers
            continue
        data = buf.getvalue()
        ref = accurate_decode(data)
        for box in [(30, 40, 60, 70), (0, 0, 120, 150), (119, 149, 1, 1), (7, 16, 50, 8)]:
            t, l, ch, cw = box
            assert np.array_equal(P.decode_crop(data, 120, 150, *box, mode="exact"),
                                  ref[t:t + ch, l:l + cw]), (kw, box)


@needs_roi
def test_exact_mode_cmyk_goes_through_the_whole_image_path(monkeypatch):
    rng = np.random.default_rng(0)
    cmyk = Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), "CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    got = P.decode_crop(data, 30, 40, 5, 6, 10, 12, mode="exact")
    with monkeypatch.context() as m:
        m.setattr(P, "_jpegcrop", None)
        assert np.array_equal(got, P.decode_crop(data, 30, 40, 5, 6, 10, 12, mode="exact"))
    assert got.shape == (10, 12, 3)


@needs_roi
@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/imagenet-samples absent")
def test_exact_mode_on_real_imagenet_files_equals_pillow():
    files = sorted(SAMPLES.rglob("*.JPEG"))[::25]
    rng = np.random.default_rng(0)
    for f in files:
        data = f.read_bytes()
        h, w = P.image_header(data)
        pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        for _ in range(3):
            t, l, ch, cw = P.random_resized_crop_box(h, w, rng)
            got = P.decode_crop(data, h, w, t, l, ch, cw, min_side=224, mode="exact")
            assert np.array_equal(got, pil[t:t + ch, l:l + cw]), (f.name, (t, l, ch, cw))


def test_unknown_decode_mode_is_rejected():
    data = encode(textured(32, 32))
    with pytest.raises(ValueError, match="decode mode 'bogus'"):
        P.decode_crop(data, 32, 32, 0, 0, 8, 8, mode="bogus")
