"""HarmoQ's steps keep their contracts; 2DQuant and HarmoQ artifacts round-trip and resume."""

import pytest
import torch

from harmoq_deploy.calibrate import HarmoQ, TwoDQuant, apply_artifact, calibrate, load_artifact, method_record, \
    save_artifact
from harmoq_deploy.calibrate import methods as methods_module
from harmoq_deploy.calibrate import refine as refine_module
from harmoq_deploy.calibrate.baselines import Dobi
from harmoq_deploy.calibrate.bounds import initialise_bounds, set_weight_bounds
from harmoq_deploy.calibrate.hso import apply_scale, closed_form_scale, find_fold_groups, record_inputs
from harmoq_deploy.calibrate.observe import observe_activations
from harmoq_deploy.calibrate.refine import Teacher
from harmoq_deploy.calibrate.src import layer_rows, round_with_feedback, rounding_factor, solve_correction, \
    structural_objective, structural_residual_calibration
from harmoq_deploy.data import sample_calibration_crops
from harmoq_deploy.models import load_model
from harmoq_deploy.quant import QuantConfig, quantize_model, set_quantization_enabled


def _crops(shared, count, seed, patch=24, scale=2):
    return sample_calibration_crops(shared / "data" / "calib" / "DIV2K_valid_crop256", count, patch, scale, seed=seed)


def _dobi(source, crops, config):
    model = quantize_model(source.module, config, source.layout)
    initialise_bounds(model, Dobi(), observe_activations(model, crops, batch_size=4))
    return model


def _layer_inputs(model, name, crops):
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, i: seen.append(i[0].detach()))
    with torch.no_grad():
        model(crops)
    handle.remove()
    return seen[0]


def _imdn_layers_on_train_and_held_out_crops(shared, bits):
    """Three IMDN x2 body layers at DOBI bounds, each with its inputs on training and on held-out crops."""
    model = _dobi(load_model(shared / "weights" / "IMDN_x2.pth"), _crops(shared, 8, 0), QuantConfig(wbits=bits, abits=bits))
    for name in ("IMDB1.c1", "IMDB3.c3", "IMDB6.c5"):
        yield (model.get_submodule(name), _layer_inputs(model, name, _crops(shared, 8, 0)),
               _layer_inputs(model, name, _crops(shared, 8, 1)))


def test_src_lowers_its_objective_on_held_out_crops(shared):
    for layer, train, held_out in _imdn_layers_on_train_and_held_out_crops(shared, bits=3):
        with torch.no_grad():
            q = layer.input_quantizer(train)
            correction = solve_correction(layer.weight, layer_rows(layer, q, True), layer_rows(layer, q - train, True),
                                          ridge=0.05)
        assert structural_objective(layer, held_out, correction) < structural_objective(layer, held_out)


def test_rounding_with_feedback_lowers_the_output_error_of_nearest_rounding_on_held_out_crops(shared):
    for layer, train, held_out in _imdn_layers_on_train_and_held_out_crops(shared, bits=2):
        with torch.no_grad():
            factor = rounding_factor(layer_rows(layer, layer.input_quantizer(train), False), damping=0.01)
            rounded = round_with_feedback(layer.weight, layer.weight_quantizer, factor)
            nearest = layer.weight_quantizer(layer.weight)
            assert torch.allclose(layer.weight_quantizer(rounded), rounded, atol=1e-6), "rounded onto the grid"
            rows = layer_rows(layer, layer.input_quantizer(held_out), False)

            def output_error(quantized):
                return (rows @ (layer.weight - quantized).reshape(len(quantized), -1).T).pow(2).mean()

            assert output_error(rounded) < 0.8 * output_error(nearest)


def test_src_keeps_rounded_candidates_where_they_win_and_their_weights_stay_on_the_grid(shared):
    source = load_model(shared / "weights" / "IMDN_x2.pth")
    crops = _crops(shared, 8, 0)
    model = _dobi(source, crops, QuantConfig(wbits=2, abits=2))
    reset = lambda layer: set_weight_bounds(layer.weight_quantizer, layer.weight, Dobi())  # noqa: E731
    chosen = structural_residual_calibration(model, crops, (0.05, 0.2, 1.0), reset, rounding_damping=0.01)
    rounded = [name for name, label in chosen.items() if label.endswith("round")]
    assert rounded, chosen
    for name in rounded:
        layer = model.get_submodule(name)
        with torch.no_grad():
            assert torch.allclose(layer.weight_quantizer(layer.weight), layer.weight, atol=1e-6)


