"""Layouts inferred from the network itself: every architecture gets real coverage or is refused,
the inferred layout agrees with the hand-written ones, and the exporter's Q/DQ matches PyTorch on
the ops these architectures use (PReLU, LeakyReLU, grouped convs, transposed convs, pixel-unshuffle)."""

import numpy as np
import pytest
import torch
from torch import nn

from harmoq_deploy.calibrate import calibrate, make_method
from harmoq_deploy.calibrate.refine import feature_modules
from harmoq_deploy.engine import OnnxRuntimeRunner
from harmoq_deploy.engine.validate import DecisionStats, forced_decisions, with_code_outputs
from harmoq_deploy.errors import HarmoqError
from harmoq_deploy.export import point_grids, to_qdq_graph
from harmoq_deploy.models import LoadedModel, arch_layout, infer_layout, load_model
from harmoq_deploy.models.zoo import ZOO, random_instance, save_random_checkpoint
from harmoq_deploy.quant import QuantConfig, QuantConv2d, QuantLinear, coverage_report, quantize_model
from harmoq_deploy.quant.matmul import MatmulQuantizers

# what the FLOP split picks for each tiny instance (HAT's tiny config is conv-heavy; HAT-S is not)
TINY_KINDS = {"ESRGAN": {"conv"}, "Compact": {"conv"}, "SPAN": {"conv"}, "PLKSR": {"conv"}, "RealCUGAN": {"conv"},
              "SwinIR": {"linear", "matmul"}, "HAT": {"conv", "matmul"}, "DAT": {"linear", "matmul"},
              "OmniSR": {"conv", "matmul"}}


def _covered(model: nn.Module) -> tuple[set[str], dict[str, int]]:
    """The names of the quantized layers, and the number of quantized products per owner module."""
    layers = {n for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}
    products = {n.rpartition(".")[0]: len(m.pairs) for n, m in model.named_modules()
                if isinstance(m, MatmulQuantizers) and len(m.pairs)}
    return layers, products


def _both(path, config=QuantConfig(wbits=4, abits=4)):
    """The same checkpoint quantized with its hand-written layout and with the inferred one."""
    source = load_model(path)
    hand = arch_layout(source.architecture)
    inferred = infer_layout(source.module, source.architecture)
    assert hand is not None and inferred.inferred
    copy = copy_module(source.module)
    return (quantize_model(source.module, config, hand), hand), (quantize_model(copy, config, inferred), inferred)


def copy_module(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


def _taps(model, layout) -> set[str]:
    return set(feature_modules(model, layout.feature_taps))


@pytest.mark.parametrize("name", ["IMDN_x2.pth", "PANx4_DF2K.pth", "DCTLSA_X2.pt"])
def test_inferred_layout_covers_the_hand_written_ops_and_taps(shared, name):
    (hand_model, hand), (inferred_model, inferred) = _both(shared / "weights" / name)
    assert _covered(inferred_model) == _covered(hand_model)
    assert _taps(inferred_model, inferred) == _taps(hand_model, hand) and _taps(hand_model, hand)


def test_inferred_layout_of_swinir_light(swinir_light_checkpoint):
    """SwinIR-light: the same quantized ops and taps as the hand-written layout (the differences
    in float_modules name convs that pixelshuffledirect does not have)."""
    (hand_model, hand), (inferred_model, inferred) = _both(swinir_light_checkpoint)
    assert _covered(inferred_model) == _covered(hand_model)
    assert _taps(inferred_model, inferred) == _taps(hand_model, hand)


def test_inferred_layout_of_craft_differs_only_in_the_flop_split(shared):
    """CRAFT's convs carry more FLOPs than its Linear layers and attention products, so the inferred
    default is conv + products where the hand-written one follows 2DQuant (linear + products): with
    the kinds named, the two cover identical ops; position-bias MLPs (constant input) stay float."""
    source = load_model(shared / "weights" / "team34_craft.pth")
    float_copy = copy_module(source.module)
    (hand_model, hand), (inferred_model, inferred) = _both(source.path, QuantConfig(wbits=4, abits=4,
                                                                                   layers=("linear", "matmul")))
    assert inferred.layers == ("conv", "matmul") and inferred.excluded_modules == ("DynamicPosBias",)
    assert _covered(inferred_model) == _covered(hand_model)
    assert _taps(inferred_model, inferred) == _taps(hand_model, hand)
    kinds = coverage_report(quantize_model(float_copy, QuantConfig(wbits=4, abits=4), inferred), (32, 32)).by_kind()
    assert set(kinds) == {"conv", "matmul"} and kinds["conv"][1] > 0.3


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return {name: save_random_checkpoint(name, folder / f"{name}.pth", tiny=True) for name in ZOO}


@pytest.mark.parametrize("name", list(ZOO))
def test_every_deployed_architecture_gets_real_coverage(tiny_checkpoints, name):
    source = load_model(tiny_checkpoints[name])
    layout = source.layout
    if name != "SwinIR":  # SwinIR keeps its hand-written layout
        assert layout.inferred and layout.architecture == source.architecture
    model = quantize_model(source.module, QuantConfig(wbits=4, abits=4), layout)
    report = coverage_report(model, (32, 32))
    assert {op.kind for op in report.ops} == TINY_KINDS[name]
    assert 0.1 < report.quantized_share < 1.0
    first_layer = model.get_submodule(layout.float_modules[0])
    assert isinstance(first_layer, nn.Conv2d) and not isinstance(first_layer, QuantConv2d)
    assert not any(isinstance(m, QuantConv2d) and isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    if name != "Compact":  # a plain conv stack has no repeated blocks to tap
        assert len(_taps(model, layout)) >= 2


def test_the_output_tail_and_first_conv_stay_float():
    layout = infer_layout(random_instance("ESRGAN", tiny=True))
    # RRDBNet: conv_first, then after the RRDB trunk two nearest-upsampling convs, the HR conv and the last conv
    assert layout.float_modules == ("model.0", "model.3", "model.6", "model.8", "model.10")
    assert layout.feature_taps == r"model\.1\.sub\.0|model\.1\.sub\.1"
    compact = infer_layout(random_instance("Compact", tiny=True))
    assert compact.float_modules == ("body.0", "body.10") and compact.layers == ("conv",)


def test_pixel_unshuffle_input_keeps_the_conv_after_it_float():
    from harmoq_deploy.models.zoo import _esrgan

    torch.manual_seed(0)
    net = _esrgan(in_nc=12, num_filters=16, num_blocks=2, scale=2, shuffle_factor=2).eval()
    layout = infer_layout(net)
    assert layout.float_modules[0] == "model.0" and net.get_submodule("model.0").in_channels == 12


def test_a_network_with_nothing_to_quantize_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2)).eval()
    source = LoadedModel(net, 2, "TinyShuffle", None, "")
    with pytest.raises(HarmoqError, match="TinyShuffle: nothing to quantize"):
        quantize_model(net, QuantConfig(wbits=4, abits=4), source.layout)
    imdn_like = random_instance("Compact", tiny=True)
    with pytest.raises(HarmoqError, match="nothing to quantize"):
        quantize_model(imdn_like, QuantConfig(wbits=4, abits=4, layers=("linear",)))


