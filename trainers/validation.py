"""Validation folders in the layouts people have.

* Class folders: ``<val>/<wnid>/*.JPEG`` (the layout of the train folder).
* One flat folder of ``ILSVRC2012_val_XXXXXXXX.JPEG`` files plus a label file:
  - Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` where the
    prediction string starts with the wnid);
  - the ILSVRC-2012 devkit ground truth ``ILSVRC2012_validation_ground_truth.txt``
    (one ILSVRC2012_ID per line, in file-name order) together with the devkit's
    ``meta.mat`` that maps ILSVRC2012_ID to wnid;
  - a text file with one wnid per line in sorted file-name order (the
    tensorflow-datasets ``imagenet2012_validation_labels.txt`` format).

  The label file is looked for in the folder and up to ``LABEL_SEARCH_DEPTH`` folders
  above it (see :func:`find_label_file`), or given explicitly.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from trainers import scan


class ValidationLayoutError(scan.DataFolderError):
    """The validation folder or its label file cannot be read; names the file."""


LABEL_FILE_NAMES = ("LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt",
                    "imagenet2012_validation_labels.txt", "val_labels.txt")


def read_kaggle_solution(csv_path: str | os.PathLike) -> dict[str, str]:
    """``LOC_val_solution.csv`` -> ``{image_id: wnid}``.

    Raises:
      ValidationLayoutError: missing columns or an empty prediction string (names the
        file and the line).
    """
    out = {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise ValidationLayoutError(f"{csv_path}: expected columns ImageId,PredictionString, "
                                        f"got {reader.fieldnames}")
        for i, row in enumerate(reader, start=2):
            parts = row["PredictionString"].split()
            if not parts:
                raise ValidationLayoutError(f"{csv_path}:{i}: empty PredictionString")
            out[row["ImageId"]] = parts[0]
    return out


def read_devkit_ground_truth(gt_path: str | os.PathLike, meta_mat: str | os.PathLike) -> list[str]:
    """Devkit ground truth (ILSVRC2012_IDs, 1-based, in file order) -> wnids in file order.

    Raises:
      ValidationLayoutError: ``meta.mat`` missing, unreadable or without a ``synsets``
        struct array with ``ILSVRC2012_ID`` and ``WNID`` fields, or a ground-truth ID
        not in it (names the file and line).
    """
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # pragma: no cover - scipy ships with jax
        raise ValidationLayoutError("reading meta.mat needs scipy") from exc
    if not Path(meta_mat).is_file():
        raise ValidationLayoutError(f"{gt_path}: the devkit ground truth needs meta.mat "
                                    f"(looked at {meta_mat})")
    try:
        mat = loadmat(str(meta_mat), squeeze_me=True)
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for bad files
        raise ValidationLayoutError(f"{meta_mat}: not a readable MATLAB file: "
                                    f"{type(exc).__name__}: {exc}") from None
    if "synsets" not in mat:
        raise ValidationLayoutError(f"{meta_mat}: no 'synsets' variable (has "
                                    f"{sorted(k for k in mat if not k.startswith('__'))})")
    # squeeze_me turns a one-synset struct array into a 0-d array: make it iterable.
    synsets = np.atleast_1d(mat["synsets"])
    fields = set(synsets.dtype.names or ())
    if not {"ILSVRC2012_ID", "WNID"} <= fields:
        raise ValidationLayoutError(f"{meta_mat}: 'synsets' needs fields ILSVRC2012_ID and WNID, "
                                    f"has {sorted(fields)}")
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    out = []
    for i, line in enumerate(Path(gt_path).read_text().split(), start=1):
        try:
            out.append(id_to_wnid[int(line)])
        except (KeyError, ValueError):
            raise ValidationLayoutError(f"{gt_path}:{i}: {line!r} is not an ILSVRC2012_ID "
                                        f"in {meta_mat}") from None
    return out


#: How many folders above a flat validation folder are searched for its label file:
#: Kaggle's download keeps ``LOC_val_solution.csv`` in ``<root>`` and the images in
#: ``<root>/ILSVRC/Data/CLS-LOC/val/``, four levels below.
LABEL_SEARCH_DEPTH = 4


def find_label_file(folder: str | os.PathLike) -> Path:
    """The label file of a flat validation folder: the first of ``LABEL_FILE_NAMES``
    found in ``folder``, then in each of its ``LABEL_SEARCH_DEPTH`` parent folders.

    Raises:
      ValidationLayoutError: none found (lists the names and the folders searched).
    """
    folder = Path(folder)
    dirs = [folder, *list(folder.resolve().parents)[:LABEL_SEARCH_DEPTH]]
    for d in dirs:
        for name in LABEL_FILE_NAMES:
            if (d / name).is_file():
                return d / name
    raise ValidationLayoutError(
        f"validation folder {folder} is flat but has no label file; expected one of "
        f"{', '.join(LABEL_FILE_NAMES)} in it or in {', '.join(str(d) for d in dirs[1:])} "
        f"(or pass the label file explicitly)")


def scan_validation(folder: str | os.PathLike, class_names: Sequence[str], *,
                    label_file: str | os.PathLike | None = None) -> list[tuple[str, int]]:
    """List a validation folder as ``[(path, label), ...]`` with labels indexing
    ``class_names`` (the train classes).

    Class-folder layout when ``folder`` has subfolders (each must be a train class;
    every entry of them is listed, images or not, as
    :func:`trainers.scan.scan_class_folders` does for the train folder, so the pack
    accounts for each), else the image files (:func:`trainers.scan.image_files`) of a
    flat folder labelled by ``label_file`` (default:
    :func:`find_label_file`), whose format follows its name: ``*.csv`` Kaggle,
    ``ILSVRC2012_validation_ground_truth.txt`` devkit (with ``meta.mat`` beside it),
    anything else one wnid per line in sorted file-name order.

    Raises:
      ValidationLayoutError: no images, an empty class folder, no label file for a
        flat folder, a label file that does not cover every image (or has more or
        fewer lines than images), or a wnid not among the train classes; the message
        names the file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValidationLayoutError(f"validation folder {folder} does not exist")
    if scan.list_class_folders(folder):
        return scan.scan_class_folders(folder, class_names, error=ValidationLayoutError)[1]
    index = {c: i for i, c in enumerate(class_names)}
    images = scan.image_files(folder)
    if not images:
        raise ValidationLayoutError(f"validation folder {folder} has no class folders and no images")
    if label_file is None:
        label_file = find_label_file(folder)
    label_file = Path(label_file)
    if not label_file.is_file():
        raise ValidationLayoutError(f"label file {label_file} for {folder} does not exist")
    if label_file.suffix == ".csv":
        sol = read_kaggle_solution(label_file)
        wnids = []
        for p in images:
            if p.stem not in sol:
                raise ValidationLayoutError(f"{label_file}: no label for image {p.name}")
            wnids.append(sol[p.stem])
    else:
        if label_file.name == "ILSVRC2012_validation_ground_truth.txt":
            wnids = read_devkit_ground_truth(label_file, label_file.parent / "meta.mat")
        else:
            wnids = label_file.read_text().split()
        if len(wnids) != len(images):
            raise ValidationLayoutError(f"{label_file}: {len(wnids)} labels for {len(images)} "
                                        f"images in {folder}")
    items = []
    for p, w in zip(images, wnids):
        if w not in index:
            raise ValidationLayoutError(f"{label_file}: label {w!r} of {p.name} is not a train class")
        items.append((str(p), index[w]))
    return items
