"""Backends that run a batch of LR tiles: the PyTorch model itself, or an ONNX graph in ONNX Runtime
or OpenVINO.

Each runner is a callable ``[n, 3, h, w] float32 -> [n, 3, h*s, w*s] float32`` (``TileRunner``),
so tiling, validation, upscaling and benchmarks treat every backend alike.
"""

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import HarmoqError, first_line


class TorchRunner:
    """The PyTorch model (float or fake-quantized) on ``device``."""

    backend = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu"):
        self.model = model.eval().to(device)
        self.device = device

    @property
    def version(self) -> str:
        return torch.__version__

    @torch.no_grad()
    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)).float().cpu().numpy()


def _threads_options(threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers etc. are not the user's concern
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class OnnxRuntimeRunner:
    """An ONNX graph (path or ``ModelProto``) in ONNX Runtime on the CPU (the embedded backend).

    Graphs exported for a fixed tile take batch 1, so a batch is run tile by tile.
    """

    backend = "onnxruntime"

    def __init__(self, graph: str | Path | onnx.ModelProto, threads: int | None = None):
        import onnxruntime as ort

        data = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else str(graph)
        try:
            self.session = ort.InferenceSession(data, _threads_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise HarmoqError(f"ONNX Runtime cannot load the graph: {first_line(exc)}") from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) else None

    @property
    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def run_all(self, tiles: np.ndarray) -> list[np.ndarray]:
        """Every graph output for ``tiles`` (one tile at a time when the batch is fixed)."""
        tiles = np.ascontiguousarray(tiles, np.float32)
        if self.fixed_batch and len(tiles) != self.fixed_batch:
            parts = [self.session.run(None, {self.input_name: tiles[i:i + 1]}) for i in range(len(tiles))]
            return [np.concatenate(outputs) for outputs in zip(*parts)]
        return self.session.run(None, {self.input_name: tiles})

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return self.run_all(tiles)[0]


OPENVINO_PRECISIONS = ("auto", "bf16", "f32")
_COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "MatMul", "FullyConnected")


