"""Backends that run a batch of LR tiles: the PyTorch model itself, or an ONNX graph in ONNX Runtime.

Each runner is a callable ``[n, 3, h, w] float32 -> [n, 3, h*s, w*s] float32`` (``TileRunner``),
so tiling, validation, upscaling and benchmarks treat every backend alike.
"""

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


class LowBitTorchRunner(TorchRunner):
    """The calibrated model with its Linear layers on packed k-bit weights (``torch.ops.harmoq``):
    Triton kernels on a CUDA GPU, the reference kernels on the CPU."""

    backend = "torch"

    def __init__(self, artifact_path: Path, checkpoint: Path):
        from ..calibrate import apply_artifact, load_artifact
        from ..models import load_model
        from ..plugins.torch_op import to_lowbit_runtime

        model = apply_artifact(load_artifact(artifact_path), load_model(checkpoint))
        runtime, self.lowbit_layers = to_lowbit_runtime(model)
        super().__init__(runtime, "cuda" if torch.cuda.is_available() else "cpu")
