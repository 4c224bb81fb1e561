"""The data set at a glance: how many images, how many bytes (for the disk probe's
test-file size and the planner's shard size and page-cache rule), for every input
kind ``trainers.sources`` reads."""

from __future__ import annotations

import os
import random
import statistics
from pathlib import Path

from probes.records import DatasetStats
from trainers import scan, sources


def dataset_stats(root: str | os.PathLike, *, sample: int = 2000, seed: int = 0) -> DatasetStats:
    """Count the images of the training input ``root`` and estimate their bytes.

    Class folders (also the Kaggle folder's): the one scanner (``trainers.scan``,
    images only), bytes from a sample of ``sample`` file sizes. A zip: every image
    member, sizes from its central directory. A tar of per-class tars: the classes
    and bytes from its member headers (``trainers.sources.list_tar``: seeks on an
    uncompressed tar, a full decompression of a ``.tar.gz``), the image count
    estimated from the bytes of the first images (``estimated=True``).

    Raises:
      trainers.scan.DataFolderError (a ValueError; ``trainers.sources.SourceError``):
        missing input, no class folders, an empty class folder, not an archive, an
        unknown layout.
    """
    src = sources.open_source(root)
    if src.kind in (sources.KIND_FOLDERS, sources.KIND_KAGGLE):
        classes, items = scan.scan_class_folders(src.path, images_only=True)
        pick = (range(len(items)) if len(items) <= sample
                else random.Random(seed).sample(range(len(items)), sample))
        sizes = [os.stat(items[i][0]).st_size for i in pick]
        count, estimated = len(items), False
    elif src.items is not None:
        import zipfile

        with zipfile.ZipFile(src.zip_path) as zf:
            sizes = [zf.getinfo(k[len(src.zip_path) + 1:]).file_size for k, _ in src.items
                     if scan.is_image_name(os.path.basename(k))]
        count, estimated = len(sizes), False
    else:
        sizes = [len(d) for _, d in sources.sample_members(root, min(sample, 64), seed)]
        _, tar_bytes = sources.image_count(src)
        count, estimated = max(1, round(tar_bytes / (statistics.fmean(sizes) + 768))), True
    if not sizes:
        raise sources.SourceError(f"no image files ({', '.join(scan.IMAGE_SUFFIXES)}) in {root}")
    mean = statistics.fmean(sizes)
    return DatasetStats(path=str(Path(root)), num_classes=len(src.class_names),
                        num_images=count, total_bytes=int(round(mean * count)),
                        median_bytes=int(statistics.median(sizes)), mean_bytes=mean,
                        sampled=len(sizes), kind=src.kind, estimated=estimated)
