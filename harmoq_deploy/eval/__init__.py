"""Evaluation with the standard SR protocol."""

from .evaluate import DatasetScore, evaluate, score_pairs, super_resolve
from .metrics import psnr_y, ssim_y

__all__ = ["DatasetScore", "evaluate", "psnr_y", "score_pairs", "ssim_y", "super_resolve"]
