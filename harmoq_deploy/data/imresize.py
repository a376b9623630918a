"""MATLAB-exact bicubic ``imresize``, the degradation behind every SR benchmark's LR images.

PIL, OpenCV, scikit-image and torch all resize differently from MATLAB (other kernel,
no antialiasing, or another border rule), so their LR images differ from the published ones
by a few grey levels and shift PSNR by tenths of a dB. This reproduces MATLAB's algorithm
step by step; the tests check it is pixel-identical to the Set5/Set14 LR files.
"""

import math

import numpy as np

# Keys' cubic convolution kernel with a = -0.5, as MATLAB's 'bicubic' defines it.
_KERNEL_WIDTH = 4.0


def _cubic(x: np.ndarray) -> np.ndarray:
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx2 * absx
    return ((1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
            + (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((1 < absx) & (absx <= 2)))


def _contributions(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel along one axis: the input indices it reads and their weights.

    Returns ``(indices, weights)``, both ``[out_length, taps]``; indices are 0-based and
    already folded back into the image by MATLAB's symmetric (edge-repeating) padding.
    """
    kernel_width = _KERNEL_WIDTH
    if scale < 1:
        # Antialiasing: stretch the kernel by 1/scale so it low-passes before decimating.
        kernel_width = _KERNEL_WIDTH / scale

    # 1-based output coordinates mapped to input space, exactly as imresize.m does it.
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]

    distance = u[:, None] - indices
    if scale < 1:
        weights = scale * _cubic(scale * distance)
    else:
        weights = _cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)

    # Mirror out-of-range indices: the sequence 1..n, n..1 repeated (MATLAB's 'symmetric').
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]

    # Taps that no output pixel uses cost time only.
    used = np.any(weights != 0, axis=0)
    return indices[:, used], weights[:, used]


def _resize_along_axis(img: np.ndarray, axis: int, out_length: int, scale: float,
                       to_uint8: bool) -> np.ndarray:
    indices, weights = _contributions(img.shape[axis], out_length, scale)
    moved = np.moveaxis(img, axis, 0).astype(np.float64, copy=False)
    broadcast = (slice(None),) + (None,) * (moved.ndim - 1)
    # One pass per tap, summed in tap order like imresizemex, so roundings match MATLAB's.
    out = np.zeros((out_length,) + moved.shape[1:], dtype=np.float64)
    for tap in range(indices.shape[1]):
        out += weights[:, tap][broadcast] * moved[indices[:, tap]]
    if to_uint8:
        # imresizemex returns the input's class after every pass: round half away from zero
        # (all values here are >= 0 after the clip) and saturate.
        out = np.floor(np.clip(out, 0, 255) + 0.5).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """Resize like MATLAB ``imresize(img, scale, 'bicubic')``.

    ``img`` is HxW or HxWxC. uint8 input gives uint8 output, rounded and clipped like
    MATLAB (after each axis pass, as its MEX does); float input gives float64, unrounded.
    The output side is ``ceil(side * scale)``; rows are resized before columns.
    """
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects an HxW or HxWxC array, got shape {img.shape}")
    if scale <= 0:
        raise ValueError(f"imresize scale must be positive, got {scale}")
    to_uint8 = img.dtype == np.uint8
    if not to_uint8 and not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"imresize expects uint8 or float input, got {img.dtype}")

    out = img
    for axis in (0, 1):
        out_length = math.ceil(img.shape[axis] * scale)
        out = _resize_along_axis(out, axis, out_length, scale, to_uint8)
    return out
