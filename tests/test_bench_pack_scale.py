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
