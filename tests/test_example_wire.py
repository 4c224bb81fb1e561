"""The copy-free record walk (trainers.example_wire) against protobuf's parse."""

from __future__ import annotations

import pytest
from tensorflow_datasets.proto import tf_example_pb2

from trainers import example_wire, input_pipeline as ip


def _example(image: bytes, label: int, *, extra: bool = True,
             order=("file_name", "image", "label")) -> bytes:
    """A pack-style record, serialized by protobuf."""
    ex = tf_example_pb2.Example()
    feats = ex.features.feature
    for key in order:
        if key == "image":
            feats["image"].bytes_list.value.append(image)
        elif key == "label":
            feats["label"].int64_list.value.append(label)
        elif extra:
            feats[key].bytes_list.value.append(b"n01440764_1.JPEG")
    if extra:
        feats["score"].float_list.value.append(0.5)
    return ex.SerializeToString(deterministic=True)


def _varint(n: int) -> bytes:
    n &= 2**64 - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _unpacked_example(image: bytes, label: int) -> bytes:
    """The same example by hand, with the label list unpacked (``08 <varint>``, which
    protobuf parsers must accept) and the label entry first."""
    label_feat = _field(3, _varint(1 << 3 | 0) + _varint(label))
    image_feat = _field(1, _field(1, image))
    entries = (_field(1, _field(1, b"label") + _field(2, label_feat))
               + _field(1, _field(1, b"image") + _field(2, image_feat)))
    return _field(1, entries)


@pytest.mark.parametrize("label", [0, 1, 127, 128, 999, 21_840, -3])
def test_walk_matches_protobuf(label):
    image = bytes(range(256)) * 300  # > 64 KiB: multi-byte lengths
    rec = _example(image, label)
    view, got = example_wire.image_and_label(rec)
    assert isinstance(view, memoryview) and view.obj is rec  # no copy
    assert bytes(view) == image and got == label


@pytest.mark.parametrize("order", [("image", "label"), ("label", "image")])
def test_walk_any_feature_order(order):
    rec = _example(b"\xff\xd8\xffjpeg", 417, extra=False, order=order)
    view, label = example_wire.image_and_label(rec)
    assert bytes(view) == b"\xff\xd8\xffjpeg" and label == 417


@pytest.mark.parametrize("label", [5, 300, -1])
def test_walk_unpacked_int64_list(label):
    rec = _unpacked_example(b"\xff\xd8\xffjpeg", label)
    ex = tf_example_pb2.Example.FromString(rec)  # a valid example
    assert ex.features.feature["label"].int64_list.value[0] == label
    view, got = example_wire.image_and_label(rec)
    assert bytes(view) == b"\xff\xd8\xffjpeg" and got == label


@pytest.mark.parametrize("bad", [b"", b"\x0a\x05abc", b"\x0a\x02\x0a\x7f", b"garbage!" * 5,
                                 _example(b"x", 1)[:-3]])
def test_walk_rejects_broken_records(bad):
    with pytest.raises(example_wire.WireError):
        example_wire.image_and_label(bad)
    with pytest.raises(ValueError):  # parse_example: the protobuf parse gives the error
        ip.parse_example(bad)


def test_missing_feature_is_an_error():
    ex = tf_example_pb2.Example()
    ex.features.feature["image"].bytes_list.value.append(b"x")
    rec = ex.SerializeToString()
    with pytest.raises(example_wire.WireError, match="no image/label"):
        example_wire.image_and_label(rec)
    with pytest.raises(ValueError, match="no image/label"):
        ip.parse_example(rec)


# ------------------------------------------------ the walk in C against the Python walk

needs_c = pytest.mark.skipif(example_wire._walk is None,
                             reason="trainers._jpegcrop (with example_image_label) not built")


def _python_walk(rec: bytes, monkeypatch) -> tuple:
    with monkeypatch.context() as m:
        m.setattr(example_wire, "_walk", None)
        try:
            view, label = example_wire.image_and_label(rec)
        except example_wire.WireError as exc:
            return ("error", str(exc))
    return ("ok", bytes(view), label)


