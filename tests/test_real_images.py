"""Real ILSVRC-2012 JPEGs from ../shared/data (skipped where absent; CI has them):
the label mapping end to end, the greyscale files, and packing real photos."""

import os

import numpy as np
import pytest
import simplejpeg

from trainers import input_pipeline as ip
from trainers import preprocess
from trainers.pack import pack_folder, scan_image_folder, shard_paths
from trainers.options import PackOptions


def test_class_index_is_the_imagenet2012_order(shared_data):
    classes, items = scan_image_folder(shared_data / "imagenet-samples")
    assert len(classes) == 1000 and len(items) == 1000
    # tensorflow-datasets imagenet2012 label order: sorted wnids.
    assert classes[0] == "n01440764"     # tench
    assert classes[1] == "n01443537"     # goldfish
    assert classes[999] == "n15075141"   # toilet tissue
    assert list(classes) == sorted(classes)


def test_every_sample_decodes_to_rgb_including_the_greyscale_ones(shared_data):
    grey = 0
    for path, _ in scan_image_folder(shared_data / "imagenet-samples")[1]:
        data = open(path, "rb").read()
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        grey += colorspace == "Gray"
        img = preprocess.decode_image(data, min_height=64, min_width=64)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    assert grey == 23  # the README of the data says 23 of the 1,000 are greyscale


def test_pack_real_photos_and_read_labels_back(shared_data, tmp_path):
    src = tmp_path / "subset"
    for wnid in ("n01440764", "n01443537", "n15075141"):
        (src / wnid).mkdir(parents=True)
        for f in (shared_data / "imagenet-samples" / wnid).iterdir():
            os.symlink(f, src / wnid / f.name)
    res = pack_folder(src, tmp_path / "packed", PackOptions(num_shards=1, resize_shorter=256))
    assert res.packed == 3 and res.skipped == 0
    assert res.decode_speedup is not None and res.decode_speedup > 1.0
    records = ip._Records(shard_paths(tmp_path / "packed", "train"),
                          res.split("train").shard_lengths)
    labels = sorted(ip.parse_example(r)[1] for r in records.read([0, 1, 2]))
    assert labels == [0, 1, 2]
    for r in records.read([0, 1, 2]):
        data, _ = ip.parse_example(r)
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        assert min(h, w) == 256
