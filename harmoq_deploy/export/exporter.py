"""Export a calibrated quantized model to ONNX with TensorRT-legal Q/DQ.

The float network is exported by ``torch.onnx.export`` (the TorchScript exporter: the dynamo
exporter needs onnxscript, which this project does not ship), with each quantizer as a
``harmoq::QuantPoint`` marker; constants are folded; the markers are rewritten into Q/DQ
(``qdq.insert_qdq``); ``check_trt_rules`` must pass; the file is written atomically.

Graphs carry ``harmoq.*`` metadata (scale, tile, bits, source checkpoint) so that later stages
(validation, engines) can check they are given matching inputs. Tracing freezes Python-level
shape arithmetic (window padding, reshapes), so dynamic height/width is offered only after the
traced float graph is shown to reproduce the model at sizes other than the traced one.
"""

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from torch import nn

from ..errors import HarmoqError, first_line
from ..io import write_atomic
from ..models.infer import attention_window
from ..quant import quantization_disabled
from .points import MARKER_OP, point_grids, quant_point_markers
from .qdq import insert_qdq
from .rules import check_trt_rules

OPSET = 17
#: ONNX Runtime 1.31 reads IR versions up to 13; onnx 1.23 would write 14 by default.
IR_VERSION = 8
INPUT, OUTPUT = "lr", "sr"
METADATA_PREFIX = "harmoq."


def check_tile(model: nn.Module, tile: int) -> int:
    window = attention_window(model)
    if tile < window:
        raise HarmoqError(f"tile {tile} is smaller than the model's attention window ({window}); use --tile >= {window}")
    return tile


class _ImageOnly(nn.Module):
    """``model`` called with the image alone: the TorchScript exporter turns a ``forward``'s
    defaulted extra arguments (Real-CUGAN's ``alpha``) into graph inputs otherwise."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _trace(model: nn.Module, tile: int | None) -> onnx.ModelProto:
    size = tile or 2 * attention_window(model)
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    dynamic = {INPUT: {2: "height", 3: "width"}, OUTPUT: {2: "out_height", 3: "out_width"}} if tile is None else None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-int shapes: expected for a fixed tile
        try:
            torch.onnx.export(_ImageOnly(model).train(model.training), (example,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=[INPUT], output_names=[OUTPUT], dynamic_axes=dynamic)
        except Exception as exc:  # the tracer raises many types on unsupported code
            raise HarmoqError(f"ONNX export failed: {first_line(exc)}") from None
    exported = onnx.load_from_string(buffer.getvalue())
    exported.ir_version = IR_VERSION
    return exported


def to_qdq_graph(model: nn.Module, tile: int | None) -> onnx.ModelProto:
    """The quantized ``model`` as an ONNX graph with Q/DQ (``tile`` None: dynamic height/width)."""
    model.eval()
    with quant_point_markers(model):
        traced = _trace(model, tile)
    graph = gs.import_onnx(traced)
    graph.fold_constants(should_exclude_node=lambda node: node.op == MARKER_OP).cleanup()
    insert_qdq(graph, point_grids(model))
    exported = gs.export_onnx(graph)
    exported.ir_version = IR_VERSION
    del exported.opset_import[:]
    exported.opset_import.append(onnx.helper.make_opsetid("", OPSET))
    onnx.checker.check_model(exported)
    check_trt_rules(exported)
    return exported


def to_float_graph(model: nn.Module, tile: int | None) -> onnx.ModelProto:
    """The float network as ONNX (quantizers off), for FP32 reference runs and benchmarks."""
    with quantization_disabled(model):
        return _trace(model, tile)


def _dynamic_probe_sizes(model: nn.Module) -> list[tuple[int, int]]:
    """Sizes unlike the traced one (``2 * window`` square): other multiples and non-multiples."""
    window = attention_window(model)
    return [(3 * window, 2 * window), (2 * window + 5, 3 * window + 3)]


def check_dynamic_support(model: nn.Module, tolerance: float = 1e-3) -> None:
    """Raise unless the float graph traced with dynamic height/width matches ``model`` at other sizes."""
    from ..engine.runners import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(to_float_graph(model, None))
    generator = torch.Generator().manual_seed(1)
    for height, width in _dynamic_probe_sizes(model):
        image = torch.rand(1, 3, height, width, generator=generator)
        with torch.no_grad(), quantization_disabled(model):
            expected = model(image).numpy()
        try:
            got = runner(image.numpy())
        except Exception as exc:  # ORT's shape errors: the graph froze a size
            raise HarmoqError(f"this architecture does not export with dynamic height/width (the traced graph "
                              f"fails at {height}x{width}: {first_line(exc)}); use --tile") from None
        if got.shape != expected.shape or float(np.abs(got - expected).max()) > tolerance:
            raise HarmoqError(f"this architecture does not export with dynamic height/width (the traced graph "
                              f"froze a size: wrong output at {height}x{width}); use --tile")


def set_metadata(model: onnx.ModelProto, values: dict[str, object]) -> onnx.ModelProto:
    """Store ``harmoq.<key>`` metadata entries (replacing earlier ones of the same keys)."""
    keep = [p for p in model.metadata_props if p.key.removeprefix(METADATA_PREFIX) not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        model.metadata_props.add(key=METADATA_PREFIX + key, value=str(value))
    return model


def graph_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key.removeprefix(METADATA_PREFIX): p.value for p in model.metadata_props
            if p.key.startswith(METADATA_PREFIX)}


def load_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise HarmoqError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise HarmoqError(f"{path}: not a readable ONNX file ({first_line(exc)})") from None


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    return write_atomic(path, model.SerializeToString())


def export_calibrated(model: nn.Module, manifest: dict, tile: int | None) -> onnx.ModelProto:
    """The Q/DQ graph of a model rebuilt from a calibration artifact (``manifest``), with metadata."""
    if tile is None:
        check_dynamic_support(model)
    else:
        check_tile(model, tile)
    config, source = manifest["quant_config"], manifest["source"]
    return set_metadata(to_qdq_graph(model, tile), {
        "format": "qdq", "tile": tile or "dynamic", "scale": source["scale"],
        "architecture": source["architecture"], "source_sha256": source["sha256"],
        "wbits": config["wbits"], "abits": config["abits"], "method": manifest["method"]["name"],
        "target": config["target"]})