def openvino_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 here (AVX512_BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_cache_root() -> Path:
    """Compiled OpenVINO models: ``$HARMOQ_CACHE/openvino``, else ``~/.cache/harmoq-deploy/openvino``."""
    base = os.environ.get("HARMOQ_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harmoq-deploy"
    return Path(base) / "openvino"


class OpenVinoRunner:
    """An ONNX graph compiled by OpenVINO for the CPU.

    Q/DQ pairs become FakeQuantize, which OpenVINO's low-precision transformations run on int8
    kernels; what stays float runs at ``precision``: ``auto`` is bf16 where the CPU has it (the
    plugin's own default there), ``f32`` forces float32. Compiled models are cached under
    ``cache`` (None: no cache), one file per graph sha256, OpenVINO version, precision, device
    and CPU, so a change of any of them compiles afresh. Graphs with a fixed batch run tile by tile.
    """

    backend = "openvino"

    def __init__(self, graph: str | Path | onnx.ModelProto, threads: int | None = None, precision: str = "auto",
                 cache: Path | None = None, profile: bool = False):
        import openvino as ov

        if precision not in OPENVINO_PRECISIONS:
            raise HarmoqError(f"OpenVINO precision must be one of {', '.join(OPENVINO_PRECISIONS)}, got {precision!r}")
        self.precision = ("bf16" if openvino_bf16() else "f32") if precision == "auto" else precision
        data = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else Path(graph).read_bytes()
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if profile:
            config["PERF_COUNT"] = True
        self.device = core.get_property("CPU", "FULL_DEVICE_NAME")
        key = hashlib.sha256(b"\0".join([hashlib.sha256(data).digest(), ov.__version__.encode(),
                                         self.precision.encode(), self.device.encode()])).hexdigest()[:32]
        self.cache_file = cache / f"{key}.blob" if cache is not None else None
        self.cached = False
        try:
            if self.cache_file is not None and self.cache_file.is_file():
                self.compiled = core.import_model(self.cache_file.read_bytes(), "CPU", config)
                self.cached = True
            else:
                self.compiled = core.compile_model(core.read_model(data, b""), "CPU", config)
                if self.cache_file is not None:
                    from ..io import write_atomic

                    cache.mkdir(parents=True, exist_ok=True)
                    write_atomic(self.cache_file, self.compiled.export_model().getvalue())
        except RuntimeError as exc:  # OpenVINO raises RuntimeError with its own message for unsupported graphs
            raise HarmoqError(f"OpenVINO cannot compile the graph: {first_line(exc)}") from None
        self.request = self.compiled.create_infer_request()
        first = self.compiled.inputs[0]
        self.fixed_batch = first.get_partial_shape()[0].get_length() if first.get_partial_shape()[0].is_static else None

    @property
    def version(self) -> str:
        import openvino as ov

        return f"{ov.__version__.split('-')[0]} {self.precision}"

    def run_all(self, tiles: np.ndarray) -> list[np.ndarray]:
        """Every graph output for ``tiles`` (one tile at a time when the batch is fixed)."""
        tiles = np.ascontiguousarray(tiles, np.float32)
        if self.fixed_batch and len(tiles) != self.fixed_batch:
            parts = [self.run_all(tiles[i:i + 1]) for i in range(len(tiles))]
            return [np.concatenate(outputs) for outputs in zip(*parts)]
        results = self.request.infer([tiles])
        return [np.array(results[output]) for output in self.compiled.outputs]

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return self.run_all(tiles)[0]

    def profile(self) -> list[dict]:
        """Per-layer times of the last run (``profile=True``): name, type, kernel and microseconds."""
        return [{"name": p.node_name, "type": p.node_type, "exec_type": p.exec_type,
                 "us": p.real_time.total_seconds() * 1e6}
                for p in self.request.profiling_info if p.status.name == "EXECUTED"]

    def int8_summary(self) -> str:
        """How many of the compiled model's convolutions and matmuls run on int8 kernels."""
        compute = [layer for layer in self.layers() if layer["type"] in _COMPUTE_LAYERS]
        int8 = sum(layer["precision"] in ("i8", "u8") for layer in compute)
        return f"{int8} of {len(compute)} convolution/matmul layers on int8 kernels, float ones in {self.precision}"

    def layers(self) -> list[dict]:
        """The compiled model's runtime graph: each layer's type, kernel (e.g. ``brgconv_avx512_amx_I8``)
        and runtime precision."""
        rows = []
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            rows.append({"name": op.get_friendly_name(), "type": info["layerType"].astype(str),
                         "kernel": info["primitiveType"].astype(str), "precision": info["runtimePrecision"].astype(str)})
        return rows


class LowBitTorchRunner(TorchRunner):
    """The calibrated model with its Linear layers on packed k-bit weights (``torch.ops.harmoq``):
    on a CUDA GPU its fast form (Triton kernels, FP16 islands, ``torch.compile`` with CUDA graphs;
    not yet run on a GPU), on the CPU the reference kernels in eager float32."""

    backend = "torch"

    def __init__(self, artifact_path: Path, checkpoint: Path):
        from ..calibrate import apply_artifact, load_artifact
        from ..models import load_model
        from ..plugins.torch_op import fast_lowbit_runtime, to_lowbit_runtime

        model = apply_artifact(load_artifact(artifact_path), load_model(checkpoint))
        runtime, self.lowbit_layers = to_lowbit_runtime(model)
        super().__init__(runtime, "cuda" if torch.cuda.is_available() else "cpu")
        self._fast = fast_lowbit_runtime(self.model) if self.device == "cuda" else None

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        if self._fast is None:
            return super().__call__(tiles)
        return self._fast(torch.from_numpy(np.ascontiguousarray(tiles))).cpu().numpy()
