"""Listed shards written whole by one worker each (threads or spawned processes): the
same bytes and sidecars as one thread, progress that reaches the total, skipped files
listed with their reasons, and failures (a write error, a killed worker process) that
leave only complete shards."""

import errno
import hashlib
import json
import os
import shutil

import pytest

from conftest import write_jpeg_folder
from trainers import pack as pack_mod
from trainers.options import PackOptions
from trainers.pack import PackError, is_packed, pack_folder

OPTS = dict(num_shards=4, val_fraction=0.25)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = write_jpeg_folder(tmp_path_factory.mktemp("shards") / "imgs", classes=3, per_class=12,
                             size=(32, 24))
    (root / "n00000001" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "n00000002" / "empty.JPEG").write_bytes(b"")
    (root / "n00000000" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


@pytest.fixture(scope="module")
def one_thread(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "packed"
    return out, pack_folder(folder, out, PackOptions(**OPTS, pack_threads=1))


def _shard_files(out) -> dict[str, bytes]:
    """Every shard and shard sidecar of a packed folder, by name."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if ".array_record-" in p.name}


@pytest.mark.parametrize("workers", [dict(pack_threads=2), dict(pack_workers=2)],
                         ids=["threads", "processes"])
def test_shards_written_by_workers_equal_one_threads(folder, one_thread, tmp_path, workers):
    ref_dir, ref = one_thread
    calls = []
    res = pack_folder(folder, tmp_path / "packed", PackOptions(**OPTS, **workers),
                      progress=lambda done, total, bad: calls.append((done, total, bad)))
    assert _shard_files(tmp_path / "packed") == _shard_files(ref_dir)
    assert len(_shard_files(ref_dir)) == 2 * (4 + 1)  # shards and sidecars, train + val
    assert (res.input_images, res.packed, res.skipped) == (ref.input_images, ref.packed, 3)
    # The skipped files of worker-written shards are listed with their reasons.
    reasons = {os.path.basename(b.path): b.reason for b in res.bad_images}
    assert res.bad_images == ref.bad_images
    assert reasons[".DS_Store"] == "not an image (system file)"
    assert "empty" in reasons["empty.JPEG"] and reasons["broken.JPEG"]
    # Progress counts up to every member, with the skipped ones.
    done = [c[0] for c in calls]
    assert done == sorted(done) and calls[-1] == (res.input_images, res.input_images, 3)
    if "pack_threads" in workers:  # threads report after each batch: a shard here
        assert len(done) == len(set(done)) == 4 + 1


class _FailOneShard:
    """Stands in for ``ArrayRecordWriter``: the third write to shard 1 of train fails
    like a full disk; the other shards are written for real."""

    real_class = None

    def __init__(self, path, options):
        self.path, self.writes = path, 0
        self.real = self.real_class(path, options)

    def write(self, record):
        self.writes += 1
        if "train.array_record-00001-of-00004" in self.path and self.writes == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.real.write(record)

    def close(self):
        self.real.close()


def test_a_failed_shard_stops_the_other_threads_and_the_rerun_is_identical(folder, one_thread,
                                                                           tmp_path, monkeypatch):
    import array_record.python.array_record_module as arm

    ref_dir, _ = one_thread
    out = tmp_path / "packed"
    monkeypatch.setattr(_FailOneShard, "real_class", arm.ArrayRecordWriter)
    monkeypatch.setattr(arm, "ArrayRecordWriter", _FailOneShard)
    with pytest.raises(OSError) as info:
        pack_folder(folder, out, PackOptions(**OPTS, pack_threads=2))
    msg = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert "autotune_images-train.array_record-00001-of-00004.tmp" in msg
    assert "2 records" in msg and "bytes still to write" in msg
    # Only complete shards (each with its sidecar) are left; none is half-written.
    assert not list(out.glob("*.tmp")) and not is_packed(out)
    for shard in out.glob("*.array_record-*-of-*[0-9]"):
        assert shard.with_name(shard.name + ".json").is_file(), shard
    monkeypatch.undo()
    pack_folder(folder, out, PackOptions(**OPTS))
    assert _shard_files(out) == _shard_files(ref_dir)


def test_a_write_error_in_a_worker_process_names_the_shard(folder, one_thread, tmp_path):
    ref_dir, _ = one_thread
    out = tmp_path / "packed"
    out.mkdir()
    blocker = out / "autotune_images-train.array_record-00002-of-00004.tmp"
    blocker.mkdir()  # the shard's temporary file cannot be created: "Is a directory"
    with pytest.raises(OSError, match=r"writing .*train\.array_record-00002-of-00004\.tmp failed: "
                                      r".*Is a directory.*bytes still to write"):
        pack_folder(folder, out, PackOptions(**OPTS, pack_workers=2))
    assert [p for p in out.glob("*.tmp") if p != blocker] == [] and not is_packed(out)
    blocker.rmdir()
    pack_folder(folder, out, PackOptions(**OPTS, pack_workers=2))
    assert _shard_files(out) == _shard_files(ref_dir)


class _Dies:
    """Unpickled in a worker process, ends it at once (as the kernel's OOM killer would)."""

    def __reduce__(self):
        return os._exit, (3,)

    def __len__(self):
        return 1


def test_a_killed_worker_process_is_a_pack_error(tmp_path):
    task = pack_mod._ShardTask(tmp_path / "shard", _Dies(), None, None, 90, tmp_path, "fp")
    with pack_mod._Workers(PackOptions(pack_workers=1)) as workers:
        with pytest.raises(PackError, match="a pack worker process ended abruptly"):
            workers.run_shards([task], None, 1, 0, 0)


def test_read_image_file_reads_whole_files_and_names_what_it_cannot_read(tmp_path, monkeypatch):
    read = pack_mod._read_image_file
    data = os.urandom(70_000)
    (tmp_path / "a.JPEG").write_bytes(data)
    (tmp_path / "empty.JPEG").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo.JPEG")  # no writer: a blocking open would never return
    (tmp_path / "folder.JPEG").mkdir()
    (tmp_path / "dangling.JPEG").symlink_to(tmp_path / "gone.JPEG")
    (tmp_path / "link.JPEG").symlink_to(tmp_path / "a.JPEG")
    (tmp_path / "notes.txt").write_text("boxes")
    assert read(str(tmp_path / "a.JPEG")) == (data, None)
    assert read(str(tmp_path / "link.JPEG")) == (data, None)
    assert read(str(tmp_path / "empty.JPEG")) == (b"", None)
    assert read(str(tmp_path / "fifo.JPEG")) == (None, "not a regular file: a FIFO")
    assert read(str(tmp_path / "folder.JPEG")) == (None, "not a regular file: a folder")
    assert read(str(tmp_path / "dangling.JPEG"))[1] == ("unreadable: No such file or directory "
                                                         "(dangling symbolic link)")
    assert read(str(tmp_path / "notes.txt"))[1].startswith("not an image (name ends in '.txt'")
    monkeypatch.setattr(pack_mod, "MAX_FILE_BYTES", 1000)
    assert read(str(tmp_path / "a.JPEG")) == (None, "file too large: 70,000 bytes > 1,000")


def test_a_listed_shard_holds_tfds_records_of_its_members_in_order(shared_data, tmp_path):
    """The worker's per-member loop (``_write_members``) writes exactly what
    ``ArrayRecordWriter`` gets from tensorflow-datasets' own serialization of each
    member in shard order (real full-size and small JPEGs, names with and without a
    long prefix), and lists the members it cannot use, with the same counts."""
    import io
    from pathlib import Path

    from array_record.python.array_record_module import ArrayRecordWriter

    full = sorted((shared_data / "imagenet-samples").glob("*/*.JPEG"))[:3]
    small = sorted((shared_data / "imagenette" / "train").glob("*/*.JPEG"))[:3]
    odd = tmp_path / ("n" * 130 + ".JPEG")  # a name over 127 bytes: two-byte varints
    odd.write_bytes(small[0].read_bytes())
    bad = tmp_path / "bad.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    members = [(str(p), i) for i, p in enumerate(full + small)]
    members[2:2] = [(str(bad), 7), (str(odd), 300), (str(tmp_path / "boxes.txt"), 1)]
    task = pack_mod._ShardTask(tmp_path / "shard", members, None, None, 90, tmp_path, "fp")
    closed = pack_mod._write_listed_shard(task, pack_mod._ThreadTally(None, None, 0, 0))["closed"]
    assert not (tmp_path / "shard").exists()  # closed, not yet sealed
    info = pack_mod._seal_shard(closed)["info"]
    assert info == json.loads((tmp_path / "shard.json").read_text())

    serialize = pack_mod._example_serializer(pack_mod._features([f"c{i}" for i in range(301)]))
    ref = ArrayRecordWriter(str(tmp_path / "ref"), "group_size:1,uncompressed")
    good = [(p, label) for p, label in members if Path(p) not in (bad, tmp_path / "boxes.txt")]
    for p, label in good:
        ref.write(serialize({"image": io.BytesIO(Path(p).read_bytes()), "label": label,
                             "file_name": Path(p).name}))
    ref.close()
    assert (tmp_path / "shard").read_bytes() == (tmp_path / "ref").read_bytes()
    assert info["records"] == len(good) == 7
    assert info["bytes_in"] == info["bytes_out"] == sum(Path(p).stat().st_size for p, _ in good)
    assert [b["path"] for b in info["bad"]] == [str(bad), str(tmp_path / "boxes.txt")]
    assert "not an image" in info["bad"][1]["reason"]


def test_worker_processes_start_early_and_a_bad_input_stays_one_error(folder, one_thread, tmp_path,
                                                                      monkeypatch):
    """With worker processes, ``pack_folder`` starts them before it lists the input
    (their start overlaps the listing); a bad input is still the one-line
    :class:`PackError`, with no worker process left behind; a complete pack is
    returned without starting any; an interrupted one resumes with them."""
    import multiprocessing

    started = []
    real = pack_mod._Workers

    class Recording(real):
        def __init__(self, options, start=False):
            started.append(start)
            super().__init__(options, start)

    monkeypatch.setattr(pack_mod, "_Workers", Recording)
    with pytest.raises(PackError, match=r"^\S*missing does not exist$"):
        pack_folder(tmp_path / "missing", tmp_path / "out", PackOptions(**OPTS, pack_workers=2))
    assert started == [True] and multiprocessing.active_children() == []
    ref_dir, ref = one_thread
    out = tmp_path / "packed"
    real_meta = pack_mod._write_tfds_metadata
    monkeypatch.setattr(pack_mod, "_write_tfds_metadata", _interrupted)
    with pytest.raises(KeyboardInterrupt):
        pack_folder(folder, out, PackOptions(**OPTS, pack_workers=2))
    assert started == [True, True] and not is_packed(out)
    lost = next(out.glob("*train.array_record-00001-of-00004"))
    lost.unlink()  # as if killed while writing it: the rerun writes it again
    monkeypatch.setattr(pack_mod, "_write_tfds_metadata", real_meta)
    res = pack_folder(folder, out, PackOptions(**OPTS, pack_workers=2))
    assert started == [True, True, True] and res.resumed_shards == 4
    assert _shard_files(out) == _shard_files(ref_dir) and is_packed(out)
    again = pack_folder(folder, out, PackOptions(**OPTS, pack_workers=2))
    assert started == [True, True, True] and again.packed == ref.packed  # none started
    assert multiprocessing.active_children() == []


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def test_a_background_import_imports_once_and_a_failing_one_stays_quiet(monkeypatch):
    """The metadata writer's module is imported in a daemon thread while the last
    shards are written (``_import_in_background``): once per process; a module that
    fails to import raises nothing there (it fails again where it is used)."""
    import sys
    import threading
    import types

    started = []

    class Recorded(threading.Thread):
        def start(self):
            started.append(self)
            super().start()

    monkeypatch.setattr(pack_mod, "threading", types.SimpleNamespace(Thread=Recorded))
    monkeypatch.setattr(pack_mod, "_BACKGROUND_IMPORTS", set())
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    for name in ("colorsys", "colorsys", "no_such_module_for_autotune"):
        pack_mod._import_in_background(name)
    for t in started:
        t.join(60)
    assert [t.name for t in started] == ["import colorsys", "import no_such_module_for_autotune"]
    assert "colorsys" in sys.modules and not any(t.is_alive() for t in started)


def test_the_fingerprint_is_the_same_when_worker_processes_stat_the_files(folder, tmp_path,
                                                                          monkeypatch):
    """With worker processes the listed files' lines are made there, in chunks, and
    hashed here in order (``_Workers.stat_lines``): the same fingerprint as making
    them here, a file that cannot be stat'ed included, and a changed file changes it.
    Both are the digest of one line per file (what packs made before chunking hold)."""
    from trainers import sources

    monkeypatch.setattr(pack_mod._Workers, "STAT_CHUNK", 5)  # several chunks in flight
    tree = tmp_path / "tree"
    shutil.copytree(folder, tree)
    (tree / "n00000000" / "dangling.JPEG").symlink_to(tree / "gone.JPEG")
    src = sources.open_source(tree, error=PackError)
    opts = PackOptions(**OPTS, pack_workers=2)
    here = pack_mod._fingerprint(src, None, opts)
    with pack_mod._Workers(opts, start=True) as workers:
        there = pack_mod._fingerprint(src, None, opts, workers)
        chunks = list(workers.stat_lines(src.items))
    assert there == here and len(chunks) == -(-len(src.items) // 5) > 3
    lines = [(f"{p}\0{label}\0missing\n" if not os.path.exists(p) else
              f"{p}\0{label}\0{os.stat(p).st_size}\0{os.stat(p).st_mtime_ns}\n").encode()
             for p, label in src.items]
    assert b"".join(chunks) == b"".join(lines)
    assert any(line.endswith(b"\0missing\n") for line in lines)  # the dangling link
    h = hashlib.sha256()
    h.update(json.dumps([pack_mod.FORMAT_VERSION, src.path,
                         {k: v for k, v in opts.to_dict().items()
                          if k not in PackOptions.EXECUTION_ONLY}]).encode())
    h.update(f"{src.kind}\0{src.stamp}\0{src.labels_from}\n".encode())
    for line in lines:  # one file at a time, as before
        h.update(line)
    assert here == h.hexdigest()[:16]
    os.utime(tree / "n00000001" / "n00000001_0.JPEG", ns=(1, 1))
    assert pack_mod._fingerprint(src, None, opts) != here
