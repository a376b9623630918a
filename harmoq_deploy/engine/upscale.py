"""Production upscaling: image files of any size and mode through an engine, PNG out.

Colour is super-resolved by the engine (tiled); an alpha channel, which SR networks are not
trained on, is resized with bicubic to the output size and reattached; a gray image is run as
RGB (replicated, as the networks expect) and written back as gray.
"""

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import list_image_files, read_rgb8, to_rgb8, to_tensor
from ..errors import HarmoqError
from ..io import write_atomic
from .tiling import TileRunner, Tiling, run_tiled

_GRAY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "LA")


def super_resolve(runner: TileRunner, lr8: np.ndarray, scale: int, tiling: Tiling) -> np.ndarray:
    """HxWx3 uint8 -> (sH)x(sW)x3 uint8 through ``runner`` tile by tile (the validation path too)."""
    return to_rgb8(torch.from_numpy(run_tiled(runner, to_tensor(lr8).numpy(), scale, tiling)))


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, folders as the images directly inside them; output names must not collide."""
    files = []
    for path in inputs:
        if path.is_dir():
            files += list_image_files(path, what="input folder")
        elif path.is_file():
            files.append(path)
        else:
            raise HarmoqError(f"{path}: no such image or folder")
    stems = {}
    for path in files:
        if path.stem in stems:
            raise HarmoqError(f"{stems[path.stem].name} and {path.name} would both be written as {path.stem}.png")
        stems[path.stem] = path
    return files


def upscale_file(runner: TileRunner, path: Path, out_dir: Path, scale: int, tiling: Tiling) -> Path:
    """Super-resolve one image file into ``out_dir/<stem>.png`` (written atomically)."""
    rgb = read_rgb8(path)
    with Image.open(path) as original:
        mode = original.mode
        alpha = np.asarray(original.getchannel("A")) if "A" in original.getbands() else None
    sr = Image.fromarray(super_resolve(runner, rgb, scale, tiling))
    if mode in _GRAY_MODES:
        sr = sr.convert("L")
    if alpha is not None:
        resized = Image.fromarray(alpha).resize(sr.size, Image.Resampling.BICUBIC)
        sr.putalpha(resized)
    target = out_dir / f"{path.stem}.png"
    encoded = io.BytesIO()
    sr.save(encoded, format="PNG")
    return write_atomic(target, encoded.getvalue())