def test_hso_folds_leave_the_float_function_unchanged(swinir_light_checkpoint):
    source = load_model(swinir_light_checkpoint)
    model = quantize_model(source.module, QuantConfig(wbits=3, abits=3), source.layout)
    probe = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    set_quantization_enabled(model, False)
    groups = find_fold_groups(model, probe[:1])
    record_inputs(model, groups, probe)
    # LayerNorm -> qkv and LayerNorm -> fc1 in each of the 24 blocks; nothing across a residual add
    assert len(groups) == 48
    assert all(g.producer.endswith(("norm1", "norm2")) for g in groups)
    with torch.no_grad():
        before = model(probe)
        for group in groups:
            apply_scale(model, group, closed_form_scale(model, group, 0.5))
        after = model(probe)
    assert (after - before).norm() / before.norm() < 1e-5
    assert any((g.scale - 1).abs().max() > 0.1 for g in groups)


def test_abr_lowers_the_distillation_loss(shared):
    source = load_model(shared / "weights" / "PANx2_DF2K.pth")
    crops = _crops(shared, 8, 0)
    calibrated = calibrate(source, QuantConfig(wbits=3, abits=3), HarmoQ(iters=20, batch=4, src=False, hso=False),
                           crops)
    (abr,) = calibrated.steps
    assert abr.name == "abr" and abr.detail["iterations_run"] == 20
    dobi = _dobi(load_model(shared / "weights" / "PANx2_DF2K.pth"), crops, QuantConfig(wbits=3, abits=3))
    held_out = Teacher(dobi, _crops(shared, 4, 9), source.layout.feature_taps)
    assert held_out.judge(calibrated.model, 5.0) < 0.9 * held_out.judge(dobi, 5.0)


@pytest.fixture
def harmoq_imdn(shared):
    def build(**settings):
        source = load_model(shared / "weights" / "IMDN_x2.pth")
        config = QuantConfig(wbits=3, abits=3)
        method = HarmoQ(**{"iters": 6, "batch": 2, "src_crops": 4, "hso_crops": 2, "guard_crops": 4,
                           "hso_resolves": 2, **settings})
        return source, config, method
    return build


def test_harmoq_artifact_round_trip_restores_corrected_weights(shared, tmp_path, harmoq_imdn):
    source, config, method = harmoq_imdn()
    assert method.bias_lr > 0 and method.weight_lr > 0, "the round trip must carry the biases and weights ABR refined"
    crops = _crops(shared, 6, 0)
    calibrated = calibrate(source, config, method, crops)
    assert [s.name for s in calibrated.steps] == ["hso", "src", "abr"]
    assert calibrated.corrected_weights, "SRC changes weights"
    out = save_artifact(tmp_path / "art", calibrated.model, source, config, method_record(method, calibrated),
                        {}, seed=0, corrected_weights=calibrated.corrected_weights, scales=calibrated.scales)
    artifact = load_artifact(out)
    assert artifact.manifest["method"]["name"] == "harmoq"
    assert [s["name"] for s in artifact.manifest["method"]["steps"]] == ["hso", "src", "abr"]
    rebuilt = apply_artifact(artifact, load_model(shared / "weights" / "IMDN_x2.pth"))
    probe = crops[:2]
    with torch.no_grad():
        assert torch.equal(rebuilt(probe), calibrated.model(probe))


def test_harmoq_refines_towards_the_float_model_not_the_corrected_one(shared, harmoq_imdn, monkeypatch):
    crops = _crops(shared, 6, 0)
    teachers = []
    real_refine = methods_module.refine_bounds
    monkeypatch.setattr(methods_module, "refine_bounds",
                        lambda *a, **kw: teachers.append(kw["teacher"]) or real_refine(*a, **kw))
    source, config, method = harmoq_imdn(hso=False, guard_iters=2)
    calibrated = calibrate(source, config, method, crops)
    float_model = load_model(shared / "weights" / "IMDN_x2.pth").module

    def relative(out, inputs):
        with torch.no_grad():
            float_out = float_model(inputs)
        return ((out - float_out).norm() / float_out.norm()).item()

    set_quantization_enabled(calibrated.model, False)
    with torch.no_grad():
        corrected_out = calibrated.model(crops)
    assert calibrated.corrected_weights and relative(corrected_out, crops) > 1e-3, "SRC moved the float function"
    assert len(teachers) == 5, "the guard's two short refinements, the two weight-grid rate trials and ABR"
    assert all(relative(t.outputs, t.crops) < 1e-6 for t in teachers)


