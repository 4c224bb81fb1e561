"""ImageNet as people download it (trainers/sources.py, trainers/pack.py): small
archives in the official structures built from ../shared/data, packed and read back
with tensorflow-datasets; nested trees; every bad input as one CLI line; resume,
truncation and multi-process packs of archives."""

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import simplejpeg

from autotune import cli
from conftest import SHARED
from test_validation import write_meta_mat
from trainers import pack as pack_mod
from trainers import sources
from trainers.options import PackOptions
from trainers.pack import ArchiveEndedEarly, is_packed, pack_folder, shard_paths

#: Four imagenette classes, listed out of sorted order on purpose (the class index
#: must be the sorted order, not the archive's).
WNIDS = ["n03000684", "n01440764", "n02979186", "n02102040"]
PER_CLASS = 3
#: Small groups so that a dozen images make several groups of shards.
OPTS = PackOptions(num_shards=2, archive_shard_records=2, archive_group_shards=2, pack_threads=2)


@pytest.fixture(scope="module")
def images(shared_data):
    """``{wnid: [(file name, JPEG bytes), ...]}``: PER_CLASS real photos each."""
    out = {}
    for w in WNIDS:
        files = sorted((shared_data / "imagenette" / "train" / w).glob("*.JPEG"))[:PER_CLASS]
        out[w] = [(f.name, f.read_bytes()) for f in files]
    return out


def tar_bytes(files, mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_tar(path: Path, files, compress: str = "") -> Path:
    path.write_bytes(tar_bytes(files, "w:" + compress if compress else "w"))
    return path


def train_tar(path: Path, images, compress: str = "", extra=()) -> Path:
    """``ILSVRC2012_img_train.tar``: one ``<wnid>.tar`` per class (plus ``extra``)."""
    return write_tar(path, [(f"{w}.tar", tar_bytes(images[w])) for w in WNIDS] + list(extra),
                     compress)


def val_set(images):
    """Flat validation files ``ILSVRC2012_val_0000000N.JPEG`` and their wnids."""
    files, truth = [], []
    for i, (w, (_, data)) in enumerate((w, f) for w in WNIDS for f in images[w][:1]):
        files.append((f"ILSVRC2012_val_{i + 1:08d}.JPEG", data))
        truth.append(w)
    return files, truth


def devkit(path: Path, truth) -> Path:
    """``ILSVRC2012_devkit_t12.tar.gz``: ground truth + meta.mat (IDs not in wnid order)."""
    ids = {w: i + 1 for i, w in enumerate(reversed(sorted(WNIDS)))}
    mat = path.parent / "meta_tmp.mat"
    write_meta_mat(mat, ids=ids)
    gt = "".join(f"{ids[w]}\n" for w in truth).encode()
    write_tar(path, [("ILSVRC2012_devkit_t12/data/meta.mat", mat.read_bytes()),
                     ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", gt)],
              "gz")
    mat.unlink()
    return path


def kaggle_csv(truth) -> str:
    return "ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i + 1:08d},{w} 1 2 30 40\n" for i, w in enumerate(truth))


def records(out: Path, split: str = "train") -> list[tuple[str, int, bytes]]:
    """``(file_name, label, image bytes)`` of every record of ``split``."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource
    from tensorflow_datasets.proto import tf_example_pb2

    got = []
    for rec in ArrayRecordDataSource(shard_paths(out, split)):
        ex = tf_example_pb2.Example.FromString(rec).features.feature
        got.append((ex["file_name"].bytes_list.value[0].decode(),
                    int(ex["label"].int64_list.value[0]), ex["image"].bytes_list.value[0]))
    return got


def wnid_of(images) -> dict[str, str]:
    return {name: w for w, files in images.items() for name, _ in files}


def check_tfds(out: Path, res) -> None:
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(out))
    assert builder.info.features["label"].names == list(res.class_names)
    for s in res.splits:
        assert builder.info.splits[s.name].num_examples == s.num_examples
    ex = builder.as_data_source(split="train")[0]
    assert ex["image"].shape[-1] == 3


def shard_bytes(out: Path) -> dict[str, bytes]:
    """Shards and tfds metadata by name (what a reader sees)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if ".array_record-" in p.name and not p.name.endswith(".json")
            or p.name in ("dataset_info.json", "features.json")}


