"""Validation folder layouts and label files (trainers/validation.py)."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from trainers.validation import (ValidationLayoutError, find_label_file, read_devkit_ground_truth,
                                 read_kaggle_solution, scan_validation)

CLASSES = ["n01440764", "n01443537", "n01484850"]  # train classes, index = position
# Devkit ILSVRC2012_IDs are not the class indices: give them a different order.
DEVKIT_IDS = {"n01484850": 1, "n01440764": 2, "n01443537": 3}
# Image i has class TRUTH[i] (file ILSVRC2012_val_0000000{i+1}.JPEG).
TRUTH = ["n01443537", "n01440764", "n01484850", "n01443537", "n01484850"]


def flat_folder(root: Path) -> Path:
    """``root/val/ILSVRC2012_val_0000000N.JPEG`` (contents do not matter here)."""
    val = root / "val"
    val.mkdir(parents=True)
    for i in range(len(TRUTH)):
        (val / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(b"\xff\xd8\xff fake")
    return val


def write_kaggle_csv(path: Path, truth=TRUTH) -> Path:
    lines = ["ImageId,PredictionString"]
    for i, w in reversed(list(enumerate(truth))):  # any row order
        lines.append(f"ILSVRC2012_val_{i + 1:08d},{w} 10 20 200 300 {w} 5 5 50 50")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_meta_mat(path: Path, ids=DEVKIT_IDS, extra=True) -> Path:
    """A devkit-like ``meta.mat``: a ``synsets`` struct array (n x 1) with the devkit's
    fields; ``extra`` adds a non-leaf synset (ID > 1000) as the real one has."""
    entries = [(i, w, "tench, Tinca tinca", 0) for w, i in ids.items()]
    if extra:
        entries.append((1001, "n00001740", "entity", 3))
    syn = np.zeros((len(entries), 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"),
                                             ("words", "O"), ("num_children", "O")])
    for k, (i, w, words, nc) in enumerate(entries):
        syn[k, 0] = (np.array([[i]], np.uint16), np.array([w]), np.array([words]),
                     np.array([[nc]], np.uint8))
    scipy.io.savemat(str(path), {"synsets": syn})
    return path


def write_devkit(folder: Path, truth=TRUTH) -> Path:
    gt = folder / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{DEVKIT_IDS[w]}\n" for w in truth))
    write_meta_mat(folder / "meta.mat")
    return gt


def labels_of(items):
    return [CLASSES[label] for _, label in items]


def test_kaggle_csv_in_folder(tmp_path):
    val = flat_folder(tmp_path)
    write_kaggle_csv(val / "LOC_val_solution.csv")
    items = scan_validation(val, CLASSES)
    assert [Path(p).name for p, _ in items] == sorted(p.name for p in val.glob("*.JPEG"))
    assert labels_of(items) == TRUTH


def test_kaggle_csv_four_levels_up(tmp_path):
    """Kaggle's download: <root>/LOC_val_solution.csv, images in <root>/ILSVRC/Data/CLS-LOC/val."""
    val = flat_folder(tmp_path / "ILSVRC" / "Data" / "CLS-LOC")
    csv = write_kaggle_csv(tmp_path / "LOC_val_solution.csv")
    assert find_label_file(val) == csv
    assert labels_of(scan_validation(val, CLASSES)) == TRUTH


def test_read_kaggle_solution_bad_columns(tmp_path):
    bad = tmp_path / "LOC_val_solution.csv"
    bad.write_text("id,label\nx,n01440764\n")
    with pytest.raises(ValidationLayoutError, match="ImageId,PredictionString") as e:
        read_kaggle_solution(bad)
    assert str(bad) in str(e.value)
    bad.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,\n")
    with pytest.raises(ValidationLayoutError, match=r":2: empty PredictionString"):
        read_kaggle_solution(bad)


def test_kaggle_csv_missing_an_image(tmp_path):
    val = flat_folder(tmp_path)
    write_kaggle_csv(val / "LOC_val_solution.csv", truth=TRUTH[:-1])
    with pytest.raises(ValidationLayoutError, match="no label for image ILSVRC2012_val_00000005.JPEG"):
        scan_validation(val, CLASSES)


def test_devkit_ground_truth_with_meta_mat(tmp_path):
    val = flat_folder(tmp_path)
    gt = write_devkit(val)
    assert read_devkit_ground_truth(gt, val / "meta.mat") == TRUTH
    items = scan_validation(val, CLASSES)
    assert labels_of(items) == TRUTH


def test_devkit_layout_explicit_label_file(tmp_path):
    """The devkit's own layout: ILSVRC2012_devkit_t12/data/{ground truth, meta.mat}."""
    val = flat_folder(tmp_path)
    data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    gt = write_devkit(data)
    assert labels_of(scan_validation(val, CLASSES, label_file=gt)) == TRUTH


def test_devkit_single_synset_meta_mat(tmp_path):
    """scipy's squeeze_me makes a one-entry struct array 0-d; still readable."""
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("7\n7\n")
    write_meta_mat(tmp_path / "meta.mat", ids={"n01440764": 7}, extra=False)
    assert read_devkit_ground_truth(gt, tmp_path / "meta.mat") == ["n01440764"] * 2


def test_devkit_without_meta_mat(tmp_path):
    val = flat_folder(tmp_path)
    gt = val / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("1\n" * len(TRUTH))
    with pytest.raises(ValidationLayoutError, match="needs meta.mat") as e:
        scan_validation(val, CLASSES)
    assert str(gt) in str(e.value)