def test_products_outside_attention_classes_and_einsum_are_quantized():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.a, self.b, self.tail = (nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1),
                                                    nn.Conv2d(8, 8, 1), nn.Conv2d(8, 12, 3, padding=1))
            self.shuffle = nn.PixelShuffle(2)

        def forward(self, x):
            f = self.head(x)
            a, b = self.a(f).flatten(2), self.b(f).flatten(2)
            mixed = torch.einsum("bci,bdi->bcd", a, b).softmax(-1) @ b  # two products, in the root's forward
            return self.shuffle(self.tail(mixed.view_as(f) + f))

    net = Gate().eval()
    layout = infer_layout(net)
    # the products carry more FLOPs than the 1x1 convs: the FLOP split picks products (+ linears)
    assert layout.attention_modules == ("Gate",) and layout.layers == ("linear", "matmul")
    model = quantize_model(net, QuantConfig(wbits=4, abits=4), layout)
    assert _covered(model) == (set(), {"": 2})
    report = coverage_report(model, (16, 16))
    assert [op.kind for op in report.ops] == ["matmul", "matmul"] and all(op.flops > 0 for op in report.ops)


def _tiny(name: str) -> nn.Module:
    if name != "ESRGAN-unshuffle":
        return random_instance(name, tiny=True)
    from harmoq_deploy.models.zoo import _esrgan

    torch.manual_seed(0)
    return _esrgan(in_nc=12, num_filters=16, num_blocks=2, scale=2, shuffle_factor=2).eval()


def _calibrated_tiny(name: str, tile: int):
    source = load_model_from_module(_tiny(name), name)
    crops = torch.rand(4, 3, tile, tile, generator=torch.Generator().manual_seed(0))
    return calibrate(source, QuantConfig(wbits=4, abits=4), make_method("minmax"), crops).model, crops


def load_model_from_module(module: nn.Module, name: str) -> LoadedModel:
    return LoadedModel(module, ZOO[name].scale if name in ZOO else 2, name, None, "")


# Compact: PReLU; ESRGAN and RealCUGAN: LeakyReLU (RealCUGAN's transposed convs stay float);
# PLKSR: grouped convs; OmniSR: depthwise convs and einsum attention; SPAN: re-parameterised convs;
# ESRGAN-unshuffle: a pixel-unshuffled input (RRDBNet x2)
@pytest.mark.parametrize("name", ["Compact", "ESRGAN", "RealCUGAN", "PLKSR", "OmniSR", "SPAN", "ESRGAN-unshuffle"])
def test_qdq_graph_matches_fake_quant_on_deployed_ops(name):
    tile = 32
    model, crops = _calibrated_tiny(name, tile)
    graph = to_qdq_graph(model, tile)
    probed, names = with_code_outputs(graph)
    outputs = OnnxRuntimeRunner(probed).run_all(crops[:1].numpy())
    stats = DecisionStats()
    with torch.no_grad(), forced_decisions(model, point_grids(model), dict(zip(names, outputs[1:])), stats):
        ours = model(crops[:1]).numpy()
    assert np.abs(outputs[0] - ours).max() < 1e-4
    assert stats.codes > 0 and stats.only_ties, stats


def test_a_default_calibration_exports(tmp_path, capsys):
    """calibrate with every grid option left at its default, then export: the defaults fit together
    (symmetric weights), and calibrate says what it quantized."""
    from PIL import Image

    from conftest import run_cli

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    model = save_random_checkpoint("Compact", tmp_path / "compact.pth", tiny=True)
    code, out, err = run_cli(["calibrate", "--model", model, "--method", "minmax", "--bits", "4", "--calib", calib,
                              "--crops", "2", "--patch", "16", "-o", tmp_path / "artifact"], capsys)
    assert code == 0, err
    assert "Compact: quantized: 4 ops (4 conv)" in out
    code, out, err = run_cli(["export", "--artifact", tmp_path / "artifact", "--tile", "16", "-o",
                              tmp_path / "compact.onnx"], capsys)
    assert code == 0, err
    assert "TensorRT rules: pass" in out and (tmp_path / "compact.onnx").is_file()
