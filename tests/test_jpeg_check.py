"""The pack's per-image integrity check (``trainers.pack._jpeg_ok``): with the C
extension, ``trainers._jpegcrop.check`` (header, colour space and subsampling, every scan
entropy-decoded, no pixels) in place of a full simplejpeg decode. Its verdict must be the
full decode's on real and damaged files, except CMYK/YCCK, which both paths refuse on
purpose so that ``packed_bytes`` converts them to an RGB JPEG; and what it accepts, the
readers (``preprocess.decode_image``, ``preprocess.train_preprocess``) must decode.

What libjpeg does with damage, and so what both verdicts are (checked here):

* truncated anywhere, or only the EOI marker missing: "Premature end of JPEG file"
  (a warning in libjpeg, an error in both checks);
* bytes after the EOI marker (garbage, zero padding, a second image): ignored by both,
  as by every decoder that stops at EOI; the stored bytes keep them and the readers
  decode them (tested);
* flipped bytes in the entropy-coded data: refused when the Huffman decoding notices
  (a bad code, a marker where data should be, too few or too many bytes before a
  marker), accepted when the flip still decodes to valid codes (wrong pixels, which no
  decoder can tell); the two verdicts agree on every variant tried.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from trainers import pack as pack_mod
from trainers import preprocess as P
from trainers.options import AugmentConfig
from test_roi_decode import textured  # the same test image

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"
HAS_CHECK = getattr(P._jpegcrop, "check", None) is not None
needs_check = pytest.mark.skipif(not HAS_CHECK, reason="trainers._jpegcrop (with check) not built")


def pillow_jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def full_decode_ok(data: bytes) -> bool:
    """The old check: a full simplejpeg decode to RGB (fast IDCT, plain upsampling)."""
    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True)
        return True
    except (ValueError, RuntimeError):
        return False


def check_ok(data: bytes) -> bool:
    try:
        P._jpegcrop.check(data)
        return True
    except ValueError:
        return False


def fallback_ok(data: bytes, monkeypatch) -> bool:
    """``pack._jpeg_ok`` without the extension (the simplejpeg path)."""
    with monkeypatch.context() as m:
        m.setattr(P, "_jpegcrop", None)
        return pack_mod._jpeg_ok(data)


def readers_decode(data: bytes) -> None:
    """What a reader does with a stored image: the whole-image decode (evaluation) and
    the training preprocessing (region decode of a random crop), in both decode modes."""
    img = P.decode_image(data)
    assert img.ndim == 3 and img.shape[2] == 3
    for mode in ("fast", "exact"):
        out = P.train_preprocess(data, np.random.default_rng(0),
                                 AugmentConfig(image_size=32, decode_mode=mode))
        assert out.shape == (32, 32, 3)


def good_jpegs() -> dict[str, bytes]:
    """Small JPEGs that every decoder here takes: each subsampling, progressive,
    greyscale, restart intervals, odd sizes."""
    img = textured(75, 97)
    out = {f"simplejpeg {s}": simplejpeg.encode_jpeg(img, quality=90, colorsubsampling=s)
           for s in ("444", "422", "420", "440", "411")}
    pil = Image.fromarray(img)
    out["pillow baseline"] = pillow_jpeg(pil)
    out["pillow progressive"] = pillow_jpeg(pil, progressive=True)
    out["pillow greyscale"] = pillow_jpeg(pil.convert("L"))
    out["pillow greyscale progressive"] = pillow_jpeg(pil.convert("L"), progressive=True)
    out["pillow optimized 444"] = pillow_jpeg(pil, optimize=True, subsampling=0)
    out["restart intervals"] = _with_restarts(pil)
    out["one pixel"] = simplejpeg.encode_jpeg(np.zeros((1, 1, 3), np.uint8))
    return out


def _with_restarts(pil: Image.Image) -> bytes:
    """A JPEG with a restart marker after every MCU (Pillow's ``restart_marker_blocks``),
    so flipped bytes can also hit RST markers."""
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=90, restart_marker_blocks=1)
    return buf.getvalue()


def entropy_start(data: bytes) -> int:
    """Offset of the first entropy-coded byte (after the first SOS segment)."""
    sos = data.find(b"\xff\xda")
    assert sos > 0
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


def damaged(data: bytes, seed: int = 0) -> dict[str, bytes]:
    """Damaged variants of a good JPEG: truncations, a missing EOI, flipped bytes in the
    entropy-coded data, bytes after EOI."""
    n = len(data)
    out = {f"truncated at {f:.0%}": data[:int(n * f)] for f in (0.05, 0.3, 0.5, 0.8, 0.97)}
    out["truncated 1 byte before the end"] = data[:-1]
    out["missing EOI"] = data[:-2]
    out["EOI replaced by zeros"] = data[:-2] + b"\0\0"
    out["garbage after EOI"] = data + b"this is not JPEG data" * 3
    out["zeros after EOI"] = data + bytes(64)
    out["second image after EOI"] = data + data
    start, end = entropy_start(data), n - 2
    rng = random.Random(seed)
    for i in range(12):
        pos = rng.randrange(start, end)
        flipped = bytearray(data)
        flipped[pos] ^= rng.choice((0x01, 0x10, 0x80, 0xFF))
        out[f"byte {pos} flipped ({i})"] = bytes(flipped)
    for i in range(3):  # a run of garbage in the middle of the scan data
        pos = rng.randrange(start, end - 16)
        junk = bytes(rng.randrange(256) for _ in range(16))
        out[f"16 random bytes at {pos}"] = data[:pos] + junk + data[pos + 16:]
    return out


def sample_files() -> list[Path]:
    if not SAMPLES.is_dir():
        pytest.skip(f"real images not found at {SAMPLES}")
    files = sorted(p for p in SAMPLES.glob("*/*") if p.is_file())
    assert len(files) >= 100, SAMPLES
    return files


# ============================================================ same verdict as the full decode

@needs_check
def test_same_verdict_as_the_full_decode_on_every_imagenet_sample():
    """All 1,000 full-size files (one per class): accepted by both, and the header the
    check reads is the decoder's. ~2.5 s (the full decodes are most of it)."""
    files = sample_files()
    differ = []
    for path in files:
        data = path.read_bytes()
        ref = full_decode_ok(data)
        try:
            h, w, c = P._jpegcrop.check(data)
            got = True
        except ValueError as exc:
            got, why = False, str(exc)
        if got != ref:
            differ.append((path.name, ref, got if got else why))
        elif got:
            sh, sw, cs, _ = simplejpeg.decode_jpeg_header(data)
            assert (h, w, c) == (sh, sw, 1 if cs == "Gray" else 3), path
    assert not differ, differ


@needs_check
def test_what_the_check_accepts_the_readers_decode():
    """A seeded sample of the real files and every small good file: decode_image and
    train_preprocess (region decoder, both modes) decode what the check accepts."""
    files = sample_files()
    for path in random.Random(0).sample(files, 12):
        data = path.read_bytes()
        assert check_ok(data), path
        readers_decode(data)
    for name, data in good_jpegs().items():
        assert check_ok(data), name
        readers_decode(data)


@needs_check
@pytest.mark.parametrize("base", ["pillow baseline", "pillow progressive", "pillow greyscale",
                                  "simplejpeg 411", "restart intervals", "imagenet sample"])
def test_same_verdict_on_damaged_files(base, monkeypatch):
    if base == "imagenet sample":
        data = sample_files()[7].read_bytes()
    else:
        data = good_jpegs()[base]
    variants = damaged(data, seed=len(base))
    differ = {name: (full_decode_ok(d), check_ok(d)) for name, d in variants.items()
              if full_decode_ok(d) != check_ok(d)}
    assert not differ, differ
    # The cases whose verdict is known (module docstring), whatever the flips do.
    for name, d in variants.items():
        if name.startswith("truncated") or name in ("missing EOI", "EOI replaced by zeros"):
            with pytest.raises(ValueError, match="libjpeg: "):
                P._jpegcrop.check(d)
        if "after EOI" in name:
            assert check_ok(d), name
            readers_decode(d)
        # What the check accepts, the readers decode (flips included).
        if check_ok(d):
            readers_decode(d)
        # The pack's check without the extension says the same.
        assert fallback_ok(d, monkeypatch) == check_ok(d), name


def test_missing_eoi_and_truncation_are_refused_by_the_pack_either_way(monkeypatch):
    data = good_jpegs()["pillow baseline"]
    for d in (data[:-2], data[:len(data) // 2]):
        assert not fallback_ok(d, monkeypatch)
        if HAS_CHECK:
            assert not pack_mod._jpeg_ok(d)
        with pytest.raises(P.BadImageError, match="(?i)premature|truncated|broken"):
            pack_mod.packed_bytes(d, None)


@needs_check
def test_progressive_and_greyscale_from_pillow_are_accepted_with_their_header():
    img = textured(83, 61, seed=3)
    prog = pillow_jpeg(Image.fromarray(img), progressive=True)
    grey = pillow_jpeg(Image.fromarray(img).convert("L"))
    assert simplejpeg.decode_jpeg_header(prog)[2] == "YCbCr"
    assert P._jpegcrop.check(prog) == (83, 61, 3)
    assert P._jpegcrop.check(grey) == (83, 61, 1)
    # A progressive file cut after its first scans but closed with EOI is a valid
    # (blurry) JPEG to both; cut without EOI, it is truncated to both.
    last_sos = prog.rfind(b"\xff\xda")
    for d, ok in ((prog[:last_sos] + b"\xff\xd9", True), (prog[:last_sos], False)):
        assert full_decode_ok(d) == ok
        assert check_ok(d) == ok


@needs_check
def test_every_standard_subsampling_is_accepted_and_unusual_ones_refused_like_simplejpeg():
    """TurboJPEG (simplejpeg) refuses sampling factors it cannot name; so does the check
    (the region decoder would take some of them, but the pack converts them instead).
    The factors are patched into a real header: both refuse before the scan data."""
    data = simplejpeg.encode_jpeg(textured(48, 64), quality=90, colorsubsampling="420")
    sof = data.find(b"\xff\xc0")
    cases = {((2, 2), (2, 1), (1, 1)): False, ((1, 1), (2, 2), (1, 1)): False,
             ((3, 1), (2, 1), (1, 1)): False, ((4, 2), (1, 1), (1, 1)): False,
             ((2, 2), (1, 1), (1, 1)): True}
    for factors, ok in cases.items():
        d = bytearray(data)
        for c, (h, v) in enumerate(factors):
            d[sof + 11 + 3 * c] = (h << 4) | v
        d = bytes(d)
        assert full_decode_ok(d) == check_ok(d) == ok, factors
        if not ok:
            with pytest.raises(ValueError, match="subsampling"):
                P._jpegcrop.check(d)


# ============================================================ colour spaces and non-JPEG bytes

@pytest.mark.parametrize("kind", ["CMYK", "YCCK"])
def test_cmyk_and_ycck_are_refused_with_a_reason_and_converted_by_the_pack(kind, monkeypatch):
    """simplejpeg decodes them (it converts CMYK to RGB itself) but the region decoder
    does not, so the pack stores them as an RGB JPEG instead, with or without the
    extension (the same shards either way)."""
    rgb = textured(40, 56, seed=5)
    if kind == "CMYK":
        data = pillow_jpeg(Image.fromarray(rgb).convert("CMYK"))
    else:  # TurboJPEG writes a CMYK source as YCCK; Adobe's inverted CMYK values
        cmyk = 255 - np.asarray(Image.fromarray(rgb).convert("CMYK"))
        data = simplejpeg.encode_jpeg(np.ascontiguousarray(cmyk), quality=90, colorspace="CMYK")
    assert simplejpeg.decode_jpeg_header(data)[2] == kind
    assert full_decode_ok(data)  # the old check kept it as it was
    if HAS_CHECK:
        with pytest.raises(ValueError, match=f"^{kind} colour space with 4 components"):
            P._jpegcrop.check(data)
        assert not pack_mod._jpeg_ok(data)
    assert not fallback_ok(data, monkeypatch)
    stored = pack_mod.packed_bytes(data, None)
    assert stored != data and stored[:3] == b"\xff\xd8\xff"
    assert simplejpeg.decode_jpeg_header(stored)[2] == "YCbCr"
    with monkeypatch.context() as m:
        m.setattr(P, "_jpegcrop", None)
        assert pack_mod.packed_bytes(data, None) == stored
    # The right colours (inverted or garbled ones would be ~100 levels off; the stored
    # JPEG is one lossy 4:2:0 generation away from the decoded CMYK file).
    assert np.abs(P.decode_image(stored).astype(int) - P.decode_image(data)).mean() < 12
    assert np.abs(P.decode_image(stored).astype(int) - rgb).mean() < 12
    if HAS_CHECK:
        assert P._jpegcrop.check(stored) == (40, 56, 3)


def test_png_named_jpeg_is_refused_and_converted(monkeypatch):
    buf = io.BytesIO()
    Image.fromarray(textured(30, 20)).save(buf, "PNG")
    png = buf.getvalue()
    if HAS_CHECK:
        with pytest.raises(ValueError, match="libjpeg: Not a JPEG file"):
            P._jpegcrop.check(png)
        assert not pack_mod._jpeg_ok(png)
    assert not fallback_ok(png, monkeypatch)
    stored = pack_mod.packed_bytes(png, None)
    assert stored[:3] == b"\xff\xd8\xff"
    assert simplejpeg.decode_jpeg(stored).shape == (30, 20, 3)


@needs_check
def test_check_argument_errors():
    with pytest.raises(ValueError, match="libjpeg: Empty input file"):
        P._jpegcrop.check(b"")
    with pytest.raises(TypeError):
        P._jpegcrop.check("not bytes")
    data = good_jpegs()["pillow baseline"]
    assert P._jpegcrop.check(memoryview(data)) == P._jpegcrop.check(bytearray(data))


# ============================================================ packed_bytes keeps good JPEGs

@pytest.mark.parametrize("with_extension", [True, False])
def test_packed_bytes_returns_a_good_jpeg_unchanged(with_extension, monkeypatch):
    if with_extension and not HAS_CHECK:
        pytest.skip("trainers._jpegcrop (with check) not built")
    if not with_extension:
        monkeypatch.setattr(P, "_jpegcrop", None)
    files = [p.read_bytes() for p in sample_files()[:3]] if SAMPLES.is_dir() else []
    for data in list(good_jpegs().values()) + files:
        assert pack_mod.packed_bytes(data, None) is data
        assert pack_mod.packed_bytes(data + b"trailing", None) == data + b"trailing"


# ============================================================ the benchmark script

@needs_check
def test_bench_jpeg_check_measures_every_method_and_checks_the_verdicts():
    """``bench/jpeg_check.py``'s ``measure`` on a few small files (one pass): a figure per
    method, the CMYK file counted as the one difference, and the sign of disagreement
    checked (a file the two checks judge differently, not CMYK, stops it)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "jpeg_check.py"
    spec = importlib.util.spec_from_file_location("bench_jpeg_check", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cmyk = pillow_jpeg(Image.fromarray(textured(40, 56)).convert("CMYK"))
    datas = list(good_jpegs().values()) + [cmyk]
    m = bench.measure(datas, repeats=1)
    assert (m["files"], m["accepted_old"], m["accepted_new"]) == (len(datas), len(datas),
                                                                   len(datas) - 1)
    assert len(m["us_per_image"]) == 5 and all(us > 0 for us in m["us_per_image"].values())
    assert m["new_over_old"] > 0
    with pytest.MonkeyPatch.context() as mp:  # a disagreement that is not CMYK
        mp.setattr(bench, "_new", lambda d: d is not datas[0])
        with pytest.raises(AssertionError, match=r"disagree on files \[0\]"):
            bench.measure(datas, repeats=1)
