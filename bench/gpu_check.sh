#!/usr/bin/env bash
# One GPU check (bench/gpu_check.py): every GPU figure the README and the issues ask for,
# on one H100/H200 in under 8 minutes, as OUT/gpu_check.json and OUT/gpu_check.txt.
#
#   bash bench/gpu_check.sh OUT [--data DIR] [--stages a,b] [--total-s S]   # GPU machine
#   bash bench/gpu_check.sh OUT --dry-run                                  # CPU, tiny shapes
#
# Stages (each with a time budget; a failed stage is recorded and the next one runs):
# setup, throughput (ResNet-50 bf16 224 px synthetic, per-device 128 / 256), host_feed
# (bench/host_feed.py at 256 x 224 px on the GPU), probe (autotune probe --quick),
# train_auto (autotune train --auto, 200 steps), batch_pick (memory-analysis pick),
# batch_trials (brute force in child processes); then the batch knee and compile times.
# See the docstring of bench/gpu_check.py.
#
# The GPU machine has jax (CUDA), flax, optax, orbax-checkpoint, opencv, pillow, rich,
# psutil, nvidia-ml-py and matplotlib, not tensorflow-datasets, grain, array-record or
# simplejpeg, and no network; only the repository travels (64 MiB in all). This script:
#  1. installs every wheel in .whl/ (repo root), when there is one, into $GPU_CHECK_SITE
#     (default /tmp/site) and puts it on PYTHONPATH (after the repo root);
#  2. builds trainers/_jpegcrop (region decode) in place with cc when it does not import
#     and a C compiler, Python.h and jpeglib.h are there; else the pipeline decodes whole
#     images (same pixels, ~20% slower) and the setup stage says so (a dry run leaves the
#     source tree alone unless GPU_CHECK_BUILD=1);
#  3. runs bench/gpu_check.py with PYTHONPATH=<repo root> (no pip install of the project),
#     under `timeout` as a safety net; the Python side keeps its own deadline.
#
# Operator preparation, in the repo root, on a machine with network and ../shared/data
# (wheels for CPython 3.12 manylinux x86_64, ~12 MB; data ~33 MB; repo ~1.2 MB):
#
#   rm -rf .whl && python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       tensorflow-datasets==4.9.10 grain==0.2.18 array-record==0.8.6 simplejpeg==1.9.0 \
#       attrs certifi charset-normalizer cloudpickle dm-tree docstring-parser einops \
#       googleapis-common-protos idna immutabledict portpicker requests simple-parsing six \
#       tensorflow-metadata termcolor toml tqdm urllib3 wrapt
#   python3 -m pip wheel --no-deps -w .whl promise==2.3   # sdist only on PyPI; pure Python
#   mkdir -p .gpudata/imagenet-samples && ls ../shared/data/imagenet-samples | head -300 |
#       xargs -I{} cp -r ../shared/data/imagenet-samples/{} .gpudata/imagenet-samples/
#   du -sch .whl .gpudata          # ~45 MB: repo + wheels + data must stay under 64 MiB
#
# The extra wheels are the Requires-Dist of the four (checked with
# `unzip -p .whl/X.whl '*/METADATA' | grep ^Requires-Dist`) and of their dependencies,
# less what flax / optax / orbax-checkpoint / jax / matplotlib / psutil already bring
# (absl-py, etils, protobuf, numpy, fsspec, zipp, typing-extensions, pyyaml, msgpack ...).
# pyarrow (a tensorflow-datasets requirement, ~40 MB) is left out on purpose: the packer
# and the reader never import it. googleapis-common-protos 1.76 needs protobuf >= 6.33.5 at
# run time: if the setup stage reports a protobuf gencode/runtime mismatch, add a protobuf
# wheel (same download command, `protobuf`) to .whl/.
#
# Device run (the `run` tool): command `bash bench/gpu_check.sh "$OUT"`, carry
# [".whl", ".gpudata"] (.whl/ is git-ignored, so it travels only when carried; .gpudata/
# is not ignored and travels as an untracked folder anyway), timeout_s 540: the stages
# end by 465 s after the start (each gets min(its budget, time left)); the shell's
# safety net stops the Python side at 495 s. Afterwards `rm -rf .whl .gpudata`: never
# commit them (../shared/data/README.md: the images stay out of the repository).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash bench/gpu_check.sh OUT [--dry-run] [--data DIR] [--stages a,b] [--total-s S]" >&2
    exit 2
