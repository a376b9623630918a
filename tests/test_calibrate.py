"""Baseline bound methods, calibration and the artifact round trip."""

import json

import pytest
import torch

from harmoq_deploy.calibrate import apply_artifact, calibrate, load_artifact, make_method, method_record, save_artifact
from harmoq_deploy.calibrate.baselines import Dobi, MinMax, Percentile
from harmoq_deploy.data import describe_calibration, sample_calibration_crops
from harmoq_deploy.errors import HarmoqError
from harmoq_deploy.models import load_model
from harmoq_deploy.quant import QuantConfig, quantizers
from harmoq_deploy.quant.quantizer import fake_quantize


def _rows(x):
    return x[None], x.min()[None], x.max()[None]


def _mse(x, lower, upper, levels):
    return (fake_quantize(x, lower, upper, levels) - x).pow(2).mean().item()


def test_minmax_and_percentile_bounds():
    x = torch.linspace(-1, 3, 10001)
    lower, upper = MinMax().bounds(*_rows(x), levels=15, symmetric=False, activation=True)
    assert (lower.item(), upper.item()) == (-1.0, 3.0)
    lower, upper = MinMax().bounds(*_rows(x), levels=14, symmetric=True, activation=True)
    assert (lower.item(), upper.item()) == (-3.0, 3.0)
    lower, upper = Percentile(99.0).bounds(*_rows(x), levels=15, symmetric=False, activation=True)
    assert lower.item() == pytest.approx(-0.96, abs=1e-3) and upper.item() == pytest.approx(2.96, abs=1e-3)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_dobi_beats_minmax_on_heavy_tailed_data(bits):
    torch.manual_seed(0)
    x = torch.distributions.StudentT(2.5).sample((50000,))
    levels = 2**bits - 1
    dobi = Dobi().bounds(*_rows(x), levels=levels, symmetric=False, activation=False)
    minmax = MinMax().bounds(*_rows(x), levels=levels, symmetric=False, activation=False)
    assert _mse(x, *dobi, levels) < 0.5 * _mse(x, *minmax, levels)


def test_dobi_keeps_the_minimum_of_one_sided_activations():
    torch.manual_seed(0)
    post_gelu = torch.nn.functional.gelu(torch.randn(50000) * 2)
    lower, upper = Dobi().bounds(*_rows(post_gelu), levels=7, symmetric=False, activation=True)
    assert lower.item() == post_gelu.min().item() and upper.item() < post_gelu.max().item()
    # Weights are bell-shaped by definition: both ends move.
    lower, _ = Dobi().bounds(*_rows(post_gelu), levels=7, symmetric=False, activation=False)
    assert lower.item() > post_gelu.min().item()


def test_dobi_per_channel_rows_are_searched_independently():
    torch.manual_seed(0)
    rows = torch.stack([torch.randn(2000), 10 * torch.randn(2000)])
    lower, upper = Dobi().bounds(rows, rows.amin(1), rows.amax(1), levels=7, symmetric=True, activation=False)
    assert upper[1] > 5 * upper[0] and torch.equal(lower, -upper)


def test_unknown_method():
    with pytest.raises(HarmoqError, match="unknown calibration method 'adaround'"):
        make_method("adaround")


@pytest.fixture
def calibrated_pan(shared):
    source = load_model(shared / "weights" / "PANx2_DF2K.pth")
    crops = sample_calibration_crops(shared / "data" / "calib" / "DIV2K_valid_crop256", 4, 24, source.scale, seed=3)
    config = QuantConfig(wbits=3, abits=3)
    model = calibrate(source, config, make_method("dobi"), crops, seed=3, batch_size=2).model
    return source, config, model


def test_calibration_sets_every_quantizer(calibrated_pan):
    _, _, model = calibrated_pan
    qs = quantizers(model)
    assert qs and all(bool(q.calibrated) and q.enabled for q in qs.values())
    assert all((q.bounds()[1] > q.bounds()[0]).all() for q in qs.values())


def test_artifact_round_trip_is_bit_identical(shared, tmp_path, calibrated_pan):
    source, config, model = calibrated_pan
    calib_dir = shared / "data" / "calib" / "DIV2K_valid_crop256"
    out = save_artifact(tmp_path / "art", model, source, config, method_record(make_method("dobi")),
                        describe_calibration(calib_dir, 4, 24, source.scale, 3), seed=3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["sha256"] == source.sha256 and manifest["source"]["architecture"] == "PAN"
    assert manifest["method"] == {"name": "dobi", "settings": {"candidates": 100, "one_sided_ratio": 0.1}}
    entry = next(iter(manifest["quantizers"].values()))
    assert {"bits", "symmetric", "granularity", "lower", "upper"} <= set(entry)
    assert len(manifest["quantizers"]) == len(quantizers(model))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left

    rebuilt = apply_artifact(load_artifact(out), load_model(shared / "weights" / "PANx2_DF2K.pth"))
    x = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_artifact_refuses_another_checkpoint(shared, tmp_path, calibrated_pan):
    source, config, model = calibrated_pan
    out = save_artifact(tmp_path / "art", model, source, config, method_record(make_method("dobi")), {}, seed=3)
    with pytest.raises(HarmoqError, match="calibrated for PANx2_DF2K.pth"):
        apply_artifact(load_artifact(out), load_model(shared / "weights" / "PANx3_DF2K.pth"))


def test_broken_artifacts(tmp_path):
    with pytest.raises(HarmoqError, match="no such calibration artifact"):
        load_artifact(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarmoqError, match="manifest.json is missing"):
        load_artifact(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    (bad / "tensors.safetensors").write_bytes(b"")
    with pytest.raises(HarmoqError, match="unreadable calibration artifact"):
        load_artifact(bad)
