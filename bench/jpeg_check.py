"""CPU per image of the pack's integrity check (issue 13): the old check, a full
simplejpeg decode to RGB (fast IDCT, plain upsampling) whose pixels are thrown away,
against the new one, ``trainers._jpegcrop.check`` (header, colour space, every scan
entropy-decoded with ``jpeg_read_coefficients`` up to EOI, no pixels), on the files
already in memory, one thread, ``time.process_time`` (CPU, not wall: fair on a shared
machine), best of ``--repeats`` passes.

Also printed: ``trainers.pack.packed_bytes`` per image (the pack worker's whole
per-image work on a file it keeps: header, check), with the extension and without it
(the fallback: the simplejpeg full decode plus a header read for the colour space),
and a floor that is not a check: the region decoder asked for the image's last row
only (``decode_crop``: ``jpeg_skip_scanlines`` entropy-decodes the rows above without
storing coefficients, and it stops before EOI), which shows what the entropy decoding
alone costs.

Sets: the 1,000 full-size ILSVRC-2012 samples (``../shared/data/imagenet-samples``,
about 110 KB a file) and 500 files (seeded sample) of the pack-scale synthetic set
(``bench/pack_scale.py``'s ``synthetic-2000-80px``, 80 x 60 px, about 5 KB a file;
generated under ``$AUTOTUNE_CACHE`` or ``~/.cache/autotune`` when missing).

    python bench/jpeg_check.py
    python bench/jpeg_check.py --repeats 5 --json /tmp/jpeg_check.json

Raises SystemExit when the extension is not built (nothing to compare) and
AssertionError when the two checks disagree on a file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import simplejpeg  # noqa: E402

from trainers import pack, preprocess  # noqa: E402

SAMPLES = REPO.parent / "shared" / "data" / "imagenet-samples"


def _old(data: bytes) -> bool:
    """The check before issue 13 (``pack._simplejpeg_ok``), verbatim."""
    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True)
        return True
    except (ValueError, RuntimeError):
        return False


def _new(data: bytes) -> bool:
    try:
        preprocess._jpegcrop.check(data)
        return True
    except ValueError:
        return False


def _best_us(fn, items: list, repeats: int) -> tuple[float, list[float]]:
    """Least CPU microseconds per item over ``repeats`` passes, and every pass's figure."""
    passes = []
    for _ in range(repeats):
        t = time.process_time()
        for item in items:
            fn(item)
        passes.append((time.process_time() - t) / len(items) * 1e6)
    return min(passes), passes


def measure(datas: list[bytes], repeats: int) -> dict:
    """Per-image CPU microseconds of each method on ``datas``; asserts equal verdicts."""
    old_ok, new_ok = [_old(d) for d in datas], [_new(d) for d in datas]
    differ = [i for i, (a, b) in enumerate(zip(old_ok, new_ok)) if a != b]
    cmyk = [i for i in differ if simplejpeg.decode_jpeg_header(datas[i])[2] in ("CMYK", "YCCK")]
    assert differ == cmyk, f"the checks disagree on files {differ[:10]} (CMYK/YCCK: {cmyk[:10]})"
    boxes = [(d, simplejpeg.decode_jpeg_header(d)[:2]) for d, ok in zip(datas, new_ok) if ok]
    jc = preprocess._jpegcrop

    def fallback_packed(d):
        preprocess._jpegcrop = None
        try:
            pack.packed_bytes(d, None)
        finally:
            preprocess._jpegcrop = jc

    methods = {
        "old check: simplejpeg full decode": _old,
        "new check: _jpegcrop.check": _new,
        "packed_bytes, with the extension": lambda d: pack.packed_bytes(d, None),
        "packed_bytes, fallback (no extension)": fallback_packed,
        "floor, not a check: region decode of the last row": lambda b: jc.decode_crop(
            b[0], b[1][0] - 1, 0, 1, b[1][1], 1),
    }
    out = {"files": len(datas), "mean_bytes": sum(map(len, datas)) / len(datas),
           "accepted_old": sum(old_ok), "accepted_new": sum(new_ok), "us_per_image": {},
           "passes_us": {}}
    for name, fn in methods.items():
        items = boxes if name.startswith("floor") else datas  # floor: accepted files only
        out["us_per_image"][name], out["passes_us"][name] = _best_us(fn, items, repeats)
    u = out["us_per_image"]
    out["new_over_old"] = u["new check: _jpegcrop.check"] / u["old check: simplejpeg full decode"]
    return out


def _sets(small_n: int, seed: int) -> dict[str, list[bytes]]:
    sys.path.insert(0, str(REPO / "bench"))
    import pack_scale

    files = sorted(p for p in SAMPLES.glob("*/*") if p.is_file())
    if not files:
        raise SystemExit(f"no images under {SAMPLES}")
    small_root = pack_scale.make_synthetic(2000, 80)
    small = sorted(small_root.glob("*/*.JPEG"))
    small = random.Random(seed).sample(small, min(small_n, len(small)))
    return {"imagenet-samples": [p.read_bytes() for p in files],
            f"{small_root.name} ({len(small)} files)": [p.read_bytes() for p in small]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="passes per method (best kept)")
    ap.add_argument("--small", type=int, default=500, help="files of the synthetic set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if getattr(preprocess._jpegcrop, "check", None) is None:
        raise SystemExit("trainers._jpegcrop (with check) is not built: nothing to compare")
    v = getattr(preprocess._jpegcrop, "LIBJPEG_TURBO_VERSION", 0)
    r = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
         "machine": {"platform": platform.platform(), "cpu": platform.processor(),
                     "cpus": os.cpu_count(), "python": platform.python_version(),
                     "simplejpeg": simplejpeg.__version__,
                     "system libjpeg-turbo": f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"},
         "repeats": args.repeats, "sets": {}}
    print(f"CPU us per image, best of {args.repeats}, one thread ({r['machine']['cpus']} CPUs, "
          f"system libjpeg-turbo {r['machine']['system libjpeg-turbo']}, "
          f"simplejpeg {simplejpeg.__version__})")
    for name, datas in _sets(args.small, args.seed).items():
        m = r["sets"][name] = measure(datas, args.repeats)
        print(f"\n{name}: {m['files']} files, {m['mean_bytes'] / 1e3:.1f} KB mean, accepted "
              f"old {m['accepted_old']} / new {m['accepted_new']}")
        for method, us in m["us_per_image"].items():
            print(f"  {method:<52} {us:9.1f} us")
        print(f"  new / old: {m['new_over_old']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return r


if __name__ == "__main__":
    main()
