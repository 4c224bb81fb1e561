"""The compact listing of input members (trainers/listing.py) and the pack's
assignment of a listing to splits and shards (trainers/pack.py ``_assign``,
``_chunks``)."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest

from trainers import pack, scan
from trainers.listing import Listing, ListingBuilder
from trainers.options import PackOptions

PAIRS = ([(f"/data/train/n{c:08d}/n{c:08d}_{i}.JPEG", c) for c in range(4) for i in range(9)]
         + [("/data/train/n00000004/images/a.JPEG", 4), ("/data/train/n00000004/boxes.txt", 4),
            ("/data/train/n00000004/images/b.JPEG", 4),
            ("/data/val/caf\u00e9 \udcff.jpg", 2),  # not UTF-8 on disk: surrogateescape
            ("/z.zip!ILSVRC/Data/CLS-LOC/train/n1/n1_1.JPEG", 0),
            ("no-folder.jpg", 1), ("/data/", 3), ("/data/a", -1)])


def test_listing_round_trips_every_pair():
    listing = Listing.from_pairs(PAIRS)
    assert len(listing) == len(PAIRS)
    assert list(listing) == PAIRS and listing == PAIRS
    assert [listing[i] for i in range(len(PAIRS))] == PAIRS
    assert listing[-1] == PAIRS[-1] and listing[-len(PAIRS)] == PAIRS[0]
    assert all(type(k) is str and type(lab) is int for k, lab in listing)
    assert listing.labels.tolist() == [lab for _, lab in PAIRS]
    assert listing.name(3) == "n00000000_3.JPEG"
    with pytest.raises(IndexError):
        listing[len(PAIRS)]
    assert listing != PAIRS[:-1] and listing != PAIRS[:-1] + [("/data/a", 0)]


def test_an_empty_listing():
    empty = Listing.from_pairs([])
    assert len(empty) == 0 and list(empty) == [] and not empty
    assert list(pickle.loads(pickle.dumps(empty))) == []
    assert list(empty.take([])) == [] and list(empty[0:3]) == []


def test_views_take_slice_and_compose_without_copying_names():
    listing = Listing.from_pairs(PAIRS)
    picks = [5, 3, 40, 0, 5, -1]
    view = listing.take(picks)
    assert list(view) == [PAIRS[i] for i in picks]
    assert view._blob is listing._blob  # a view shares the names
    assert list(view[1:4]) == [PAIRS[i] for i in picks[1:4]]
    assert list(view[::-2]) == [PAIRS[i] for i in picks[::-2]]
    assert list(listing[2:30:7]) == PAIRS[2:30:7]
    assert list(view.take(np.array([2, 0], dtype=np.uint32))) == [PAIRS[40], PAIRS[5]]
    assert view.labels.tolist() == [PAIRS[i][1] for i in picks]
    with pytest.raises(IndexError):
        listing.take([len(PAIRS)])
    with pytest.raises(IndexError):
        listing.take([-len(PAIRS) - 1])


def test_a_pickled_view_carries_only_its_members():
    many = [(f"/data/n{c:08d}/n{c:08d}_{i:06d}.JPEG", c) for c in range(50) for i in range(400)]
    listing = Listing.from_pairs(many)
    view = listing.take(np.arange(0, len(many), 997))
    back = pickle.loads(pickle.dumps(view))
    assert list(back) == list(view) and back._index is None
    assert len(pickle.dumps(view)) < len(pickle.dumps(listing)) / 20
    assert list(pickle.loads(pickle.dumps(listing))) == many


def test_a_listing_is_a_few_bytes_per_member():
    """ImageNet-style names keep only their distinct middle: far below the ~230 bytes
    a Python (path, label) tuple costs."""
    many = [(f"/home/user/imagenet/train/n{c:08d}/n{c:08d}_{i}.JPEG", c)
            for c in range(20) for i in range(1000)]
    listing = Listing.from_pairs(many)
    assert listing.nbytes / len(many) < 16, listing.nbytes / len(many)
    assert list(listing) == many


def test_long_flat_runs_are_cut_into_groups(monkeypatch):
    monkeypatch.setattr("trainers.listing.RUN_LIMIT", 7)
    pairs = [(f"/val/ILSVRC2012_val_{i:08d}.JPEG", i % 3) for i in range(30)]
    listing = ListingBuilder().extend(pairs).build()
    assert len(listing._heads) == 5 and list(listing) == pairs


def test_scan_lists_every_entry_into_a_listing(tmp_path):
    for c, files in {"n02": ["b.JPEG", "a.JPEG"], "n01": ["x.jpg", "sub/y.JPEG", "sub/z.txt"]}.items():
        for f in files:
            (tmp_path / c / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / c / f).write_bytes(b"x")
    (tmp_path / "n01" / "empty").mkdir()
    names, items = scan.scan_class_folders(tmp_path)
    assert isinstance(items, Listing) and names == ("n01", "n02")
    root = str(tmp_path)
    assert list(items) == [(f"{root}/n01/empty", 0), (f"{root}/n01/sub/y.JPEG", 0),
                           (f"{root}/n01/sub/z.txt", 0), (f"{root}/n01/x.jpg", 0),
                           (f"{root}/n02/a.JPEG", 1), (f"{root}/n02/b.JPEG", 1)]
    assert [k for k, _ in scan.scan_class_folders(tmp_path, images_only=True)[1]] == [
        f"{root}/n01/sub/y.JPEG", f"{root}/n01/x.jpg", f"{root}/n02/a.JPEG", f"{root}/n02/b.JPEG"]



def _arrays(listing: Listing) -> tuple:
    return (listing._heads, listing._tails, bytes(listing._blob), listing._ends.tolist(),
            listing._groups.tolist(), listing._labels.tolist(), listing._ends.dtype,
            listing._groups.dtype, listing._labels.dtype)


@pytest.mark.parametrize("run_limit", [3, 7, 65536])
def test_bulk_names_build_the_listing_members_added_one_by_one_build(monkeypatch, run_limit):
    """``add_names`` (a scanned folder's entries at once) gives the very arrays of
    ``add`` per member: the same groups, cut at the same run limit, across folders
    and labels, with names of any bytes."""
    monkeypatch.setattr("trainers.listing.RUN_LIMIT", run_limit)
    runs = [("/d/n01/", [f"n01_{i}.JPEG" for i in range(10)], 0),
            ("/d/n01/", ["n01_x.JPEG"], 0),  # the same folder again: one run
            ("/d/n01/sub/", ["a.txt", "\udcff.JPEG", "b.JPEG"], 0),
            ("/d/n02/", [f"n02_{i}.JPEG" for i in range(8)], 1), ("/d/n03/", [], 2),
            ("/d/n03/", ["only.jpg"], 2)]
    one, bulk = ListingBuilder(), ListingBuilder()
    for folder, names, label in runs:
        for name in names:
            one.add(folder + name, label)
        bulk.add_names(folder, names, label)
    assert _arrays(bulk.build()) == _arrays(one.build())


def test_scan_builds_the_listing_of_its_entries_added_one_by_one(tmp_path, monkeypatch):
    """The scan adds each folder's entries in bulk; the listing is the one of its
    entries' ``(path, label)`` added one by one (nested folders, a long flat one)."""
    monkeypatch.setattr("trainers.listing.RUN_LIMIT", 5)
    for c, files in {"n02": [f"{i}.JPEG" for i in range(12)],
                     "n01": ["x.jpg", "sub/y.JPEG", "sub/z.txt", "sub/deep/w.JPEG", "v.JPEG"],
                     "n03": ["aa/1.JPEG", "aa/2.JPEG", "bb/3.JPEG"]}.items():  # same lengths
        for f in files:
            (tmp_path / c / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / c / f).write_bytes(b"x")
    names, items = scan.scan_class_folders(tmp_path)
    ref = ListingBuilder()
    for label, c in enumerate(names):
        ref.extend((e.path, label) for e in scan.files_below(tmp_path / c))
    assert _arrays(items) == _arrays(ref.build())

def test_the_common_suffix_is_the_reversed_common_prefix():
    """listing._common_suffix against its definition, on names that share prefixes,
    suffixes, both or neither, overlap, or are shorter than the prefix cut."""
    import os
    import random

    from trainers.listing import _common_suffix

    rng = random.Random(0)
    for _ in range(3000):
        names = ["".join(rng.choice("ab.") for _ in range(rng.randrange(0, 7)))
                 for _ in range(rng.randrange(1, 5))]
        if rng.random() < 0.5:
            names = [n + ".JPEG" for n in names]
        start = len(os.path.commonprefix(names))
        want = os.path.commonprefix([n[start:][::-1] for n in names])[::-1]
        assert _common_suffix(names, start) == want, names


def test_names_of_several_bytes_a_character_round_trip():
    pairs = [(f"/d/{n}", 1) for n in ["éa.JPEG", "éb.JPEG", "xéé.JPEG",
                                      "\udcff.JPEG", "漢.JPEG", "a.JPEG"]]
    for cut in range(len(pairs)):
        listing = ListingBuilder().extend(pairs[cut:]).build()
        assert list(listing) == pairs[cut:]


def _odd_tree(root) -> None:
    """A class folder with every kind of entry the listing must keep or drop."""
    import os

    c = root / "n01"
    for f in ["b.JPEG", "a.JPEG", "A.JPEG", "é.JPEG", "zé.JPEG", "zz.JPEG", "sub/y.JPEG",
              "sub/deep/deeper/w.JPEG", "sub/deep/v.txt", ".hidden/h.JPEG", "-x.JPEG",
              "Sub/u.JPEG", "sub.JPEG"]:
        (c / f).parent.mkdir(parents=True, exist_ok=True)
        (c / f).write_bytes(b"x")
    (c / "empty").mkdir()
    (c / "sub" / "empty2").mkdir()
    os.symlink(c / "sub", c / "link_to_dir")  # followed, as os.DirEntry.is_dir() does
    os.symlink(c / "a.JPEG", c / "link_to_file.JPEG")
    os.symlink(c / "gone", c / "dangling.JPEG")
    os.mkfifo(c / "fifo.JPEG")


@pytest.mark.parametrize("in_c", [True, False], ids=["list_folder", "scandir"])
def test_runs_below_are_files_below(tmp_path, monkeypatch, in_c):
    """``runs_below`` lists the entries of ``files_below`` in the same order, in runs
    of one folder: sub-folders (links to them too) depth first, empty ones listed
    themselves, hidden ones and those past MAX_DEPTH left out; in C and without it."""
    _odd_tree(tmp_path)
    if not in_c:
        monkeypatch.setattr(scan, "_jpegcrop", None)
    elif getattr(scan._jpegcrop, "list_folder", None) is None:
        pytest.skip("trainers._jpegcrop (with list_folder) not built")
    for depth in (32, 1, 0):
        monkeypatch.setattr(scan, "MAX_DEPTH", depth)
        folder = str(tmp_path / "n01")
        runs = scan.runs_below(folder)
        assert [head + n for head, names in runs for n in names] == [
            e.path for e in scan.files_below(folder)]
        assert all(names for _, names in runs)
        assert all(a[0] != b[0] for a, b in zip(runs, runs[1:]))  # runs are maximal
    with pytest.raises(FileNotFoundError):
        scan.runs_below(str(tmp_path / "missing"))


@pytest.mark.skipif(getattr(scan._jpegcrop, "list_folder", None) is None,
                    reason="trainers._jpegcrop (with list_folder) not built")
def test_a_name_that_is_not_utf8_is_listed_by_scandir(tmp_path):
    """Byte order is not str order for such names (surrogateescape): list_folder
    declines (None) and runs_below lists the folder with os.scandir."""
    import os

    d = tmp_path / "n01"
    d.mkdir()
    for name in [b"\xff.JPEG", b"\xc3\xa9.JPEG", b"a.JPEG", b"\xed\xb3\xbf.JPEG"]:
        (d / os.fsdecode(name)).write_bytes(b"x")
    assert scan._jpegcrop.list_folder(str(d)) is None
    assert [h + n for h, names in scan.runs_below(str(d)) for n in names] == [
        e.path for e in scan.files_below(d)]
    (d / os.fsdecode(b"\xff.JPEG")).unlink()
    (d / os.fsdecode(b"\xed\xb3\xbf.JPEG")).unlink()
    names, dirs = scan._jpegcrop.list_folder(str(d))
    assert names == ["a.JPEG", "é.JPEG"] and dirs == b"\0\0"


SIZES = [7, 13, 20, 1, 2, 40, 3]  # members per class


def _members(shuffled: bool) -> Listing:
    pairs = [(f"/d/c{c}/img{i:03d}.JPEG", c) for c, n in enumerate(SIZES) for i in range(n)]
    if shuffled:  # a flat layout: labels not grouped
        pairs = [pairs[i] for i in np.random.default_rng(1).permutation(len(pairs))]
    return Listing.from_pairs(pairs)


@pytest.mark.parametrize("shuffled", [False, True])
def test_hold_out_is_stratified_with_the_rounded_count_per_class(shuffled):
    items = _members(shuffled)
    opts = PackOptions(val_fraction=0.25, seed=3)
    train, val = pack._assign(items, opts, has_val_folder=False)
    want = {c: int(round(n * 0.25)) for c, n in enumerate(SIZES)}  # 2, 3, 5, 0, 0, 10, 1
    got = Counter(lab for _, lab in val)
    assert {c: got.get(c, 0) for c in want} == want
    keys = [k for k, _ in train] + [k for k, _ in val]
    assert sorted(keys) == sorted(k for k, _ in items)  # each member once
    assert len(train) == len(items) - sum(want.values())
    again = pack._assign(items, opts, has_val_folder=False)
    assert list(again[0]) == list(train) and list(again[1]) == list(val)
    other = pack._assign(items, PackOptions(val_fraction=0.25, seed=4), has_val_folder=False)
    assert list(other[0]) != list(train)


def test_no_hold_out_with_a_validation_input_or_a_zero_fraction():
    items = _members(False)
    for opts, has_val in ((PackOptions(val_fraction=0.25), True), (PackOptions(val_fraction=0.0), False)):
        train, val = pack._assign(items, opts, has_val_folder=has_val)
        assert len(val) == 0 and sorted(train) == sorted(items)
        assert list(train) != list(items)  # shuffled


def test_chunks_are_balanced_views_in_order():
    train, _ = pack._assign(_members(False), PackOptions(val_fraction=0.0), False)
    for n in (1, 4, 7, len(train), len(train) + 5):
        chunks = pack._chunks(train, n)
        assert len(chunks) == min(n, len(train))
        sizes = [len(c) for c in chunks]
        assert max(sizes) - min(sizes) <= 1
        assert [p for c in chunks for p in c] == list(train)
        assert all(isinstance(c, Listing) and c._blob is train._blob for c in chunks)
    chunk = pack._chunks(train, 4)[2]
    assert list(pickle.loads(pickle.dumps(chunk))) == list(chunk)


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser in plain Python (Steele, Lea & Flood 2014)."""
    m = (1 << 64) - 1
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_order_keys_are_splitmix64_of_position_plus_the_seeds_offset():
    import hashlib

    for seed, stream in ((0, 0), (3, 1), (12345, 2)):
        offset = int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:8],
                                "little")
        keys = pack._order_keys(50, seed, stream)
        assert keys.dtype == np.uint64
        assert keys.tolist() == [_splitmix64((i + offset) % (1 << 64)) for i in range(50)]
        assert len(set(keys.tolist())) == 50  # a bijection: no ties to break


def test_the_assignment_is_pinned_whatever_the_numpy_version():
    # The members a seed holds out and their order are part of the pack format: a
    # resumed pack, or hosts packing disjoint shards, must agree. These lists were
    # recorded when FORMAT_VERSION became 3; a change here needs a new FORMAT_VERSION.
    train, val = pack._assign(_members(False), PackOptions(val_fraction=0.25, seed=3), False)

    def short(listing):
        return [f"{k.rsplit('/', 2)[-2]}/{k[-8:-5]}" for k, _ in listing]

    assert short(val) == ["c5/022", "c1/004", "c5/001", "c2/018", "c5/035", "c5/016",
                          "c2/007", "c2/011", "c2/003", "c6/001", "c5/006", "c5/032",
                          "c1/000", "c0/003", "c1/007", "c5/023", "c5/028", "c2/005",
                          "c0/001", "c5/011", "c5/021"]
    assert short(train)[:12] == ["c5/005", "c2/000", "c5/003", "c1/012", "c2/004", "c1/003",
                                 "c3/000", "c0/006", "c5/018", "c6/002", "c2/001", "c5/008"]
