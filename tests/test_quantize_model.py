"""quantize_model and its coverage report on every supported architecture."""

import pytest
import torch

from harmoq_deploy.models import load_model
from harmoq_deploy.quant import (
    QuantConfig,
    QuantConv2d,
    QuantLinear,
    coverage_report,
    quantize_model,
    quantizers,
    set_quantization_enabled,
)

# (checkpoint, architecture, default kinds, the least FLOP share the default coverage must carry)
REAL_MODELS = [
    ("DCTLSA_X2.pt", "DCTLSA", {"linear", "matmul"}, 0.6),
    ("team34_craft.pth", "CRAFT", {"linear", "matmul"}, 0.4),
    ("IMDN_x2.pth", "IMDN", {"conv"}, 0.8),
    ("PANx2_DF2K.pth", "PAN", {"conv"}, 0.6),
]


def _check_coverage(loaded, expected_kinds, min_share, input_size=(32, 32)):
    x = torch.rand(1, 3, *input_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = loaded.module(x)
    model = quantize_model(loaded.module, QuantConfig(wbits=4, abits=4), loaded.layout)
    report = coverage_report(model, input_size)
    assert {op.kind for op in report.ops} == expected_kinds
    assert min_share < report.quantized_share < 1.0
    for prefix in loaded.layout.float_modules:
        assert not any(op.name == prefix or op.name.startswith(prefix + ".") for op in report.ops), prefix
    # With every quantizer bypassed the network is exactly the float one.
    set_quantization_enabled(model, False)
    with torch.no_grad():
        assert torch.equal(model(x), reference)
    return model, report


@pytest.mark.parametrize("name, arch, kinds, min_share", REAL_MODELS)
def test_default_coverage_on_real_checkpoints(shared, name, arch, kinds, min_share):
    loaded = load_model(shared / "weights" / name)
    assert loaded.architecture == arch
    model, report = _check_coverage(loaded, kinds, min_share)
    if "matmul" in kinds:
        # Each attention module quantizes both operands of its two matmuls.
        per_module = {}
        for op in report.ops:
            if op.kind == "matmul":
                owner = op.name.rpartition(".")[0]
                per_module[owner] = per_module.get(owner, 0) + 1
        assert per_module and set(per_module.values()) == {2}


def test_swinir_light_follows_2dquant_coverage(swinir_light_checkpoint):
    loaded = load_model(swinir_light_checkpoint)
    assert (loaded.architecture, loaded.scale) == ("SwinIR", 2)
    model, report = _check_coverage(loaded, {"linear", "matmul"}, 0.7)
    kinds = report.by_kind()
    # 4 groups x 6 blocks: qkv, proj, fc1, fc2 each, and q@k^T, attn@v with both inputs quantized.
    assert kinds["linear"][0] == 24 * 4 and kinds["matmul"][0] == 24 * 2
    assert len(quantizers(model)) == 24 * 4 * 2 + 24 * 2 * 2
    assert not any(isinstance(m, QuantConv2d) for m in model.modules())


def test_conv_option_adds_body_convs_but_keeps_first_conv_and_upsampler_float(shared):
    loaded = load_model(shared / "weights" / "DCTLSA_X2.pt")
    model = quantize_model(loaded.module, QuantConfig(wbits=4, abits=4, layers=("linear", "matmul", "conv")),
                           loaded.layout)
    convs = {name for name, m in model.named_modules() if isinstance(m, QuantConv2d)}
    assert convs and "fea_conv" not in convs and not any(n.startswith("upsampler") for n in convs)
    assert "LR_conv" in convs
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert linears and all(m.weight_quantizer.per_channel and m.weight_quantizer.bits == 4 for m in linears)


def test_skip_keeps_named_modules_float(shared):
    loaded = load_model(shared / "weights" / "IMDN_x2.pth")
    model = quantize_model(loaded.module, QuantConfig(wbits=3, abits=3, skip=("IMDB1",)), loaded.layout)
    names = [n for n, m in model.named_modules() if isinstance(m, QuantConv2d)]
    assert names and not any(n.startswith("IMDB1.") for n in names)
    assert any(n.startswith("IMDB2.") for n in names)


def test_weights_are_shared_not_copied(shared):
    loaded = load_model(shared / "weights" / "PANx2_DF2K.pth")
    before = {n: p.data_ptr() for n, p in loaded.module.named_parameters()}
    model = quantize_model(loaded.module, QuantConfig(wbits=4, abits=4), loaded.layout)
    after = {n: p.data_ptr() for n, p in model.named_parameters() if not n.endswith(("lower", "upper"))}
    assert after == before
