"""The pack fingerprint's lines in C (``trainers._jpegcrop.stat_lines``): byte for byte
``trainers.pack._stat_lines``'s Python lines, and None (so the Python function runs)
for whatever that function handles another way."""

from __future__ import annotations

import os
import types

import numpy as np
import pytest

from trainers import pack as pack_mod
from trainers import preprocess as P
from trainers.listing import Listing

C = getattr(P._jpegcrop, "stat_lines", None)
pytestmark = pytest.mark.skipif(C is None, reason="trainers._jpegcrop (with stat_lines) not built")


def python_lines(pairs, monkeypatch) -> bytes:
    with monkeypatch.context() as m:
        m.setattr(P, "_jpegcrop", types.SimpleNamespace())
        return pack_mod._stat_lines(pairs)


@pytest.fixture
def tree(tmp_path):
    a, b = tmp_path / "n01" / "images", tmp_path / "n02"
    a.mkdir(parents=True)
    b.mkdir()
    for i, d in enumerate([a, a, b, a]):  # the folder changes, then comes back
        (d / f"f{i}.JPEG").write_bytes(b"x" * (100 * i + 1))
    os.utime(a / "f0.JPEG", ns=(1, 1_234_567_891_011_121_314))
    (b / "link.JPEG").symlink_to(a / "f1.JPEG")  # followed: the target's size and time
    (b / "dangling.JPEG").symlink_to(tmp_path / "nowhere")
    (b / "é ü.JPEG").write_bytes(b"yy")
    return tmp_path


def _pairs(tree):
    names = ["n01/images/f0.JPEG", "n01/images/f1.JPEG", "n02/f2.JPEG", "n01/images/f3.JPEG",
             "n02/link.JPEG", "n02/dangling.JPEG", "n02/gone.JPEG", "n03/missing.JPEG",
             "n02/é ü.JPEG", "n02/f2.JPEG"]
    return [(str(tree / n), k * 37) for k, n in enumerate(names)]


def test_the_lines_are_the_python_lines(tree, monkeypatch):
    pairs = _pairs(tree) + [(str(tree / "n02") + "/", 5)]  # a folder's own name, with a slash
    got = C(pairs)
    assert got == python_lines(pairs, monkeypatch)
    lines = got.split(b"\n")
    assert lines[0].endswith(b"\x000\x001\x001234567891011121314")
    assert lines[4].split(b"\0")[2] == b"101"  # the link's target
    assert [ln.split(b"\0")[2] for ln in lines[5:8]] == [b"missing"] * 3


def test_a_listing_and_odd_paths(tree, monkeypatch):
    listing = Listing.from_pairs(_pairs(tree))
    assert C(listing) == python_lines(listing, monkeypatch)
    assert C([]) == b"" == python_lines([], monkeypatch)
    monkeypatch.chdir(tree / "n02")
    pairs = [("f2.JPEG", 1), ("/", 2), ("/nonexistent-autotune", 3), ("./f2.JPEG", -4),
             ("n01//images/f0.JPEG", 2**40)]
    assert C(pairs) == python_lines(pairs, monkeypatch)


@pytest.mark.parametrize("pairs", [
    [("ok", 1), ("bad\udcff.JPEG", 2)],  # not valid UTF-8: the Python function raises
    [("a\0b", 1)],  # a NUL: os.stat raises ValueError
    [("a", np.int64(3))],  # not an int
    [("a", 2**70)],
    [("a", 1, 2)],
    ["ab"],
])
def test_what_python_handles_another_way_is_declined(pairs):
    assert C(pairs) is None


def test_errors_of_the_iteration_pass_through():
    def gen():
        yield ("a", 1)
        raise KeyError("from the listing")

    with pytest.raises(KeyError, match="from the listing"):
        C(gen())
