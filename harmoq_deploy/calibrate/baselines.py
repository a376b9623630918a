"""Classic PTQ bound initialisations: MinMax, Percentile and DOBI (2DQuant's search).

Every function works on ``values`` of shape ``[C, n]``: one row per channel for per-channel
weight bounds, a single row for a per-tensor quantizer. ``minimum``/``maximum`` are the exact
extremes of each row (for activations they come from the full data, the rows from a sample).
Each returns ``(lower, upper)`` of shape ``[C]``.
"""

from dataclasses import dataclass

import torch

from ..quant.quantizer import fake_quantize

Bounds = tuple[torch.Tensor, torch.Tensor]


@dataclass
class MinMax:
    name = "minmax"

    def bounds(self, values, minimum, maximum, levels: int, symmetric: bool, activation: bool) -> Bounds:
        if symmetric:
            absmax = torch.maximum(minimum.abs(), maximum.abs())
            return -absmax, absmax
        return minimum, maximum


@dataclass
class Percentile:
    """Clip at the ``percentile``-th and ``100 - percentile``-th percentiles of each row."""

    percentile: float = 99.9
    name = "percentile"

    def bounds(self, values, minimum, maximum, levels: int, symmetric: bool, activation: bool) -> Bounds:
        q = self.percentile / 100
        if symmetric:
            absmax = torch.quantile(values.abs(), q, dim=1)
            return -absmax, absmax
        return torch.quantile(values, 1 - q, dim=1), torch.quantile(values, q, dim=1)


@dataclass
class Dobi:
    """Distribution-oriented bound initialisation: the MSE-best of ``candidates`` clipping ranges.

    Bell-shaped rows shrink both bounds toward the middle by the same amount (a symmetric
    search); one-sided activations (post-softmax, post-GELU: a negative tail under
    ``one_sided_ratio`` of the positive one) keep the lower bound at the minimum and move the
    upper bound only. Weights are always treated as bell-shaped.
    """

    candidates: int = 100
    one_sided_ratio: float = 0.1
    name = "dobi"

    def bounds(self, values, minimum, maximum, levels: int, symmetric: bool, activation: bool) -> Bounds:
        values = values.float()
        best_err = torch.full_like(minimum, float("inf"))
        best_lower, best_upper = minimum.clone(), maximum.clone()
        one_sided = (maximum > 0) & (-minimum <= self.one_sided_ratio * maximum) if activation \
            else torch.zeros_like(minimum, dtype=torch.bool)
        absmax = torch.maximum(minimum.abs(), maximum.abs())
        half_range = (maximum - minimum) / 2
        for i in range(self.candidates):
            keep = 1 - i / self.candidates
            if symmetric:
                lower, upper = -absmax * keep, absmax * keep
            else:
                shrink = half_range * (1 - keep)
                lower = torch.where(one_sided, minimum, minimum + shrink)
                upper = torch.where(one_sided, minimum + 2 * half_range * keep, maximum - shrink)
            err = (fake_quantize(values, lower[:, None], upper[:, None], levels) - values).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lower = torch.where(better, lower, best_lower)
            best_upper = torch.where(better, upper, best_upper)
        return best_lower, best_upper


BASELINES = {method.name: method for method in (MinMax, Percentile, Dobi)}
