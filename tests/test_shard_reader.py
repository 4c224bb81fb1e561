"""Direct record reads (trainers/shard_reader.py): byte-identical to ArrayRecord's own
reader on packed real photos and on shards laid out so that chunk headers, data
prefixes and records meet the 64 KiB block headers in every way; shards of other
writer options, truncated or damaged shards and reads past the end go to the library;
concurrent first reads; the vectorized footer parse."""

import os
import pickle
import random
import shutil
import threading

import numpy as np
import pytest

from trainers import input_pipeline as ip
from trainers import shard_reader as sr
from trainers.options import PackOptions
from trainers.pack import pack_folder, shard_paths

B = sr.BLOCK_SIZE


def _write(path, records, options="group_size:1,uncompressed"):
    from array_record.python.array_record_module import ArrayRecordWriter

    w = ArrayRecordWriter(str(path), options)
    for r in records:
        w.write(r)
    w.close()
    return str(path)


def _library(path):
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(path))
    try:
        return [reader.read([i])[0] for i in range(reader.num_records())]
    finally:
        reader.close()


def _size_to_end_at(begin: int, target: int) -> int:
    """The record length whose one-record chunk at ``begin`` ends at ``target``."""
    for n in range(max(0, target - begin - 200), target - begin):
        if sr.chunk_end(begin, 2 + sr.varint_size(n) + n, 1) == target:
            return n
    raise AssertionError(f"no record from {begin} ends at {target}")


@pytest.fixture(scope="module")
def edge_shard(tmp_path_factory):
    """Records placed so that chunks begin at a block boundary, their header or data
    prefix is cut by a block header, a record starts right after one and ends right
    at a boundary; plus empty, 1-byte, 127/128-byte (varint 1 / 2 bytes) and 200 KB
    records. Returns ``(path, records, the chunk begins aimed at)``."""
    rng = np.random.default_rng(0)
    lengths, aims, begin = [0, 1, 127, 128, 200_000], [], 64
    for n in lengths:
        begin = sr.chunk_end(begin, 2 + sr.varint_size(n) + n, 1)
    for k, back in enumerate([0, 20, 41, 45, 0, 3_000]):  # distance before a boundary
        target = (begin // B + 2 + (k % 2)) * B - back
        lengths.append(_size_to_end_at(begin, target))
        aims.append(target)
        begin = target
    lengths += [70_000, 5, 131_072]
    records = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
    path = _write(tmp_path_factory.mktemp("edge") / "edge.array_record", records)
    return path, records, aims


def test_every_record_is_the_librarys_where_blocks_cut_chunks(edge_shard):
    path, records, aims = edge_shard
    reader = sr.ShardReader(path, len(records))
    index = reader.index()
    assert reader.reason is None and index is not None
    assert set(aims) <= set(index.offsets)  # the layout this test means to cover
    assert any(o % B == 0 for o in index.offsets)
    assert any(o % B > B - sr.CHUNK_HEADER_SIZE for o in index.offsets)  # header cut
    assert _library(path) == records
    for r, want in enumerate(records):
        got = reader.read(r)
        assert isinstance(got, bytearray) and got == want, r
    assert reader.read(len(records)) is None and reader.read(-1) is None


def test_a_read_into_a_buffer_gives_the_same_bytes_in_it(edge_shard):
    path, records, _ = edge_shard
    reader = sr.ShardReader(path, len(records))
    buf = np.full(max(map(len, records)) + 10, 0xAB, np.uint8)
    for r, want in enumerate(records):
        assert reader.length(r) == len(want)
        got = reader.read(r, memoryview(buf))
        assert isinstance(got, memoryview) and got == want, r
        assert np.shares_memory(np.frombuffer(got, np.uint8), buf) or len(want) == 0
        assert bytes(buf[len(want):len(want) + 10]) == b"\xab" * 10  # nothing written past it
        buf[:] = 0xAB
    big = records.index(max(records, key=len))
    assert reader.read(big, memoryview(buf)[:len(records[big]) - 1]) is None  # too short
    assert reader.length(len(records)) is None and reader.length(-1) is None


def test_batch_reads_reuse_one_buffer_per_thread(edge_shard):
    path, records, _ = edge_shard
    recs = ip._Records([path, path], [len(records)] * 2)
    order = [3, len(records) + 7, 0, 12, len(records) + 3]
    first = recs.read(order, reuse=True)
    assert [bytes(r) for r in first] == [records[i % len(records)] for i in order]
    buf = ip._SCRATCH.buf
    assert all(isinstance(r, memoryview) for r in first)
    second = recs.read(order[::-1], reuse=True)
    assert ip._SCRATCH.buf is buf  # big enough: kept, not allocated again
    assert [bytes(r) for r in second] == [records[i % len(records)] for i in order[::-1]]
    assert [bytes(r) for r in recs.read(order[::-1])] == [bytes(r) for r in second]  # no reuse
    assert all(isinstance(r, bytearray) for r in recs.read(order))
    seen = {}

    def other():  # another thread gets its own buffer
        recs.read([1], reuse=True)
        seen["buf"] = ip._SCRATCH.buf

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["buf"] is not buf


def test_real_photos_packed_read_byte_identical(shared_data, tmp_path):
    src = tmp_path / "subset"
    for wnid in sorted(os.listdir(shared_data / "imagenet-samples"))[:30]:
        (src / wnid).mkdir(parents=True)
        for f in (shared_data / "imagenet-samples" / wnid).iterdir():
            os.symlink(f, src / wnid / f.name)
    res = pack_folder(src, tmp_path / "packed", PackOptions(num_shards=2, val_fraction=0.0))
    paths, lengths = shard_paths(tmp_path / "packed", "train"), res.split("train").shard_lengths
    crossing = 0
    for path, n in zip(paths, lengths):
        reader = sr.ShardReader(path, n)
        index = reader.index()
        assert reader.reason is None and len(reader) == n
        for r, want in enumerate(_library(path)):
            assert reader.read(r) == want, (path, r)
            n_r = index.lengths[r]
            end = sr.add_with_overhead(index.offsets[r], 42 + sr.varint_size(n_r) + n_r)
            crossing += index.offsets[r] // B != (end - 1) // B
    assert crossing >= 20  # photos of ~110 KB span block headers
    records = ip._Records(paths, lengths)
    order = list(range(len(records)))
    random.Random(1).shuffle(order)
    got = records.read(order)
    assert all(isinstance(g, bytearray) for g in got)
    every = _library(paths[0]) + _library(paths[1])
    assert got == [every[i] for i in order]


@pytest.mark.parametrize("n", [0, 1])
def test_shards_of_zero_and_one_record(tmp_path, n):
    records = [b"x" * 100_000][:n]
    path = _write(tmp_path / "s.array_record", records)
    reader = sr.ShardReader(path, n)
    assert reader.index() is not None and reader.reason is None and len(reader) == n
    assert [reader.read(r) for r in range(n)] == records
    assert reader.read(n) is None
    assert ip._Records([path], [n]).read(list(range(n))) == records


@pytest.mark.parametrize("options, why", [
    ("group_size:2,uncompressed", "group_size 2"),
    ("group_size:1", "compression 0x7a"),  # ArrayRecord's default: zstd
    ("", "compression 0x7a"),
    ("group_size:1,uncompressed,transpose:true", "transposed"),
])
def test_other_writer_options_are_read_by_the_library(tmp_path, options, why):
    rng = np.random.default_rng(1)
    records = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes()
               for n in rng.integers(0, 90_000, 7)]
    path = _write(tmp_path / "s.array_record", records, options)
    reader = sr.ShardReader(path, len(records))
    assert reader.read(0) is None and why in reader.reason
    got = ip._Records([path], [len(records)]).read([6, 0, 3, 3])
    assert [type(g) for g in got] == [bytes] * 4
    assert got == [records[i] for i in (6, 0, 3, 3)]


