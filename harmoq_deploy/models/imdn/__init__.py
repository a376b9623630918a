"""IMDN as a spandrel architecture: detection on state-dict keys and loading with every
hyper-parameter read from tensor shapes."""

from __future__ import annotations

from typing_extensions import override

from .._spandrel import import_spandrel
from ..layout import ArchLayout
from .arch import IMDN

spandrel = import_spandrel()
from spandrel.util import KeyCondition, get_scale_and_output_channels  # noqa: E402

#: The first conv and the pixel-shuffle upsampler stay in float; CCA is channel attention
#: (sigmoid gating), not an activation x activation matmul.
LAYOUT = ArchLayout(family="cnn", float_modules=("fea_conv", "upsampler"), feature_taps=r"IMDB\d+")


def _count_blocks(state_dict) -> int:
    n = 0
    while f"IMDB{n + 1}.c1.weight" in state_dict:
        n += 1
    return n


class IMDNArch(spandrel.Architecture[IMDN]):
    def __init__(self) -> None:
        super().__init__(
            id="IMDN",
            name="IMDN",
            detect=KeyCondition.has_all(
                "fea_conv.weight",
                "IMDB1.c1.weight",
                "IMDB1.c2.weight",
                "IMDB1.c3.weight",
                "IMDB1.c4.weight",
                "IMDB1.c5.weight",
                "IMDB1.cca.conv_du.0.weight",
                "IMDB1.cca.conv_du.2.weight",
                "c.0.weight",
                "LR_conv.weight",
                "upsampler.0.weight",
            ),
        )

    @override
    def load(self, state_dict: spandrel.StateDict) -> spandrel.ImageModelDescriptor[IMDN]:
        nf, in_nc = state_dict["fea_conv.weight"].shape[:2]
        num_modules = _count_blocks(state_dict)
        distilled_channels = state_dict["IMDB1.c4.weight"].shape[0]
        cca_channels = state_dict["IMDB1.cca.conv_du.0.weight"].shape[0]
        upscale, out_nc = get_scale_and_output_channels(state_dict["upsampler.0.weight"].shape[0], in_nc)

        model = IMDN(
            in_nc=in_nc,
            nf=nf,
            num_modules=num_modules,
            out_nc=out_nc,
            upscale=upscale,
            distilled_channels=distilled_channels,
            cca_channels=cca_channels,
        )
        return spandrel.ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="Restoration" if upscale == 1 else "SR",
            tags=[f"{nf}nf", f"{num_modules}nm"],
            supports_half=True,
            supports_bfloat16=True,
            scale=upscale,
            input_channels=in_nc,
            output_channels=out_nc,
            size_requirements=spandrel.SizeRequirements(minimum=1),
        )


__all__ = ["IMDN", "IMDNArch", "LAYOUT"]