# ============================================================ the official archives

def test_tar_of_per_class_tars_streams_with_sorted_wnid_labels(images, tmp_path):
    tar = train_tar(tmp_path / "ILSVRC2012_img_train.tar", images,
                    extra=[("README.txt", b"not a class")])
    res = pack_folder(tar, tmp_path / "out", OPTS)
    assert res.kind == sources.KIND_TAR_OF_TARS
    assert res.class_names == tuple(sorted(WNIDS))
    assert (res.input_images, res.packed, res.skipped) == (13, 12, 1)
    assert "not a per-class tar" in res.bad_images[0].reason
    names = wnid_of(images)
    got = records(tmp_path / "out")
    assert len(got) == 12
    assert all(res.class_names[label] == names[name] for name, label, _ in got)
    # the original bytes are stored (no resize), each exactly once
    originals = {name: data for files in images.values() for name, data in files}
    assert sorted(n for n, _, _ in got) == sorted(originals)
    assert all(data == originals[n] for n, _, data in got)
    check_tfds(tmp_path / "out", res)
    # shards hold members of several classes (dealt over a group), sizes as asked
    assert all(n <= OPTS.archive_shard_records for n in res.split("train").shard_lengths)


@pytest.mark.parametrize("labels", ["devkit", "kaggle_csv", "tsv_indices_flag"])
def test_val_tar_with_labels_from_devkit_csv_or_any_mapping(images, tmp_path, labels):
    train = train_tar(tmp_path / "ILSVRC2012_img_train.tar", images)
    files, truth = val_set(images)
    val = write_tar(tmp_path / "ILSVRC2012_img_val.tar", list(reversed(files)))
    flag = None
    if labels == "devkit":
        devkit(tmp_path / "ILSVRC2012_devkit_t12.tar.gz", truth)
    elif labels == "kaggle_csv":
        (tmp_path / "LOC_val_solution.csv").write_text(kaggle_csv(truth))
    else:  # file name <tab> class index, with a header, given explicitly
        flag = tmp_path / "elsewhere" / "my_labels.tsv"
        flag.parent.mkdir()
        flag.write_text("file\tclass\n" + "".join(
            f"{n}\t{sorted(WNIDS).index(w)}\n" for (n, _), w in zip(files, truth)))
    res = pack_folder(train, tmp_path / "out", OPTS, val_source=val, val_labels=flag)
    assert res.kind.startswith(f"{sources.KIND_TAR_OF_TARS} + {sources.KIND_FLAT_TAR} "
                               f"(labels from ")
    label_file = {"devkit": "ILSVRC2012_devkit_t12.tar.gz", "kaggle_csv": "LOC_val_solution.csv",
                  "tsv_indices_flag": "my_labels.tsv"}[labels]
    assert res.kind.endswith(f"{label_file})")
    assert res.split("validation").num_examples == len(files)
    want = dict(zip([n for n, _ in files], truth))
    got = records(tmp_path / "out", "validation")
    assert {n: res.class_names[label] for n, label, _ in got} == want
    check_tfds(tmp_path / "out", res)


KAGGLE_TRAIN = Path("ILSVRC", "Data", "CLS-LOC", "train")


def kaggle_tree(root: Path, images) -> Path:
    """Kaggle's imagenet-object-localization-challenge layout."""
    base = root / "ILSVRC" / "Data" / "CLS-LOC"
    for w in WNIDS:
        (base / "train" / w).mkdir(parents=True)
        for name, data in images[w]:
            (base / "train" / w / name).write_bytes(data)
    (base / "val").mkdir(parents=True)
    files, truth = val_set(images)
    for name, data in files:
        (base / "val" / name).write_bytes(data)
    (root / "LOC_val_solution.csv").write_text(kaggle_csv(truth))
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} words of {w}, more words\n" for w in sorted(WNIDS)))
    return root


