"""PAN as a spandrel architecture: detection on state-dict keys and loading with every
hyper-parameter read from tensor shapes.

The one exception is x2 versus x3: both have a single nearest-upsampling stage and identical
tensors (x4 has a second stage, ``upconv2``/``att2``/``HRconv2``). There the scale is found by
a small behavioural probe, :func:`probe_scale`: the network is run at each candidate scale on a
fixed synthetic image, and the scale whose output, bicubic-downscaled again, best reproduces its
own input wins. A network run at the scale it was trained for is consistent with the bicubic
degradation it learned to invert; run at the wrong scale it adds details of the wrong spatial
period. On the probe image the official PANx2_DF2K scores 17.6 dB (x2) vs 13.4 dB (x3) over
bilinear upsampling, PANx3_DF2K 8.7 dB (x2) vs 15.4 dB (x3): margins of 4-7 dB.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from typing_extensions import override

from .._spandrel import import_spandrel
from ..layout import ArchLayout
from .arch import PAN

spandrel = import_spandrel()
from spandrel.util import KeyCondition, get_seq_len  # noqa: E402

#: The first conv and everything after the SCPA trunk (the upsampling stages with their pixel
#: attention, and the last conv) stay in float. ``trunk_conv`` is a body conv and is quantized.
LAYOUT = ArchLayout(
    family="cnn",
    float_modules=("conv_first", "upconv1", "att1", "HRconv1", "upconv2", "att2", "HRconv2", "conv_last"),
    feature_taps=r"SCPA_trunk\.\d+",
)

_PROBE_SIZE = 96  # HR side of the probe image: divisible by 2 and 3
_PROBE_SEED = 0


def _probe_image(size: int = _PROBE_SIZE, discs: int = 400, seed: int = _PROBE_SEED) -> torch.Tensor:
    """A 'dead leaves' image, [1, 3, size, size] in [0, 1]: opaque discs of random colour with
    power-law radii, whose statistics (edges at all scales, flat regions) resemble natural images."""
    gen = torch.Generator().manual_seed(seed)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    img = torch.full((3, size, size), 0.5)
    r_min, r_max = 1.5, size / 4
    for _ in range(discs):
        u, cx, cy = torch.rand(3, generator=gen).tolist()
        radius = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5  # density ~ r^-3
        colour = torch.rand(3, 1, 1, generator=gen)
        mask = (xx - cx * size) ** 2 + (yy - cy * size) ** 2 <= radius * radius
        img = torch.where(mask, colour, img)
    return img[None]


def _bicubic_down(x: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def _consistency_gain(model: PAN, hr: torch.Tensor, scale: int, border: int = 2) -> float:
    """dB by which ``model``'s output, downscaled by ``scale``, reproduces its input better than
    bilinear upsampling does."""
    lr = _bicubic_down(hr, scale)
    with torch.no_grad():
        sr = model(lr).clamp(0, 1)
    bilinear = F.interpolate(lr, scale_factor=scale, mode="bilinear", align_corners=False).clamp(0, 1)

    def error(up: torch.Tensor) -> float:
        diff = _bicubic_down(up, scale) - lr
        return diff[..., border:-border, border:-border].pow(2).mean().item()

    return 10 * math.log10(max(error(bilinear), 1e-20) / max(error(sr), 1e-20))


def probe_scale(state_dict: spandrel.StateDict, candidates: tuple[int, ...] = (2, 3), **hyperparameters) -> int:
    """The scale among ``candidates`` that a single-stage PAN state dict was trained for."""
    weights = {k: v.detach().to("cpu", torch.float32) for k, v in state_dict.items()}
    hr = _probe_image()
    if hyperparameters.get("in_nc", 3) != 3:
        hr = hr.mean(dim=1, keepdim=True).expand(-1, hyperparameters["in_nc"], -1, -1)
    gains = {}
    for scale in candidates:
        model = PAN(**hyperparameters, scale=scale)
        model.load_state_dict(weights)
        gain = _consistency_gain(model.eval(), hr, scale)
        if math.isfinite(gain):
            gains[scale] = gain
    # Non-finite weights give no answer; the loader rejects them afterwards anyway.
    return max(gains, key=gains.__getitem__) if gains else candidates[0]


class PANArch(spandrel.Architecture[PAN]):
    def __init__(self) -> None:
        super().__init__(
            id="PAN",
            name="PAN",
            detect=KeyCondition.has_all(
                "conv_first.weight",
                "SCPA_trunk.0.conv1_a.weight",
                "SCPA_trunk.0.conv1_b.weight",
                "SCPA_trunk.0.k1.0.weight",
                "SCPA_trunk.0.PAConv.k2.weight",
                "SCPA_trunk.0.PAConv.k3.weight",
                "SCPA_trunk.0.PAConv.k4.weight",
                "SCPA_trunk.0.conv3.weight",
                "trunk_conv.weight",
                "upconv1.weight",
                "att1.conv.weight",
                "HRconv1.weight",
                "conv_last.weight",
            ),
        )

    @override
    def load(self, state_dict: spandrel.StateDict) -> spandrel.ImageModelDescriptor[PAN]:
        nf, in_nc = state_dict["conv_first.weight"].shape[:2]
        unf = state_dict["upconv1.weight"].shape[0]
        out_nc = state_dict["conv_last.weight"].shape[0]
        nb = get_seq_len(state_dict, "SCPA_trunk")
        reduction = nf // state_dict["SCPA_trunk.0.conv1_a.weight"].shape[0]
        hyperparameters = dict(in_nc=in_nc, out_nc=out_nc, nf=nf, unf=unf, nb=nb, reduction=reduction)

        tags = [f"{nf}nf", f"{unf}unf", f"{nb}nb"]
        if "upconv2.weight" in state_dict:
            scale = 4
        else:
            scale = probe_scale(state_dict, **hyperparameters)
            tags.append("scale-probed")

        model = PAN(**hyperparameters, scale=scale)
        return spandrel.ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="SR",
            tags=tags,
            supports_half=True,
            supports_bfloat16=True,
            scale=scale,
            input_channels=in_nc,
            output_channels=out_nc,
            size_requirements=spandrel.SizeRequirements(minimum=1),
        )


__all__ = ["LAYOUT", "PAN", "PANArch", "probe_scale"]