def test_devkit_unknown_id(tmp_path):
    val = flat_folder(tmp_path)
    write_devkit(val)
    gt = val / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("1\n2\n999\n1\n2\n")
    with pytest.raises(ValidationLayoutError, match=r"ground_truth.txt:3: '999' is not an ILSVRC2012_ID"):
        scan_validation(val, CLASSES)


def test_meta_mat_without_synsets(tmp_path):
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("1\n")
    scipy.io.savemat(str(tmp_path / "meta.mat"), {"other": np.arange(3)})
    with pytest.raises(ValidationLayoutError, match="no 'synsets' variable"):
        read_devkit_ground_truth(gt, tmp_path / "meta.mat")
    (tmp_path / "meta.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValidationLayoutError, match="not a readable MATLAB file"):
        read_devkit_ground_truth(gt, tmp_path / "meta.mat")


def test_wnid_per_line_labels(tmp_path):
    val = flat_folder(tmp_path)
    (tmp_path / "imagenet2012_validation_labels.txt").write_text("\n".join(TRUTH) + "\n")
    assert labels_of(scan_validation(val, CLASSES)) == TRUTH


def test_class_folder_layout(tmp_path):
    val = tmp_path / "val"
    for c, n in zip(CLASSES[:2], (3, 2)):
        (val / c).mkdir(parents=True)
        for i in range(n):
            (val / c / f"{c}_{i}.JPEG").write_bytes(b"x")
    (val / ".hidden").mkdir()  # ignored
    items = scan_validation(val, CLASSES)
    assert [label for _, label in items] == [0, 0, 0, 1, 1]
    assert all(Path(p).parent.name == CLASSES[label] for p, label in items)


def test_class_folder_not_a_train_class(tmp_path):
    (tmp_path / "val" / "n99999999").mkdir(parents=True)
    (tmp_path / "val" / "n99999999" / "a.JPEG").write_bytes(b"x")
    with pytest.raises(ValidationLayoutError, match="n99999999 is not a train class"):
        scan_validation(tmp_path / "val", CLASSES)


def test_missing_label_file(tmp_path):
    val = flat_folder(tmp_path)
    with pytest.raises(ValidationLayoutError, match="flat but has no label file") as e:
        scan_validation(val, CLASSES)
    assert "LOC_val_solution.csv" in str(e.value)
    with pytest.raises(ValidationLayoutError, match="does not exist"):
        scan_validation(val, CLASSES, label_file=tmp_path / "nope.csv")


def test_label_naming_unknown_class(tmp_path):
    val = flat_folder(tmp_path)
    truth = TRUTH[:2] + ["n02000000"] + TRUTH[3:]
    write_kaggle_csv(val / "LOC_val_solution.csv", truth=truth)
    with pytest.raises(ValidationLayoutError) as e:
        scan_validation(val, CLASSES)
    msg = str(e.value)
    assert "'n02000000'" in msg and "ILSVRC2012_val_00000003.JPEG" in msg and "LOC_val_solution.csv" in msg


@pytest.mark.parametrize("n_labels", [len(TRUTH) - 1, len(TRUTH) + 2])
def test_label_count_mismatch(tmp_path, n_labels):
    val = flat_folder(tmp_path)
    labels = (TRUTH * 2)[:n_labels]
    (val / "val_labels.txt").write_text("\n".join(labels) + "\n")
    with pytest.raises(ValidationLayoutError, match=f"{n_labels} labels for {len(TRUTH)} images"):
        scan_validation(val, CLASSES)
    gt = val / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{DEVKIT_IDS[w]}\n" for w in labels))
    write_meta_mat(val / "meta.mat")
    with pytest.raises(ValidationLayoutError, match=f"{n_labels} labels for {len(TRUTH)} images"):
        scan_validation(val, CLASSES, label_file=gt)


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(ValidationLayoutError, match="does not exist"):
        scan_validation(tmp_path / "absent", CLASSES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationLayoutError, match="no class folders and no images"):
        scan_validation(tmp_path / "empty", CLASSES)


@pytest.mark.parametrize("text", [
    # CSV, no header, wnids, file names with suffix
    "".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG,{w}\n" for i, w in enumerate(TRUTH)),
    # TSV with a header, class indices (0-based, sorted train classes), stems
    "image\tlabel\n" + "".join(f"ILSVRC2012_val_{i + 1:08d}\t{CLASSES.index(w)}\n"
                                for i, w in enumerate(TRUTH)),
    # whitespace-separated, rows in any order, a comment
    "# name label\n" + "".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG   {w}\n"
                               for i, w in reversed(list(enumerate(TRUTH)))),
])
def test_any_mapping_file_labels_a_flat_folder(tmp_path, text):
    val = flat_folder(tmp_path)
    labels = tmp_path / "labels.anything"
    labels.write_text(text)
    assert labels_of(scan_validation(val, CLASSES, label_file=labels)) == TRUTH


def test_a_truncated_archive_takes_devkit_lines_by_image_number():
    from trainers.validation import label_indices

    names = ["ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000004.JPEG"]
    got = label_indices(names, CLASSES, "gt", wnids=TRUTH, truncated=True)
    assert [CLASSES[i] for i in got] == [TRUTH[1], TRUTH[3]]
    with pytest.raises(ValidationLayoutError, match="5 labels for 2 images"):
        label_indices(names, CLASSES, "gt", wnids=TRUTH)