@pytest.mark.parametrize("form", ["folder", "zip", "zip-processes"])
def test_kaggle_folder_and_zip(images, tmp_path, form):
    root = kaggle_tree(tmp_path / "imagenet-object-localization-challenge", images)
    data = root
    (root / KAGGLE_TRAIN / WNIDS[0] / "notes.txt").write_text("not an image")
    opts = dataclasses.replace(OPTS, pack_workers=2) if form == "zip-processes" else OPTS
    form = form.split("-")[0]  # processes: each opens the zip and reads its shards' members
    if form == "zip":
        data = tmp_path / "imagenet-object-localization-challenge.zip"
        with zipfile.ZipFile(data, "w") as zf:
            for p in sorted(root.rglob("*")):
                zf.write(p, p.relative_to(root))
    res = pack_folder(data, tmp_path / "out", opts, val_source=data)
    assert [(Path(b.path).name, b.reason[:12]) for b in res.bad_images] == [("notes.txt",
                                                                              "not an image")]
    kind = sources.KIND_KAGGLE if form == "folder" else sources.KIND_KAGGLE_ZIP
    assert res.kind.startswith(f"{kind} + {kind} (labels from ")
    assert res.class_names == tuple(sorted(WNIDS))
    assert res.class_words[0] == f"words of {sorted(WNIDS)[0]}, more words"
    assert res.class_label(1).startswith(f"{sorted(WNIDS)[1]} (words of")
    assert (res.packed, res.split("validation").num_examples) == (12 + 4, 4)
    names = wnid_of(images)
    assert all(res.class_names[label] == names[n] for n, label, _ in records(tmp_path / "out"))
    files, truth = val_set(images)
    got = {n: res.class_names[label] for n, label, _ in records(tmp_path / "out", "validation")}
    assert got == dict(zip([n for n, _ in files], truth))
    check_tfds(tmp_path / "out", res)


