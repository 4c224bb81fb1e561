"""Packing a folder into ArrayRecord shards and reading it back with the input
pipeline: counts, bad files, tfds compatibility, determinism, resume, partitions."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import write_jpeg_folder
from trainers import input_pipeline as ip
from trainers.pack import PackError, is_packed, pack_folder, scan_image_folder, shard_paths
from trainers.summaries import PackResult
from trainers.options import PackOptions
from trainers.options import AugmentConfig


@pytest.fixture
def folder(tmp_path):
    root = write_jpeg_folder(tmp_path / "imgs", classes=3, per_class=8)
    (root / "n00000001" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "n00000002" / "empty.JPEG").write_bytes(b"")
    (root / "n00000000" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


def test_scan_orders_classes_and_keeps_every_file(folder):
    classes, items = scan_image_folder(folder)
    assert classes == ("n00000000", "n00000001", "n00000002")
    assert len(items) == 3 * 8 + 3
    assert {label for _, label in items} == {0, 1, 2}


def test_pack_reports_bad_files_and_counts_add_up(folder, tmp_path):
    out = tmp_path / "packed"
    res = pack_folder(folder, out, PackOptions(num_shards=3, val_fraction=0.25))
    assert res.input_images == 27
    assert res.packed == 24 and res.skipped == 3
    assert res.input_images == res.packed + res.skipped
    reasons = {os.path.basename(b.path): b.reason for b in res.bad_images}
    assert set(reasons) == {"broken.JPEG", "empty.JPEG", ".DS_Store"}
    assert "empty" in reasons["empty.JPEG"]
    assert json.loads((out / "bad_images.json").read_text())[0]["reason"]
    # 25% of 8 per class held out = 2 per class = 6 (the bad files were listed first:
    # the hold-out is over files, so count only what was packed)
    splits = {s.name: s for s in res.splits}
    assert splits["train"].num_examples + splits["validation"].num_examples == 24
    assert len(splits["train"].shard_lengths) == 3
    assert is_packed(out)
    assert PackResult.load(out / "pack.json") == res


def test_packed_data_set_reads_with_tfds(folder, tmp_path):
    import tensorflow_datasets as tfds

    out = tmp_path / "packed"
    res = pack_folder(folder, out, PackOptions(num_shards=2))
    builder = tfds.builder_from_directory(str(out))
    assert builder.info.features["label"].names == list(res.class_names)
    assert builder.info.splits["train"].num_examples == res.packed
    src = builder.as_data_source(split="train")
    ex = src[0]
    assert ex["image"].shape[-1] == 3 and 0 <= ex["label"] < 3


def test_pack_resize_shrinks_images(folder, tmp_path):
    res = pack_folder(folder, tmp_path / "small", PackOptions(num_shards=1, resize_shorter=16))
    paths = shard_paths(tmp_path / "small", "train")
    from array_record.python.array_record_data_source import ArrayRecordDataSource
    import simplejpeg

    data, _ = ip.parse_example(ArrayRecordDataSource(paths)[0])
    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    assert min(h, w) == 16
    assert res.bytes_out < res.bytes_in


def test_rerun_of_finished_pack_returns_it_and_other_options_refuse(folder, tmp_path):
    out = tmp_path / "packed"
    a = pack_folder(folder, out, PackOptions(num_shards=2))
    assert pack_folder(folder, out, PackOptions(num_shards=2)) == a
    with pytest.raises(PackError, match="different packed data set"):
        pack_folder(folder, out, PackOptions(num_shards=3))


def test_stale_cached_pack_is_replaced_only_when_asked(folder, tmp_path):
    """A data set copied again (new mtimes) or changed no longer matches its cached
    pack: a user's --out refuses, the tool's own cache (replace_stale) repacks."""
    out = tmp_path / "packed"
    a = pack_folder(folder, out, PackOptions(num_shards=2))
    first = sorted(Path(folder).rglob("*.JPEG"))[0]
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(PackError, match="different packed data set"):
        pack_folder(folder, out, PackOptions(num_shards=2))
    b = pack_folder(folder, out, PackOptions(num_shards=2), replace_stale=True)
    assert b.packed == a.packed and is_packed(out)
    assert (out / "fingerprint.txt").read_text() != ""
    assert pack_folder(folder, out, PackOptions(num_shards=2)) == b  # now current


def test_interrupted_pack_resumes_to_identical_result(folder, tmp_path, monkeypatch):
    ref = pack_folder(folder, tmp_path / "ref", PackOptions(num_shards=3))
    out = tmp_path / "packed"
    import trainers.pack as pack_mod

    real = pack_mod._write_tfds_metadata
    monkeypatch.setattr(pack_mod, "_write_tfds_metadata",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        pack_folder(folder, out, PackOptions(num_shards=3))
    assert not is_packed(out)  # a half-written pack is never taken as finished
    monkeypatch.setattr(pack_mod, "_write_tfds_metadata", real)
    res = pack_folder(folder, out, PackOptions(num_shards=3))
    assert res.resumed_shards == 3
    for a, b in zip(shard_paths(tmp_path / "ref", "train"), shard_paths(out, "train")):
        assert open(a, "rb").read() == open(b, "rb").read()
    assert (res.packed, res.skipped) == (ref.packed, ref.skipped)


def test_missing_or_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(PackError, match="does not exist"):
        pack_folder(tmp_path / "nope", tmp_path / "o")
    (tmp_path / "e" / "n1").mkdir(parents=True)
    with pytest.raises(PackError, match="is empty"):
        pack_folder(tmp_path / "e", tmp_path / "o")


def test_one_idea_of_an_image_file_for_pack_probe_and_validation(tmp_path):
    from trainers import scan
    from trainers.validation import scan_validation

    root = write_jpeg_folder(tmp_path / "imgs", classes=2, per_class=2)
    good = (root / "n00000000" / "n00000000_0.JPEG").read_bytes()
    odd = {"notes.txt": good, ".hidden.JPEG": good, "Thumbs.db": b"x", "README": good}
    for name, data in odd.items():
        (root / "n00000001" / name).write_bytes(data)
    (root / "n00000001" / "lower.jpg").write_bytes(good)
    images = {p for p, _ in scan.scan_class_folders(root, images_only=True)[1]}
    assert {os.path.basename(p) for p in images} == {
        "n00000000_0.JPEG", "n00000000_1.JPEG", "n00000001_0.JPEG", "n00000001_1.JPEG",
        "lower.jpg"}
    # The decode probe samples exactly these; the pack stores exactly these and lists
    # every other entry as "not an image"; a class-folder validation set is read the
    # same way as the train folder.
    assert {str(p) for p in scan.sample_images(root, 100)} == images
    res = pack_folder(root, tmp_path / "packed", PackOptions(num_shards=1))
    assert res.packed == len(images)
    assert {os.path.basename(b.path): b.reason.split(" (")[0] for b in res.bad_images} == {
        name: "not an image" for name in odd}
    assert scan_validation(root, res.class_names) == scan.scan_class_folders(root)[1]


# ------------------------------------------------------------------ pipeline

@pytest.fixture
def packed(tmp_path):
    root = write_jpeg_folder(tmp_path / "imgs", classes=4, per_class=10)
    res = pack_folder(root, tmp_path / "packed", PackOptions(num_shards=4))
    return tmp_path / "packed", res


def _cfg(**kw):
    base = dict(host_batch=8, augment=AugmentConfig(image_size=16, min_scale=0.3), decode_threads=2,
                prefetch_batches=2, seed=3)
    base.update(kw)
    return ip.PipelineConfig(**base)


def _batches(packed, cfg, epochs=2, start=0, n=None):
    out_dir, res = packed
    lengths = res.split("train").shard_lengths
    spe = ip.steps_per_epoch(lengths, cfg.host_batch)
    it = ip.make_train_iterator(shard_paths(out_dir, "train"), lengths, cfg, epochs, spe,
                                start_step=start)
    return [b for _, b in zip(range(n or epochs * spe - start), it)]


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_same_seed_same_batches_whatever_the_threads(packed, mode):
    a = _batches(packed, _cfg(read_mode=mode, decode_threads=1, shuffle_window=8))
    b = _batches(packed, _cfg(read_mode=mode, decode_threads=3, shuffle_window=8))
    assert len(a) == len(b) == 2 * (40 // 8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    c = _batches(packed, _cfg(read_mode=mode, seed=4, shuffle_window=8))
    assert any(not np.array_equal(x["label"], y["label"]) for x, y in zip(a, c))


def test_each_epoch_sees_every_record_once_in_a_new_order(packed):
    bs = _batches(packed, _cfg(), epochs=2)
    e0 = np.concatenate([b["label"] for b in bs[:5]])
    e1 = np.concatenate([b["label"] for b in bs[5:]])
    assert sorted(e0) == sorted(e1) == sorted([0, 1, 2, 3] * 10)
    assert bs[0]["image"].dtype == np.uint8 and bs[0]["image"].shape == (8, 16, 16, 3)


def test_the_collector_is_frozen_once_per_process_at_the_first_batch(packed, monkeypatch):
    import gc

    calls = []
    monkeypatch.setattr(ip, "_FROZEN_IN", [])
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(1))
    bs = _batches(packed, _cfg(decode_threads=2), epochs=1)
    assert len(bs) == 5 and calls == [1]  # 5 batches on 2 threads, one freeze
    _batches(packed, _cfg(), epochs=1)
    assert calls == [1]  # the same process: not again


def test_resume_continues_with_the_next_batch(packed):
    full = _batches(packed, _cfg())
    tail = _batches(packed, _cfg(), start=3)
    assert len(tail) == len(full) - 3
    for x, y in zip(full[3:], tail):
        np.testing.assert_array_equal(x["image"], y["image"])


def test_iterator_state_round_trip(packed):
    out_dir, res = packed
    lengths = res.split("train").shard_lengths
    cfg = _cfg()
    it = ip.make_train_iterator(shard_paths(out_dir, "train"), lengths, cfg, 2, 5)
    for _ in range(4):
        next(it)
    state = it.get_state()
    want = next(it)
    it2 = ip.make_train_iterator(shard_paths(out_dir, "train"), lengths, cfg, 2, 5)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["image"], want["image"])


def test_cache_decoded_keeps_the_order_and_labels(packed):
    a = _batches(packed, _cfg(cache_decoded=False))
    b = _batches(packed, _cfg(cache_decoded=True))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["label"], y["label"])


def test_host_partitions_are_disjoint_and_cover_every_shard():
    parts = [ip.host_shards(10, p, 3) for p in range(3)]
    flat = sorted(s for p in parts for s in p)
    assert flat == list(range(10))
    assert all(set(a).isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1:])
    with pytest.raises(ValueError, match="cannot feed"):
        ip.host_shards(2, 0, 3)


def test_steps_per_epoch_is_the_smallest_hosts():
    # hosts get shards {0, 2} = 10 + 30 and {1, 3} = 20 + 5 -> min(40, 25) // 8 = 3
    assert ip.steps_per_epoch([10, 20, 30, 5], 8, 2) == 3
    with pytest.raises(ValueError, match="fewer than one batch"):
        ip.steps_per_epoch([3, 3], 8, 2)


def test_eval_batches_cover_each_record_once_across_hosts(packed):
    out_dir, res = packed
    lengths = res.split("train").shard_lengths
    paths = shard_paths(out_dir, "train")
    seen = []
    steps = []
    for p in range(3):
        bs = list(ip.eval_batches(paths, lengths, batch=4, image_size=16, process_index=p,
                                  process_count=3, threads=1))
        steps.append(len(bs))
        seen.extend(int(m) for b in bs for m in b["mask"])
    assert sum(seen) == 40
    assert len(set(steps)) == 1  # every host runs the same number of eval steps


def test_worker_processes_give_the_same_batches_and_resume(packed):
    a = _batches(packed, _cfg(decode_threads=1))
    b = _batches(packed, _cfg(decode_threads=1, decode_workers=2))
    c = _batches(packed, _cfg(decode_threads=1, decode_workers=2), start=3)
    assert len(b) == len(a) and len(c) == len(a) - 3
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
    for x, y in zip(a[3:], c):
        np.testing.assert_array_equal(x["image"], y["image"])
