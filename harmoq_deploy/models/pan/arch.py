"""PAN: Pixel Attention Network (Zhao et al., ECCV 2020 workshops / AIM 2020 efficient SR).

A re-implementation of the network of the official code (zhaohengyuan1/PAN,
``codes/models/archs/PAN_arch.py``) whose module names match its checkpoints key for key:

    conv_first -> SCPA_trunk (nb SCPA blocks) -> trunk_conv (+ conv_first)
      -> per upsampling stage i: nearest xk -> upconv{i} -> att{i} (pixel attention) -> lrelu
                                 -> HRconv{i} -> lrelu
      -> conv_last, plus the bilinear-upsampled input (global skip).

Scale 2 and 3 use one stage (nearest x2 / x3), scale 4 two stages of x2. The x2 and x3 networks
therefore have identical parameters; only ``scale`` tells them apart.
Input and output are RGB in [0, 1]. Activations are out-of-place so that forward hooks see the
tensors each module produced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._spandrel import import_spandrel

import_spandrel()
from spandrel.util import store_hyperparameters  # noqa: E402

#: negative slope of every LeakyReLU in PAN
LRELU_SLOPE = 0.2


def upsampling_stages(scale: int) -> tuple[int, ...]:
    """Nearest-neighbour factor of each upsampling stage."""
    if scale in (2, 3):
        return (scale,)
    if scale == 4:
        return (2, 2)
    raise ValueError(f"PAN supports scale 2, 3 or 4, not {scale}")


class PA(nn.Module):
    """Pixel attention: x * sigmoid(conv1x1(x)), a weight per channel and pixel."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.conv(x))


class PAConv(nn.Module):
    """Pixel-attention conv: k4(k3(x) * sigmoid(k2(x)))."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        padding = kernel_size // 2
        self.k2 = nn.Conv2d(channels, channels, 1)
        self.sigmoid = nn.Sigmoid()
        self.k3 = nn.Conv2d(channels, channels, kernel_size, padding=padding, bias=False)
        self.k4 = nn.Conv2d(channels, channels, kernel_size, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k4(self.k3(x) * self.sigmoid(self.k2(x)))


class SCPA(nn.Module):
    """Self-calibrated block with pixel attention.

    Two 1x1 convs split the features into two half-width branches: a plain 3x3 conv (k1) and a
    PAConv; both are activated, concatenated, fused by a 1x1 conv and added to the input.
    """

    def __init__(self, channels: int, reduction: int = 2):
        super().__init__()
        width = channels // reduction
        self.conv1_a = nn.Conv2d(channels, width, 1, bias=False)
        self.conv1_b = nn.Conv2d(channels, width, 1, bias=False)
        self.k1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False))
        self.PAConv = PAConv(width)
        self.conv3 = nn.Conv2d(width * reduction, channels, 1, bias=False)
        self.lrelu = nn.LeakyReLU(LRELU_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_a = self.lrelu(self.k1(self.lrelu(self.conv1_a(x))))
        out_b = self.lrelu(self.PAConv(self.lrelu(self.conv1_b(x))))
        return self.conv3(torch.cat([out_a, out_b], dim=1)) + x


@store_hyperparameters()
class PAN(nn.Module):
    hyperparameters = {}

    def __init__(
        self,
        *,
        in_nc: int = 3,
        out_nc: int = 3,
        nf: int = 40,
        unf: int = 24,
        nb: int = 16,
        reduction: int = 2,
        scale: int = 4,
    ):
        super().__init__()
        self.scale = scale
        self.stages = upsampling_stages(scale)

        self.conv_first = nn.Conv2d(in_nc, nf, 3, padding=1)
        self.SCPA_trunk = nn.Sequential(*(SCPA(nf, reduction) for _ in range(nb)))
        self.trunk_conv = nn.Conv2d(nf, nf, 3, padding=1)

        for i in range(1, len(self.stages) + 1):
            self.add_module(f"upconv{i}", nn.Conv2d(nf if i == 1 else unf, unf, 3, padding=1))
            self.add_module(f"att{i}", PA(unf))
            self.add_module(f"HRconv{i}", nn.Conv2d(unf, unf, 3, padding=1))

        self.conv_last = nn.Conv2d(unf, out_nc, 3, padding=1)
        self.lrelu = nn.LeakyReLU(LRELU_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.SCPA_trunk(fea))

        for i, factor in enumerate(self.stages, start=1):
            fea = F.interpolate(fea, scale_factor=factor, mode="nearest")
            fea = self.lrelu(getattr(self, f"att{i}")(getattr(self, f"upconv{i}")(fea)))
            fea = self.lrelu(getattr(self, f"HRconv{i}")(fea))

        out = self.conv_last(fea)
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
