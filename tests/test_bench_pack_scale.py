"""bench/pack_scale.py's full-size sets at scale (``imagenet-samples-xK``): made from
the samples folder as hard links, K names per file, once (no child process, no pack).

The script is loaded from its path with importlib (bench/ is not a package)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "pack_scale.py"
_spec = importlib.util.spec_from_file_location("bench_pack_scale", _PATH)
bps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bps)


def test_samples_times_k_links_every_sample_k_times_once(tmp_path, monkeypatch):
    samples = tmp_path / "samples"
    for wnid in ("n01440764", "n01443537"):
        (samples / wnid).mkdir(parents=True)
        (samples / wnid / f"{wnid}_1.JPEG").write_bytes(wnid.encode())
    monkeypatch.setattr(bps, "SAMPLES", samples)
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    root = bps.make_samples_x(3)
    assert root.name == "imagenet-samples-x3"
    files = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*"))
    assert files == [f"{w}/{w}_1_r{j}.JPEG" for w in ("n01440764", "n01443537") for j in range(3)]
    src = samples / "n01440764" / "n01440764_1.JPEG"
    assert all(os.path.samefile(p, src) for p in root.glob("n01440764/*"))  # hard links
    stamp = (root / "n01440764" / "n01440764_1_r0.JPEG").stat().st_ino
    assert bps.make_samples_x(3) == root  # made once: the same files
    assert (root / "n01440764" / "n01440764_1_r0.JPEG").stat().st_ino == stamp
    (root / ".complete").write_text("2\n")  # another set under this name: made again
    assert len(list(bps.make_samples_x(3).glob("*/*"))) == 6
    with pytest.raises(SystemExit, match="at least 1"):
        bps.make_samples_x(0)


def test_cpu_deltas_are_the_seconds_in_each_state():
    from collections import namedtuple

    T = namedtuple("T", "user system idle iowait steal nice")
    got = bps._cpu_deltas(T(10, 2, 100, 1, 0.5, 9), T(25.5, 4, 101, 6, 1.5, 9))
    assert got == {"user": 15.5, "system": 2, "idle": 1, "iowait": 5, "steal": 1}
    Mac = namedtuple("Mac", "user system idle")  # no iowait/steal where psutil has none
    assert bps._cpu_deltas(Mac(1, 1, 1), Mac(2, 3, 4)) == {"user": 1, "system": 2, "idle": 3}


def test_run_pack_packs_into_the_work_folder_and_reports_the_machine_time(tmp_path):
    from conftest import write_jpeg_folder

    data = write_jpeg_folder(tmp_path / "data", classes=2, per_class=4)
    work = tmp_path / "elsewhere"
    work.mkdir()
    row = bps.run_pack(data, 2, work, workers=0)
    assert row["packed"] == 8 and row["out"] == str(work / "packed-data")
    assert not (work / "packed-data").exists()  # deleted after reading its pack.json
    assert set(row["machine_cpu_s"]) >= {"user", "system", "idle"}
    assert all(v >= 0 for v in row["machine_cpu_s"].values())
