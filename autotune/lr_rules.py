"""Learning rate from the global batch: the pure rules the planner applies.

When the tool changes the batch (the largest batch that fits, or an OOM step-down),
the learning rate has to follow it, or training at the new batch is a different
experiment. Three rules, chosen by optimizer family:

* ``"linear"`` (SGD, momentum, Nesterov): ``lr = base_lr x global_batch / base_batch``
  with ``base_lr = 0.1`` at ``base_batch = 256`` and 5 epochs of linear warmup. Goyal
  et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour"
  (arXiv:1706.02677), sections 2.1-2.2; they show it holds for ResNet-50 up to a
  global batch of 8k.
* ``"lars-mlperf"``: above 8,192 images per step (where the linear rule stops
  holding) SGD-family runs switch to LARS, layer-wise adaptive rate scaling (You,
  Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks",
  arXiv:1708.03888; ``optax.lars``). LARS's per-layer trust ratio replaces batch
  scaling, so the peak rate comes from the table in the MLPerf ResNet-50 reference
  (mlcommons/training, ``image_classification/tensorflow2/lars_util.py``,
  ``PolynomialDecayWithWarmup``): global batch < 16,384 -> 10.0 with 5 warmup epochs;
  < 32,768 -> 25.0 with 5; otherwise 31.2 with 25; then polynomial decay (power 2)
  to 1e-4, momentum 0.9.
* ``"sqrt"`` (Adam, AdamW, LAMB): ``lr = base_lr x sqrt(global_batch / base_batch)``,
  keeping the gradient noise scale (Krizhevsky 2014, "One weird trick for
  parallelizing convolutional neural networks", arXiv:1404.5997; Hoffer, Hubara &
  Soudry 2017, "Train longer, generalize better", arXiv:1705.08741; the LAMB paper,
  You et al. 2019, arXiv:1904.00962, scales LAMB's rate this way), with 5 warmup
  epochs (the gradual warmup of Goyal et al., also used by LAMB).

Each rule names the schedule the trainer runs after it (``LrDecision.schedule_name``,
one of ``trainers.options.SCHEDULES``, formulas in
``trainers.train.create_learning_rate_fn``): the LARS rule runs :data:`SCHEDULE_POLY`
(MLPerf's polynomial decay with warmup) with its momentum, Nesterov off (the
reference's ``use_nesterov=False``) and the reference's weight decay; the linear and
square-root rules keep the preset's own schedule (``""``).

No JAX import here; the trainer builds the optax optimizer from the decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainers.records import Record

__all__ = [
    "ADAPTIVE_FAMILY",
    "DEFAULT_BASE_BATCH",
    "DEFAULT_BASE_LR",
    "LARS_END_LR",
    "LARS_MOMENTUM",
    "LARS_POLY_POWER",
    "LARS_WEIGHT_DECAY",
    "RULE_SCHEDULES",
    "SCHEDULE_POLY",
    "LARS_SWITCH_BATCH",
    "LARS_TABLE",
    "LrDecision",
    "RULE_LARS",
    "RULE_LINEAR",
    "RULE_SQRT",
    "SGD_FAMILY",
    "mlperf_lars_lr",
    "rescale_after_batch_change",
    "scale_learning_rate",
]

_FILE = "autotune/lr_rules.py"

RULE_LINEAR = "linear"
RULE_SQRT = "sqrt"
RULE_LARS = "lars-mlperf"

#: Optimizers that take the linear rule (and switch to LARS above the threshold).
SGD_FAMILY = ("sgd", "momentum", "nesterov")
#: Adaptive optimizers that take the square-root rule.
ADAPTIVE_FAMILY = ("adam", "adamw", "lamb")

#: Reference batch of the base learning rates (Goyal et al. 2017: 0.1 per 256 images).
DEFAULT_BASE_BATCH = 256
#: Learning rate at :data:`DEFAULT_BASE_BATCH`: 0.1 for SGD (Goyal et al. 2017, from
#: He et al. 2016); 1e-3 for the Adam family (Kingma & Ba 2015's default step size,
#: also optax's usual example value), taken to apply at 256 images per step.
DEFAULT_BASE_LR = {
    "sgd": 0.1, "momentum": 0.1, "nesterov": 0.1,
    "adam": 1e-3, "adamw": 1e-3, "lamb": 1e-3,
}
#: Global batches above this switch SGD-family optimizers to LARS: Goyal et al. 2017
#: found the linear rule holds for ResNet-50 up to 8k and breaks down beyond.
LARS_SWITCH_BATCH = 8192
#: MLPerf ResNet-50 reference LARS table: (global batch below which the row applies,
#: peak learning rate, warmup epochs); the last row has no upper bound.
LARS_TABLE: tuple[tuple[int | None, float, float], ...] = (
    (16384, 10.0, 5.0),
    (32768, 25.0, 5.0),
    (None, 31.2, 25.0),
)
#: End learning rate of the MLPerf LARS polynomial (power 2) decay.
LARS_END_LR = 1e-4
#: Power of the MLPerf LARS polynomial decay (``PolynomialDecay(power=2.0)``).
LARS_POLY_POWER = 2.0
#: LARS momentum (the reference's ``--momentum`` default 0.9) and weight decay (its
#: run commands in ``image_classification/README_tensorflow2.md``:
#: ``--weight_decay=0.0002``, ``--lars_epsilon=0``, ``--label_smoothing=0.1``).
LARS_MOMENTUM = 0.9
LARS_WEIGHT_DECAY = 2e-4
#: Trainer schedule names the rules use (``trainers.options.SCHEDULES``).
SCHEDULE_POLY = "poly"
RULE_SCHEDULES = (SCHEDULE_POLY,)

_GOYAL = ('Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in '
          '1 Hour", arXiv:1706.02677 (linear scaling rule, 5-epoch gradual warmup)')
_LARS = ('You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional '
         'Networks", arXiv:1708.03888 (LARS, optax.lars); peak LR and warmup from the '
         'MLPerf ResNet-50 reference, mlcommons/training '
         'image_classification/tensorflow2/lars_util.py (PolynomialDecayWithWarmup)')
_SQRT = ('Krizhevsky 2014, "One weird trick for parallelizing convolutional neural '
         'networks", arXiv:1404.5997; Hoffer, Hubara & Soudry 2017, "Train longer, '
         'generalize better", arXiv:1705.08741; You et al. 2019 (LAMB), '
         'arXiv:1904.00962 (square-root scaling)')


@dataclass(frozen=True)
class LrDecision(Record):
    """The learning rate chosen for a global batch, and why.

    Fields:
      optimizer: the optimizer to build (``"lars"`` when the SGD family switched).
      requested_optimizer: the optimizer asked for (lower case).
      rule: :data:`RULE_LINEAR`, :data:`RULE_SQRT` or :data:`RULE_LARS`.
      base_lr: learning rate at ``base_batch`` (for LARS: the table's peak, which is
        not scaled, and ``base_batch == global_batch``).
      base_batch: reference global batch of ``base_lr`` (images per step).
      global_batch: images per step over all devices.
      learning_rate: peak learning rate after warmup.
      warmup_epochs: epochs of linear warmup from ~0 to ``learning_rate``.
      schedule: what follows the warmup, in words.
      formula: the arithmetic, e.g. ``"0.1 x 1024 / 256 = 0.4"``.
      source: citation of the rule.
      note: why the optimizer switched or an argument was ignored ("" if nothing).
      schedule_name: the trainer's schedule after the warmup (``"poly"`` for LARS;
        ``""``: the preset's own).
      end_learning_rate, poly_power: the ``poly`` schedule's end rate and power.
      momentum, nesterov, weight_decay: the rule's optimizer settings (None: the
        preset's).
    """

    optimizer: str
    requested_optimizer: str
    rule: str
    base_lr: float
    base_batch: int
    global_batch: int
    learning_rate: float
    warmup_epochs: float
    schedule: str
    formula: str
    source: str
    note: str
    schedule_name: str = ""
    end_learning_rate: float | None = None
    poly_power: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None


def _check_batch(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{_FILE}: {name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{_FILE}: {name} ({value}) must be >= 1")
    return value


def _check_lr(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{_FILE}: {name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{_FILE}: {name} ({value}) must be a positive finite number")
    return float(value)


def _g(x: float) -> str:
    return f"{x:.6g}"


def mlperf_lars_lr(global_batch: int) -> tuple[float, float]:
    """``(peak learning rate, warmup epochs)`` for LARS at ``global_batch`` from
    :data:`LARS_TABLE` (MLPerf ResNet-50 reference, mlcommons/training
    ``image_classification/tensorflow2/lars_util.py``): < 16,384 -> (10.0, 5);
    < 32,768 -> (25.0, 5); otherwise (31.2, 25).

    Raises:
      ValueError / TypeError: ``global_batch`` is not a positive integer.
    """
    global_batch = _check_batch("global_batch", global_batch)
    for upper, peak, warmup in LARS_TABLE:
        if upper is None or global_batch < upper:
            return peak, warmup
    raise AssertionError("unreachable: the last LARS_TABLE row has no bound")


def _lars_band(global_batch: int) -> str:
    lower = 0
    for upper, _, _ in LARS_TABLE:
        if upper is None:
            return f">= {lower}"
        if global_batch < upper:
            return f"< {upper}" if lower == 0 else f"in [{lower}, {upper})"
        lower = upper
    return ""


def scale_learning_rate(
    optimizer: str,
    global_batch: int,
    *,
    base_lr: float | None = None,
    base_batch: int = DEFAULT_BASE_BATCH,
    lars_switch_batch: int | None = LARS_SWITCH_BATCH,
) -> LrDecision:
    """The peak learning rate and warmup for ``optimizer`` at ``global_batch``.

    Rules (see the module docstring for sources):

    * SGD / momentum / Nesterov, ``global_batch <= lars_switch_batch``: linear,
      ``base_lr (0.1) x global_batch / base_batch (256)``, 5 warmup epochs.
    * SGD family above ``lars_switch_batch`` (8,192), or ``"lars"`` asked for: LARS
      with the MLPerf table's peak rate (:func:`mlperf_lars_lr`) and warmup. A
      ``base_lr`` given for SGD does not carry over to LARS (the scales differ by
      ~100x) and is ignored with a note; a ``base_lr`` given with ``"lars"`` replaces
      the table's peak (like the reference's ``--base_learning_rate`` flag).
    * Adam / AdamW / LAMB: square root, ``base_lr (1e-3) x sqrt(global_batch /
      base_batch)``, 5 warmup epochs.

    Args:
      optimizer: ``"sgd"``, ``"momentum"``, ``"nesterov"``, ``"lars"``, ``"adam"``,
        ``"adamw"`` or ``"lamb"`` (case-insensitive).
      global_batch: images per step summed over all devices.
      base_lr: learning rate at ``base_batch``; default :data:`DEFAULT_BASE_LR`.
      base_batch: reference batch of ``base_lr`` (images per step).
      lars_switch_batch: SGD-family batches above this switch to LARS; ``None`` never
        switches.

    Returns:
      :class:`LrDecision`.

    Raises:
      ValueError: unknown optimizer (the message lists the known ones), or a
        non-positive batch or learning rate.
      TypeError: a batch that is not an integer.
    """
    name = str(optimizer).strip().lower()
    known = SGD_FAMILY + ("lars",) + ADAPTIVE_FAMILY
    if name not in known:
        raise ValueError(
            f"{_FILE}: unknown optimizer {optimizer!r}; known: {', '.join(known)}")
    global_batch = _check_batch("global_batch", global_batch)
    base_batch = _check_batch("base_batch", base_batch)
    if base_lr is not None:
        base_lr = _check_lr("base_lr", base_lr)
    if lars_switch_batch is not None:
        lars_switch_batch = _check_batch("lars_switch_batch", lars_switch_batch)

    if name in SGD_FAMILY and (lars_switch_batch is None or global_batch <= lars_switch_batch):
        return _linear_rule(name, global_batch, base_lr, base_batch)
    if name in SGD_FAMILY or name == "lars":
        return _lars_rule(name, global_batch, base_lr, lars_switch_batch)
    return _sqrt_rule(name, global_batch, base_lr, base_batch)


def _linear_rule(name: str, global_batch: int, base_lr: float | None,
                 base_batch: int) -> LrDecision:
    """Goyal et al.: ``base_lr x global_batch / base_batch``, 5 warmup epochs."""
    lr0 = DEFAULT_BASE_LR[name] if base_lr is None else base_lr
    lr = lr0 * global_batch / base_batch
    return LrDecision(
        optimizer=name, requested_optimizer=name, rule=RULE_LINEAR,
        base_lr=lr0, base_batch=base_batch, global_batch=global_batch,
        learning_rate=lr, warmup_epochs=5.0,
        schedule=("linear warmup over 5 epochs, then the trainer's decay (Goyal et "
                  "al.: /10 at epochs 30, 60, 80; cosine also common)"),
        formula=f"{_g(lr0)} x {global_batch} / {base_batch} = {_g(lr)}",
        source=_GOYAL, note="")


def _lars_rule(name: str, global_batch: int, base_lr: float | None,
               lars_switch_batch: int | None) -> LrDecision:
    """LARS with the MLPerf table's peak and warmup (a given peak replaces the
    table's only when LARS was asked for)."""
    peak, warmup = mlperf_lars_lr(global_batch)
    note = ""
    if name != "lars":
        note = (f"{name} switched to LARS because the global batch {global_batch} "
                f"exceeds {lars_switch_batch}, where linear scaling stops holding "
                "(Goyal et al. 2017)")
        if base_lr is not None:
            note += f"; base_lr {_g(base_lr)} (an SGD rate) ignored for LARS"
    elif base_lr is not None:
        note = f"peak {_g(base_lr)} given; the MLPerf table says {_g(peak)}"
        peak = base_lr
    formula = (f"MLPerf LARS table: global batch {global_batch} "
               f"{_lars_band(global_batch)} -> peak {_g(peak)}, not scaled by the "
               "batch (LARS's layer-wise trust ratio sets each layer's step)")
    if name == "lars" and base_lr is not None:
        formula = f"given peak {_g(peak)} (LARS: not scaled by the batch)"
    return LrDecision(
        optimizer="lars", requested_optimizer=name, rule=RULE_LARS,
        base_lr=peak, base_batch=global_batch, global_batch=global_batch,
        learning_rate=peak, warmup_epochs=warmup,
        schedule=(f"linear warmup over {_g(warmup)} epochs, then polynomial decay "
                  f"(power 2) to {_g(LARS_END_LR)}; optax.lars momentum 0.9, no Nesterov, "
                  f"weight decay {_g(LARS_WEIGHT_DECAY)}"),
        formula=formula, source=_LARS, note=note, schedule_name=SCHEDULE_POLY,
        end_learning_rate=LARS_END_LR, poly_power=LARS_POLY_POWER, momentum=LARS_MOMENTUM,
        nesterov=False, weight_decay=LARS_WEIGHT_DECAY)


