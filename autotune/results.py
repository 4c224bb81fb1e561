"""Run folders under ``results/``: ``results/<UTC time>-<host>/`` with ``probe.json``,
``plan.json``, ``pack.json``, ``metrics.jsonl``, ``summary.json`` and
``bad_images.json``.

Only process 0 of a multi-host run writes here.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import threading
from pathlib import Path
from typing import Iterator

from dataclasses import dataclass

from trainers.options import LoopOptions, TrainConfig
from trainers.records import Record, write_text_atomic

PROBE = "probe.json"
PLAN = "plan.json"
PACK = "pack.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
RUN = "run.json"
BAD_IMAGES = "bad_images.json"


@dataclass(frozen=True)
class RunRecord(Record):
    """``run.json``: what a run trains and how, enough to resume it.

    Attributes:
      data: the training folder.
      packed: the packed data set the run reads.
      config: model, optimizer and schedule.
      options: the input pipeline and bookkeeping.
      argv: the ``autotune`` arguments that started it (to find an unfinished run
        when the same command is run again).
    """

    data: str
    packed: str
    config: TrainConfig
    options: LoopOptions
    argv: tuple[str, ...] = ()


def default_results_root() -> Path:
    """``$AUTOTUNE_RESULTS`` or ``./results``."""
    return Path(os.environ.get("AUTOTUNE_RESULTS", "results"))


def new_run_dir(root: str | os.PathLike | None = None, *, kind: str = "") -> Path:
    """Create ``<root>/<YYYYmmddTHHMMSSZ>-<host>[-kind]`` (a numeric suffix if taken)."""
    root = Path(root) if root else default_results_root()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    host = socket.gethostname().split(".")[0] or "host"
    base = f"{stamp}-{host}" + (f"-{kind}" if kind else "")
    for i in range(1000):
        path = root / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run folder under {root}")


class MetricsWriter:
    """Append records to ``metrics.jsonl`` (one JSON object per line, with a ``kind``
    field naming the record class), flushed each line so a killed run keeps its
    history. Thread-safe."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, record: Record) -> None:
        line = json.dumps({"kind": type(record).__name__, **record.to_dict()})
        with self._lock:
            self._f.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._f.close()


def read_metrics(path: str | os.PathLike) -> Iterator[dict]:
    """The objects of a ``metrics.jsonl``; a torn last line (killed writer) is
    skipped."""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def find_fresh_probe(root: str | os.PathLike, data_path: str, preset: str, *,
                     max_age_hours: float = 24.0) -> Path | None:
    """The newest ``probe.json`` under ``root`` for the same data folder, preset and
    host, younger than ``max_age_hours``; None when there is none."""
    root = Path(root)
    if not root.is_dir():
        return None
    host = socket.gethostname()
    now = _dt.datetime.now(_dt.timezone.utc)
    best = None
    for run in sorted(root.iterdir(), reverse=True):
        p = run / PROBE
        if not p.is_file():
            continue
        try:
            d = json.loads(p.read_text())
            created = _dt.datetime.strptime(d["created_utc"], "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=_dt.timezone.utc)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            continue
        if (d.get("data_path") == str(data_path) and d.get("preset") == preset
                and d.get("host", {}).get("hostname") == host
                and (now - created).total_seconds() < max_age_hours * 3600):
            best = p
            break
    return best


def save_json(path: str | os.PathLike, obj) -> Path:
    """Write a JSON-compatible object atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def find_unfinished_run(root: str | os.PathLike, argv: list[str]) -> Path | None:
    """The newest run folder under ``root`` started by the same ``autotune train``
    arguments (``run.json``'s ``argv``) that has checkpoints but did not complete (no
    ``summary.json``, or its status is ``stopped``); None when there is none."""
    root = Path(root)
    if not root.is_dir():
        return None
    for run in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):
        try:
            meta = RunRecord.load(run / RUN)
        except (OSError, ValueError):
            continue
        if list(meta.argv) != list(argv) or not (run / "checkpoints").is_dir():
            continue
        try:
            status = json.loads((run / SUMMARY).read_text()).get("status")
        except (OSError, ValueError):
            status = None
        if status in (None, "stopped"):
            return run
        return None  # the newest such run completed: start afresh
    return None
