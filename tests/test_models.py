"""load_model: every shared checkpoint, and one-line errors for bad ones."""

import pytest
import torch

from harmoq_deploy.errors import HarmoqError
from harmoq_deploy.models import load_model

TRANSFORMERS = [("DCTLSA_X2.pt", "DCTLSA", 2), ("DCTLSA_X3.pt", "DCTLSA", 3), ("DCTLSA_X4.pt", "DCTLSA", 4),
                ("team34_craft.pth", "CRAFT", 4), ("DITN_Real_x4.pth", "DITN", 4)]


@pytest.mark.parametrize("name, arch, scale", TRANSFORMERS)
def test_spandrel_architectures_load_with_scale(shared, name, arch, scale):
    loaded = load_model(shared / "weights" / name)
    assert (loaded.architecture, loaded.scale) == (arch, scale)
    assert len(loaded.sha256) == 64 and not loaded.module.training


def test_missing_file(tmp_path):
    with pytest.raises(HarmoqError, match="no such checkpoint"):
        load_model(tmp_path / "nope.pth")


def test_truncated_checkpoint_names_the_file(shared, tmp_path):
    data = (shared / "weights" / "IMDN_x2.pth").read_bytes()
    broken = tmp_path / "IMDN_half.pth"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(HarmoqError, match="IMDN_half.pth: not a readable checkpoint"):
        load_model(broken)


def test_garbage_and_unknown_extension(tmp_path):
    garbage = tmp_path / "g.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(HarmoqError, match="g.pth"):
        load_model(garbage)
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    with pytest.raises(HarmoqError, match="model.bin"):
        load_model(odd)


def test_unknown_architecture(tmp_path):
    path = tmp_path / "mlp.pth"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 4)).state_dict(), path)
    with pytest.raises(HarmoqError, match="mlp.pth: unsupported architecture"):
        load_model(path)


def test_non_finite_weights(shared, tmp_path):
    state = torch.load(shared / "weights" / "PANx2_DF2K.pth", weights_only=True)
    state["conv_first.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "pan_nan.pth"
    torch.save(state, path)
    with pytest.raises(HarmoqError, match="pan_nan.pth: non-finite values"):
        load_model(path)


def test_weights_that_do_not_fit_the_detected_architecture(shared, tmp_path):
    state = torch.load(shared / "weights" / "PANx2_DF2K.pth", weights_only=True)
    state["SCPA_trunk.0.conv1_a.weight"] = torch.zeros(3, 3)
    path = tmp_path / "pan_bad_shape.pth"
    torch.save(state, path)
    with pytest.raises(HarmoqError, match="pan_bad_shape.pth"):
        load_model(path)