def _sqrt_rule(name: str, global_batch: int, base_lr: float | None,
               base_batch: int) -> LrDecision:
    """Krizhevsky: ``base_lr x sqrt(global_batch / base_batch)``, 5 warmup epochs."""
    lr0 = DEFAULT_BASE_LR[name] if base_lr is None else base_lr
    lr = lr0 * math.sqrt(global_batch / base_batch)
    return LrDecision(
        optimizer=name, requested_optimizer=name, rule=RULE_SQRT,
        base_lr=lr0, base_batch=base_batch, global_batch=global_batch,
        learning_rate=lr, warmup_epochs=5.0,
        schedule="linear warmup over 5 epochs, then the trainer's decay (cosine common)",
        formula=f"{_g(lr0)} x sqrt({global_batch} / {base_batch}) = {_g(lr)}",
        source=_SQRT, note="")


def rescale_after_batch_change(lr: float, old_global: int, new_global: int, rule: str) -> float:
    """The learning rate after the global batch changes from ``old_global`` to
    ``new_global`` (the OOM step-down), keeping the rule ``lr`` was set with.

    * ``"linear"``: ``lr x new / old``.
    * ``"sqrt"``: ``lr x sqrt(new / old)``.
    * ``"lars-mlperf"``: ``lr x peak(new) / peak(old)`` with the MLPerf table
      (:func:`mlperf_lars_lr`): unchanged within a table row, so a user's override of
      the peak is kept in proportion.

    Args:
      lr: the current peak learning rate (> 0).
      old_global, new_global: global batches before and after (images per step).
      rule: ``LrDecision.rule``.

    Raises:
      ValueError: unknown rule (the message lists them), or non-positive values.
      TypeError: batches that are not integers.
    """
    lr = _check_lr("lr", lr)
    old_global = _check_batch("old_global", old_global)
    new_global = _check_batch("new_global", new_global)
    if rule == RULE_LINEAR:
        return lr * new_global / old_global
    if rule == RULE_SQRT:
        return lr * math.sqrt(new_global / old_global)
    if rule == RULE_LARS:
        return lr * mlperf_lars_lr(new_global)[0] / mlperf_lars_lr(old_global)[0]
    raise ValueError(
        f"{_FILE}: unknown learning-rate rule {rule!r}; known: "
        f"{RULE_LINEAR}, {RULE_SQRT}, {RULE_LARS}")
