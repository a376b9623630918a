"""The OpenVINO backend against ONNX Runtime on small graphs: the exported Q/DQ pattern it computes
right on every CPU path (AMX and not), its compiled-model cache, int8 kernels, and engines built for it."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import run_cli, tiny_benchmark
from onnx import TensorProto, helper, numpy_helper

from harmoq_deploy.engine.runners import OnnxRuntimeRunner, OpenVinoRunner
from harmoq_deploy.engine.validate import output_psnr

pytest.importorskip("openvino")

_CPU_FLAGS = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
#: oneDNN's ISA cap: OpenVINO then takes the AVX2 kernels a CPU without AMX runs
WITHOUT_AMX = {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def _openvino_in_subprocess(graph_path, tiles: np.ndarray, tmp_path, env: dict) -> np.ndarray:
    """OpenVINO's f32 output for ``tiles`` in a fresh process (oneDNN reads its ISA cap once per process)."""
    inputs, outputs = tmp_path / "tiles.npy", tmp_path / "out.npy"
    np.save(inputs, tiles)
    code = ("import sys, numpy as np; from harmoq_deploy.engine.runners import OpenVinoRunner; "
            "np.save(sys.argv[3], OpenVinoRunner(sys.argv[1], precision='f32')(np.load(sys.argv[2])))")
    subprocess.run([sys.executable, "-c", code, str(graph_path), str(inputs), str(outputs)], check=True,
                   env={**os.environ, **env})
    return np.load(outputs)


@pytest.fixture(scope="module")
def imdn_w8(shared_module, tmp_path_factory):
    """IMDN x2 calibrated W8A8 (MinMax), its graph at a 24-pixel tile, a Set5 crop as LR tile, the model."""
    from PIL import Image

    from harmoq_deploy.calibrate import calibrate, make_method
    from harmoq_deploy.data import sample_calibration_crops
    from harmoq_deploy.export import to_qdq_graph
    from harmoq_deploy.models import load_model
    from harmoq_deploy.quant import QuantConfig

    source = load_model(shared_module / "weights" / "IMDN_x2.pth")
    crops = sample_calibration_crops(shared_module / "data" / "calib" / "DIV2K_valid_crop256", 4, 24, 2, 0)
    model = calibrate(source, QuantConfig(wbits=8, abits=8, target="tensorrt"), make_method("minmax"), crops).model
    path = tmp_path_factory.mktemp("imdn_w8") / "imdn_w8.onnx"
    onnx.save(to_qdq_graph(model, 24), path)
    hr = np.asarray(Image.open(shared_module / "data" / "benchmarks" / "Set5" / "HR" / "baby.png").convert("RGB"))
    lr = np.asarray(Image.fromarray(hr[200:248, 200:248]).resize((24, 24), Image.BICUBIC))
    return path, (lr.transpose(2, 0, 1)[None] / 255).astype(np.float32), model


def test_openvino_computes_the_w8a8_imdn_graph_like_onnx_runtime_with_and_without_amx(imdn_w8, tmp_path):
    """IMDN's last 1x1 conv reads a Concat of the six blocks: OpenVINO without AMX got that conv
    wrong (24-30 dB from ONNX Runtime at W8A8) until the exporter concatenated INT8 codes."""
    path, tile, model = imdn_w8
    reference = OnnxRuntimeRunner(path)(tile)
    assert output_psnr(OpenVinoRunner(path, precision="f32")(tile), reference) > 45
    if "avx2" not in _CPU_FLAGS:
        pytest.skip("no AVX2: the CPU path without AMX cannot be selected here")
    assert output_psnr(_openvino_in_subprocess(path, tile, tmp_path, WITHOUT_AMX), reference) > 45
    assert sum(n.op_type == "Concat" and n.name.endswith("/ConcatCodes") for n in onnx.load(path).graph.node) >= 1


def _decisions(graph: onnx.ModelProto, model, tile: np.ndarray):
    import torch

    from harmoq_deploy.engine.validate import DecisionStats, forced_decisions, with_code_outputs
    from harmoq_deploy.export import point_grids

    probed, names = with_code_outputs(graph)
    outputs = OnnxRuntimeRunner(probed).run_all(tile)
    stats = DecisionStats()
    with torch.no_grad(), forced_decisions(model, point_grids(model), dict(zip(names, outputs[1:])), stats):
        model(torch.from_numpy(tile))
    return stats


@pytest.mark.parametrize("factor", [1.0, 1.01])
def test_w8a8_tolerance_accepts_float_ties_and_a_one_percent_scale_error_still_fails(imdn_w8, factor):
    """At 8 bits a code step is small, so float noise spans more of it: the tie rule must accept the
    correct graph and still refuse one activation scale planted 1% off."""
    path, tile, model = imdn_w8
    graph = onnx.load(path)
    scales = [t for t in graph.graph.initializer if t.name.endswith("input_quantizer.scale")]
    planted = scales[len(scales) // 2]
    planted.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(planted) * np.float32(factor), planted.name))
    stats = _decisions(graph, model, tile)
    assert stats.only_ties == (factor == 1.0), (stats.differing, stats.untied, stats.largest_step_difference)


