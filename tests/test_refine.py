"""Bound refinement by distillation: it lowers the loss, freezes weights unless told to refine them, and resumes exactly."""

import pytest
import torch

from harmoq_deploy.calibrate import calibrate, make_method
from harmoq_deploy.calibrate import refine as refine_module
from harmoq_deploy.calibrate.refine import RefineSettings, Teacher, feature_modules, refine_bounds
from harmoq_deploy.data import sample_calibration_crops
from harmoq_deploy.errors import HarmoqError
from harmoq_deploy.models import load_model
from harmoq_deploy.quant import QuantConfig, quantizers


@pytest.fixture
def dobi_pan(shared):
    # asymmetric weight grids: the rate-scaling factors below are stated for their step counts (2^bits - 1)
    def build(bits=3):
        source = load_model(shared / "weights" / "PANx2_DF2K.pth")
        crops = sample_calibration_crops(shared / "data" / "calib" / "DIV2K_valid_crop256", 6, 24, 2, seed=0)
        config = QuantConfig(wbits=bits, abits=bits, target="any")
        model = calibrate(source, config, make_method("dobi"), crops, batch_size=3).model
        return source, model, crops
    return build


def held_out_loss(model, pattern, crops):
    return Teacher(model, crops, pattern).judge(model, 5.0)


def test_feature_taps_are_the_residual_groups(dobi_pan):
    source, model, _ = dobi_pan()
    assert list(feature_modules(model, source.layout.feature_taps)) == [f"SCPA_trunk.{i}" for i in range(16)]


def test_refinement_lowers_the_held_out_distillation_loss_and_freezes_weights(shared, dobi_pan):
    source, model, crops = dobi_pan()
    held_out = sample_calibration_crops(shared / "data" / "calib" / "DIV2K_valid_crop256", 4, 24, 2, seed=99)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not n.endswith(("lower", "upper"))}
    before = held_out_loss(model, source.layout.feature_taps, held_out)
    refine_bounds(model, crops, source.layout.feature_taps, RefineSettings(iters=40, batch=3), seed=0)
    after = held_out_loss(model, source.layout.feature_taps, held_out)
    assert after < 0.9 * before
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights)
    assert all(p.requires_grad for n, p in model.named_parameters() if n in weights)


def test_bias_refinement_moves_only_the_quantized_layers_biases_and_lowers_the_loss(dobi_pan):
    source, model, crops = dobi_pan()
    quantized = {n for n, m in model.named_modules() if hasattr(m, "weight_quantizer")}
    biases = {f"{n}.bias" for n in quantized if getattr(model.get_submodule(n), "bias", None) is not None}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()
              if not n.endswith(("lower", "upper")) and n not in biases}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if n in biases}
    losses = refine_bounds(model, crops, source.layout.feature_taps,
                           RefineSettings(iters=20, batch=3, bias_lr=1e-3), seed=0)
    assert biases and all(not torch.equal(p, start[n]) for n, p in model.named_parameters() if n in biases)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert sum(losses[-5:]) < sum(losses[:5])


def test_weight_refinement_moves_only_the_quantized_layers_weights_and_codes_and_lowers_the_loss(dobi_pan):
    source, model, crops = dobi_pan()
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "weight_quantizer")}
    weights = {f"{n}.weight" for n in layers}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()
              if not n.endswith(("lower", "upper")) and n not in weights}
    codes_before = {n: m.weight_quantizer(m.weight).detach().clone() for n, m in layers.items()}
    losses = refine_bounds(model, crops, source.layout.feature_taps,
                           RefineSettings(iters=20, batch=3, lr=0.0, weight_lr=1e-3), seed=0)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    # with the bounds held still (lr 0), only a weight crossing a rounding threshold changes a deployed value
    assert any(not torch.equal(m.weight_quantizer(m.weight), codes_before[n]) for n, m in layers.items())
    assert sum(losses[-5:]) < sum(losses[:5])


