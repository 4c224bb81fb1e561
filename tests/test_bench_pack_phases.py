"""bench/pack_phases.py: the seconds of a pack's steps before its first shard, on a
small synthetic set; the pack stops before any shard and the patched functions are
put back. The script is loaded from its path (bench/ is not a package)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from trainers import pack, scan

_PATH = Path(__file__).resolve().parents[1] / "bench" / "pack_phases.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_pack_phases", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_steps_before_the_shards_are_timed_and_nothing_is_left(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    bpp = _load()
    monkeypatch.setattr(bpp.pack_scale, "POOL", 20)  # a few distinct JPEGs are enough
    real = (scan.scan_class_folders, pack._fingerprint, pack._split_plans,
            pack._Workers.run_shards)
    out = tmp_path / "phases.json"
    assert bpp.main(["--size", "300", "--repeats", "2", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert len(got["runs"]) == 2
    for run in got["runs"]:
        assert set(run) == {"list_s", "fingerprint_s", "assign_s", "until_shards_s"}
        assert 0 < run["list_s"] + run["fingerprint_s"] + run["assign_s"] <= run["until_shards_s"]
    assert got["best"]["list_s"] == min(r["list_s"] for r in got["runs"])
    assert (scan.scan_class_folders, pack._fingerprint, pack._split_plans,
            pack._Workers.run_shards) == real
    work = tmp_path / "cache" / "bench" / "pack_scale"
    assert not list(work.glob("pack_phases-*"))  # the packs' folder is gone
    assert not list(work.rglob("*.array_record*"))  # and no shard was written
