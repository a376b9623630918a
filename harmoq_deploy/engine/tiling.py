"""Tiled inference: any image size through a network that runs one fixed tile shape.

Every backend (PyTorch, ONNX Runtime, TensorRT) runs the same tiles, so backends are compared
on identical inputs. Tiles of ``tile x tile`` LR pixels are laid on a grid with at least
``overlap`` pixels shared between neighbours; each tile's SR output is weighted by a ramp that
falls towards its inner edges (flat where the tile touches the image border), and the
weighted outputs are averaged. An image side shorter than the tile is reflect-padded up to the
tile and the padding is cropped from the output.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import HarmoqError

#: runs a batch of LR tiles ``[n, 3, tile, tile]`` (float32, [0, 1]) and returns their SR outputs
#: ``[n, C, tile * scale, tile * scale]`` (C = 3, or several images stacked along channels)
TileRunner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tiling:
    tile: int
    overlap: int

    def __post_init__(self):
        if self.tile < 1:
            raise HarmoqError(f"tile must be at least 1 pixel, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise HarmoqError(f"tile overlap must be from 0 to tile - 1 ({self.tile - 1}), got {self.overlap}")

    def starts(self, length: int) -> list[int]:
        """Tile origins along a side of ``length`` (>= tile) pixels: evenly spread, first at 0,
        last at ``length - tile``, neighbours sharing at least ``overlap`` pixels."""
        if length <= self.tile:
            return [0]
        stride = self.tile - self.overlap
        count = -(-(length - self.tile) // stride) + 1
        return [round(i * (length - self.tile) / (count - 1)) for i in range(count)]


def _ramp(size: int, fade: int, fade_start: bool, fade_end: bool) -> np.ndarray:
    """1-D blending weights: 1 in the middle, linear fades of ``fade`` pixels at the chosen ends."""
    weights = np.ones(size, np.float64)
    if fade:
        ramp = (np.arange(fade) + 0.5) / fade
        if fade_start:
            weights[:fade] = np.minimum(weights[:fade], ramp)
        if fade_end:
            weights[size - fade:] = np.minimum(weights[size - fade:], ramp[::-1])
    return weights


def pad_to_tile(image: np.ndarray, tile: int) -> np.ndarray:
    """Reflect-pad ``[1, 3, H, W]`` at the bottom/right so both sides are at least ``tile``."""
    pad_h, pad_w = max(0, tile - image.shape[2]), max(0, tile - image.shape[3])
    if not (pad_h or pad_w):
        return image
    # Reflection repeats when the pad exceeds the side (tiny images): np.pad 'symmetric' would
    # too, but 'reflect' matches what the SR architectures pad with internally.
    while pad_h or pad_w:
        step_h, step_w = min(pad_h, image.shape[2] - 1), min(pad_w, image.shape[3] - 1)
        if step_h == 0 and step_w == 0:
            return np.pad(image, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="edge")
        image = np.pad(image, ((0, 0), (0, 0), (0, step_h), (0, step_w)), mode="reflect")
        pad_h, pad_w = pad_h - step_h, pad_w - step_w
    return image


def run_tiled(run: TileRunner, image: np.ndarray, scale: int, tiling: Tiling, batch: int = 1) -> np.ndarray:
    """SR of ``image`` ``[1, 3, H, W]`` (float32, [0, 1]) assembled from fixed-size tiles:
    ``[1, C, H * scale, W * scale]`` for a runner returning C channels."""
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"run_tiled expects a [1, 3, H, W] image, got {image.shape}")
    height, width = image.shape[2:]
    padded = pad_to_tile(np.ascontiguousarray(image, np.float32), tiling.tile)
    tops, lefts = tiling.starts(padded.shape[2]), tiling.starts(padded.shape[3])
    out_tile = tiling.tile * scale
    fade = tiling.overlap * scale
    total = weight = None
    origins = [(top, left) for top in tops for left in lefts]
    for first in range(0, len(origins), batch):
        chunk = origins[first:first + batch]
        tiles = np.stack([padded[0, :, t:t + tiling.tile, l:l + tiling.tile] for t, l in chunk])
        outputs = np.asarray(run(tiles), np.float64)
        if outputs.ndim != 4 or outputs.shape[0] != len(chunk) or outputs.shape[2:] != (out_tile, out_tile):
            raise HarmoqError(f"the network returned {outputs.shape[1:]} for a {tiling.tile}x{tiling.tile} tile; "
                              f"expected (C, {out_tile}, {out_tile}) at x{scale}")
        if total is None:
            total = np.zeros((outputs.shape[1], padded.shape[2] * scale, padded.shape[3] * scale), np.float64)
            weight = np.zeros(total.shape[1:], np.float64)
        for (top, left), out in zip(chunk, outputs):
            w = np.outer(_ramp(out_tile, fade, top > 0, top < tops[-1]),
                         _ramp(out_tile, fade, left > 0, left < lefts[-1]))
            rows = slice(top * scale, top * scale + out_tile)
            cols = slice(left * scale, left * scale + out_tile)
            total[:, rows, cols] += out * w
            weight[rows, cols] += w
    return (total / weight)[None, :, :height * scale, :width * scale].astype(np.float32)
