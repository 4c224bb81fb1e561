"""The gradient noise scale from the gradients a data-parallel step already has.

McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training"
(arXiv:1812.06162): the simple noise scale ``B_simple = tr(Sigma) / |G|^2`` (eq. 2.9),
where ``G`` is the true gradient and ``Sigma`` the per-example gradient covariance. A
gradient averaged over ``B`` examples has ``E|G_B|^2 = |G|^2 + tr(Sigma) / B``, so two
batch sizes give unbiased estimates of both (appendix A.1):

    |G|^2     ~= (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~= (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

In the pmap step, ``B_small`` is the per-device batch (``|G_small|^2``: the mean over
devices of each device's gradient squared norm) and ``B_big`` the global batch
(``|G_big|^2``: the squared norm of the averaged gradient); ``trainers.train.train_step``
returns both as the scalar metrics ``grad_sq_per_device`` and ``grad_sq_mean``. Each
estimate is noisy, so the paper averages the numerator and the denominator separately
over steps (an exponential moving average) before dividing (appendix A.1):
:class:`NoiseScaleEMA`. Pure Python (no JAX): the loop, the probe and the tests share it.

The two-batch estimate needs the per-device gradients to be independent averages of
per-example gradients: batch-norm statistics per device, not shared across devices
(shared statistics anti-correlate the devices' gradients; see ``probes.noise_scale``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Decay of the moving averages of ``|G|^2`` and ``tr(Sigma)`` per step (a horizon of
#: about 1 / (1 - decay) = 50 steps: the first few hundred steps of a run see several).
EMA_DECAY = 0.98


def gradient_noise_estimates(g_small_sq: float, g_big_sq: float, b_small: float,
                             b_big: float) -> tuple[float, float]:
    """Unbiased estimates ``(|G|^2, tr(Sigma))`` from one step (appendix A.1 of
    McCandlish et al. 2018; see the module docstring).

    Args:
      g_small_sq: mean squared norm of gradients averaged over ``b_small`` examples.
      g_big_sq: squared norm of a gradient averaged over ``b_big`` examples.
      b_small, b_big: the two batch sizes (examples), ``b_small < b_big``.

    Raises:
      ValueError: ``b_small`` not below ``b_big`` or not positive (both named).
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < B_small ({b_small}) < B_big ({b_big}): the noise scale "
                         f"needs two batch sizes (more than one device)")
    g2 = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
    trace = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


def simple_noise_scale(g2: float, trace: float) -> float:
    """``B_simple = tr(Sigma) / |G|^2`` (eq. 2.9) in examples; NaN when ``|G|^2 <= 0``
    (the estimate of ``|G|^2`` can come out negative when the noise dominates)."""
    return trace / g2 if g2 > 0 and math.isfinite(trace) else float("nan")


@dataclass
class NoiseScaleEMA:
    """Moving averages of the two estimates and their ratio.

    ``update`` takes one step's ``(|G_small|^2, |G_big|^2)``; :attr:`b_simple` is the
    ratio of the averages (bias-corrected like Adam's moments; the correction cancels
    in the ratio). Non-finite inputs (a skipped step) are ignored.

    Attributes:
      b_small, b_big: per-device and global batch (examples).
      decay: per-step decay of the averages.
    """

    b_small: float
    b_big: float
    decay: float = EMA_DECAY
    steps: int = 0
    _g2: float = 0.0
    _trace: float = 0.0

    def update(self, g_small_sq: float, g_big_sq: float) -> None:
        """Fold one step's two squared norms into the averages."""
        if not (math.isfinite(g_small_sq) and math.isfinite(g_big_sq)):
            return
        g2, trace = gradient_noise_estimates(g_small_sq, g_big_sq, self.b_small, self.b_big)
        self._g2 = self.decay * self._g2 + (1 - self.decay) * g2
        self._trace = self.decay * self._trace + (1 - self.decay) * trace
        self.steps += 1

    def _corrected(self, x: float) -> float:
        return x / (1 - self.decay ** self.steps) if self.steps else float("nan")

    @property
    def grad_sq(self) -> float:
        """Averaged estimate of ``|G|^2`` (NaN before the first step)."""
        return self._corrected(self._g2)

    @property
    def trace_sigma(self) -> float:
        """Averaged estimate of ``tr(Sigma)`` (NaN before the first step)."""
        return self._corrected(self._trace)

    @property
    def b_simple(self) -> float:
        """``tr(Sigma) / |G|^2`` of the averages, in examples (NaN before any step or
        while the averaged ``|G|^2`` is not positive)."""
        return simple_noise_scale(self._g2, self._trace) if self.steps else float("nan")