def test_imagenet21k_style_tar_gz_with_more_than_1000_classes(tmp_path):
    jpeg = simplejpeg.encode_jpeg(np.full((8, 8, 3), 128, np.uint8), quality=90)
    wnids = [f"n{9_000_000 - i:08d}" for i in range(1001)]  # archive order: descending
    tar = write_tar(tmp_path / "winter21_whole.tar.gz",
                    [(f"{w}.tar", tar_bytes([(f"{w}_1.JPEG", jpeg)])) for w in wnids], "gz")
    (tmp_path / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    opts = PackOptions(archive_shard_records=64, archive_group_shards=4)
    res = pack_folder(tar, tmp_path / "out", opts)
    assert res.num_classes == 1001 and res.packed == 1001
    assert res.class_names == tuple(sorted(wnids))
    assert res.class_words[5] == f"thing {sorted(wnids)[5]}"
    assert all(res.class_names[label] == n.split("_")[0] for n, label, _ in records(tmp_path / "out"))
    check_tfds(tmp_path / "out", res)


# ============================================================ nested trees, probes

def nested_tree(root: Path, images) -> Path:
    """``<wnid>/images/*.JPEG`` with a boxes file beside the folder and a .DS_Store."""
    for w in WNIDS:
        (root / w / "images").mkdir(parents=True)
        for name, data in images[w]:
            (root / w / "images" / name).write_bytes(data)
        (root / w / f"{w}_boxes.txt").write_text("x 1 2 3 4\n")
    (root / WNIDS[0] / "images" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


def test_nested_tree_packs_and_lists_the_boxes_files(images, tmp_path):
    root = nested_tree(tmp_path / "tiny", images)
    res = pack_folder(root, tmp_path / "out", OPTS)
    assert (res.input_images, res.packed, res.skipped) == (17, 12, 5)
    reasons = {Path(b.path).name: b.reason for b in res.bad_images}
    assert "not an image" in reasons[f"{WNIDS[0]}_boxes.txt"]
    assert reasons[".DS_Store"] == "not an image (system file)"
    names = wnid_of(images)
    assert all(res.class_names[label] == names[n] for n, label, _ in records(tmp_path / "out"))


def test_probes_read_every_input_kind(images, tmp_path):
    from probes.dataset import dataset_stats
    from probes.decode import probe_decode

    tar = train_tar(tmp_path / "train.tar", images)  # sampled by seeks
    tgz = train_tar(tmp_path / "train.tar.gz", images, compress="gz")  # sampled by streaming
    zip_root = kaggle_tree(tmp_path / "k", images)
    zpath = tmp_path / "k.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(zip_root.rglob("*")):
            zf.write(p, p.relative_to(zip_root))
    nested = nested_tree(tmp_path / "nested", images)
    for data, kind, exact in [(nested, sources.KIND_FOLDERS, True),
                              (zip_root, sources.KIND_KAGGLE, True),
                              (zpath, sources.KIND_KAGGLE_ZIP, True),
                              (tar, sources.KIND_TAR_OF_TARS, False),
                              (tgz, sources.KIND_TAR_OF_TARS, False)]:
        stats = dataset_stats(data)
        assert (stats.kind, stats.num_classes, stats.estimated) == (kind, 4, not exact)
        if exact:
            assert stats.num_images == 12
        else:  # bytes of the inner tars / mean image bytes: headers make it a bit more
            assert 12 <= stats.num_images <= 14
        rep = probe_decode(data, sample=8, seconds_per_point=0.05, max_threads=1, cache=False,
                           resizes=())
        assert rep.sample_images == 8 and rep.points[0].images_per_s > 0


# ============================================================ bad inputs: one line each

def _bad_inputs(tmp: Path, images) -> dict[str, tuple[list[str], str]]:
    """case -> (pack arguments after --data, words the error line must hold)."""
    (tmp / "empty_dir").mkdir()
    (tmp / "empty_file.tar").write_bytes(b"")
    (tmp / "notes.tar").write_text("these are notes, not an archive\n" * 40)
    write_tar(tmp / "texts.tar", [("a.txt", b"x"), ("b.txt", b"y")])
    with zipfile.ZipFile(tmp / "other.zip", "w") as zf:
        zf.writestr("photos/cat.jpg", b"x")
    files, truth = val_set(images)
    val = write_tar(tmp / "val" / "ILSVRC2012_img_val.tar", files) if (tmp / "val").mkdir() is None else None
    train = train_tar(tmp / "train.tar", images)
    whole = train.read_bytes()
    (tmp / "cut.tar").write_bytes(whole[:1500])  # inside the first inner tar's first image
    (tmp / "unknown.csv").write_text(kaggle_csv(truth[:-1] + ["n09999999"]))
    (tmp / "short.txt").write_text("\n".join(truth[:-1]) + "\n")
    return {
        "missing": ([str(tmp / "absent")], "no such folder or archive"),
        "empty folder": ([str(tmp / "empty_dir")], "no class folders"),
        "empty file": ([str(tmp / "empty_file.tar")], "is empty"),
        "not an archive": ([str(tmp / "notes.tar")], "not a folder, a zip or a tar"),
        "unknown tar layout": ([str(tmp / "texts.tar")], "unknown layout"),
        "unknown zip layout": ([str(tmp / "other.zip")], "not Kaggle's"),
        "flat tar as train": ([str(val)], "flat tar of images"),
        "truncated tar": ([str(tmp / "cut.tar")], "could be packed"),
        "unknown wnid": ([str(train), "--val-data", str(val), "--val-labels",
                          str(tmp / "unknown.csv")], "'n09999999'"),
        "file list mismatch": ([str(train), "--val-data", str(val), "--val-labels",
                                str(tmp / "short.txt")], "3 labels for 4 images"),
        "no val labels": ([str(train), "--val-data", str(val)], "no label file"),
        "download folder": ([str(tmp / "val")], "pass the archive itself"),
    }


def test_every_bad_input_is_one_line_naming_the_path(images, tmp_path, capsys):
    cases = _bad_inputs(tmp_path, images)
    for case, (args, needle) in cases.items():
        out = tmp_path / "out" / case.replace(" ", "_")
        rc = cli.main(["pack", "--data", *args, "--out", str(out), "--workers", "0",
                       "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2, (case, err)
        assert needle in err, (case, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (case, err)
        assert Path(args[0]).name in err or Path(args[-1]).name in err, (case, err)
    # probe and train stop at the same check, before any measuring
    for cmd in (["probe", "--quick", "--no-disk"], ["train", "--auto"]):
        rc = cli.main([*cmd, "--data", str(tmp_path / "notes.tar"), "--preset", "cpu-tiny",
                       "--results", str(tmp_path / "res")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "notes.tar" in err, (cmd, err)


# ============================================================ damage, resume, processes

def test_truncated_tar_packs_what_it_can_and_says_where_it_stopped(images, tmp_path):
    tar = train_tar(tmp_path / "train.tar", images)
    whole = tar.read_bytes()
    tar.write_bytes(whole[:int(len(whole) * 0.6)])
    with pytest.warns(ArchiveEndedEarly, match="ends early") as warned:
        res = pack_folder(tar, tmp_path / "out", OPTS)
    assert len(warned) == 1
    (stopped,) = res.stopped
    assert str(tar) in stopped and "byte" in stopped and ".tar" in stopped
    assert 0 < res.packed < 12
    assert res.input_images == res.packed + res.skipped
    assert any("unreadable" in b.reason for b in res.bad_images)
    check_tfds(tmp_path / "out", res)


class _Stop(Exception):
    pass


def test_interrupted_archive_pack_resumes_to_identical_bytes(images, tmp_path, monkeypatch):
    tar = train_tar(tmp_path / "train.tar", images, compress="gz")
    ref = pack_folder(tar, tmp_path / "ref", OPTS)
    real, calls = pack_mod._StreamPass._close_group, []

    def close_then_stop(self, split):
        if len(calls) == 2:
            raise _Stop("killed")
        calls.append(split)
        return real(self, split)

    monkeypatch.setattr(pack_mod._StreamPass, "_close_group", close_then_stop)
    with pytest.raises(_Stop):
        pack_folder(tar, tmp_path / "out", OPTS)
    monkeypatch.undo()
    assert not is_packed(tmp_path / "out")
    res = pack_folder(tar, tmp_path / "out", OPTS)
    assert res.resumed_shards == 4  # two groups of two shards kept
    assert (res.packed, res.splits) == (ref.packed, ref.splits)
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "ref")
    # Killed after the shards, before pack.json: the rerun only writes the metadata,
    # without reading the archive again.
    (tmp_path / "out" / "pack.json").unlink()

    def no_reading(*a):
        raise AssertionError("the archive was read again")

    monkeypatch.setattr(sources.Source, "stream", no_reading)
    again = pack_folder(tar, tmp_path / "out", OPTS)
    assert again.splits == ref.splits and again.resumed_shards == 6


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


@pytest.mark.parametrize("form", ["folder", "tar"])
def test_two_processes_pack_disjoint_shards_byte_identical_to_one(images, tmp_path, form):
    data = (train_tar(tmp_path / "train.tar", images, compress="gz") if form == "tar"
            else nested_tree(tmp_path / "tree", images))
    args = ["--shards", "4", "--archive-shard-records", "2", "--archive-group-shards", "2",
            "--val-fraction", "0.25", "--quiet"]
    opts = PackOptions(num_shards=4, archive_shard_records=2, archive_group_shards=2,
                       val_fraction=0.25, pack_workers=2)
    one = pack_folder(data, tmp_path / "one", opts)  # in spawned worker processes
    out = tmp_path / "two"
    procs = [subprocess.Popen([sys.executable, "-m", "autotune.cli", "pack", "--data", str(data),
                               "--out", str(out), "--workers", "0", "--num-processes", "2",
                               "--process-id", str(i), *args],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    if not is_packed(out):  # both finished at once: the merge step writes no shard
        merged = pack_folder(data, out, opts)
        assert merged.resumed_shards == sum(len(s.shard_lengths) for s in merged.splits)
    assert shard_bytes(out) == shard_bytes(tmp_path / "one")
    two = json.loads((out / "pack.json").read_text())
    assert (two["packed"], two["skipped"]) == (one.packed, one.skipped)


def test_pack_worker_processes_import_neither_jax_nor_tensorflow():
    """Spawned workers import ``trainers.pack`` (and the CLI module as ``__main__``):
    neither may pull in JAX or TensorFlow (start-up time, memory, device locks)."""
    code = ("import sys, trainers.pack, autotune.cli; "
            "print(sorted(m for m in ('jax', 'tensorflow', 'tensorflow_datasets') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_pack_under_srun_takes_its_share_from_slurm(monkeypatch):
    import argparse

    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "2")
    args = argparse.Namespace(num_processes=None, process_id=None)
    cli._pack_processes(args)
    assert (args.num_processes, args.process_id) == (4, 2)
    args = argparse.Namespace(num_processes=1, process_id=None)  # explicit wins
    cli._pack_processes(args)
    assert (args.num_processes, args.process_id) == (1, 0)


_PACK_FOR_PLAN_CHILD = """
import json, sys
from types import SimpleNamespace
pid, port, data = int(sys.argv[1]), sys.argv[2], sys.argv[3]
from trainers.distributed import initialize
initialize(f"127.0.0.1:{port}", 2, pid, peer_timeout_s=60, connect_timeout_s=120)
from autotune.orchestrate import pack_for_plan
plan = SimpleNamespace(num_shards=4, pack_resize=None, val_fraction=0.25, pack_threads=1,
                       pack_workers=0, archive_shard_records=1024)
packed, res = pack_for_plan(data, plan, None)
print(json.dumps({"packed": packed, "records": res.packed, "complete": res.complete}), flush=True)
"""


@pytest.mark.parametrize("form", ["folder", "tar"])
def test_train_auto_hosts_share_the_pack_on_a_shared_cache(images, tmp_path, form):
    """Two jax.distributed processes seeing one cache folder pack disjoint shards (of
    a folder: 2 of 4 each; an archive this small is one group) and finish it once;
    the data set is byte-identical to a one-process pack."""
    from conftest import free_port, run_children, xla_flags

    tar = (train_tar(tmp_path / "train.tar", images, compress="gz") if form == "tar"
           else nested_tree(tmp_path / "tree", images))
    env = {**_env(), "AUTOTUNE_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags(1)}
    port = free_port()
    rcs, outs = run_children(
        [[sys.executable, "-c", _PACK_FOR_PLAN_CHILD, str(i), str(port), str(tar)]
         for i in range(2)], [tmp_path / f"p{i}.log" for i in range(2)], env, 300)
    assert rcs == [0, 0], outs
    got = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    assert got[0] == got[1] and got[0]["records"] == 12 and got[0]["complete"]
    one = pack_folder(tar, tmp_path / "one", PackOptions(num_shards=4, val_fraction=0.25))
    assert shard_bytes(Path(got[0]["packed"])) == shard_bytes(tmp_path / "one")
    assert not list(Path(got[0]["packed"]).glob(".shared-*"))


def test_hand_written_records_equal_tfds_serialization():
    """Workers serialize records without TensorFlow (``example_record``); the bytes
    must be tensorflow-datasets' own (deterministic) serialization."""
    import random

    serialize = pack_mod._example_serializer(pack_mod._features([f"n{i:08d}" for i in range(1001)]))
    rng = random.Random(0)
    for _ in range(200):
        image = rng.randbytes(rng.choice([0, 1, 127, 128, 300, 16_383, 16_384, 70_000]))
        label = rng.choice([0, 1, 127, 128, 999, 1000])
        name = rng.choice(["a.JPEG", "ILSVRC2012_val_00000001.JPEG", "é.jpg", "x" * 300, ""])
        want = serialize({"image": io.BytesIO(image), "label": label, "file_name": name})
        assert pack_mod.example_record(image, label, name) == want, (len(image), label, name)


def test_a_tarred_class_folder_tree_packs_like_the_tree(images, tmp_path):
    root = nested_tree(tmp_path / "tiny", images)
    tar = tmp_path / "tiny.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(root, arcname="data/train")  # data/train/<wnid>/images/*.JPEG
    res = pack_folder(tar, tmp_path / "out", OPTS)
    ref = pack_folder(root, tmp_path / "ref", OPTS)
    assert res.kind == sources.KIND_TAR_OF_FOLDERS
    assert res.class_names == ref.class_names == tuple(sorted(WNIDS))
    assert (res.input_images, res.packed, res.skipped) == (ref.input_images, ref.packed,
                                                          ref.skipped)
    names = wnid_of(images)
    assert all(res.class_names[label] == names[n] for n, label, _ in records(tmp_path / "out"))