@pytest.mark.parametrize("bits, by_width, factor", [(2, True, 7 / 3), (4, True, 7 / 15), (2, False, 1.0)])
def test_the_weights_rate_is_scaled_to_the_grid_width(dobi_pan, bits, by_width, factor):
    source, model, crops = dobi_pan(bits)
    weights = {f"{n}.weight" for n, m in model.named_modules() if hasattr(m, "weight_quantizer")}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if n in weights}
    refine_bounds(model, crops, source.layout.feature_taps,
                  RefineSettings(iters=1, batch=3, lr=0.0, weight_lr=1e-3, weight_lr_by_width=by_width), seed=0)
    # Adam's first step moves every parameter with a gradient by its rate, whatever the gradient's size
    moved = max((p - start[n]).abs().max().item() for n, p in model.named_parameters() if n in weights)
    assert moved == pytest.approx(1e-3 * factor, rel=1e-3)


@pytest.mark.parametrize("weight_bound_lr", [0.0, 1e-3])
def test_the_weight_quantizers_bounds_have_their_own_rate(dobi_pan, weight_bound_lr):
    source, model, crops = dobi_pan()
    start = {n: (q.lower.detach().clone(), q.upper.detach().clone()) for n, q in quantizers(model).items()}
    refine_bounds(model, crops, source.layout.feature_taps,
                  RefineSettings(iters=1, batch=3, lr=1e-2, weight_bound_lr=weight_bound_lr), seed=0)

    def moved(weights: bool) -> float:
        return max((b - s).abs().max().item() for n, q in quantizers(model).items() if n.endswith("weight_quantizer") == weights
                   for b, s in zip((q.lower, q.upper), start[n]))

    # Adam's first step moves every bound with a gradient by its rate
    assert moved(weights=False) == pytest.approx(1e-2, rel=1e-3)
    assert moved(weights=True) == pytest.approx(weight_bound_lr, rel=1e-3, abs=1e-9)


def test_an_interrupted_run_resumes_to_the_same_bounds(tmp_path, dobi_pan):
    settings = RefineSettings(iters=12, batch=2, checkpoint_every=4)
    source, reference, crops = dobi_pan()
    refine_bounds(reference, crops, source.layout.feature_taps, settings, seed=5)

    source, model, crops = dobi_pan()
    checkpoint = tmp_path / "refine.pt"

    def interrupt(i):
        if i == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        refine_bounds(model, crops, source.layout.feature_taps, settings, seed=5, checkpoint=checkpoint,
                      between_steps=interrupt)
    assert torch.load(checkpoint, weights_only=True)["done"] == 4
    source, resumed, crops = dobi_pan()
    losses = refine_bounds(resumed, crops, source.layout.feature_taps, settings, seed=5, checkpoint=checkpoint)
    assert len(losses) == 8
    expected = {n: q.bounds() for n, q in quantizers(reference).items()}
    for name, q in quantizers(resumed).items():
        assert all(torch.equal(a, b) for a, b in zip(q.bounds(), expected[name])), name

    with pytest.raises(HarmoqError, match="different run"):
        refine_bounds(resumed, crops, source.layout.feature_taps, RefineSettings(iters=99), checkpoint=checkpoint)


def test_refinement_never_squeezes_a_range_below_its_floor(dobi_pan):
    source, model, crops = dobi_pan()
    start = {name: (q.bounds()[1] - q.bounds()[0]).detach().clone() for name, q in quantizers(model).items()}
    refine_bounds(model, crops, source.layout.feature_taps, RefineSettings(iters=4, batch=2, lr=10.0), seed=0)
    for name, q in quantizers(model).items():
        width = q.bounds()[1] - q.bounds()[0]
        assert (width >= refine_module.MIN_RANGE_FRACTION * start[name] * (1 - 1e-3)).all(), name


def test_a_diverging_refinement_stops_with_a_one_line_error(dobi_pan, monkeypatch):
    source, model, crops = dobi_pan()
    poisoned = refine_module.distillation_loss
    monkeypatch.setattr(refine_module, "distillation_loss", lambda *args: poisoned(*args) * float("nan"))
    with pytest.raises(HarmoqError, match="diverged at iteration 1"):
        refine_bounds(model, crops, source.layout.feature_taps, RefineSettings(iters=3, batch=2), seed=0)