def _records() -> list[bytes]:
    from trainers.pack import example_record

    image = bytes(range(256)) * 300
    recs = [example_record(b"\xff\xd8\xff" + bytes(n), label, name)
            for n, label, name in [(0, 0, "a.JPEG"), (200, 127, "x" * 130 + ".JPEG"),
                                   (20_000, 128, "n01440764_1.JPEG"), (70_000, 21_840, "é.JPEG")]]
    recs += [_example(image, label) for label in (0, 1, 999, -3, 2**40)]
    recs += [_example(b"\xff\xd8\xffjpeg", 417, extra=False, order=o)
             for o in (("image", "label"), ("label", "image"))]
    recs += [_unpacked_example(b"\xff\xd8\xffjpeg", label) for label in (5, 300, -1)]
    # fixed64 / fixed32 fields beside the features and inside a map entry: skipped
    fixed = _varint(2 << 3 | 1) + bytes(8) + _varint(3 << 3 | 5) + bytes(4)
    entry_img = _field(1, _field(1, b"image") + fixed + _field(2, _field(1, _field(1, b"IMG"))))
    entry_lab = _field(1, _field(1, b"label") + _field(2, _field(3, _field(1, _varint(9)))))
    recs.append(fixed + _field(1, entry_img + entry_lab) + fixed)
    # two image entries (the last one counts) and a varint field between entries
    entry_img2 = _field(1, _field(1, b"image") + _field(2, _field(1, _field(1, b"SECOND"))))
    recs.append(_field(1, entry_img + _varint(7 << 3) + _varint(300) + entry_lab + entry_img2))
    return recs


@needs_c
def test_the_c_walk_gives_the_python_walks_result_on_valid_records(monkeypatch):
    for rec in _records():
        got = example_wire._walk(rec)
        assert got is not None, rec[:40]
        assert _python_walk(rec, monkeypatch) == ("ok", rec[got[0]:got[1]], got[2])
        view, label = example_wire.image_and_label(rec)
        assert view.obj is rec and (bytes(view), label) == (rec[got[0]:got[1]], got[2])


@needs_c
def test_the_c_walk_never_accepts_what_the_python_walk_refuses(monkeypatch):
    """Every truncation of small records and random byte changes of all of them: where
    the C walk gives a result it is the Python walk's; where it gives None, the
    Python walk decides (and names the error)."""
    import random

    rng = random.Random(0)
    cases = []
    for rec in _records():
        if len(rec) < 400:
            cases += [rec[:n] for n in range(len(rec))]
        head = min(len(rec), 120)  # the structure is at the front (and at the end)
        for _ in range(150):
            b = bytearray(rec)
            pos = rng.randrange(head) if rng.random() < 0.8 else rng.randrange(len(rec))
            b[pos] = rng.randrange(256)
            cases.append(bytes(b))
        cases.append(rec + b"\x08\x01")  # a varint field after the example
        cases.append(rec + b"\x0b")  # wire type 3: unsupported
    accepted = refused = 0
    for rec in cases:
        got = example_wire._walk(rec)
        py = _python_walk(rec, monkeypatch)
        if got is None:
            refused += 1
        else:
            accepted += 1
            assert py == ("ok", rec[got[0]:got[1]], got[2])
        assert example_wire.image_and_label(rec)[1] == py[2] if py[0] == "ok" else True
    assert accepted > 500 and refused > 500


@needs_c
def test_the_c_walk_leaves_varints_over_64_bits_to_python(monkeypatch):
    """A label varint of 10 bytes whose last byte carries bits past 64: Python's
    arbitrary-precision walk gives its value; the C walk steps aside."""
    big = b"\xff" * 9 + b"\x7f"  # 2**70 - 1
    label_feat = _field(3, _varint(1 << 3 | 0)[:1] + big)
    rec = _field(1, _field(1, _field(1, b"label") + _field(2, label_feat))
                 + _field(1, _field(1, b"image") + _field(2, _field(1, _field(1, b"I")))))
    assert example_wire._walk(rec) is None
    assert _python_walk(rec, monkeypatch) == ("ok", b"I", 2**70 - 1 - 2**64)
