"""Tests for autotune/costs.py: the cost arithmetic worked by hand, prices given or
taken from the example list, and the GPU names they match."""

from __future__ import annotations

import pytest

from autotune import costs


def test_estimate_cost_arithmetic_by_hand():
    # ImageNet train set, 90 epochs, 10,000 img/s on 8 GPUs at $3.90/GPU-hour:
    # 1,281,167 x 90 = 115,305,030 images; / 10,000 = 11,530.503 s;
    # / 3600 x 8 = 25.623340 GPU-h; x 3.90 = $99.931026.
    c = costs.estimate_cost(1_281_167, 90, 10_000.0, 8, 3.90, label="ImageNet")
    assert c.images == 115_305_030
    assert c.seconds == pytest.approx(11_530.503, rel=1e-12)
    assert c.gpu_hours == pytest.approx(25.62334, rel=1e-6)
    assert c.cost == pytest.approx(99.931026, rel=1e-6)
    assert "115,305,030 images" in c.arithmetic
    assert "x 8 GPUs" in c.arithmetic and "$99.93" in c.arithmetic
    assert c.label == "ImageNet" and c.price_source == "given"
    assert costs.CostEstimate.from_dict(c.to_dict()) == c


def test_estimate_cost_one_gpu_fractional_epochs():
    # 50,000 images x 0.5 epochs / 250 img/s = 100 s; 100 / 3600 x 1 = 0.02778 GPU-h;
    # x $1.50 = $0.041667.
    c = costs.estimate_cost(50_000, 0.5, 250.0, 1, 1.5)
    assert c.seconds == pytest.approx(100.0)
    assert c.cost == pytest.approx(100 / 3600 * 1.5)
    assert "x 1 GPU =" in c.arithmetic


@pytest.mark.parametrize("args, needle", [
    ((1000, 1, 0.0, 1, 1.0), "throughput (0.0 images/s)"),
    ((1000, 1, float("nan"), 1, 1.0), "throughput (nan"),
    ((1000, 1, 10.0, 0, 1.0), "GPU count (0)"),
    ((1000, 1, 10.0, 1, -2.0), "price (-2.0"),
    ((-1, 1, 10.0, 1, 1.0), "images per epoch (-1)"),
    ((1000, -1, 10.0, 1, 1.0), "epochs (-1)"),
])
def test_estimate_cost_rejects_bad_values(args, needle):
    with pytest.raises(ValueError, match=None) as exc:
        costs.estimate_cost(*args)
    assert needle in str(exc.value)


def test_resolve_price_numbers_and_presets():
    assert costs.resolve_price(None) is None
    assert costs.resolve_price("2.49") == (2.49, "given")
    assert costs.resolve_price("$3") == (3.0, "given")
    assert costs.resolve_price(1.25) == (1.25, "given")
    value, source = costs.resolve_price("h100:spot")
    assert value == 2.25 and "H100 spot" in source and "2026" in source
    assert costs.resolve_price("H100-spot")[0] == 2.25
    assert costs.resolve_price("A100")[0] == 1.50
    with pytest.raises(ValueError, match="no example spot price for L4"):
        costs.resolve_price("L4:spot")
    with pytest.raises(ValueError, match="known: H200, H100, A100, L4"):
        costs.resolve_price("TPUv5")
    with pytest.raises(ValueError, match=">= 0"):
        costs.resolve_price("-1")
    with pytest.raises(ValueError, match="price kind 'reserved'"):
        costs.resolve_price("H100:reserved")


@pytest.mark.parametrize("name, gpu", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100-SXM5", "H100"), ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-40GB", "A100"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", None),
    ("cpu", None), (None, None),
])
def test_example_price_matches_device_names(name, gpu):
    row = costs.example_price(name)
    assert (row.gpu if row else None) == gpu
