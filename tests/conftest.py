"""Shared pytest fixtures."""

import pytest

from harmoq_deploy.paths import shared_root


@pytest.fixture
def shared():
    """The shared data folder (``../shared`` or ``$HARMOQ_SHARED``); skips the test if absent."""
    root = shared_root()
    if not root.is_dir():
        pytest.skip(f"shared data folder {root} not found (set HARMOQ_SHARED)")
    return root


@pytest.fixture(scope="session")
def swinir_light_checkpoint(tmp_path_factory):
    """SwinIR-light x2 (2DQuant's model) with random weights: no official weights are reachable here."""
    import torch

    from harmoq_deploy.models._spandrel import import_spandrel

    import_spandrel()
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    net = SwinIR(upscale=2, img_size=64, window_size=8, img_range=1.0, depths=[6, 6, 6, 6], embed_dim=60,
                 num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler="pixelshuffledirect", resi_connection="1conv")
    path = tmp_path_factory.mktemp("swinir") / "swinir_light_x2_random.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def shared_module():
    """``shared`` for module-scoped fixtures."""
    root = shared_root()
    if not root.is_dir():
        pytest.skip(f"shared data folder {root} not found (set HARMOQ_SHARED)")
    return root


def tiny_benchmark(shared, root, names, rows, cols):
    """A benchmark folder ``root/Tiny/HR`` of crops ``[rows, cols]`` of Set5 images (LR made in code)."""
    import numpy as np
    from PIL import Image

    hr = root / "Tiny" / "HR"
    hr.mkdir(parents=True)
    for name in names:
        image = np.asarray(Image.open(shared / "data" / "benchmarks" / "Set5" / "HR" / f"{name}.png").convert("RGB"))
        Image.fromarray(image[rows, cols]).save(hr / f"{name}.png")
    return root


def run_cli(argv, capsys):
    """``harmoq-build argv`` in-process: exit code, stdout, stderr."""
    from harmoq_deploy.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(argv, capsys, match):
    """Asserts ``argv`` fails with a non-zero exit and one ``error:`` line containing ``match``, no traceback."""
    code, _, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err
    assert "Traceback" not in err
    return lines[0]