def test_harmoq_guard_judges_a_state_after_a_short_refinement_on_other_crops(shared, harmoq_imdn):
    source, config, method = harmoq_imdn(iters=8, guard_iters=8)
    crops = _crops(shared, 8, 0)
    model = _dobi(source, crops, config)
    held_out, fit = methods_module.split_crops(crops, method.guard_crops, 0)
    judge = methods_module._HeldOutJudge(method, model, held_out, fit, source.layout.feature_taps, 0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    judged = judge(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), "the judge restores the state"
    immediate = Teacher(model, held_out, source.layout.feature_taps).judge(model, method.feature_weight)
    assert judged < immediate, "8 refinement iterations on the fit crops lower the loss on the held-out ones"
    assert not any(torch.equal(c, h) for c in judge.fit_teacher.crops for h in held_out)

    unrefined = methods_module._HeldOutJudge(harmoq_imdn(guard_iters=8, abr=False)[2], model, held_out, fit,
                                             source.layout.feature_taps, 0)
    assert unrefined(model) == pytest.approx(immediate), "without ABR nothing refines the steps' result"


def test_harmoq_guards_hand_the_kept_state_loss_to_the_next_step(shared, harmoq_imdn):
    source, config, method = harmoq_imdn(guard_iters=2)
    hso, src, _ = calibrate(source, config, method, _crops(shared, 6, 0)).steps
    assert hso.detail["judged_after_iters"] == src.detail["judged_after_iters"] == 2
    assert src.loss_before == (hso.loss_after if hso.applied else hso.loss_before)


def test_harmoq_does_not_judge_a_step_that_changed_nothing(shared, harmoq_imdn, monkeypatch):
    refinements = []
    real_refine = methods_module.refine_bounds
    monkeypatch.setattr(methods_module, "refine_bounds", lambda *a, **kw: refinements.append(1) or real_refine(*a, **kw))
    monkeypatch.setattr(methods_module, "find_fold_groups", lambda *a: [])
    source, config, method = harmoq_imdn(src=False, guard_iters=2)
    hso, _ = calibrate(source, config, method, _crops(shared, 6, 0)).steps
    assert not hso.applied and hso.loss_before == hso.loss_after and hso.detail["scaled"] == 0
    assert len(refinements) == 4, "the DOBI state's judgment, the two weight-grid rate trials and ABR"


def test_harmoq_moves_the_weight_grids_at_the_rate_its_trials_judge_best(shared, harmoq_imdn):
    crops = _crops(shared, 6, 0)
    source, config, method = harmoq_imdn(weight_bound_lrs=(0.0, 1e-2), rate_trial_iters=3)
    tried = calibrate(source, config, method, crops)
    abr = tried.steps[-1].detail
    trials = abr["weight_bound_lr_trials"]
    assert set(trials) == {"0.0", "0.01"} and trials["0.0"] != trials["0.01"]
    assert str(abr["weight_bound_lr"]) == min(trials, key=trials.get)

    source, config, untried = harmoq_imdn(weight_bound_lrs=(abr["weight_bound_lr"],), rate_trial_iters=3)
    direct = calibrate(source, config, untried, crops)
    assert direct.steps[-1].detail["weight_bound_lr_trials"] == {}, "a single rate is not tried"
    direct_state = direct.model.state_dict()
    assert all(torch.equal(v, direct_state[k]) for k, v in tried.model.state_dict().items()), \
        "the trials leave no trace: the same model as refining at the chosen rate alone"


def test_harmoq_resumes_an_interrupted_refinement_exactly(shared, tmp_path, harmoq_imdn, monkeypatch):
    crops = _crops(shared, 6, 0)
    source, config, method = harmoq_imdn()
    reference = calibrate(source, config, method, crops).model

    real_settings = methods_module.RefineSettings
    monkeypatch.setattr(methods_module, "RefineSettings", lambda **kw: real_settings(checkpoint_every=2, **kw))
    real_step = refine_module.Teacher.loss
    checkpoint = tmp_path / "ckpt.pt"

    def failing_step(*args, **kwargs):
        if checkpoint.is_file():  # the first step of ABR after its first checkpoint (the guards' refinements keep none)
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(refine_module.Teacher, "loss", failing_step)
    source, config, method = harmoq_imdn()
    with pytest.raises(KeyboardInterrupt):
        calibrate(source, config, method, crops, checkpoint=checkpoint)
    assert checkpoint.is_file()
    monkeypatch.setattr(refine_module.Teacher, "loss", real_step)
    source, config, method = harmoq_imdn()
    resumed = calibrate(source, config, method, crops, checkpoint=checkpoint).model
    reference_state, resumed_state = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(reference_state[k], resumed_state[k]) for k in reference_state)


