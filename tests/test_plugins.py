"""Packed k-bit weights, the LowBitLinear reference, its ONNX function, and plugin-format graphs."""

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from harmoq_deploy.engine import OnnxRuntimeRunner
from harmoq_deploy.engine.validate import DecisionStats, forced_decisions, with_code_outputs
from harmoq_deploy.errors import HarmoqError
from harmoq_deploy.export import point_grids, to_qdq_graph
from harmoq_deploy.export.plugin import to_plugin_graph
from harmoq_deploy.plugins.onnx_function import DOMAIN, OP, lowbit_linear_function
from harmoq_deploy.plugins.packing import code_range, pack, unpack, words_per_row
from harmoq_deploy.plugins.reference import lowbit_linear


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_every_code_at_every_position_round_trips(bits):
    low, high = code_range(bits)
    values = np.arange(low, high + 1)
    # each code at each of 32 * bits consecutive positions: every bit offset, every word crossing
    length = 32 * bits + len(values)
    rows = np.stack([np.roll(np.resize(values, length), shift) for shift in range(len(values))])
    assert np.array_equal(unpack(pack(rows, bits), bits, length), rows)


@pytest.mark.parametrize("bits, length", list(itertools.product([2, 3, 4], [1, 7, 10, 11, 31, 32, 33, 95, 97])))
def test_odd_lengths_and_channel_counts(bits, length):
    rng = np.random.default_rng(length)
    low, high = code_range(bits)
    codes = rng.integers(low, high + 1, (5, length))
    words = pack(codes, bits)
    assert words.dtype == np.int32 and words.shape == (5, words_per_row(length, bits))
    assert np.array_equal(unpack(words, bits, length), codes)


def test_documented_bit_layout_including_a_3_bit_word_crossing():
    codes = np.zeros((1, 11), np.int64)
    codes[0, 10] = 3  # value 10 starts at stream bit 30: u = 3 + 4 = 0b111
    words = pack(codes, 3).view(np.uint32)
    zero_pattern = sum(4 << (3 * i) for i in range(10))  # u = 4 for code 0, ten times
    assert words[0, 0] == zero_pattern | (0b11 << 30)
    assert words[0, 1] == 0b1
    assert unpack(pack(codes, 3), 3, 11)[0, 10] == 3


def test_packing_refuses_what_it_cannot_hold():
    with pytest.raises(HarmoqError, match=r"\[-1, 1\]"):
        pack(np.array([[2]]), 2)
    with pytest.raises(HarmoqError, match="2, 3, 4 bits"):
        pack(np.array([[0]]), 5)
    with pytest.raises(HarmoqError, match="words per row"):
        unpack(np.zeros((1, 1), np.int32), 3, 40)


def _random_layer(bits, rows=6, length=37, seed=0):
    rng = np.random.default_rng(seed)
    low, high = code_range(bits)
    return (rng.integers(low, high + 1, (rows, length)), rng.random(rows).astype(np.float32) / 10,
            rng.standard_normal(rows).astype(np.float32))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_reference_equals_the_dequantized_float_layer(bits):
    codes, scale, bias = _random_layer(bits)
    x = torch.randint(-7, 8, (2, 5, codes.shape[1]), dtype=torch.int8)
    y = lowbit_linear(x, pack(codes, bits), bits, codes.shape[1], torch.from_numpy(scale), torch.from_numpy(bias))
    expected = (x.double() @ torch.from_numpy(codes).double().T) * torch.from_numpy(scale).double() + torch.from_numpy(bias)
    assert torch.allclose(y.double(), expected, rtol=1e-6, atol=1e-6)
    codes_out = lowbit_linear(x, pack(codes, bits), bits, codes.shape[1], torch.from_numpy(scale),
                              torch.from_numpy(bias), out_scale=0.05, out_bits=3)
    assert codes_out.dtype == torch.int8 and codes_out.abs().max() <= 3
    assert torch.equal(codes_out, torch.clamp(torch.round(y / 0.05), -3, 3).to(torch.int8))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_onnx_function_equals_the_reference_in_onnx_runtime(bits):
    codes, scale, bias = _random_layer(bits, rows=9, length=45, seed=bits)
    words = pack(codes, bits)
    x = np.random.default_rng(1).integers(-7, 8, (3, 4, 45)).astype(np.int8)
    node = helper.make_node(OP, ["x", "w", "s", "b"], ["y"], domain=DOMAIN, in_features=45, bits=bits)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.INT8, [3, 4, 45])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4, 9])],
                              [numpy_helper.from_array(a, n) for a, n in ((words, "w"), (scale, "s"), (bias, "b"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
                              functions=[lowbit_linear_function()])
    model.ir_version = 8
    onnx.checker.check_model(model)
    ours = lowbit_linear(torch.from_numpy(x), words, bits, 45, torch.from_numpy(scale), torch.from_numpy(bias))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, {"x": x})[0], ours.numpy())


