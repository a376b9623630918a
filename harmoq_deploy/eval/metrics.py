"""PSNR and SSIM on the Y channel, with the conventions of BasicSR (and so of most SR papers)."""

import math

import numpy as np
from skimage.metrics import structural_similarity

# ITU-R BT.601 luma for RGB in [0, 1], giving Y in [16, 235] (MATLAB's rgb2ycbcr).
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966])
_Y_OFFSET = 16.0


def rgb_to_y(rgb8: np.ndarray) -> np.ndarray:
    """Y channel (float64, in [16, 235]) of an HxWx3 uint8 RGB image.

    Not rounded to integers, as in BasicSR; MATLAB's rgb2ycbcr on uint8 would round, which
    moves PSNR by a few hundredths of a dB. BasicSR computes this in float32, so its PSNR
    agrees with ours to about 1e-5 dB.
    """
    return rgb8.astype(np.float64) / 255.0 @ _Y_WEIGHTS + _Y_OFFSET


def psnr_y(sr8: np.ndarray, hr8: np.ndarray, border: int) -> float:
    """PSNR (dB, peak 255) between the Y channels, ``border`` pixels cut from every side.

    Identical images give ``inf``.
    """
    sr_y, hr_y = _cropped_y(sr8, hr8, border)
    mse = np.mean((sr_y - hr_y) ** 2)
    if mse == 0:
        return math.inf
    return float(10 * np.log10(255.0**2 / mse))


def ssim_y(sr8: np.ndarray, hr8: np.ndarray, border: int) -> float:
    """SSIM between the Y channels, ``border`` pixels cut from every side.

    Wang et al.'s definition as BasicSR and the MATLAB reference implement it: 11x11 Gaussian
    window (sigma 1.5), C1 = (0.01*255)^2, C2 = (0.03*255)^2, population covariances, the mean
    taken over the positions where the window lies fully inside the image. scikit-image's
    Gaussian variant crops exactly those 5 px, so it equals BasicSR's ``_ssim`` (tested).
    """
    sr_y, hr_y = _cropped_y(sr8, hr8, border)
    return float(structural_similarity(
        sr_y, hr_y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255.0))


def _cropped_y(sr8: np.ndarray, hr8: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    for label, img in (("SR", sr8), ("HR", hr8)):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{label} image must be HxWx3 uint8, got {img.dtype} {img.shape}")
    if sr8.shape != hr8.shape:
        raise ValueError(f"SR image {sr8.shape} and HR image {hr8.shape} differ in shape")
    if border < 0 or 2 * border >= min(hr8.shape[:2]):
        raise ValueError(f"border {border} leaves nothing of a {hr8.shape[0]}x{hr8.shape[1]} image")
    if border:
        sr8 = sr8[border:-border, border:-border]
        hr8 = hr8[border:-border, border:-border]
    return rgb_to_y(sr8), rgb_to_y(hr8)
