"""Read the image and label of a packed record without copying the image.

A record of ``trainers.pack`` is a serialized ``tf.train.Example`` (protobuf wire
format, https://protobuf.dev/programming-guides/encoding/)::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }   // entries: {key = 1; value = 2}
    Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                        Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    Int64List { repeated int64 value = 1 [packed]; }

Parsing it with the protobuf classes (``Example.FromString``, then
``feature["image"].bytes_list.value[0]``) copies the JPEG into a new ``bytes``: about
60 us per 110 KB record of CPU time on the 2-core development machine, 6% of the
decode. :func:`image_and_label` walks the wire format instead and returns the JPEG as
a ``memoryview`` into the record, which the decoders (simplejpeg, ``_jpegcrop``,
Pillow) read in place. With the C extension built, the walk itself runs in C
(``_jpegcrop.example_image_label``: about 1 us instead of 21 us of Python per record;
any record it does not accept is walked here again, which names the error).
"""

from __future__ import annotations

try:  # the same walk in C (trainers/_jpegcrop.c), when the extension is built
    from trainers._jpegcrop import example_image_label as _walk
except ImportError:  # not built, or built before it had the walk
    _walk = None

_LEN = 2  # wire type of length-delimited fields
_VARINT = 0


class WireError(ValueError):
    """The bytes are not a ``tf.train.Example`` with one ``image`` bytes feature and
    one ``label`` int64 feature."""


def read_varint(buf, i: int, end: int) -> tuple[int, int]:
    """The protobuf varint (7 bits a byte, low bits first) at ``buf[i:end]`` ->
    ``(value, next index)``; ``buf``: bytes, bytearray or memoryview.

    Raises:
      WireError: it runs past ``end`` or over 10 bytes."""
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise WireError("truncated or over-long varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """Yield ``(field number, wire type, value start, value end)`` for the fields of
    the message ``buf[start:end]`` (for a varint field, the varint's own bytes);
    fixed32/fixed64 fields are skipped.

    Raises:
      WireError: a field runs past the message, or an unsupported wire type."""
    i = start
    while i < end:
        key, i = read_varint(buf, i, end)
        field, wire = key >> 3, key & 7
        if wire == _LEN:
            n, i = read_varint(buf, i, end)
            if i + n > end:
                raise WireError(f"field {field} runs past its message ({i + n} > {end})")
            yield field, wire, i, i + n
            i += n
        elif wire == _VARINT:
            _, j = read_varint(buf, i, end)
            yield field, wire, i, j
            i = j
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise WireError(f"unsupported wire type {wire} of field {field}")
    if i != end:
        raise WireError("message ends inside a field")


def _first(buf: memoryview, start: int, end: int, number: int, wire: int = _LEN) -> tuple[int, int]:
    for field, w, s, e in _fields(buf, start, end):
        if field == number and w == wire:
            return s, e
    raise WireError(f"no field {number}")


def image_and_label(record: bytes) -> tuple[memoryview, int]:
    """``(JPEG bytes, label)`` of a packed record; the JPEG is a ``memoryview`` of
    ``record`` (no copy).

    Args:
      record: a serialized ``tf.train.Example`` with an ``image`` bytes feature and a
        ``label`` int64 feature (the pack's records; other features are skipped).

    Raises:
      WireError (a ValueError): the record is not such an example.
    """
    buf = memoryview(record)
    if _walk is not None:
        got = _walk(buf)
        if got is not None:
            return buf[got[0]:got[1]], got[2]
    fs, fe = _first(buf, 0, len(buf), 1)  # Example.features
    image = label = None
    for field, wire, s, e in _fields(buf, fs, fe):  # Features.feature map entries
        if field != 1 or wire != _LEN:
            continue
        ks, ke = _first(buf, s, e, 1)
        key = bytes(buf[ks:ke])
        if key == b"image":
            vs, ve = _first(buf, s, e, 2)
            ls, le = _first(buf, vs, ve, 1)  # Feature.bytes_list
            is_, ie = _first(buf, ls, le, 1)
            image = buf[is_:ie]
        elif key == b"label":
            vs, ve = _first(buf, s, e, 2)
            ls, le = _first(buf, vs, ve, 3)  # Feature.int64_list
            label = _int64_value(buf, ls, le)
    if image is None or label is None:
        raise WireError("record has no image/label features")
    return image, label


def _int64_value(buf: memoryview, start: int, end: int) -> int:
    """The first value of an ``Int64List`` (packed or not), as a signed int64."""
    for field, wire, s, e in _fields(buf, start, end):
        if field != 1:
            continue
        value, _ = read_varint(buf, s, e)  # packed: the first varint of the run
        return value - (1 << 64) if value >= 1 << 63 else value
    raise WireError("empty int64 list")
