"""``harmoq-build engine --format plugin``: the packed low-bit graph reaches the engine builder.

ONNX Runtime runs the plugin graph through the operator's ONNX function, so the graph is
validated here as every engine is. TensorRT's libraries are on no machine here, so its builder
and runner are replaced by recorders that check what the pipeline hands them: the plugin graph,
and the runner told to register the plugin before it loads the engine.
"""

import json

import onnx
import pytest
import torch
from conftest import one_line_error, run_cli, tiny_benchmark

from harmoq_deploy.engine import pipeline as pipeline_module
from harmoq_deploy.engine import tensorrt as tensorrt_module
from harmoq_deploy.engine.bundle import open_bundle
from harmoq_deploy.engine.runners import OnnxRuntimeRunner
from harmoq_deploy.engine.tensorrt import uses_lowbit_plugin


@pytest.fixture(scope="module")
def bench_folder(tmp_path_factory, shared_module):
    root = tmp_path_factory.mktemp("plugin_engine")
    tiny_benchmark(shared_module, root / "bench", ("baby",), slice(40, 104), slice(30, 100))
    return {"shared": shared_module, "bench": root / "bench"}


def _argv(folder, out, *extra):
    return ["engine", "--model", folder["shared"] / "weights" / "PANx2_DF2K.pth", "--bits", 3, "--method", "minmax",
            "--crops", 2, "--patch", 16, "--tile", 24, "--overlap", 4, "--datasets", "Tiny", "--data-root",
            folder["bench"], "--format", "plugin", *extra, "-o", out]


def test_plugin_format_engine_is_validated_and_tensorrt_gets_the_plugin_graph(bench_folder, tmp_path, capsys,
                                                                               monkeypatch):
    """The whole engine stage with the packed graph: validated in ONNX Runtime (decisions matched),
    handed to the TensorRT builder, and the runner told to register the plugin."""
    seen = {}

    def build_engine(onnx_path, settings):
        seen["graph_has_plugin"] = uses_lowbit_plugin(onnx_path)
        seen["onnx"] = onnx_path.read_bytes()
        return b"engine bytes", {"tensorrt": "recorder"}

    class Runner(OnnxRuntimeRunner):
        def __init__(self, engine_bytes, lowbit_plugin=False):
            seen["runner_registers_plugin"] = lowbit_plugin
            super().__init__(onnx.load_from_string(seen["onnx"]))

    monkeypatch.setattr(pipeline_module, "choose_backend",
                        lambda requested: pipeline_module.BackendChoice("tensorrt", "recorder"))
    monkeypatch.setattr(pipeline_module, "build_engine", build_engine)
    monkeypatch.setattr(tensorrt_module, "TensorRTRunner", Runner)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "no GPU (recorder)")  # named in the report
    code, _, err = run_cli(_argv(bench_folder, tmp_path / "pan_trt", "--backend", "tensorrt"), capsys)
    assert code == 0, err
    assert seen["graph_has_plugin"] and seen["runner_registers_plugin"]
    assert open_bundle(tmp_path / "pan_trt").sidecar["graph_format"] == "plugin"


def test_plugin_format_is_refused_for_the_torch_backend(bench_folder, tmp_path, capsys):
    one_line_error(_argv(bench_folder, tmp_path / "x", "--backend", "torch"), capsys, "--format plugin")
    assert not (tmp_path / "x").exists()
