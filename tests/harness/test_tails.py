"""The tail of a comparison: 10th percentile, worst pair, broken clips and distinct schedules, at equal NFE."""

from __future__ import annotations

import pytest
import torch

from sencache.harness.compare import where_it_ran
from sencache.harness.equal_nfe import equal_nfe, equal_nfe_table
from sencache.report.tables import markdown_table
from sencache.statistics.tails import tail_fields, with_tails

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)


def _pairs(psnrs, schedules):
    return [{"psnr": p, "lpips": 0.01 * (40 - p), "skipped_steps": s} for p, s in zip(psnrs, schedules)]


def test_tail_fields_name_the_worst_clips_and_count_schedules():
    psnrs = [40.0, 42.0, 15.0, 38.0, 19.9, 41.0, 44.0, 39.0, 43.0, 45.0]
    tail = tail_fields(_pairs(psnrs, [[1, 3]] * 9 + [[2]]))
    assert tail["psnr_min"] == 15.0 and tail["broken"] == 2 and tail["schedules"] == 2 and tail["pairs"] == 10
    assert tail["psnr_p10"] == pytest.approx(15.0 + 0.9 * (19.9 - 15.0))  # linear between the two worst
    assert tail["lpips_max"] == pytest.approx(0.25)


def _results():
    def setting(nfe, psnrs, sched):
        pairs = _pairs(psnrs, sched)
        return {"key": f"m@{nfe}", "value": nfe, "primary": nfe == 20, "nfe": nfe, "wall_s": 1.0, "speedup": 2.0,
                "psnr": sum(psnrs) / len(psnrs), "ssim": 0.9, "lpips": 0.01, "schedule": [], "per_prompt": pairs}

    return {"num_inference_steps": 50, "guidance_scale": 5.0, "jobs": [{}, {}],
            "reference": {"nfe": 50, "wall_s": 2.0}, "method_order": ["m"],
            "evaluation": {"prompts": ["p"], "seeds": [0, 1]},
            "methods": {"m": {"available": True, "param": "eps", "skipped": None, "settings": [
                setting(10, [30.0, 10.0], [[1], [2]]), setting(20, [40.0, 30.0], [[1], [1]])]}}}


def test_equal_nfe_interpolates_the_tail_and_reads_counts_off_the_nearest_setting():
    rows = equal_nfe(_results(), [15, 19])["m"]
    assert rows["psnr_min"][0] == pytest.approx(20.0)  # halfway between worst pairs 10 and 30
    assert rows["psnr_p10"][0] == pytest.approx((12.0 + 31.0) / 2)
    assert rows["broken"] == [1, 0] and rows["schedules"] == [2, 1]  # 15: a tie, the lower setting; 19: NFE 20
    table = equal_nfe_table(_results(), [15, 19])
    assert "10th-percentile" in table and "1 broken" in table


def test_results_tables_show_the_tail_even_for_results_written_before_it():
    results = _results()
    assert "psnr_p10" not in results["methods"]["m"]["settings"][0]
    text = markdown_table(with_tails(results))
    assert "P10 PSNR" in text and "worst PSNR" in text and "| 10.00 |" in text


def test_results_record_the_device_and_dtype_the_denoiser_ran_in():
    class Pipe:
        transformer = torch.nn.Linear(2, 2).to(torch.bfloat16)

    assert where_it_ran(Pipe()) == {"device": "cpu", "dtype": "bfloat16"}
