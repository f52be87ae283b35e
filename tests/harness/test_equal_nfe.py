"""Methods read at equal NFE along their own curves (sencache.harness.equal_nfe)."""

from __future__ import annotations

import pytest

from sencache.harness.equal_nfe import at_nfe, equal_nfe, equal_nfe_table

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)


def method(points, param="eps"):
    return {"available": True, "param": param,
            "settings": [{"nfe": n, "psnr": p, "ssim": 0.9, "lpips": lp} for n, p, lp in points]}


RESULTS = {"num_inference_steps": 50, "methods": {
    "a": method([(14.0, 30.0, 0.02), (26.0, 42.0, 0.01), (36.0, 52.0, 0.004)]),
    "b": method([(24.0, 45.0, 0.008), (31.0, 50.0, 0.005)]),
    "none": {"available": True, "param": None, "settings": [{"nfe": 50.0, "psnr": 100.0, "ssim": 1.0, "lpips": 0.0}]},
    "gone": {"available": False, "param": "x", "settings": []},
}}


def test_interpolates_along_the_methods_own_curve_and_never_extrapolates():
    a = RESULTS["methods"]["a"]
    assert at_nfe(a, "psnr", 20.0) == pytest.approx(36.0)  # halfway between (14, 30) and (26, 42)
    assert at_nfe(a, "lpips", 31.0) == pytest.approx(0.007)
    assert at_nfe(a, "psnr", 14.0) == pytest.approx(30.0) and at_nfe(a, "psnr", 37.0) is None
    assert at_nfe(RESULTS["methods"]["b"], "psnr", 20.0) is None  # b never went that low


def test_table_marks_the_best_per_budget_and_the_unreachable():
    rows = equal_nfe(RESULTS, [20, 25, 30])
    assert set(rows) == {"a", "b"}  # the reference and unavailable methods are not curves
    assert rows["b"]["psnr"][0] is None and rows["b"]["mean_psnr"] is None
    assert rows["a"]["mean_psnr"] == pytest.approx((36.0 + 41.0 + 46.0) / 3)
    table = equal_nfe_table(RESULTS, [20, 25, 30])
    line_b = next(line for line in table.splitlines() if line.startswith("| b |"))
    # b leads at NFE 30: 45 + 5·(6/7); these results carry no per-pair values, so no 10th percentile
    assert line_b.startswith("| b | – |") and "**49.29** / – (0.0054)" in line_b
