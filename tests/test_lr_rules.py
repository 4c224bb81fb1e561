"""Tests for autotune/lr_rules.py: the learning-rate table, worked by hand."""

from __future__ import annotations

import math

import pytest

from autotune.lr_rules import (
    RULE_LARS,
    RULE_LINEAR,
    RULE_SQRT,
    LrDecision,
    mlperf_lars_lr,
    rescale_after_batch_change,
    scale_learning_rate,
)


@pytest.mark.parametrize(
    "optimizer, global_batch, expected_opt, rule, lr, warmup",
    [
        # Linear (Goyal et al.): 0.1 x batch / 256, 5 warmup epochs.
        ("sgd", 256, "sgd", RULE_LINEAR, 0.1, 5),            # 0.1 x 256/256
        ("sgd", 1024, "sgd", RULE_LINEAR, 0.4, 5),           # 0.1 x 1024/256
        ("momentum", 3200, "momentum", RULE_LINEAR, 1.25, 5),  # 0.1 x 12.5
        ("nesterov", 8192, "nesterov", RULE_LINEAR, 3.2, 5),  # 0.1 x 32: last linear
        ("SGD", 64, "sgd", RULE_LINEAR, 0.025, 5),           # case-insensitive, 0.1/4
        # Above 8,192: LARS with the MLPerf table (peak not batch-scaled).
        ("sgd", 8200, "lars", RULE_LARS, 10.0, 5),           # < 16384
        ("nesterov", 16383, "lars", RULE_LARS, 10.0, 5),
        ("momentum", 16384, "lars", RULE_LARS, 25.0, 5),     # [16384, 32768)
        ("sgd", 32768, "lars", RULE_LARS, 31.2, 25),         # >= 32768
        ("sgd", 65536, "lars", RULE_LARS, 31.2, 25),
        ("lars", 4096, "lars", RULE_LARS, 10.0, 5),          # asked for LARS directly
        # Square root (Adam family): 1e-3 x sqrt(batch / 256).
        ("adam", 256, "adam", RULE_SQRT, 1e-3, 5),           # sqrt(1) = 1
        ("adam", 1024, "adam", RULE_SQRT, 2e-3, 5),          # sqrt(4) = 2
        ("adamw", 4096, "adamw", RULE_SQRT, 4e-3, 5),        # sqrt(16) = 4
        ("lamb", 16384, "lamb", RULE_SQRT, 8e-3, 5),         # sqrt(64) = 8; no LARS switch
        ("adam", 64, "adam", RULE_SQRT, 5e-4, 5),            # sqrt(1/4) = 0.5
    ],
)
def test_rule_table(optimizer, global_batch, expected_opt, rule, lr, warmup):
    d = scale_learning_rate(optimizer, global_batch)
    assert d.optimizer == expected_opt
    assert d.requested_optimizer == optimizer.lower()
    assert d.rule == rule
    assert d.global_batch == global_batch
    assert d.learning_rate == pytest.approx(lr)
    assert d.warmup_epochs == warmup
    assert d.source


def test_linear_formula_text():
    d = scale_learning_rate("sgd", 1024)
    assert d.formula == "0.1 x 1024 / 256 = 0.4"
    assert "Goyal" in d.source and "1706.02677" in d.source
    assert d.note == ""


def test_sqrt_formula_text():
    d = scale_learning_rate("adam", 4096)
    assert d.formula == "0.001 x sqrt(4096 / 256) = 0.004"
    assert "Krizhevsky" in d.source and "Hoffer" in d.source


def test_lars_switch_is_explained():
    d = scale_learning_rate("sgd", 16384)
    assert d.optimizer == "lars" and d.requested_optimizer == "sgd"
    assert "8192" in d.note and "LARS" in d.note
    assert "[16384, 32768)" in d.formula and "25" in d.formula
    assert "1708.03888" in d.source and "mlcommons/training" in d.source
    assert "polynomial decay" in d.schedule
    assert d.base_batch == d.global_batch == 16384  # no batch scaling under LARS


def test_custom_base_lr_and_batch():
    # 0.2 at 512 -> x 2048/512 = 0.8.
    d = scale_learning_rate("sgd", 2048, base_lr=0.2, base_batch=512)
    assert d.learning_rate == pytest.approx(0.8)
    assert d.formula == "0.2 x 2048 / 512 = 0.8"
    # Adam 3e-4 at 256 -> x sqrt(1024/256) = 6e-4.
    d = scale_learning_rate("adamw", 1024, base_lr=3e-4)
    assert d.learning_rate == pytest.approx(6e-4)


