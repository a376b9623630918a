"""Random-weight instances of the SR architectures people deploy, from spandrel's own classes.

No pretrained weights of these are reachable here, so coverage, export and engine checks run on
random weights (quality needs real ones). ``shipped`` is a configuration that users ship (the
checkpoints of chaiNNer/upscayl/vs-mlrt, or the paper's small variant); ``tiny`` is the same
architecture shrunk until it runs in well under a second, for tests.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ._spandrel import import_spandrel


@dataclass(frozen=True)
class ZooEntry:
    name: str
    scale: int
    shipped: Callable[[], nn.Module]
    tiny: Callable[[], nn.Module]
    note: str


def _arch(module: str, cls: str):
    import_spandrel()
    import importlib

    return getattr(importlib.import_module(f"spandrel.architectures.{module}"), cls)


def _esrgan(**kw):
    return _arch("ESRGAN", "ESRGAN")(**kw)


def _compact(**kw):
    return _arch("Compact", "Compact")(**kw)


def _span(**kw):
    return _arch("SPAN", "SPAN")(num_in_ch=3, num_out_ch=3, **kw)


def _plksr(**kw):
    return _arch("PLKSR", "RealPLKSR")(**kw)


def _realcugan():
    return _arch("RealCUGAN", "UpCunet2x")(in_channels=3, out_channels=3)


def _swinir(**kw):
    return _arch("SwinIR", "SwinIR")(img_range=1.0, mlp_ratio=2, upsampler="pixelshuffledirect",
                                     resi_connection="1conv", **kw)


def _hat(**kw):
    return _arch("HAT", "HAT")(img_range=1.0, mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv", **kw)


def _dat(**kw):
    return _arch("DAT", "DAT")(img_range=1.0, expansion_factor=2, resi_connection="3conv",
                               upsampler="pixelshuffledirect", **kw)


def _omnisr(**kw):
    return _arch("OmniSR", "OmniSR")(num_in_ch=3, num_out_ch=3, **kw)


ZOO = {e.name: e for e in (
    ZooEntry("ESRGAN", 4, lambda: _esrgan(num_filters=64, num_blocks=23, scale=4),
             lambda: _esrgan(num_filters=16, num_blocks=2, scale=4), "RRDBNet, Real-ESRGAN x4plus size"),
    ZooEntry("Compact", 4, lambda: _compact(num_feat=64, num_conv=32, upscale=4, act_type="prelu"),
             lambda: _compact(num_feat=16, num_conv=4, upscale=4, act_type="prelu"),
             "SRVGGNetCompact, realesr-general-x4v3 size (PReLU)"),
    ZooEntry("SPAN", 4, lambda: _span(feature_channels=48, upscale=4),
             lambda: _span(feature_channels=16, upscale=4), "SPAN, 48 channels"),
    ZooEntry("PLKSR", 4, lambda: _plksr(dim=64, n_blocks=28, upscaling_factor=4),
             lambda: _plksr(dim=16, n_blocks=2, upscaling_factor=4, kernel_size=7),
             "RealPLKSR, 64 channels x 28 blocks (grouped convs, GroupNorm)"),
    ZooEntry("RealCUGAN", 2, _realcugan, _realcugan, "Real-CUGAN up2x (U-Nets, transposed convs)"),
    ZooEntry("SwinIR", 2, lambda: _swinir(upscale=2, img_size=64, window_size=8, depths=[6] * 4, embed_dim=60,
                                          num_heads=[6] * 4),
             lambda: _swinir(upscale=2, img_size=16, window_size=4, depths=[2, 2], embed_dim=12, num_heads=[2, 2]),
             "SwinIR-light x2"),
    ZooEntry("HAT", 4, lambda: _hat(upscale=4, img_size=64, window_size=16, embed_dim=144, depths=[6] * 6,
                                    num_heads=[6] * 6, compress_ratio=24, squeeze_factor=24),
             lambda: _hat(upscale=4, img_size=16, window_size=4, embed_dim=12, depths=[2], num_heads=[2],
                          compress_ratio=3, squeeze_factor=4, num_feat=16),
             "HAT-S x4"),
    ZooEntry("DAT", 2, lambda: _dat(upscale=2, embed_dim=60, split_size=[8, 32], depth=[18], num_heads=[6]),
             lambda: _dat(upscale=2, embed_dim=32, split_size=[4, 8], depth=[2, 2], num_heads=[2, 2]),
             "DAT-light x2"),
    ZooEntry("OmniSR", 4, lambda: _omnisr(num_feat=64, block_num=1, window_size=8, res_num=5, up_scale=4),
             lambda: _omnisr(num_feat=16, block_num=1, window_size=4, res_num=2, up_scale=4),
             "OmniSR x4, 64 channels"),
)}


def random_instance(name: str, tiny: bool = False, seed: int = 0) -> nn.Module:
    entry = ZOO[name]
    torch.manual_seed(seed)
    return (entry.tiny if tiny else entry.shipped)().eval()


def save_random_checkpoint(name: str, path: Path, tiny: bool = False, seed: int = 0) -> Path:
    """A state-dict checkpoint of a random instance, loadable by ``load_model`` like a real one."""
    torch.save(random_instance(name, tiny, seed).state_dict(), path)
    return path
