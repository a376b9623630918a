"""Q/DQ export: TensorRT's rules, exact offsets, decision-matched parity with PyTorch, tiling, dynamic shapes."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from harmoq_deploy.calibrate import calibrate, make_method
from harmoq_deploy.data import sample_calibration_crops
from harmoq_deploy.engine import OnnxRuntimeRunner, Tiling, TorchRunner, run_tiled
from harmoq_deploy.engine.validate import DecisionStats, forced_decisions, with_code_outputs
from harmoq_deploy.errors import HarmoqError
from harmoq_deploy.export import check_dynamic_support, check_trt_rules, point_grids, to_qdq_graph, trt_rule_violations
from harmoq_deploy.models import load_model
from harmoq_deploy.quant import QuantConfig


def _calibrated(path, shared, bits=3, crops=4, patch=32):
    source = load_model(path)
    data = sample_calibration_crops(shared / "data" / "calib" / "DIV2K_valid_crop256", crops, patch, source.scale, 0)
    config = QuantConfig(wbits=bits, abits=bits, target="tensorrt")
    return calibrate(source, config, make_method("minmax"), data).model, data


@pytest.fixture(scope="module")
def imdn(request):
    from harmoq_deploy.paths import shared_root

    if not shared_root().is_dir():
        pytest.skip("shared data folder not found")
    model, crops = _calibrated(shared_root() / "weights" / "IMDN_x2.pth", shared_root())
    return model, crops, to_qdq_graph(model, 24)


@pytest.fixture(scope="module")
def swinir(swinir_light_checkpoint):
    from harmoq_deploy.paths import shared_root

    if not shared_root().is_dir():
        pytest.skip("shared data folder not found")
    model, crops = _calibrated(swinir_light_checkpoint, shared_root(), patch=16)
    return model, crops, to_qdq_graph(model, 16)


def _matched(model, graph, tile):
    """Graph output and PyTorch's output on the graph's decisions, for one tile."""
    probed, names = with_code_outputs(graph)
    outputs = OnnxRuntimeRunner(probed).run_all(tile)
    stats = DecisionStats()
    with torch.no_grad(), forced_decisions(model, point_grids(model), dict(zip(names, outputs[1:])), stats):
        ours = model(torch.from_numpy(tile)).numpy()
    return outputs[0], ours, stats


@pytest.mark.parametrize("name", ["imdn", "swinir"])
def test_graph_equals_fake_quant_model_with_decisions_matched(name, request):
    model, crops, graph = request.getfixturevalue(name)
    side = graph.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    assert trt_rule_violations(graph) == []
    theirs, ours, stats = _matched(model, graph, crops[:1, :, :side, :side].numpy())
    assert np.abs(theirs - ours).max() < 1e-4
    assert stats.codes > 0 and stats.only_ties, stats


def test_offsets_are_restored_around_the_int8_ops(imdn, swinir):
    def ops(graph):
        return [n.name.rsplit("/", 1)[-1] for n in graph.graph.node] + [n.op_type for n in graph.graph.node]

    cnn, transformer = ops(imdn[2]), ops(swinir[2])
    assert "BorderAwareOffset" in cnn, "zero-padded convs get the exact border-aware correction"
    assert transformer.count("RowSum") == transformer.count("ColSum") > 0, "both matmul operands are asymmetric"
    assert "AddOffset" not in cnn + transformer, "no offset is re-added in float before an INT8 op"
    lnorm_outputs = {n.output[0] for n in swinir[2].graph.node if n.op_type == "LayerNormalization"}
    clipped = [n for n in swinir[2].graph.node if n.op_type == "Clip" and n.input[0] in lnorm_outputs]
    assert clipped, "a LayerNorm feeding a quantizer takes the offset into its beta (no Sub before Q)"


def test_weights_are_int8_codes_in_the_k_bit_range(imdn):
    model, _, graph = imdn
    codes = [numpy_helper.to_array(t) for t in graph.graph.initializer if t.name.endswith("weight_quantizer.int")]
    assert codes and all(c.dtype == np.int8 and np.abs(c).max() <= 3 for c in codes)
    grids = point_grids(model)
    first = next(n for n in grids if n.endswith("weight_quantizer"))
    stored = next(numpy_helper.to_array(t) for t in graph.graph.initializer if t.name == f"{first}.int")
    owner = model.get_submodule(first.rpartition(".")[0])
    assert np.array_equal(stored, grids[first].integers(owner.weight.detach()))


def _qdq_model(scale=0.1, zero=0, zero_type=TensorProto.INT8, per_channel_activation=False, scale_type=TensorProto.FLOAT,
               with_zero=True, scale_as_input=False, marker=False):
    scale_value = np.full(4 if per_channel_activation else (), scale, np.float32)
    scale_tensor = numpy_helper.from_array(scale_value.astype(helper.tensor_dtype_to_np_dtype(scale_type)), "s")
    zero_tensor = numpy_helper.from_array(np.full(scale_value.shape, zero, helper.tensor_dtype_to_np_dtype(zero_type)), "z")
    weight = numpy_helper.from_array(np.ones((4, 4), np.int8), "w_int")
    w_scale = numpy_helper.from_array(np.full(4, 0.5, np.float32), "w_s")
    w_zero = numpy_helper.from_array(np.zeros(4, np.int8), "w_z")
    q_inputs = ["x", "s", "z"] if with_zero else ["x", "s"]
    attrs = {"axis": 1} if per_channel_activation else {}
    nodes = [helper.make_node("QuantizeLinear", q_inputs, ["xq"], name="q", **attrs),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"] if with_zero else ["xq", "s"], ["xd"], name="dq", **attrs),
             helper.make_node("DequantizeLinear", ["w_int", "w_s", "w_z"], ["w"], name="w_dq", axis=0),
             helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm")]
    if marker:
        nodes.append(helper.make_node("QuantPoint", ["y"], ["y2"], name="marker", domain="harmoq"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    initializers = [zero_tensor, weight, w_scale, w_zero]
    if scale_as_input:
        inputs.append(helper.make_tensor_value_info("s", scale_type, []))
    else:
        initializers.append(scale_tensor)
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y2" if marker else "y",
                                                                                  TensorProto.FLOAT, [1, 4])],
                              initializers)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("harmoq", 1)] if marker else [])
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("broken, rule", [
    (dict(zero=3), "zero point is not 0"),
    (dict(with_zero=False), "zero point missing"),
    (dict(scale=0.0), "strictly positive"),
    (dict(scale=-0.1), "strictly positive"),
    (dict(scale_as_input=True), "scale is not a constant"),
    (dict(per_channel_activation=True), "per-channel scale on an activation"),
    (dict(zero_type=TensorProto.UINT8), "quantized type UINT8"),
    (dict(scale_type=TensorProto.FLOAT16), "scale dtype FLOAT16"),
    (dict(marker=True), "unrewritten QuantPoint"),
])
def test_trt_rules_catch_each_violation(broken, rule):
    check_trt_rules(_qdq_model())
    found = trt_rule_violations(_qdq_model(**broken))
    assert any(rule in str(v) for v in found), found
    with pytest.raises(HarmoqError, match="TensorRT's quantization rules"):
        check_trt_rules(_qdq_model(**broken))


class _Pointwise(nn.Module):
    """x2 SR with a 1-pixel receptive field: tiling must reproduce it exactly."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        return self.shuffle(self.conv(x))