def test_sgd_base_lr_is_not_carried_into_lars():
    d = scale_learning_rate("sgd", 16384, base_lr=0.2)
    assert d.learning_rate == 25.0
    assert "ignored" in d.note


def test_explicit_lars_peak_overrides_the_table():
    d = scale_learning_rate("lars", 4096, base_lr=8.5)
    assert d.learning_rate == 8.5 and "10" in d.note


def test_no_lars_switch_when_disabled():
    # Linear all the way: 0.1 x 16384/256 = 6.4.
    d = scale_learning_rate("sgd", 16384, lars_switch_batch=None)
    assert d.optimizer == "sgd" and d.learning_rate == pytest.approx(6.4)


def test_custom_switch_threshold():
    assert scale_learning_rate("sgd", 4096, lars_switch_batch=2048).optimizer == "lars"
    assert scale_learning_rate("sgd", 2048, lars_switch_batch=2048).optimizer == "sgd"


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (("rmsprop", 256), {}, ValueError, "unknown optimizer"),
        (("sgd", 0), {}, ValueError, "global_batch"),
        (("sgd", 256), {"base_lr": -0.1}, ValueError, "base_lr"),
        (("sgd", 256), {"base_lr": float("nan")}, ValueError, "base_lr"),
        (("sgd", 256), {"base_batch": 0}, ValueError, "base_batch"),
        (("sgd", 256.0), {}, TypeError, "global_batch"),
    ],
)
def test_invalid_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        scale_learning_rate(*args, **kwargs)


def test_decision_round_trips_through_json():
    for opt, batch in [("sgd", 1024), ("sgd", 32768), ("lamb", 4096)]:
        d = scale_learning_rate(opt, batch)
        assert LrDecision.from_json(d.to_json()) == d


def test_mlperf_lars_table_edges():
    assert mlperf_lars_lr(1) == (10.0, 5.0)
    assert mlperf_lars_lr(16383) == (10.0, 5.0)
    assert mlperf_lars_lr(16384) == (25.0, 5.0)
    assert mlperf_lars_lr(32767) == (25.0, 5.0)
    assert mlperf_lars_lr(32768) == (31.2, 25.0)


@pytest.mark.parametrize(
    "lr, old, new, rule, expected",
    [
        (0.4, 1024, 896, RULE_LINEAR, 0.35),          # 0.4 x 896/1024 (OOM step 7/8)
        (3.2, 8192, 7168, RULE_LINEAR, 2.8),          # 3.2 x 7/8
        (4e-3, 4096, 1024, RULE_SQRT, 2e-3),          # 4e-3 x sqrt(1/4)
        (8e-3, 16384, 14336, RULE_SQRT, 8e-3 * math.sqrt(7 / 8)),
        (25.0, 16384, 14336, RULE_LARS, 10.0),        # crosses the 16384 row: 25 -> 10
        (10.0, 12288, 10752, RULE_LARS, 10.0),        # same row: unchanged
        (20.0, 16384, 14336, RULE_LARS, 8.0),         # override kept in proportion 20 x 10/25
    ],
)
def test_rescale_after_batch_change(lr, old, new, rule, expected):
    assert rescale_after_batch_change(lr, old, new, rule) == pytest.approx(expected)


def test_rescale_matches_a_fresh_decision():
    # Stepping 1024 -> 896 by the rule gives what scale_learning_rate says at 896.
    d = scale_learning_rate("sgd", 1024)
    assert rescale_after_batch_change(d.learning_rate, 1024, 896, d.rule) == pytest.approx(
        scale_learning_rate("sgd", 896).learning_rate)
    d = scale_learning_rate("adam", 4096)
    assert rescale_after_batch_change(d.learning_rate, 4096, 3584, d.rule) == pytest.approx(
        scale_learning_rate("adam", 3584).learning_rate)


def test_rescale_rejects_unknown_rule_and_bad_values():
    with pytest.raises(ValueError, match="unknown learning-rate rule"):
        rescale_after_batch_change(0.1, 256, 128, "cubic")
    with pytest.raises(ValueError, match="lr"):
        rescale_after_batch_change(0.0, 256, 128, RULE_LINEAR)
    with pytest.raises(ValueError, match="new_global"):
        rescale_after_batch_change(0.1, 256, 0, RULE_LINEAR)