@pytest.fixture(scope="module")
def swinir_graphs(swinir_light_checkpoint):
    from harmoq_deploy.calibrate import calibrate, make_method
    from harmoq_deploy.models import load_model
    from harmoq_deploy.quant import QuantConfig

    source = load_model(swinir_light_checkpoint)
    crops = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model = calibrate(source, QuantConfig(wbits=3, abits=3, target="tensorrt"), make_method("minmax"), crops).model
    qdq = to_qdq_graph(model, 16)
    plugin, converted = to_plugin_graph(qdq)
    return model, crops, qdq, plugin, converted


def test_plugin_graph_packs_every_quantized_linear_at_bits_over_32(swinir_graphs):
    model, _, qdq, plugin, converted = swinir_graphs
    linears = [n for n in point_grids(model) if n.endswith("weight_quantizer")]
    assert converted == len(linears) == 96
    packed = {t.name: numpy_helper.to_array(t) for t in plugin.graph.initializer if t.name.endswith(".packed")}
    params = sum(model.get_submodule(n.rpartition(".")[0]).weight.numel() for n in linears)
    packed_bytes = sum(a.nbytes for a in packed.values())
    assert packed_bytes <= params * 3 / 8 * 1.1, "about 3/32 of the FP32 bytes (rows pad to whole words)"
    ops = [n.op_type for n in plugin.graph.node]
    assert ops.count(OP) == 96 and "MatMulInteger" not in ops, "ONNX Runtime inlines the function at load"
    assert plugin.functions[0].name == OP


def test_plugin_graph_equals_the_fake_quant_model_with_decisions_matched(swinir_graphs):
    model, crops, _, plugin, _ = swinir_graphs
    probed, names = with_code_outputs(plugin)
    outputs = OnnxRuntimeRunner(probed).run_all(crops[:1].numpy())
    stats = DecisionStats()
    with torch.no_grad(), forced_decisions(model, point_grids(model), dict(zip(names, outputs[1:])), stats):
        ours = model(crops[:1]).numpy()
    assert np.abs(outputs[0] - ours).max() < 1e-4 and stats.only_ties


def test_reference_equals_a_calibrated_fake_quant_linear(swinir_graphs):
    """The reference op on the codes the exporter writes reproduces QuantLinear's output."""
    from harmoq_deploy.quant import QuantLinear

    model, crops, *_ = swinir_graphs
    name, layer = next((n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear))
    grids = point_grids(model)
    w_grid, x_grid = grids[f"{name}.weight_quantizer"], grids[f"{name}.input_quantizer"]
    x = torch.randn(2, 9, layer.in_features, generator=torch.Generator().manual_seed(0))
    codes_x = torch.from_numpy(x_grid.integers(x))
    codes_w = w_grid.integers(layer.weight.detach())
    w_hat = torch.from_numpy(codes_w.astype(np.float32)) * torch.from_numpy(w_grid.step)[:, None]
    bias = layer.bias.detach() + w_hat.sum(dim=1) * float(x_grid.offset)  # the exporter's offset fold
    y = lowbit_linear(codes_x, pack(codes_w, 3), 3, layer.in_features,
                      torch.from_numpy(w_grid.step) * float(x_grid.step), bias)
    with torch.no_grad():
        expected = layer(x)
    assert torch.allclose(y, expected, rtol=1e-4, atol=1e-4)


