"""Calibration inputs: random LR patches degraded exactly like the benchmark LR images."""

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..errors import HarmoqError
from .images import list_image_files, read_image_size, read_rgb8, to_tensor
from .imresize import imresize


def sample_calibration_crops(folder: Path | list[Path], count: int, lr_patch: int, scale: int, seed: int) -> torch.Tensor:
    """``count`` LR patches ``[count, 3, lr_patch, lr_patch]`` in [0, 1], reproducible from ``seed``.

    Each patch is a random ``lr_patch * scale`` HR crop downscaled with MATLAB-exact bicubic
    on uint8, so calibration sees the same degradation (and rounding) as evaluation.
    Images are drawn in a seeded shuffled order, reshuffled each time all have been used, so
    no image repeats before every other one has been used once. ``folder`` may also be a list
    of image files (e.g. ``bundled_photos()``).
    """
    _check_positive(count=count, lr_patch=lr_patch, scale=scale)
    hr_patch = lr_patch * scale
    files = _checked_files(folder, hr_patch)
    rng = np.random.default_rng(seed)
    rounds = -(-count // len(files))
    picks = np.concatenate([rng.permutation(len(files)) for _ in range(rounds)])[:count]

    patches = []
    for index in picks:
        hr = read_rgb8(files[index])
        top = rng.integers(0, hr.shape[0] - hr_patch + 1)
        left = rng.integers(0, hr.shape[1] - hr_patch + 1)
        crop = hr[top:top + hr_patch, left:left + hr_patch]
        patches.append(to_tensor(imresize(crop, 1 / scale)))
    return torch.cat(patches)


def describe_calibration(folder: Path | list[Path], count: int, lr_patch: int, scale: int, seed: int) -> dict:
    """What identifies a calibration set, for a build manifest.

    The fingerprint hashes the sorted file names and sizes: cheap, and it changes whenever
    an image is added, removed, renamed or re-encoded.
    """
    files = _image_files(folder)
    fingerprint = hashlib.sha256()
    for path in files:
        fingerprint.update(f"{path.name}\t{path.stat().st_size}\n".encode())
    return {
        "folder": str(Path(folder).resolve()) if isinstance(folder, (str, Path)) else str(files[0].parent.resolve()),
        "files": len(files),
        "files_sha256": fingerprint.hexdigest(),
        "count": count,
        "lr_patch": lr_patch,
        "scale": scale,
        "seed": seed,
    }


def _image_files(folder: Path | list[Path]) -> list[Path]:
    if isinstance(folder, (str, Path)):
        return list_image_files(folder, what="calibration folder")
    if not folder:
        raise HarmoqError("no calibration images given")
    return sorted(Path(p) for p in folder)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise HarmoqError(f"calibration {name} must be at least 1, got {value}")


def _checked_files(folder: Path, hr_patch: int) -> list[Path]:
    """All calibration images, each checked (from its header) to be a large enough image.

    Checking every file, not only the drawn ones, keeps the outcome independent of the seed.
    """
    files = _image_files(folder)
    for path in files:
        height, width = read_image_size(path)
        if min(height, width) < hr_patch:
            raise HarmoqError(
                f"calibration image {path} is {height}x{width}, smaller than the {hr_patch}x{hr_patch} HR crop")
    return files
