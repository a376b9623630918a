"""IMDN and PAN: the project's own spandrel architectures, on the official checkpoints."""

import numpy as np
import pytest
import torch
from PIL import Image

from harmoq_deploy.models import arch_layout, load_model
from harmoq_deploy.models.imdn import IMDN
from harmoq_deploy.models.pan import PAN

# file, architecture id, scale, parameter count
CHECKPOINTS = [
    ("IMDN_x2.pth", "IMDN", 2, 694_404),
    ("IMDN_x3.pth", "IMDN", 3, 703_059),
    ("IMDN_x4.pth", "IMDN", 4, 715_176),
    ("PANx2_DF2K.pth", "PAN", 2, 261_403),
    ("PANx3_DF2K.pth", "PAN", 3, 261_403),
    ("PANx4_DF2K.pth", "PAN", 4, 272_419),
]


def _checkpoint_keys(path) -> set[str]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key.removeprefix("module.") for key in state}


@pytest.mark.parametrize("name, arch, scale, params", CHECKPOINTS)
def test_official_checkpoint_loads_strictly(shared, name, arch, scale, params):
    path = shared / "weights" / name
    loaded = load_model(path)
    assert (loaded.architecture, loaded.scale) == (arch, scale)
    assert not loaded.module.training
    assert set(loaded.module.state_dict()) == _checkpoint_keys(path)  # no missing, no unexpected
    assert sum(p.numel() for p in loaded.module.parameters()) == params

    x = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        y = loaded.module(x)
    assert y.shape == (1, 3, 24 * scale, 20 * scale)
    assert torch.isfinite(y).all()


def test_layouts_name_real_modules():
    """Every float-module prefix matches a module of the network it belongs to."""
    for arch, model in (("IMDN", IMDN(upscale=2)), ("PAN", PAN(scale=4))):
        layout = arch_layout(arch)
        assert layout.family == "cnn" and layout.attention_modules == ()
        names = {name for name, _ in model.named_modules()}
        for prefix in layout.float_modules:
            assert prefix in names, f"{arch}: no module {prefix}"


@pytest.mark.parametrize(
    "model, arch, hyperparameters",
    [
        (IMDN(in_nc=3, nf=32, num_modules=4, out_nc=3, upscale=3), "IMDN", {"nf": 32, "num_modules": 4}),
        (PAN(nf=24, unf=16, nb=5, scale=4), "PAN", {"nf": 24, "unf": 16, "nb": 5}),
    ],
)
def test_hyperparameters_are_read_from_shapes(tmp_path, model, arch, hyperparameters):
    torch.manual_seed(0)
    path = tmp_path / f"{arch}_small.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model(path)
    assert loaded.architecture == arch and loaded.scale == model.scale
    assert loaded.module.hyperparameters == model.hyperparameters
    assert {k: loaded.module.hyperparameters[k] for k in hyperparameters} == hyperparameters


def _psnr_y(sr8: np.ndarray, hr8: np.ndarray, border: int) -> float:
    def y(img8):  # MATLAB rgb2ycbcr luma, not rounded
        rgb = img8.astype(np.float64) / 255.0
        return 16 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]

    diff = (y(sr8) - y(hr8))[border:-border, border:-border]
    return float(10 * np.log10(255.0**2 / np.mean(diff**2)))


# Set5 "bird" (LR 144x144 at x2, 96x96 at x3), PSNR-Y of the float checkpoints. The full-Set5
# means reproduce the published figures (IMDN x2 38.00, PAN x2 38.00, PAN x3 34.40).
@pytest.mark.parametrize(
    "name, scale, expected",
    [("IMDN_x2.pth", 2, 43.2928), ("PANx2_DF2K.pth", 2, 43.2894), ("PANx3_DF2K.pth", 3, 38.1806)],
)
def test_set5_bird_psnr(shared, name, scale, expected):
    set5 = shared / "data" / "benchmarks" / "Set5"
    lr = np.array(Image.open(set5 / "LR_bicubic" / f"X{scale}" / f"birdx{scale}.png").convert("RGB"))
    hr = np.array(Image.open(set5 / "HR" / "bird.png").convert("RGB"))
    model = load_model(shared / "weights" / name).module
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = model(x)[0].clamp(0, 1)
    sr = (y.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert _psnr_y(sr, hr[: sr.shape[0], : sr.shape[1]], scale) == pytest.approx(expected, abs=0.01)


def test_imdn_contrast_of_a_constant_channel_has_a_finite_gradient():
    """Coarse quantization can make a channel constant; sqrt's infinite slope at zero variance
    sent NaN into bound refinement (IMDN x2, TensorRT grids, W3A3)."""
    from harmoq_deploy.models.imdn.arch import _channel_stddev

    x = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    x[:, 1] = 0.25
    x.requires_grad_(True)
    stddev = _channel_stddev(x)
    reference = x.detach().flatten(2).std(dim=2, unbiased=False)
    assert torch.allclose(stddev.flatten(2).squeeze(2), reference)
    stddev.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[:, 1], torch.zeros_like(x.grad[:, 1]))