@pytest.mark.parametrize("size", [(7, 5), (16, 16), (37, 50), (64, 29)])
@pytest.mark.parametrize("overlap", [0, 5])
def test_tiling_reassembles_the_whole_image(size, overlap):
    torch.manual_seed(0)
    runner = TorchRunner(_Pointwise())
    image = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
    tiled = run_tiled(runner, image, 2, Tiling(16, overlap), batch=3)
    assert tiled.shape == (1, 3, 2 * size[0], 2 * size[1])
    assert np.abs(tiled - runner(image)).max() < 1e-5


def test_tiling_settings_and_runner_shapes_are_checked():
    with pytest.raises(HarmoqError, match="overlap"):
        Tiling(8, 8)
    with pytest.raises(HarmoqError, match="expected"):
        run_tiled(lambda t: t, np.zeros((1, 3, 20, 20), np.float32), 2, Tiling(8, 2))


def test_tiles_cover_the_side_with_the_requested_overlap():
    for length in (64, 65, 100, 257):
        starts = Tiling(32, 8).starts(length)
        assert starts[0] == 0 and starts[-1] == length - 32
        assert all(0 < b - a <= 32 - 8 for a, b in zip(starts, starts[1:]))


def test_dynamic_shapes_only_where_the_traced_graph_follows_the_size(imdn, swinir):
    check_dynamic_support(imdn[0])
    with pytest.raises(HarmoqError, match="dynamic height/width"):
        check_dynamic_support(swinir[0])


def test_asymmetric_weights_are_refused(shared):
    source = load_model(shared / "weights" / "PANx2_DF2K.pth")
    data = sample_calibration_crops(shared / "data" / "calib" / "DIV2K_valid_crop256", 2, 16, 2, 0)
    model = calibrate(source, QuantConfig(wbits=4, abits=4, target="any"), make_method("minmax"), data).model
    with pytest.raises(HarmoqError, match="--target tensorrt"):
        to_qdq_graph(model, 16)


def test_graphs_keep_onnx_runtime_readable_ir(imdn):
    graph = imdn[2]
    assert graph.ir_version <= 10
    onnx.checker.check_model(graph)
    assert {o.domain for o in graph.opset_import} == {""}
    gs.import_onnx(graph)
