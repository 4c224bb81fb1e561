"""An archive's header listing is walked once, not once per command: saved in the cache
folder by path, size and mtime."""

import io
import os
import tarfile

from trainers import sources


def _tar(path, names):
    with tarfile.open(path, "w") as tf:
        for n in names:
            data = n.encode() * 10
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _no_walk(*_):
    raise AssertionError("the archive was walked again")


def test_a_second_process_reads_the_saved_listing(tmp_path, monkeypatch):
    tar = _tar(tmp_path / "val.tar", ["a.JPEG", "b.JPEG"])
    first = sources.list_tar(tar)
    assert first == ([("a.JPEG", 60), ("b.JPEG", 60)], None)
    monkeypatch.setattr(sources, "_LISTINGS", {})  # a new process
    monkeypatch.setattr(sources, "_walk_tar", _no_walk)
    assert sources.list_tar(tar) == first


def test_a_changed_archive_is_walked_again(tmp_path, monkeypatch):
    tar = _tar(tmp_path / "val.tar", ["a.JPEG"])
    sources.list_tar(tar)
    _tar(tar, ["a.JPEG", "c.JPEG"])
    os.utime(tar, ns=(1, 1))  # another mtime as well as another size
    monkeypatch.setattr(sources, "_LISTINGS", {})
    assert [n for n, _ in sources.list_tar(tar)[0]] == ["a.JPEG", "c.JPEG"]


def test_a_damaged_saved_listing_is_walked_again(tmp_path, monkeypatch):
    tar = _tar(tmp_path / "val.tar", ["a.JPEG"])
    sources.list_tar(tar)
    sources._listing_file(tar).write_text("{not json")
    monkeypatch.setattr(sources, "_LISTINGS", {})
    assert sources.list_tar(tar) == ([("a.JPEG", 60)], None)


def test_an_unwritable_cache_costs_only_the_walk(tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("AUTOTUNE_CACHE", str(blocker))
    tar = _tar(tmp_path / "val.tar", ["a.JPEG"])
    assert sources.list_tar(tar) == ([("a.JPEG", 60)], None)


def test_a_truncated_archive_keeps_where_it_stopped(tmp_path, monkeypatch):
    tar = _tar(tmp_path / "val.tar", ["a.JPEG", "b.JPEG", "c.JPEG"])
    tar.write_bytes(tar.read_bytes()[:1024 + 512 + 100])  # into b's data
    first = sources.list_tar(tar)
    assert first[1] is not None and "ends early" in first[1]
    monkeypatch.setattr(sources, "_LISTINGS", {})
    monkeypatch.setattr(sources, "_walk_tar", _no_walk)
    assert sources.list_tar(tar) == first
