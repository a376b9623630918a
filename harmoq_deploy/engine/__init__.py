"""Engine stage: run exported graphs (ONNX Runtime; TensorRT where present) on tiles, validate them."""

from .runners import OnnxRuntimeRunner, TorchRunner
from .tiling import TileRunner, Tiling, run_tiled
from .validate import ImageReport, validate_graph

__all__ = ["ImageReport", "OnnxRuntimeRunner", "TileRunner", "Tiling", "TorchRunner", "run_tiled", "validate_graph"]
