"""Evaluate an SR network with the standard protocol: PSNR/SSIM on Y, border = scale, uint8 output."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import ImagePair, load_benchmark, to_rgb8, to_tensor
from ..progress import progress_bar
from .metrics import psnr_y, ssim_y


@dataclass(frozen=True)
class DatasetScore:
    psnr: float
    ssim: float
    n: int

    def to_dict(self) -> dict:
        return {"psnr": round(self.psnr, 3), "ssim": round(self.ssim, 4), "n": self.n}


@torch.no_grad()
def super_resolve(model: nn.Module, lr8: np.ndarray) -> np.ndarray:
    param = next(model.parameters())
    return to_rgb8(model(to_tensor(lr8).to(param)).cpu())


def score_pairs(model: nn.Module, pairs: list[ImagePair], scale: int, description: str) -> DatasetScore:
    psnrs, ssims = [], []
    for pair in progress_bar(pairs, description):
        sr = super_resolve(model, pair.lr)
        psnrs.append(psnr_y(sr, pair.hr, border=scale))
        ssims.append(ssim_y(sr, pair.hr, border=scale))
    return DatasetScore(sum(psnrs) / len(psnrs), sum(ssims) / len(ssims), len(psnrs))


def evaluate(model: nn.Module, scale: int, datasets: list[str], data_root: Path) -> dict[str, DatasetScore]:
    """Mean PSNR/SSIM of ``model`` on each benchmark set (loaded from ``data_root``)."""
    model.eval()
    return {name: score_pairs(model, load_benchmark(data_root, name, scale), scale, f"{name} x{scale}")
            for name in datasets}
