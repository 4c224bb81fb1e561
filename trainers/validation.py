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
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from trainers import scan
from trainers.listing import Listing


class ValidationLayoutError(scan.DataFolderError):
    """The validation folder or its label file cannot be read; names the file."""


LABEL_FILE_NAMES = ("LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt",
                    "ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12.tar",
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
    if not Path(meta_mat).is_file():
        raise ValidationLayoutError(f"{gt_path}: the devkit ground truth needs meta.mat "
                                    f"(looked at {meta_mat})")
    id_to_wnid, _ = read_meta_mat(str(meta_mat), str(meta_mat))
    return devkit_wnids(Path(gt_path).read_text(), str(gt_path), id_to_wnid, str(meta_mat))


def read_meta_mat(source, name: str) -> tuple[dict[int, str], dict[str, str]]:
    """The devkit's ``meta.mat`` (a path or a binary file object ``source``; ``name``
    for messages) -> ``({ILSVRC2012_ID: wnid}, {wnid: words})`` (words empty when the
    ``synsets`` array has no ``words`` field).

    Raises:
      ValidationLayoutError: unreadable, no ``synsets`` struct array with
        ``ILSVRC2012_ID`` and ``WNID`` fields.
    """
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # pragma: no cover - scipy ships with jax
        raise ValidationLayoutError("reading meta.mat needs scipy") from exc
    try:
        mat = loadmat(source, squeeze_me=True)
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for bad files
        raise ValidationLayoutError(f"{name}: not a readable MATLAB file: "
                                    f"{type(exc).__name__}: {exc}") from None
    if "synsets" not in mat:
        raise ValidationLayoutError(f"{name}: no 'synsets' variable (has "
                                    f"{sorted(k for k in mat if not k.startswith('__'))})")
    # squeeze_me turns a one-synset struct array into a 0-d array: make it iterable.
    synsets = np.atleast_1d(mat["synsets"])
    fields = set(synsets.dtype.names or ())
    if not {"ILSVRC2012_ID", "WNID"} <= fields:
        raise ValidationLayoutError(f"{name}: 'synsets' needs fields ILSVRC2012_ID and WNID, "
                                    f"has {sorted(fields)}")
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    words = {str(s["WNID"]): str(s["words"]) for s in synsets} if "words" in fields else {}
    return id_to_wnid, words


def devkit_wnids(gt_text: str, gt_name: str, id_to_wnid: dict[int, str],
                 mat_name: str) -> list[str]:
    """Ground-truth text (one ILSVRC2012_ID per line) -> wnids in line order.

    Raises:
      ValidationLayoutError: a line that is not an ID of ``meta.mat`` (names file, line).
    """
    out = []
    for i, line in enumerate(gt_text.split(), start=1):
        try:
            out.append(id_to_wnid[int(line)])
        except (KeyError, ValueError):
            raise ValidationLayoutError(f"{gt_name}:{i}: {line!r} is not an ILSVRC2012_ID "
                                        f"in {mat_name}") from None
    return out


#: The devkit archive of ILSVRC-2012 (image-net.org); read without extracting.
DEVKIT_ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12.tar")


def read_devkit_archive(path: str | os.PathLike) -> tuple[list[str], dict[str, str]]:
    """``ILSVRC2012_devkit_t12.tar.gz`` -> (validation wnids in file-name order, {wnid:
    words}), from its ``data/ILSVRC2012_validation_ground_truth.txt`` and
    ``data/meta.mat``, read from the archive (nothing extracted).

    Raises:
      ValidationLayoutError: not a readable tar, or either file missing or bad.
    """
    import io
    import tarfile

    want = {"ILSVRC2012_validation_ground_truth.txt": None, "meta.mat": None}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                base = os.path.basename(m.name)
                if m.isfile() and base in want and want[base] is None:
                    want[base] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValidationLayoutError(f"devkit {path}: not a readable tar archive: {exc}") from None
    missing = [k for k, v in want.items() if v is None]
    if missing:
        raise ValidationLayoutError(f"devkit {path}: has no {' or '.join(missing)}")
    mat_name = f"{path}:meta.mat"
    id_to_wnid, words = read_meta_mat(io.BytesIO(want["meta.mat"]), mat_name)
    gt = want["ILSVRC2012_validation_ground_truth.txt"].decode("utf-8", "replace")
    return devkit_wnids(gt, f"{path}:ILSVRC2012_validation_ground_truth.txt", id_to_wnid,
                        mat_name), words


def _rows(text: str) -> list[list[str]]:
    """Non-empty, non-``#`` lines split as CSV (a comma), TSV (a tab) or whitespace."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "," in line:
            rows.append([p.strip() for p in next(csv.reader([line]))])
        elif "\t" in line:
            rows.append([p.strip() for p in line.split("\t")])
        else:
            rows.append(line.split())
    return rows


def parse_label_text(text: str, name: str, class_names: Sequence[str]
                     ) -> tuple[list[str] | None, dict[str, str] | None]:
    """A label file's text -> ``(labels in sorted file-name order, None)`` for one
    column, or ``(None, {file name or stem: label})`` for two or more columns
    (file name first; the label is the first word of the second column, so Kaggle's
    ``PredictionString`` works too). Labels are wnids or class indices (0-based, into
    the sorted ``class_names``). A first row whose label is neither is a header.

    Raises:
      ValidationLayoutError: no rows, or a row without a label (names file and row).
    """
    rows = _rows(text)
    known = set(class_names)

    def is_label(tok: str) -> bool:
        return tok in known or tok.isdigit()

    if rows and not is_label(rows[0][-1].split()[0] if rows[0][-1].split() else ""):
        rows = rows[1:]  # a header
    if not rows:
        raise ValidationLayoutError(f"label file {name} has no labels")
    if all(len(r) == 1 for r in rows):
        return [r[0] for r in rows], None
    mapping = {}
    for i, r in enumerate(rows, start=1):
        words = r[1].split() if len(r) > 1 else []
        if not words:
            raise ValidationLayoutError(f"{name}: row {i} ({','.join(r)!r}) has no label")
        mapping[r[0]] = words[0]
        mapping.setdefault(os.path.splitext(r[0])[0], words[0])
    return None, mapping


def label_indices(names: Sequence[str], class_names: Sequence[str], label_name: str, *,
                  wnids: Sequence[str] | None = None, mapping: dict[str, str] | None = None,
                  where: str = "", truncated: bool = False) -> list[int]:
    """Class indices of the images ``names`` (file names, sorted) from a label list
    (``wnids``: one per image in sorted file-name order) or a ``mapping`` (file name or
    stem -> label); labels are wnids or 0-based indices into ``class_names``.

    Raises:
      ValidationLayoutError: a list of another length than ``names``, an image without
        a label, or a label that is not a train class (names the label file).

    With ``truncated`` (the images come from an archive that ends early) a list longer
    than ``names`` is accepted when every name is ``ILSVRC2012_val_<N>.<ext>``: image N
    takes line N (the devkit's own numbering).
    """
    index = {c: i for i, c in enumerate(class_names)}
    numbered = [re.fullmatch(r"ILSVRC2012_val_(\d+)\.\w+", n) for n in names]
    if (wnids is not None and truncated and len(wnids) > len(names) and all(numbered)
            and all(int(m.group(1)) <= len(wnids) for m in numbered)):
        wnids = [wnids[int(m.group(1)) - 1] for m in numbered]
    if wnids is not None:
        if len(wnids) != len(names):
            raise ValidationLayoutError(f"{label_name}: {len(wnids)} labels for {len(names)} "
                                        f"images{where}")
        labels = list(wnids)
    else:
        labels = []
        for n in names:
            got = mapping.get(n, mapping.get(os.path.splitext(n)[0]))
            if got is None:
                raise ValidationLayoutError(f"{label_name}: no label for image {n}")
            labels.append(got)
    out = []
    for n, w in zip(names, labels):
        if w in index:
            out.append(index[w])
        elif w.isdigit() and int(w) < len(class_names):
            out.append(int(w))
        else:
            raise ValidationLayoutError(f"{label_name}: label {w!r} of {n} is not a train class "
                                        f"(the train data has {len(class_names):,} classes)")
    return out


def labels_from_file(label_file: str | os.PathLike, names: Sequence[str],
                     class_names: Sequence[str], *, data: bytes | None = None,
                     where: str = "", truncated: bool = False) -> list[int]:
    """Class indices of the images ``names`` (sorted file names) from ``label_file``,
    whose format follows its name: a devkit archive (:data:`DEVKIT_ARCHIVES`),
    ``ILSVRC2012_validation_ground_truth.txt`` (with ``meta.mat`` beside it),
    Kaggle's ``LOC_val_solution.csv``, else any text/CSV/TSV file
    (:func:`parse_label_text`). ``data``: the file's bytes when it lies in an archive;
    ``truncated``: see :func:`label_indices`.

    Raises:
      ValidationLayoutError: see :func:`label_indices` and the readers.
    """
    label_file = Path(label_file)
    name = str(label_file)
    if label_file.name in DEVKIT_ARCHIVES:
        wnids, _ = read_devkit_archive(label_file)
        return label_indices(names, class_names, name, wnids=wnids, where=where,
                             truncated=truncated)
    if label_file.name == "ILSVRC2012_validation_ground_truth.txt" and data is None:
        wnids = read_devkit_ground_truth(label_file, label_file.parent / "meta.mat")
        return label_indices(names, class_names, name, wnids=wnids, where=where,
                             truncated=truncated)
    text = (label_file.read_bytes() if data is None else data).decode("utf-8", "replace")
    if text.startswith("ImageId,") and data is None:
        mapping = read_kaggle_solution(label_file)
        return label_indices(names, class_names, name, mapping=mapping, where=where)
    wnids, mapping = parse_label_text(text, name, class_names)
    return label_indices(names, class_names, name, wnids=wnids, mapping=mapping, where=where,
                         truncated=truncated)


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
                    label_file: str | os.PathLike | None = None) -> Listing:
    """List a validation folder as a :class:`trainers.listing.Listing` of ``(path,
    label)`` with labels indexing ``class_names`` (the train classes).

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
    images = scan.image_files(folder)
    if not images:
        raise ValidationLayoutError(f"validation folder {folder} has no class folders and no images")
    if label_file is None:
        label_file = find_label_file(folder)
    label_file = Path(label_file)
    if not label_file.is_file():
        raise ValidationLayoutError(f"label file {label_file} for {folder} does not exist")
    labels = labels_from_file(label_file, [p.name for p in images], class_names,
                              where=f" in {folder}")
    return Listing.from_pairs((str(p), label) for p, label in zip(images, labels))
