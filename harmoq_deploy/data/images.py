"""Reading and writing 8-bit RGB images, and converting them to and from model tensors."""

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import HarmoqError
from ..io import write_atomic

#: Suffixes treated as images when a folder is scanned (compared case-insensitively).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# PIL modes holding 16-bit (or wider) integer samples in one channel.
_WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def list_image_files(folder: Path, what: str = "image folder") -> list[Path]:
    """The image files directly in ``folder``, sorted by name (hidden files skipped).

    ``what`` names the folder's role in the error messages.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HarmoqError(f"{what} {folder} does not exist")
    files = sorted(
        path for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise HarmoqError(f"{what} {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image, read from its header without decoding the pixels."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except FileNotFoundError:
        raise HarmoqError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise HarmoqError(f"{path} is not a readable image ({exc})") from None
    return height, width


def read_rgb8(path: Path) -> np.ndarray:
    """Read any image as HxWx3 uint8 RGB, the way ``cv2.imread(path, IMREAD_COLOR)`` does.

    SR results are published on images read by OpenCV, so every mode is reduced the same way:
    gray is replicated to three channels, alpha is dropped (not composited), palettes are
    expanded, 16-bit samples keep their high byte, and EXIF orientation is applied.
    """
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in _WIDE_GRAY_MODES:
                # PIL would clip 16-bit gray to 255 on convert; OpenCV keeps the high byte.
                gray = (np.asarray(img).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
                return np.repeat(gray[:, :, None], 3, axis=2)
            # 48/64-bit RGB(A) PNGs already decode to their high bytes in PIL.
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise HarmoqError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise HarmoqError(f"{path} is not a readable image ({exc})") from None


def write_png(path: Path, rgb8: np.ndarray) -> None:
    """Write an HxWx3 uint8 image as PNG, atomically: readers never see a half-written file."""
    if rgb8.dtype != np.uint8 or rgb8.ndim != 3 or rgb8.shape[2] != 3:
        raise ValueError(f"write_png expects an HxWx3 uint8 array, got {rgb8.dtype} {rgb8.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = io.BytesIO()
    Image.fromarray(rgb8).save(encoded, format="PNG")
    write_atomic(path, encoded.getvalue())


def to_tensor(rgb8: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> float32 tensor ``[1, 3, H, W]`` in [0, 1]."""
    if rgb8.dtype != np.uint8 or rgb8.ndim != 3 or rgb8.shape[2] != 3:
        raise ValueError(f"to_tensor expects an HxWx3 uint8 array, got {rgb8.dtype} {rgb8.shape}")
    return torch.from_numpy(np.ascontiguousarray(rgb8)).permute(2, 0, 1).unsqueeze(0).float().div(255)


def to_rgb8(tensor: torch.Tensor) -> np.ndarray:
    """``[1, 3, H, W]`` or ``[3, H, W]`` tensor in [0, 1] -> HxWx3 uint8.

    Values are clamped to [0, 1], scaled by 255 and rounded with ``torch.round`` (half to
    even), as BasicSR's ``tensor2img`` does with ``np.round``.
    """
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(f"to_rgb8 expects a [1, 3, H, W] or [3, H, W] tensor, got {tuple(tensor.shape)}")
    rgb = tensor.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    return rgb.permute(1, 2, 0).contiguous().numpy()