def test_padded_shards_are_read_directly(tmp_path):
    records = [bytes([i]) * (i * 30_000) for i in range(6)]
    path = _write(tmp_path / "s.array_record", records,
                  "group_size:1,uncompressed,pad_to_block_boundary:true")
    reader = sr.ShardReader(path, 6)
    assert [reader.read(i) for i in range(6)] == records and reader.reason is None


@pytest.mark.parametrize("cut", ["head", "half", "tail", "postscript"])
def test_a_truncated_shard_is_not_read_as_valid(edge_shard, tmp_path, cut):
    path, records, _ = edge_shard
    size = os.path.getsize(path)
    keep = {"head": 2_000, "half": size // 2, "tail": size - 72, "postscript": size - B}[cut]
    broken = tmp_path / "cut.array_record"
    broken.write_bytes(open(path, "rb").read()[:keep])
    reader = sr.ShardReader(broken, len(records))
    assert all(reader.read(r) is None for r in range(len(records)))
    assert reader.reason  # says why
    records_ = ip._Records([str(broken)], [len(records)])
    assert 0 in records_.broken and all(isinstance(g, OSError) for g in records_.read([0, 1]))


def test_a_shard_truncated_after_its_index_was_read(edge_shard, tmp_path):
    path, records, _ = edge_shard
    copy = tmp_path / "copy.array_record"
    shutil.copy(path, copy)
    reader = sr.ShardReader(copy, len(records))
    assert reader.read(0) == records[0]
    last = len(records) - 1
    os.truncate(copy, reader.index().offsets[last] + 100)
    assert reader.read(last) is None  # a short read is declined, never returned
    assert reader.read(0) == records[0]


def test_a_damaged_chunk_header_is_declined_and_named_by_the_library(edge_shard, tmp_path):
    path, records, _ = edge_shard
    copy = tmp_path / "copy.array_record"
    shutil.copy(path, copy)
    reader = sr.ShardReader(copy, len(records))
    at = reader.index().offsets[4]  # record 4's chunk header: data_size at +8
    with open(copy, "r+b") as f:
        f.seek(at + 9)
        f.write(b"\x55")
    assert reader.read(4) is None and reader.read(3) == records[3]
    recs = ip._Records([str(copy)], [len(records)])
    got = recs.read([3, 4])
    assert got[0] == records[3] and isinstance(got[1], Exception)
    assert recs.where(4) == f"shard {copy} record 4"
    past = recs.read([len(records)])[0]  # past the end: the library's error
    assert isinstance(past, Exception)


def test_four_threads_reading_at_once_get_the_right_records(edge_shard):
    path, records, _ = edge_shard
    reader = sr.ShardReader(path, len(records))  # index built by whichever comes first
    start = threading.Barrier(4)
    results, errors = {}, []

    def run(t):
        try:
            order = list(range(len(records))) * 3
            random.Random(t).shuffle(order)
            start.wait()
            results[t] = all(reader.read(r) == records[r] for r in order)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and results == {t: True for t in range(4)}


def test_a_pickled_reader_opens_again(edge_shard):
    path, records, _ = edge_shard
    reader = sr.ShardReader(path, len(records))
    assert reader.read(2) == records[2]
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._fd is None and copy.read(2) == records[2]
    reader.close()
    assert reader.read(5) == records[5]  # reopens


def test_a_record_count_other_than_expected_is_declined(edge_shard):
    path, records, _ = edge_shard
    reader = sr.ShardReader(path, len(records) + 1)
    assert reader.read(0) is None and "expected" in reader.reason


def test_vectorized_varints_match_the_scalar_decode():
    rng = np.random.default_rng(2)
    values = [0, 1, 127, 128, 300, 2**32, 2**63 + 5, *rng.integers(0, 2**40, 50).tolist()]
    buf = bytearray()
    for v in values:
        while v >= 0x80:
            buf.append(v & 0x7F | 0x80)
            v >>= 7
        buf.append(v)
    got, starts = sr._varints(np.frombuffer(bytes(buf), np.uint8))
    assert got.tolist() == values
    assert [sr._varint(buf, int(s))[0] for s in starts] == values
    with pytest.raises(sr.LayoutError):
        sr._varints(np.frombuffer(bytes(buf[:-1]), np.uint8))


def test_chunk_end_follows_the_format_doc():
    # riegeli_records_file_format.md: a chunk's bytes plus the block headers they
    # cross; 0 -> 0, 1..25 -> 25 for RoundUpToPossibleChunkBoundary.
    assert sr.add_with_overhead(64, 100) == 164
    assert sr.add_with_overhead(B - 10, 20) == B + 10 + 24
    assert sr.add_with_overhead(0, 1) == 25
    assert sr.add_with_overhead(25, B - 25) == B
    assert sr.chunk_end(64, 0, 100) == 164  # padded to one byte per record
    assert sr.chunk_end(B - 50, 0, 60) == B + 25  # not inside or right after a block header


def test_direct_options():
    assert sr.direct_options(
        "group_size:1,transpose:false,pad_to_block_boundary:false,uncompressed") is None
    assert "group_size 2" in sr.direct_options("group_size:2,transpose:false,uncompressed")
    assert "compressed" in sr.direct_options("group_size:1,transpose:false,zstd:3")
    assert sr.direct_options("") is not None  # old files without writer options


def test_bench_record_read_runs(edge_shard, tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_record_read", Path(__file__).resolve().parents[1] / "bench" / "record_read.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--shard", edge_shard[0], "--repeats", "1", "--json", str(tmp_path / "r.json")])
    assert out["records"] == len(edge_shard[1])
    assert json.loads((tmp_path / "r.json").read_text())["direct_us"] == out["direct_us"] > 0


def test_the_open_files_limit_is_raised_for_the_shards_within_the_hard_limit():
    import resource

    from trainers.input_pipeline import raise_open_files_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 64:
        pytest.skip(f"hard limit {hard} too low to test")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (32, hard))
        assert raise_open_files_limit(48) == 48
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (48, hard)
        assert raise_open_files_limit(40) == 48  # never lowered
        if hard != resource.RLIM_INFINITY:
            assert raise_open_files_limit(hard + 1000) == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