fi
OUT=$1
shift
START=$(date +%s)
mkdir -p "$OUT/logs" || exit 2
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
SETUP_LOG="$OUT/logs/setup_shell.log"
: > "$SETUP_LOG"
TOTAL=465
DRY=0
prev=""
for arg in "$@"; do
    [ "$arg" = "--dry-run" ] && DRY=1
    [ "$prev" = "--total-s" ] && TOTAL=${arg%.*}
    prev=$arg
done
[ "$DRY" = 1 ] && [ "$TOTAL" = 465 ] && TOTAL=420

# 1. wheels the machine lacks
wheels="none (no .whl/)"
if compgen -G "$ROOT/.whl/*.whl" > /dev/null; then
    SITE=${GPU_CHECK_SITE:-/tmp/site}
    n=$(ls "$ROOT"/.whl/*.whl | wc -l)
    if timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" "$ROOT"/.whl/*.whl >> "$SETUP_LOG" 2>&1; then
        wheels="$n installed into $SITE"
    else
        wheels="install of $n wheels into $SITE FAILED (logs/setup_shell.log)"
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# 2. the region decoder (optional C extension), built in place when it does not import
cd "$ROOT" || exit 2
if "$PY" -c "import trainers._jpegcrop" >> "$SETUP_LOG" 2>&1; then
    jpegcrop="present"
elif [ "$DRY" = 1 ] && [ "${GPU_CHECK_BUILD:-0}" != 1 ]; then
    jpegcrop="absent, not built in a dry run (GPU_CHECK_BUILD=1 builds it; whole-image decode)"
else
    inc=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])" 2>/dev/null)
    suffix=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))" 2>/dev/null)
    CC=${CC:-cc}
    if ! command -v "$CC" > /dev/null 2>&1; then
        jpegcrop="not built: no C compiler (whole-image decode)"
    elif [ ! -f "$inc/Python.h" ]; then
        jpegcrop="not built: no Python.h in $inc (whole-image decode)"
    elif ! printf '#include <stdio.h>\n#include <jpeglib.h>\n' | "$CC" -E -x c - > /dev/null 2>&1; then
        jpegcrop="not built: no jpeglib.h (libjpeg-dev / libjpeg-turbo-devel; whole-image decode)"
    elif timeout 60 "$CC" -O2 -shared -fPIC -I"$inc" trainers/_jpegcrop.c -ljpeg \
            -o "trainers/_jpegcrop$suffix" >> "$SETUP_LOG" 2>&1 \
            && "$PY" -c "import trainers._jpegcrop" >> "$SETUP_LOG" 2>&1; then
        jpegcrop="built"
    else
        rm -f "trainers/_jpegcrop$suffix"
        jpegcrop="build failed (logs/setup_shell.log; whole-image decode)"
    fi
fi
echo "wheels: $wheels; jpegcrop: $jpegcrop" | tee -a "$SETUP_LOG"

# 3. the stages
timeout -k 20 $((TOTAL + 30)) "$PY" "$ROOT/bench/gpu_check.py" "$OUT" --start-time "$START" \
    --setup "wheels=$wheels;jpegcrop=$jpegcrop;python=$PY" \
    --command "bash bench/gpu_check.sh $OUT $*" "$@"
rc=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "gpu_check: the Python side ran past its deadline and was stopped; partial results in $OUT" >&2
fi
exit "$rc"
