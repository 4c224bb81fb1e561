"""Test set-up: 8 fake CPU devices (set before JAX is imported anywhere), the shared
real-image folder, and builders of hand-made probe reports for the planner tests."""

import os


def xla_flags(devices: int) -> str:
    """``XLA_FLAGS`` for a test process with ``devices`` fake CPU devices. XLA's CPU
    backend compiles at LLVM -O0 here (``--xla_backend_optimization_level=0``): the
    tests run tiny models for a few steps, so compilation is most of their time, and
    -O0 compiles several times faster (``jax.random.bits`` of 144 values: 1.14 s ->
    0.11 s on a 2-core VM; a tiny ResNet's jitted init: 5.8-10.1 s -> 1.2 s).
    The HLO passes (buffer assignment, the memory analysis the batch search reads)
    are the same; only the machine code differs, the same in every process of a test."""
    return f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
# One persistent XLA compilation cache for the session and its child processes: the
# tests compile the same tiny models many times.
_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".pytest_cache", "jax")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("AUTOTUNE_RESULTS", os.path.join(os.path.dirname(__file__), "..", "results", "_tests"))

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (skips when absent; CI has it)."""
    if not (SHARED / "imagenette" / "train").is_dir():
        pytest.skip(f"real images not found at {SHARED}")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Packed data and the synthetic set go to a per-session temporary cache."""
    cache = tmp_path_factory.getbasetemp() / "autotune-cache"
    monkeypatch.setenv("AUTOTUNE_CACHE", str(cache))


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.02):
    """Poll ``condition()`` until it is truthy and return its value; fail the test
    after ``timeout_s`` seconds (a bound, not a synchronisation: the condition is an
    event the other side reports)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def run_children(argvs: list[list[str]], logs: list[Path], env: dict,
                 timeout_s: float) -> tuple[list[int], list[str]]:
    """Start one process per argv at once (stdout and stderr to its log), wait for all,
    kill any still running after ``timeout_s``; returns their exit codes and logs."""
    import subprocess

    procs = []
    for argv, log in zip(argvs, logs):
        with open(log, "wb") as f:
            procs.append(subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT))
    try:
        rcs = [p.wait(timeout=timeout_s) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return rcs, [log.read_text(errors="replace") for log in logs]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a local jax.distributed coordinator)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_jpeg_folder(root: Path, classes: int = 3, per_class: int = 8, size=(64, 48),
                      seed: int = 0) -> Path:
    """A small ImageNet-layout folder of class-coloured JPEGs ``root/<wnid>/<i>.JPEG``."""
    import simplejpeg

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[..., c % 3] = 200
            img = np.clip(img + rng.integers(0, 50, img.shape), 0, 255).astype(np.uint8)
            (d / f"n{c:08d}_{i}.JPEG").write_bytes(simplejpeg.encode_jpeg(img, quality=90))
    return root


def packed_jpeg_folder(root: Path, *, classes: int, per_class: int, size, num_shards: int,
                       seed: int = 0) -> Path:
    """:func:`write_jpeg_folder` into ``root/imgs``, packed into ``root/packed``
    (``trainers.pack.pack_folder`` with ``num_shards`` shards); returns the pack."""
    from trainers.options import PackOptions
    from trainers.pack import pack_folder

    write_jpeg_folder(root / "imgs", classes=classes, per_class=per_class, size=size, seed=seed)
    pack_folder(root / "imgs", root / "packed", PackOptions(num_shards=num_shards))
    return root / "packed"