def test_two_dquant_refines_bounds_only(shared):
    source = load_model(shared / "weights" / "PANx2_DF2K.pth")
    weights = {n: p.detach().clone() for n, p in source.module.named_parameters()}
    calibrated = calibrate(source, QuantConfig(wbits=2, abits=2), TwoDQuant(iters=4, batch=2), _crops(shared, 4, 0))
    assert calibrated.corrected_weights == {}
    assert all(torch.equal(p, weights[n]) for n, p in calibrated.model.named_parameters() if n in weights)


@pytest.mark.parametrize(("rates", "kinds"), [(dict(bias_lr=1e-3), {"bias"}),
                                              (dict(bias_lr=1e-3, weight_lr=1e-3), {"bias", "weight"})])
def test_two_dquant_controls_report_the_parameters_they_moved(shared, rates, kinds):
    source = load_model(shared / "weights" / "PANx2_DF2K.pth")
    weights = {n: p.detach().clone() for n, p in source.module.named_parameters()}
    calibrated = calibrate(source, QuantConfig(wbits=2, abits=2), TwoDQuant(iters=4, batch=2, **rates),
                           _crops(shared, 4, 0))
    moved = {n for n, p in calibrated.model.named_parameters() if n in weights and not torch.equal(p, weights[n])}
    assert {n.rsplit(".", 1)[1] for n in moved} == kinds
    assert set(calibrated.corrected_weights) == moved


def test_tensorrt_target_constrains_the_grids(swinir_light_checkpoint):
    source = load_model(swinir_light_checkpoint)
    model = quantize_model(source.module, QuantConfig(wbits=3, abits=3, target="tensorrt"), source.layout)
    for name, q in model.named_modules():
        if name.endswith("weight_quantizer"):
            assert q.symmetric and q.per_channel
        elif name.endswith("input_quantizer"):
            assert not q.symmetric, "the exporter restores activation offsets exactly"
    matmul_operands = [q for n, q in model.named_modules() if ".harmoq_matmuls.pairs." in n and hasattr(q, "bits")]
    assert matmul_operands and not any(q.symmetric for q in matmul_operands)


def test_src_corrects_linears_inside_attention_modules(swinir_light_checkpoint):
    source = load_model(swinir_light_checkpoint)
    crops = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = _dobi(source, crops, QuantConfig(wbits=3, abits=3))
    reset = lambda layer: set_weight_bounds(layer.weight_quantizer, layer.weight, Dobi())  # noqa: E731
    chosen = structural_residual_calibration(model, crops, (0.05, 0.2, 1.0), reset)
    assert any(name.endswith("attn.qkv") for name in chosen), "qkv runs inside WindowAttention's matmul mode"
    with torch.no_grad():
        assert torch.isfinite(model(crops)).all()


def test_harmoq_artifact_of_a_transformer_round_trips(swinir_light_checkpoint, tmp_path):
    source = load_model(swinir_light_checkpoint)
    crops = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    config, method = QuantConfig(wbits=3, abits=3), HarmoQ(iters=2, batch=2, src_crops=2, hso_crops=2, guard_crops=2)
    calibrated = calibrate(source, config, method, crops)
    assert not any(".harmoq_matmuls." in name for name in calibrated.corrected_weights), "bounds are not weights"
    out = save_artifact(tmp_path / "art", calibrated.model, source, config, method_record(method, calibrated), {},
                        seed=0, corrected_weights=calibrated.corrected_weights, scales=calibrated.scales)
    rebuilt = apply_artifact(load_artifact(out), load_model(swinir_light_checkpoint))
    with torch.no_grad():
        assert torch.equal(rebuilt(crops[:1]), calibrated.model(crops[:1]))