def _concat_then_qdq_conv() -> onnx.ModelProto:
    """Concat -> Q/DQ -> 1x1 conv on INT8 weights: the pattern the exporter no longer writes."""
    rng = np.random.default_rng(0)
    step = np.array(0.02, np.float32)
    zero = np.array(0, np.int8)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (16, 64, 1, 1)).astype(np.int8), "w"),
             numpy_helper.from_array(np.full(16, 1e-3, np.float32), "w_step"),
             numpy_helper.from_array(np.zeros(16, np.int8), "w_zero"),
             numpy_helper.from_array(step, "step"), numpy_helper.from_array(zero, "zero")]
    nodes = [helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
             helper.make_node("QuantizeLinear", ["cat", "step", "zero"], ["codes"]),
             helper.make_node("DequantizeLinear", ["codes", "step", "zero"], ["x"]),
             helper.make_node("DequantizeLinear", ["w", "w_step", "w_zero"], ["weight"], axis=0),
             helper.make_node("Conv", ["x", "weight"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 32, 8, 8]) for n in ("a", "b")]
    graph = helper.make_graph(nodes, "concat_qdq", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.skipif("avx2" not in _CPU_FLAGS, reason="needs AVX2 to select OpenVINO's CPU path without AMX")
def test_the_pattern_openvino_gets_wrong_without_amx_is_still_wrong(tmp_path):
    """Keeps the test above honest: with the OpenVINO pinned here, Q/DQ after a float Concat
    feeding an INT8 conv is miscomputed without AMX, so a pass above means the export avoided it."""
    import onnxruntime as ort

    model = _concat_then_qdq_conv()
    path = tmp_path / "concat_qdq.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(1)
    a, b = (rng.uniform(-2, 2, (1, 32, 8, 8)).astype(np.float32) for _ in range(2))
    expected = ort.InferenceSession(str(path)).run(None, {"a": a, "b": b})[0]
    code = ("import sys, numpy as np, openvino as ov; c = ov.Core(); "
            "m = c.compile_model(c.read_model(sys.argv[1]), 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'}); "
            "np.save(sys.argv[2], m({'a': np.load(sys.argv[3]), 'b': np.load(sys.argv[4])})[0])")
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "y.npy"), str(tmp_path / "a.npy"),
                    str(tmp_path / "b.npy")], check=True, env={**os.environ, **WITHOUT_AMX})
    error = np.abs(np.load(tmp_path / "y.npy") - expected).max() / np.abs(expected).max()
    assert error > 0.05, f"OpenVINO now computes this pattern right without AMX (relative error {error:.2g})"


def test_most_of_the_w8a8_graph_runs_on_int8_kernels(imdn_w8):
    runner = OpenVinoRunner(imdn_w8[0])
    convs = [layer for layer in runner.layers() if layer["type"] == "Convolution"]
    int8 = [layer for layer in convs if layer["precision"] in ("i8", "u8")]
    # IMDN x2 has 44 quantized convolutions; the rest are the float first conv, the upsampler and
    # the one-channel offset corrections of zero-padded convs on asymmetric inputs
    assert len(int8) >= 40, runner.int8_summary()
    assert runner.int8_summary().startswith(f"{len(int8)} of ")


def test_compiled_models_are_cached_by_graph_and_precision(imdn_w8, tmp_path):
    path, tile, model = imdn_w8
    cache = tmp_path / "cache"
    first = OpenVinoRunner(path, precision="f32", cache=cache)
    again = OpenVinoRunner(path, precision="f32", cache=cache)
    assert not first.cached and again.cached and again.cache_file == first.cache_file
    np.testing.assert_array_equal(again(tile), first(tile))
    other = OpenVinoRunner(path, precision="bf16", cache=cache)
    assert not other.cached and other.cache_file != first.cache_file
    changed = onnx.load(path)
    changed.graph.node[-1].name += "_renamed"
    assert not OpenVinoRunner(changed, precision="f32", cache=cache).cached
    assert len(list(cache.iterdir())) == 3


def test_bad_precision_and_bad_graph_are_one_line_errors():
    from harmoq_deploy.errors import HarmoqError

    with pytest.raises(HarmoqError, match="precision must be one of"):
        OpenVinoRunner(_concat_then_qdq_conv(), precision="int4")
    broken = _concat_then_qdq_conv()
    broken.graph.node[-1].input[1] = "missing"
    with pytest.raises(HarmoqError, match="OpenVINO cannot compile the graph"):
        OpenVinoRunner(broken)


def test_engine_backend_openvino_is_validated_upscales_and_benches(shared_module, tmp_path, capsys):
    bench_root = tiny_benchmark(shared_module, tmp_path / "bench", ("bird",), slice(40, 104), slice(30, 100))
    out = tmp_path / "pan_ov"
    code, stdout, err = run_cli(["engine", "--model", shared_module / "weights" / "PANx2_DF2K.pth", "--bits", 8,
                                 "--method", "minmax", "--crops", 2, "--patch", 16, "--tile", 24, "--overlap", 4,
                                 "--datasets", "Tiny", "--data-root", bench_root, "--backend", "openvino", "-o", out],
                                capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["backend"]["name"] == "openvino" and "int8 kernels" in report["backend"]["int8_layers"]
    assert json.loads((out / "engine.json").read_text())["backend"] == "openvino"
    rows = report["validation"]["engine_free_running"]
    assert len(rows) == 1 and rows[0]["free_parity_db"] > 40 and rows[0]["vs_fp32_db"] > 35
    assert "openvino engine: mean PSNR" in stdout and "## The openvino engine, free-running" in (out / "report.md").read_text()
    code, _, err = run_cli(["upscale", "--engine", out, bench_root / "Tiny" / "HR" / "bird.png", "-o", tmp_path / "up"],
                           capsys)
    assert code == 0, err
    code, stdout, err = run_cli(["bench", "--engine", out, "--size", "32x32", "--repeats", 1, "--warmup", 0,
                                 "--json", tmp_path / "b.json"], capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "b.json").read_text())
    assert payload["backend"] == "openvino" and payload["measurements"][-1]["backend"].startswith("openvino")
