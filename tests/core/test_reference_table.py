"""Importing the SenCache authors' sensitivity tables (SensitivityProfile.from_reference, `sencache import-profile`):
synthetic files in their format with known values, converted to RMS units exactly as documented."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_wan, wan_kwargs

import sencache
from sencache import SensitivityProfile
from sencache.cli import main
from sencache.errors import ProfileError, SenCacheError

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

WAN_LATENT = (16, 21, 60, 104)  # Wan 2.1 at 832x480x81
WAN_SQRT = 1447.98  # √(16·21·60·104) as the issue states it, to 2 decimals


def averaged(path, steps=6, **extra):
    t = np.linspace(999.0, 1.0, steps)  # the authors' tables run from noise to clean
    np.savez(path, timesteps=t, J_x_norm=np.linspace(0.5, 3.0, steps), J_t_norm=np.linspace(100.0, 900.0, steps),
             **extra)
    return t


def test_averaged_table_converts_jt_by_sqrt_numel_and_keeps_jx(tmp_path):
    path = tmp_path / "sensitivity_wan21.npz"
    t = averaged(path, sample_counts=np.array([8, 8, 8, 7, 8, 8]))
    profile = SensitivityProfile.from_reference(path, WAN_LATENT, model_class="WanTransformer3DModel", note="x")
    assert profile.timesteps == sorted(t.tolist())  # stored ascending
    jx = dict(zip(t.tolist(), np.linspace(0.5, 3.0, 6)))
    jt = dict(zip(t.tolist(), np.linspace(100.0, 900.0, 6)))
    for ts, x, y in zip(profile.timesteps, profile.jx, profile.jt):
        assert x == jx[ts]  # J_x unchanged
        assert y == pytest.approx(jt[ts] / WAN_SQRT, rel=2e-6)
        assert y == jt[ts] / math.sqrt(16 * 21 * 60 * 104)
    assert profile.spread["count"] == [8, 8, 7, 8, 8, 8]  # the file's order reversed (ascending timesteps)
    meta = profile.metadata
    assert meta["model_class"] == "WanTransformer3DModel" and meta["note"] == "x"
    conv = meta["reference_table"]
    assert conv["latent_shape"] == list(WAN_LATENT) and conv["latent_numel"] == 16 * 21 * 60 * 104
    assert "1447.98" in conv["jt"] and conv["source_arrays"].startswith("averaged")
    # the lookup interpolates in the scheduler's units, between the grid's values
    jx_mid, jt_mid = profile.lookup(torch.tensor([(t[0] + t[1]) / 2]))
    assert float(jx_mid) == pytest.approx((jx[t[0]] + jx[t[1]]) / 2)


def test_raw_array_is_averaged_without_its_zero_entries(tmp_path):
    path = tmp_path / "raw.npz"
    t = np.array([900.0, 500.0, 100.0])
    raw = np.zeros((3, 3, 2))  # (samples, steps, [J_x, J_t]); 0 = failed
    raw[:, 0] = [[1.0, 10.0], [3.0, 30.0], [0.0, 20.0]]  # J_x mean 2 (two samples), J_t mean 20 (three)
    raw[:, 1] = [[4.0, 40.0], [4.0, 40.0], [4.0, 40.0]]
    raw[:, 2] = 0.0  # every sample failed here: the step is left out
    np.savez(path, timesteps=t, per_sample_sensitivity=raw)  # any name, one array of that shape
    latent = (4, 3, 5, 7)
    profile = SensitivityProfile.from_reference(path, latent, model_class="WanTransformer3DModel")
    assert profile.timesteps == [500.0, 900.0]
    assert profile.jx == [4.0, 2.0]
    assert profile.jt == pytest.approx([40.0 / math.sqrt(420), 20.0 / math.sqrt(420)], rel=1e-12)
    assert profile.spread["count"] == [3.0, 2.0] and profile.spread["count_jt"] == [3.0, 3.0]
    conv = profile.metadata["reference_table"]
    assert conv["dropped_timesteps"] == [100.0] and "per_sample_sensitivity" in conv["source_arrays"]


def write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, message", [
    (dict(J_x_norm=np.ones(3), J_t_norm=np.ones(3)), "no 'timesteps' array"),
    (dict(timesteps=np.array([1.0, 2.0, 3.0]), J_x_norm=np.ones(3)), "has J_x_norm but not J_t_norm"),
    (dict(timesteps=np.array([1.0, 2.0, 3.0]), J_x_norm=np.ones(2), J_t_norm=np.ones(3)), "has 2 entries"),
    (dict(timesteps=np.array([0.5, 0.2, 0.1]) * 3000, J_x_norm=np.ones(3), J_t_norm=np.ones(3)),
     "outside the scheduler's 0–1000"),
    (dict(timesteps=np.array([1.0, 2.0, 3.0]), J_x_norm=np.array([1.0, np.nan, 1.0]), J_t_norm=np.ones(3)),
     "NaN or inf"),
    (dict(timesteps=np.array([1.0, 2.0, 3.0]), J_x_norm=-np.ones(3), J_t_norm=np.ones(3)), "negative"),
    (dict(timesteps=np.array([1.0, 1.0, 3.0]), J_x_norm=np.ones(3), J_t_norm=np.ones(3)), "not distinct"),
    (dict(timesteps=np.array([1.0, 2.0, 3.0])), "no J_x_norm/J_t_norm and no"),
    (dict(timesteps=np.array([1.0, 2.0, 3.0]), a=np.ones((2, 3, 2)), b=np.ones((4, 3, 2))), "several"),
    (dict(timesteps=np.array([1.0, 2.0, 3.0]), a=np.zeros((2, 3, 2))), "every timestep failed"),
    (dict(timesteps=np.array([1.0, 2.0, 3.0]), J_x_norm=np.ones((3, 1)), J_t_norm=np.ones(3)), "one-dimensional"),
])
def test_bad_tables_are_refused_with_what_is_wrong(tmp_path, arrays, message):
    path = write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ProfileError, match=message):
        SensitivityProfile.from_reference(path, WAN_LATENT, model_class="WanTransformer3DModel")


def test_files_that_are_not_tables_are_refused(tmp_path):
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, timesteps=np.array([{"a": 1}], dtype=object))
    npy = tmp_path / "one.npy"
    np.save(npy, np.ones(3))
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    for path, message in ((pickled, "without pickles"), (npy, "single .npy"), (text, "cannot read"),
                          (tmp_path / "missing.npz", "not found")):
        with pytest.raises(ProfileError, match=message):
            SensitivityProfile.from_reference(path, WAN_LATENT, model_class="WanTransformer3DModel")
    averaged(tmp_path / "ok.npz")
    for shape in ((16, 21, 60), (16, 21, 0, 104), (16.0, 21, 60, 104), None):
        with pytest.raises(ProfileError, match="four positive integers"):
            SensitivityProfile.from_reference(tmp_path / "ok.npz", shape, model_class="WanTransformer3DModel")
    with pytest.raises(ProfileError, match="needs model_class"):
        SensitivityProfile.from_reference(tmp_path / "ok.npz", WAN_LATENT, model_class="")


def test_an_imported_profile_caches_a_wan_pipeline_and_is_refused_elsewhere(tmp_path):
    averaged(tmp_path / "t.npz", steps=20)
    pipe = tiny_wan()
    profile = SensitivityProfile.from_reference(tmp_path / "t.npz", WAN_LATENT, model_class="WanTransformer3DModel")
    session = sencache.enable(pipe, sencache.SenCacheConfig(profile, eps=1e9, max_reuse=1))
    try:
        pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **wan_kwargs(steps=6))
        assert session.summary()["nfe"] < 6  # it reused steps
    finally:
        sencache.disable(pipe)
    other = SensitivityProfile.from_reference(tmp_path / "t.npz", WAN_LATENT, model_class="LTXVideoTransformer3DModel")
    with pytest.raises(SenCacheError, match="calibrated for LTXVideoTransformer3DModel"):
        sencache.enable(pipe, sencache.SenCacheConfig(other, eps=0.1))
    with pytest.raises(SenCacheError, match="stores no calibration trajectories"):
        sencache.budget.with_target(sencache.SenCacheConfig(profile), target_nfe=3)


def test_cli_import_profile_writes_the_converted_profile(tmp_path, capsys):
    averaged(tmp_path / "sensitivity_ltx.npz")
    out = tmp_path / "ltx.json"
    assert main(["import-profile", str(tmp_path / "sensitivity_ltx.npz"), "--latent-shape", "128", "21", "16", "24",
                 "--model-class", "LTXVideoTransformer3DModel", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["metadata"]["reference_table"]["latent_numel"] == 128 * 21 * 16 * 24
    assert max(data["jt"]) == pytest.approx(900.0 / 1015.97, rel=1e-5)  # √numel as the issue gives it
    assert "1015.97" in capsys.readouterr().out
    assert main(["import-profile", str(tmp_path / "missing.npz"), "--latent-shape", "1", "1", "1", "1",
                 "--model-class", "X", "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