_TRITON_CHECK = """
import numpy as np, torch
from harmoq_deploy.plugins.packing import code_range, pack
from harmoq_deploy.plugins.reference import lowbit_linear
from harmoq_deploy.plugins.triton_kernel import BLOCK_K, BLOCK_M, BLOCK_N, lowbit_linear_triton
assert (BLOCK_M, BLOCK_N, BLOCK_K) == (64, 64, 32), "the production tiles"
rng = np.random.default_rng(0)
# rows and columns across several 64-blocks with ragged ends, K across several 32-slices (and
# below one), 3-bit values crossing words, full int8 activation codes
for bits, (rows, length, cols) in [(2, (70, 70, 9)), (3, (130, 75, 67)), (4, (8, 96, 64)), (3, (1, 11, 3))]:
    low, high = code_range(bits)
    codes = rng.integers(low, high + 1, (cols, length))
    x = torch.from_numpy(rng.integers(-127, 128, (rows, length)).astype(np.int8))
    words = torch.from_numpy(pack(codes, bits))
    ones, zeros = torch.ones(cols), torch.zeros(cols)
    exact = lowbit_linear(x, words.numpy(), bits, length, ones, zeros)  # the int32 sums themselves
    assert torch.equal(lowbit_linear_triton(x, words, bits, length, ones, zeros), exact), bits
    scale, bias = torch.rand(cols), torch.randn(cols)
    expected = lowbit_linear(x, words.numpy(), bits, length, scale, bias)
    assert torch.equal(lowbit_linear_triton(x, words, bits, length, scale, bias), expected), bits
    half = lowbit_linear_triton(x, words, bits, length, scale, bias, out_dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.equal(half, expected.half()), bits
    step = float(expected.abs().max()) / 5
    q = lowbit_linear_triton(x, words, bits, length, scale, bias, out_scale=step, out_bits=3)
    assert torch.equal(q, lowbit_linear(x, words.numpy(), bits, length, scale, bias, out_scale=step, out_bits=3)), bits
print("ok")
"""


def test_triton_kernel_equals_the_reference_in_interpreter_mode():
    """Triton's interpreter runs the kernel on the CPU at the production tile sizes."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", _TRITON_CHECK], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_lowbit_runtime_layers_equal_their_fake_quant_layers(swinir_graphs):
    import copy

    from harmoq_deploy.plugins.torch_op import LowBitLinear, to_lowbit_runtime
    from harmoq_deploy.quant import QuantLinear

    model, crops, *_ = swinir_graphs
    runtime, replaced = to_lowbit_runtime(copy.deepcopy(model))
    assert replaced == 96 and not any(isinstance(m, QuantLinear) for m in runtime.modules())
    name = next(n for n, m in runtime.named_modules() if isinstance(m, LowBitLinear))
    x = torch.randn(3, 7, runtime.get_submodule(name).in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(runtime.get_submodule(name)(x), model.get_submodule(name)(x), rtol=1e-4, atol=1e-4)
        out = runtime(crops[:1])
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_lowbit_op_passes_torch_library_checks_so_torch_compile_can_trace_it():
    """opcheck: schema, fake (meta) implementation against the real one, autograd registration."""
    from harmoq_deploy.plugins.torch_op import lowbit_linear_op

    codes, scale, bias = _random_layer(3, rows=5, length=19)
    x = torch.randint(-3, 4, (2, 4, 19), dtype=torch.int8)
    for out_dtype in (torch.float32, torch.bfloat16):
        torch.library.opcheck(lowbit_linear_op, (x, torch.from_numpy(pack(codes, 3)), 3, 19, torch.from_numpy(scale),
                                                 torch.from_numpy(bias), out_dtype))
        y = lowbit_linear_op(x, torch.from_numpy(pack(codes, 3)), 3, 19, torch.from_numpy(scale),
                             torch.from_numpy(bias), out_dtype)
        assert y.dtype == out_dtype and y.shape == (2, 4, 5)


def test_fast_lowbit_runtime_runs_its_float_islands_in_half_precision(swinir_graphs):
    """The GPU form's float islands in 16 bits (bf16 autocast on this CPU; FP16 on a GPU), compile off here."""
    import copy

    from harmoq_deploy.plugins.torch_op import fast_lowbit_runtime, to_lowbit_runtime

    model, crops, *_ = swinir_graphs
    runtime, _ = to_lowbit_runtime(copy.deepcopy(model))
    with torch.no_grad():
        full = runtime(crops[:1])
    fast = fast_lowbit_runtime(copy.deepcopy(runtime), "cpu", torch.bfloat16, compile_mode=None)
    half = fast(crops[:1])
    assert half.dtype == torch.float32 and half.shape == full.shape
    psnr = 10 * torch.log10(1 / torch.mean((half - full) ** 2))
    assert 25 < psnr < 80, f"bf16 islands {psnr:.1f} dB from float32 (not equal: the islands really changed type)"
