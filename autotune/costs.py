"""GPU prices and the time and cost of training at a throughput.

:func:`estimate_cost` multiplies out images / (images/s) x GPUs x $/GPU-hour. The
price is the user's (:func:`resolve_price` reads ``--gpu-hour-price``), or an example
list price per GPU type (:data:`EXAMPLE_GPU_PRICES`: approximate public figures with
their source and date, not quotes; prices differ by provider, region and month).
:func:`autotune.runs.run_costs` applies these to a saved run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from autotune.fmt import fmt_secs
from trainers.records import Record

# ---------------------------------------------------------------- prices


@dataclass(frozen=True)
class GpuPrice(Record):
    """An example list price of one GPU type, per GPU-hour, in US dollars.

    Attributes:
      gpu: short name, e.g. ``"H100"``.
      match: words looked for in the NVML / JAX device name
        (``"NVIDIA H100 80GB HBM3"``), case-insensitive, whole words (``L4`` does not
        match ``L40S``).
      on_demand_per_gpu_hour: $/GPU-hour on demand.
      spot_per_gpu_hour: $/GPU-hour as spot / preemptible capacity (None: no figure).
      source: where the figures come from.
      as_of: month of the source.
    """

    gpu: str
    match: tuple[str, ...]
    on_demand_per_gpu_hour: float
    spot_per_gpu_hour: float | None
    source: str
    as_of: str


#: Example list prices, $/GPU-hour (approximate public figures, not quotes: they move
#: month to month and differ by provider and region; give your own price for a real
#: estimate). Sources: costnimbus.com "GPU cost management for ML teams" (March 2026:
#: AWS EC2 P5 H100 ~$3.90 on demand, GCP A3-High spot ~$2.25; GCP g2-standard-4 1x L4
#: ~$0.70-0.80 per VM-hour); mercatus-ai.com "Cloud GPU pricing" (May 2026,
#: hyperscaler on-demand ranges: A100 80GB $1.50-3.00, H200 $4.50-7.00; the low ends
#: are listed); aiapiplaybook.com "GPU cloud pricing 2026" (January 2026: A100 80GB
#: spot $0.86).
EXAMPLE_GPU_PRICES: tuple[GpuPrice, ...] = (
    GpuPrice("H200", ("h200",), 4.50, None,
             "mercatus-ai.com, hyperscaler on-demand range $4.50-7.00 (low end)", "2026-05"),
    GpuPrice("H100", ("h100",), 3.90, 2.25,
             "costnimbus.com: AWS EC2 P5 on demand ~$3.90, GCP A3-High spot ~$2.25", "2026-03"),
    GpuPrice("A100", ("a100",), 1.50, 0.86,
             "mercatus-ai.com hyperscaler on-demand range $1.50-3.00 (low end, 80GB); "
             "aiapiplaybook.com spot $0.86", "2026-01/05"),
    GpuPrice("L4", ("l4",), 0.75, None,
             "costnimbus.com: GCP g2-standard-4 (1x L4) ~$0.70-0.80 per VM-hour", "2026-03"),
)

PRICE_KINDS = ("on-demand", "spot")


def example_price(device_name: str | None) -> GpuPrice | None:
    """The :data:`EXAMPLE_GPU_PRICES` row whose ``match`` occurs in ``device_name``
    (e.g. ``"NVIDIA H100 80GB HBM3"`` -> the H100 row); None when unknown."""
    if not device_name:
        return None
    name = device_name.lower()
    for p in EXAMPLE_GPU_PRICES:
        if any(re.search(rf"\b{re.escape(m)}\b", name) for m in p.match):
            return p
    return None


def resolve_price(text: str | float | None) -> tuple[float, str] | None:
    """Parse a ``--gpu-hour-price`` value: a number of dollars per GPU-hour
    (``"2.49"``), or an example price by GPU type and kind (``"H100"``,
    ``"h100:spot"``, ``"A100:on-demand"``). Returns ``(dollars per GPU-hour, source
    text)``, None for None.

    Raises:
      ValueError: negative price, unknown GPU type or price kind, or a kind with no
        figure (the message lists the known types).
    """
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = repr(float(text))
    s = str(text).strip()
    try:
        value = float(s.lstrip("$"))
    except ValueError:
        value = None
    if value is not None:
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"GPU-hour price {text}: must be a finite number >= 0 dollars")
        return value, "given"
    gpu, _, kind = s.replace("-spot", ":spot").replace("-on-demand", ":on-demand").partition(":")
    kind = (kind or "on-demand").lower().replace("_", "-")
    row = next((p for p in EXAMPLE_GPU_PRICES if p.gpu.lower() == gpu.strip().lower()), None)
    known = ", ".join(p.gpu for p in EXAMPLE_GPU_PRICES)
    if row is None:
        raise ValueError(f"GPU-hour price {text!r}: not a number of dollars and not a known "
                         f"GPU type (known: {known}; kinds: {', '.join(PRICE_KINDS)})")
    if kind not in PRICE_KINDS:
        raise ValueError(f"GPU-hour price {text!r}: price kind {kind!r} is not one of "
                         f"{', '.join(PRICE_KINDS)}")
    value = row.on_demand_per_gpu_hour if kind == "on-demand" else row.spot_per_gpu_hour
    if value is None:
        raise ValueError(f"GPU-hour price {text!r}: no example {kind} price for {row.gpu}")
    return value, f"example {row.gpu} {kind} list price ({row.source}, {row.as_of})"


# ---------------------------------------------------------------- cost


@dataclass(frozen=True)
class CostEstimate(Record):
    """Time and cost of training ``epochs`` epochs at a throughput.

    Attributes:
      label: what is estimated (``"all 8 planned epochs"``, ``"remaining 7.2 epochs"``).
      images_per_epoch: images per epoch (images).
      epochs: epochs estimated.
      images: ``images_per_epoch x epochs``.
      images_per_s: global throughput assumed (images/s, all GPUs).
      seconds: ``images / images_per_s`` (wall seconds).
      num_gpus: GPUs billed.
      gpu_hours: ``seconds / 3600 x num_gpus``.
      price_per_gpu_hour: US dollars per GPU-hour.
      cost: ``gpu_hours x price_per_gpu_hour`` (US dollars).
      price_source: where the price comes from.
      rate_source: where the throughput comes from (measured or predicted).
      arithmetic: the whole calculation in one line.
    """

    label: str
    images_per_epoch: int
    epochs: float
    images: float
    images_per_s: float
    seconds: float
    num_gpus: int
    gpu_hours: float
    price_per_gpu_hour: float
    cost: float
    price_source: str
    rate_source: str
    arithmetic: str


def estimate_cost(images_per_epoch: int, epochs: float, images_per_s: float, num_gpus: int,
                  price_per_gpu_hour: float, *, label: str = "",
                  price_source: str = "given", rate_source: str = "given") -> CostEstimate:
    """Time and cost to train ``epochs`` epochs of ``images_per_epoch`` images at
    ``images_per_s`` (global) on ``num_gpus`` GPUs billed ``price_per_gpu_hour``
    dollars each: ``seconds = images_per_epoch x epochs / images_per_s``,
    ``GPU-hours = seconds / 3600 x num_gpus``, ``cost = GPU-hours x price``. Excludes
    compilation, evaluation and checkpoint time, and start-up billing.

    Raises:
      ValueError: images_per_epoch < 0, epochs < 0, images_per_s <= 0 or not finite,
        num_gpus < 1, price < 0 (the message names the value).
    """
    if images_per_epoch < 0:
        raise ValueError(f"images per epoch ({images_per_epoch}) must be >= 0")
    if not epochs >= 0:
        raise ValueError(f"epochs ({epochs}) must be >= 0")
    if not (images_per_s > 0 and math.isfinite(images_per_s)):
        raise ValueError(f"throughput ({images_per_s} images/s) must be a finite number > 0")
    if num_gpus < 1:
        raise ValueError(f"GPU count ({num_gpus}) must be >= 1")
    if not price_per_gpu_hour >= 0:
        raise ValueError(f"price ({price_per_gpu_hour} $/GPU-hour) must be >= 0")
    images = images_per_epoch * epochs
    seconds = images / images_per_s
    gpu_hours = seconds / 3600.0 * num_gpus
    cost = gpu_hours * price_per_gpu_hour
    arithmetic = (f"{images_per_epoch:,} images/epoch x {epochs:g} epochs = {images:,.0f} images; "
                  f"/ {images_per_s:,.1f} images/s = {seconds:,.0f} s ({fmt_secs(seconds)}); "
                  f"/ 3600 x {num_gpus} GPU{'s' if num_gpus != 1 else ''} = {gpu_hours:,.4g} GPU-h; "
                  f"x ${price_per_gpu_hour:,.2f}/GPU-h = ${cost:,.2f}")
    return CostEstimate(label=label or f"{epochs:g} epochs", images_per_epoch=int(images_per_epoch),
                        epochs=float(epochs), images=float(images), images_per_s=float(images_per_s),
                        seconds=seconds, num_gpus=int(num_gpus), gpu_hours=gpu_hours,
                        price_per_gpu_hour=float(price_per_gpu_hour), cost=cost,
                        price_source=price_source, rate_source=rate_source, arithmetic=arithmetic)
