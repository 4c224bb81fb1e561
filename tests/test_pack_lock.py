"""The lock that lets one of several packing processes write a data set's metadata:
held while it writes, never left blocking by a process that died."""

import fcntl
import os

import numpy as np
import simplejpeg

from trainers.options import PackOptions
from trainers.pack import is_packed, pack_folder

OPTS = PackOptions(num_shards=2, val_fraction=0.0, pack_threads=1)


def _tree(root):
    rng = np.random.default_rng(0)
    for c in range(3):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(4):
            img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            (d / f"n{c:08d}_{i}.JPEG").write_bytes(simplejpeg.encode_jpeg(img, quality=90))
    return root


def test_a_lock_file_left_by_a_killed_process_does_not_block_the_finish(tmp_path):
    data, out = _tree(tmp_path / "data"), tmp_path / "out"
    first = pack_folder(data, out, OPTS, process_index=0, process_count=2)
    assert not first.complete  # shard 1 is the other process's
    (out / ".finalize.lock").write_bytes(b"")  # what a process killed while finishing leaves
    second = pack_folder(data, out, OPTS, process_index=1, process_count=2)
    assert second.complete and is_packed(out)
    assert second.packed == 12


def test_a_held_lock_leaves_the_metadata_to_its_holder_then_any_run_finishes(tmp_path):
    data, out = _tree(tmp_path / "data"), tmp_path / "out"
    pack_folder(data, out, OPTS, process_index=0, process_count=2)
    fd = os.open(out / ".finalize.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process is writing the metadata
    try:
        held = pack_folder(data, out, OPTS, process_index=1, process_count=2)
        assert not held.complete and not is_packed(out)
    finally:
        os.close(fd)  # that process exits (or is killed): the kernel drops the lock
    done = pack_folder(data, out, OPTS, process_index=1, process_count=2)
    assert done.complete and is_packed(out) and done.resumed_shards == 2
