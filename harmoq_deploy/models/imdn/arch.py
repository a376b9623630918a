"""IMDN: Information Multi-distillation Network (Hui et al., ACM MM 2019).

A re-implementation of the network of the official code (Zheng222/IMDN, ``model/architecture.py``
and ``model/block.py``) whose module names match its checkpoints key for key:

    fea_conv -> IMDB1 .. IMDBn -> c (1x1 fusion of all block outputs) -> LR_conv (+ fea_conv)
             -> upsampler (3x3 conv to out_nc * s^2 channels, PixelShuffle(s))

Input and output are RGB in [0, 1]; there is no mean shift and no global image skip.
Activations are out-of-place so that forward hooks see the tensors each module produced.
"""

from __future__ import annotations

import torch
from torch import nn

from .._spandrel import import_spandrel

import_spandrel()
from spandrel.util import store_hyperparameters  # noqa: E402

#: negative slope of every LeakyReLU in IMDN
LRELU_SLOPE = 0.05


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


def _channel_stddev(x: torch.Tensor) -> torch.Tensor:
    """Per-channel standard deviation over H and W (population, not sample), shape [N, C, 1, 1]."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    variance = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True)
    # sqrt's slope is infinite at 0, and a channel that quantization makes constant has zero
    # variance: bound refinement's gradients would turn NaN. The value is the same; the
    # slope of a constant channel's stddev is taken as 0.
    constant = variance == 0
    return torch.where(constant, variance, variance.masked_fill(constant, 1.0).sqrt())


class CCALayer(nn.Module):
    """Contrast-aware channel attention: sigmoid(MLP(stddev + mean)) scales each channel."""

    def __init__(self, channels: int, reduced_channels: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, reduced_channels, 1),
            nn.ReLU(),
            nn.Conv2d(reduced_channels, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        contrast = _channel_stddev(x) + self.avg_pool(x)
        return x * self.conv_du(contrast)


class IMDModule(nn.Module):
    """Information multi-distillation block.

    Three 3x3 convs each split their output into ``distilled`` channels that are kept and the
    remaining channels that feed the next conv; a fourth conv yields the last distilled part.
    The four parts are concatenated, reweighted by CCA, fused by a 1x1 conv, plus the input.
    """

    def __init__(self, channels: int, distilled_channels: int, cca_channels: int):
        super().__init__()
        remaining = channels - distilled_channels
        self.split_sizes = (distilled_channels, remaining)
        self.c1 = _conv(channels, channels, 3)
        self.c2 = _conv(remaining, channels, 3)
        self.c3 = _conv(remaining, channels, 3)
        self.c4 = _conv(remaining, distilled_channels, 3)
        self.act = nn.LeakyReLU(LRELU_SLOPE)
        self.c5 = _conv(distilled_channels * 4, channels, 1)
        self.cca = CCALayer(distilled_channels * 4, cca_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distilled1, remaining = torch.split(self.act(self.c1(x)), self.split_sizes, dim=1)
        distilled2, remaining = torch.split(self.act(self.c2(remaining)), self.split_sizes, dim=1)
        distilled3, remaining = torch.split(self.act(self.c3(remaining)), self.split_sizes, dim=1)
        distilled4 = self.c4(remaining)
        out = torch.cat([distilled1, distilled2, distilled3, distilled4], dim=1)
        return self.c5(self.cca(out)) + x


@store_hyperparameters()
class IMDN(nn.Module):
    hyperparameters = {}

    def __init__(
        self,
        *,
        in_nc: int = 3,
        nf: int = 64,
        num_modules: int = 6,
        out_nc: int = 3,
        upscale: int = 4,
        distilled_channels: int | None = None,
        cca_channels: int | None = None,
    ):
        super().__init__()
        if distilled_channels is None:
            distilled_channels = nf // 4  # official distillation rate 0.25
        if cca_channels is None:
            cca_channels = distilled_channels * 4 // 16  # official CCA reduction 16
        # record the resolved values (store_hyperparameters saw the None defaults)
        self.hyperparameters.update(distilled_channels=distilled_channels, cca_channels=cca_channels)
        self.scale = upscale
        self.num_modules = num_modules

        self.fea_conv = _conv(in_nc, nf, 3)
        # The official network names its blocks IMDB1..IMDB6 (attributes, not a list); keep the
        # names so checkpoints load unchanged.
        for i in range(1, num_modules + 1):
            self.add_module(f"IMDB{i}", IMDModule(nf, distilled_channels, cca_channels))
        self.c = nn.Sequential(_conv(nf * num_modules, nf, 1), nn.LeakyReLU(LRELU_SLOPE))
        self.LR_conv = _conv(nf, nf, 3)
        self.upsampler = nn.Sequential(_conv(nf, out_nc * upscale**2, 3), nn.PixelShuffle(upscale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x)
        outs = []
        out = fea
        for i in range(1, self.num_modules + 1):
            out = getattr(self, f"IMDB{i}")(out)
            outs.append(out)
        out = self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea
        return self.upsampler(out)
