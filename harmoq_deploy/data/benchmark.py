"""SR benchmark sets laid out as ``<root>/<Name>/HR`` with optional ``LR_bicubic/X<s>``."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HarmoqError
from .images import list_image_files, read_rgb8
from .imresize import imresize


@dataclass
class ImagePair:
    """One benchmark image: HR cropped to a multiple of the scale, and its bicubic LR."""

    name: str
    hr: np.ndarray
    lr: np.ndarray


def available_benchmarks(root: Path) -> list[str]:
    """Names of the benchmark folders under ``root`` (those holding an ``HR`` folder)."""
    root = Path(root)
    if not root.is_dir():
        raise HarmoqError(f"benchmark folder {root} does not exist (set HARMOQ_SHARED to the shared folder)")
    return sorted(entry.name for entry in root.iterdir() if (entry / "HR").is_dir())


def load_benchmark(root: Path, name: str, scale: int, min_lr_size: int = 8) -> list[ImagePair]:
    """Load every HR image of benchmark ``name`` with its LR image at ``scale``.

    The stored ``LR_bicubic/X<scale>/<stem>x<scale>.png`` is used where it exists; otherwise
    the LR image is made with MATLAB-exact bicubic, which reproduces the stored files.
    HR is cropped at the bottom and right to a multiple of ``scale``, as the LR files were made.
    """
    dataset = Path(root) / name
    if not dataset.is_dir():
        known = ", ".join(available_benchmarks(root)) or "none"
        raise HarmoqError(f"benchmark {name} not found in {root} (available: {known})")
    lr_folder = dataset / "LR_bicubic" / f"X{scale}"
    return [
        _load_pair(hr_path, lr_folder, scale, min_lr_size)
        for hr_path in list_image_files(dataset / "HR", what=f"{name} HR folder")
    ]


def _load_pair(hr_path: Path, lr_folder: Path, scale: int, min_lr_size: int) -> ImagePair:
    hr = read_rgb8(hr_path)
    lr_height, lr_width = hr.shape[0] // scale, hr.shape[1] // scale
    if min(lr_height, lr_width) < min_lr_size:
        raise HarmoqError(
            f"{hr_path} ({hr.shape[0]}x{hr.shape[1]}) is too small for x{scale}: its LR image would be "
            f"{lr_height}x{lr_width}, below the minimum side of {min_lr_size}")
    hr = hr[:lr_height * scale, :lr_width * scale]

    lr_path = lr_folder / f"{hr_path.stem}x{scale}.png"
    if not lr_path.is_file():
        return ImagePair(name=hr_path.stem, hr=hr, lr=imresize(hr, 1 / scale))
    lr = read_rgb8(lr_path)
    if lr.shape[:2] != (lr_height, lr_width):
        raise HarmoqError(
            f"{lr_path} is {lr.shape[0]}x{lr.shape[1]} but its HR image {hr_path.name} "
            f"needs {lr_height}x{lr_width} at x{scale}")
    return ImagePair(name=hr_path.stem, hr=hr, lr=lr)
