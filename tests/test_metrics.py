"""PSNR-Y and SSIM-Y against the BasicSR definitions."""

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.signal import correlate2d

from harmoq_deploy.eval.metrics import psnr_y, rgb_to_y, ssim_y


def _basicsr_ssim(img: np.ndarray, img2: np.ndarray) -> float:
    """BasicSR's ``_ssim`` (cv2.filter2D with the 11x11 Gaussian, 5 px 'valid' crop), in scipy."""
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    kernel = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    kernel /= kernel.sum()  # cv2.getGaussianKernel(11, 1.5)
    window = np.outer(kernel, kernel)

    def filter_valid(x):
        return correlate2d(x, window, mode="valid")

    mu1, mu2 = filter_valid(img), filter_valid(img2)
    sigma1_sq = filter_valid(img**2) - mu1**2
    sigma2_sq = filter_valid(img2**2) - mu2**2
    sigma12 = filter_valid(img * img2) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * sigma12 + c2)) / ((mu1**2 + mu2**2 + c1) * (sigma1_sq + sigma2_sq + c2))
    return float(ssim_map.mean())


def _natural_pair(shape=(70, 90, 3), noise=8.0, seed=0):
    """A smooth 'image' and a noisy copy of it, both uint8."""
    rng = np.random.default_rng(seed)
    hr = gaussian_filter(rng.uniform(0, 255, shape), sigma=(3, 3, 0))
    hr = np.clip((hr - hr.min()) / np.ptp(hr) * 255, 0, 255)
    sr = np.clip(hr + rng.normal(0, noise, shape), 0, 255)
    return np.round(sr).astype(np.uint8), np.round(hr).astype(np.uint8)


def test_rgb_to_y_bt601():
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(pixels)[0], [16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966])
    assert rgb_to_y(pixels).dtype == np.float64


def test_psnr_identical_images_is_infinite():
    sr, _ = _natural_pair()
    assert psnr_y(sr, sr.copy(), border=2) == math.inf


def test_psnr_known_value():
    hr = np.full((20, 20, 3), 100, dtype=np.uint8)
    sr = np.full((20, 20, 3), 110, dtype=np.uint8)
    # Grey +10 moves Y by 10 * (65.481 + 128.553 + 24.966) / 255 = 2190 / 255.
    expected = 20 * math.log10(255 / (2190 / 255))
    assert psnr_y(sr, hr, border=0) == pytest.approx(expected, abs=1e-10)


def test_psnr_matches_direct_formula():
    sr, hr = _natural_pair()
    y_sr, y_hr = rgb_to_y(sr)[3:-3, 3:-3], rgb_to_y(hr)[3:-3, 3:-3]
    expected = 10 * math.log10(255**2 / np.mean((y_sr - y_hr) ** 2))
    assert psnr_y(sr, hr, border=3) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("border", [0, 2, 4])
@pytest.mark.parametrize("noise", [3.0, 20.0])
def test_ssim_equals_basicsr(border, noise):
    sr, hr = _natural_pair(noise=noise)
    crop = (slice(border, -border), slice(border, -border)) if border else (slice(None), slice(None))
    expected = _basicsr_ssim(rgb_to_y(sr)[crop], rgb_to_y(hr)[crop])
    assert ssim_y(sr, hr, border=border) == pytest.approx(expected, abs=1e-6)
    assert ssim_y(sr, hr, border=border) < 1


def test_border_crop_is_respected():
    sr, hr = _natural_pair(shape=(40, 40, 3))
    sr = hr.copy()
    sr[:3] = 255 - sr[:3]
    sr[:, -3:] = 0
    assert psnr_y(sr, hr, border=3) == math.inf
    assert ssim_y(sr, hr, border=3) == pytest.approx(1.0)
    assert psnr_y(sr, hr, border=2) < 40
    assert ssim_y(sr, hr, border=2) < 1


def test_invalid_inputs_raise_value_error():
    sr, hr = _natural_pair(shape=(30, 30, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_y(sr[:-1], hr, border=0)
    with pytest.raises(ValueError, match="uint8"):
        ssim_y(sr.astype(np.float32), hr, border=0)
    with pytest.raises(ValueError, match="border"):
        psnr_y(sr, hr, border=15)
