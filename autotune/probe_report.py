"""The probe report: everything ``autotune probe`` measured, in one record.

``autotune.orchestrate.run_probe`` calls each probe (``probes/``) and the batch search
(``autotune.batch_search`` over the compiled step memory the accelerator probe
measures), and returns a :class:`ProbeReport` that the pure planner turns into a plan.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from autotune.batch_search import BatchSearchResult
from trainers.records import Record
from probes.records import AcceleratorReport
from probes.records import DecodeReport
from probes.records import DiskReport
from probes.records import HostReport
from probes.records import NoiseScaleReport
from probes.records import StallReport
from probes.records import DatasetStats


@dataclass(frozen=True)
class ProbeReport(Record):
    """All measurements of one ``autotune probe``.

    Attributes:
      created_utc: ISO time of the probe.
      data_path: the images measured.
      preset: the recipe the accelerator figures are for.
      host, dataset, disk, decode, accelerator: each probe's record (disk may be None
        when skipped).
      batch_search: the largest per-device batch found (None when the preset fixes it
        and it fits).
      seconds: wall time of the probe.
      stall: data-stall attribution (``autotune probe --stall``), else None.
      noise_scale: the gradient noise scale over the first steps of a real run
        (``autotune train --auto`` measures it after packing), else None.
    """

    created_utc: str
    data_path: str
    preset: str
    host: HostReport
    dataset: DatasetStats
    disk: DiskReport | None
    decode: DecodeReport
    accelerator: AcceleratorReport
    batch_search: BatchSearchResult | None
    seconds: float
    stall: StallReport | None = None
    noise_scale: NoiseScaleReport | None = None


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
