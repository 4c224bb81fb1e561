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
