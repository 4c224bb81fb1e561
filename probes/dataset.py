"""The data set at a glance: how many images, how many bytes (for the disk probe's
test-file size and the planner's shard size and page-cache rule)."""

from __future__ import annotations

import os
import random
import statistics
from pathlib import Path

from probes.records import DatasetStats
from trainers import scan


def dataset_stats(root: str | os.PathLike, *, sample: int = 2000, seed: int = 0) -> DatasetStats:
    """Count the images of an ImageNet-layout folder (the one scanner,
    ``trainers.scan``, images only) and estimate their bytes from a sample of
    ``sample`` file sizes.

    Raises:
      trainers.scan.DataFolderError (a ValueError): missing folder, no class folders,
        an empty class folder.
    """
    root = Path(root)
    classes, items = scan.scan_class_folders(root, images_only=True)
    files = [path for path, _ in items]
    pick = files if len(files) <= sample else random.Random(seed).sample(files, sample)
    sizes = [os.stat(f).st_size for f in pick]
    mean = statistics.fmean(sizes)
    return DatasetStats(path=str(root), num_classes=len(classes), num_images=len(files),
                        total_bytes=int(round(mean * len(files))),
                        median_bytes=int(statistics.median(sizes)), mean_bytes=mean,
                        sampled=len(pick))
