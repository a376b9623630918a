"""Rewrite ``harmoq::QuantPoint`` markers into TensorRT-legal QuantizeLinear/DequantizeLinear.

Small pure functions over an onnx-graphsurgeon graph. The rules they produce (checked again by
``rules.check_trt_rules``): zero points are 0, scales are float32 like the tensors they scale,
per-channel scales only on constant weights, INT8 storage with the k-bit range enforced by the
integers themselves (weights) or by a Clip before Q (activations).

An asymmetric activation grid ``x_hat = c + s n`` is carried as the symmetric codes ``n`` of
``x - c`` (Q/DQ with zero point 0) and its offset ``c`` is restored exactly where TensorRT keeps
the consumer in INT8:

- a LayerNorm producer absorbs ``-c`` into its beta, so no subtraction runs before Q;
- a Linear (MatMul/Gemm on a constant weight) or an unpadded conv: ``W_hat c`` joins the bias;
- an activation x activation MatMul ``(A' + a)(B' + b) = A'B' + b rowsum(A') + a colsum(B' + b)``:
  the correction is two reductions on the dequantized operands, added after the INT8 MatMul;
- a zero-padded conv: ``conv(x' + c) = conv(x') + conv(c 1)`` where the second term is a
  one-channel conv of a ones map with the kernel summed over input channels (it differs from
  ``c sum(W)`` only at the borders, where padding contributes zeros instead of ``c``).

Anything else re-adds ``c`` in float after DQ: exact too, but TensorRT then runs that consumer
in float. Weights must be symmetric (their offset would multiply the data).
"""

import numpy as np
import onnx_graphsurgeon as gs
import torch

from ..errors import HarmoqError
from .points import MARKER_OP, PointGrid


def _const(name: str, value: np.ndarray) -> gs.Constant:
    return gs.Constant(name, np.ascontiguousarray(value))


def _var(name: str, dtype=np.float32) -> gs.Variable:
    return gs.Variable(name, dtype=dtype)


def _node(graph: gs.Graph, op: str, name: str, inputs: list, attrs: dict | None = None,
          dtype=np.float32) -> gs.Variable:
    """Append one node with a single output and return that output."""
    out = _var(f"{name}.out", dtype)
    graph.nodes.append(gs.Node(op, name=name, attrs=attrs or {}, inputs=inputs, outputs=[out]))
    return out


def _replace_uses(graph: gs.Graph, old: gs.Variable, new: gs.Tensor) -> None:
    for node in list(old.outputs):
        for i, tensor in enumerate(node.inputs):
            if tensor is old:
                node.inputs[i] = new
    graph.outputs = [new if t is old else t for t in graph.outputs]


def _dequantize_weight(graph: gs.Graph, marker: gs.Node, grid: PointGrid) -> tuple[gs.Variable, np.ndarray]:
    """Constant weight -> DQ(INT8 integers); returns the DQ output and the dequantized weight.

    A Transpose of the weight (a Linear exported as MatMul) is applied to the integers instead,
    so the weight stays a constant with its per-channel axis moved along.
    """
    weight = marker.inputs[0]
    if not isinstance(weight, gs.Constant):
        raise HarmoqError(f"weight quantizer {grid.name} does not quantize a constant in the graph")
    if not grid.symmetric:
        raise HarmoqError(f"{grid.name}: asymmetric weight grid; TensorRT needs zero-point-0 weights "
                          "(calibrate with --target tensorrt)")
    ints = grid.integers(torch.from_numpy(np.array(weight.values)))
    axis = grid.channel_axis
    out = marker.outputs[0]
    consumers = list(out.outputs)
    if len(consumers) == 1 and consumers[0].op == "Transpose":
        transpose = consumers[0]
        perm = list(transpose.attrs.get("perm", reversed(range(ints.ndim))))
        ints = ints.transpose(perm)
        axis = perm.index(axis) if axis is not None else None
        out = transpose.outputs[0]
        transpose.outputs.clear()
    scale = grid.step if axis is not None else grid.step.reshape(())
    zero = np.zeros(scale.shape, np.int8)
    attrs = {"axis": axis} if axis is not None else {}
    dq_out = _var(f"{grid.name}.dq")
    graph.nodes.append(gs.Node("DequantizeLinear", name=f"{grid.name}/DequantizeLinear", attrs=attrs, inputs=[
        _const(f"{grid.name}.int", ints), _const(f"{grid.name}.scale", scale.astype(np.float32)),
        _const(f"{grid.name}.zero_point", zero)], outputs=[dq_out]))
    _replace_uses(graph, out, dq_out)
    marker.outputs.clear()
    shape = [1] * ints.ndim
    if axis is not None:
        shape[axis] = -1
    return dq_out, ints.astype(np.float32) * scale.reshape(shape)


def _absorb_into_layernorm(x: gs.Tensor, offset: float, name: str) -> bool:
    """Subtract ``offset`` inside the LayerNorm producing ``x`` (its beta), if it feeds only this point."""
    producer = x.inputs[0] if isinstance(x, gs.Variable) and x.inputs else None
    if producer is None or producer.op != "LayerNormalization" or len(x.outputs) != 1:
        return False
    if len(producer.inputs) > 2 and not isinstance(producer.inputs[2], gs.Constant):
        return False
    width = producer.inputs[1].shape
    beta = producer.inputs[2].values if len(producer.inputs) > 2 else np.zeros(width, np.float32)
    shifted = _const(f"{name}.beta_shifted", (beta - np.float32(offset)).astype(np.float32))
    if len(producer.inputs) > 2:
        producer.inputs[2] = shifted
    else:
        producer.inputs.append(shifted)
    return True


def _concat_parts(x: gs.Tensor) -> list[gs.Tensor] | None:
    """The inputs of the Concat producing ``x`` if it feeds only this quantizer (else None)."""
    producer = x.inputs[0] if isinstance(x, gs.Variable) and x.inputs else None
    if producer is None or producer.op != "Concat" or len(x.outputs) != 1 \
            or any(isinstance(t, gs.Constant) for t in producer.inputs):
        return None
    return list(producer.inputs)


def _activation_codes(graph: gs.Graph, x: gs.Tensor, grid: PointGrid, name: str,
                      constants: dict[str, gs.Constant]) -> gs.Variable:
    """[Sub c] -> Clip to the k-bit range -> Q: the INT8 codes of ``x - c``."""
    if grid.offset and not _absorb_into_layernorm(x, float(grid.offset), name):
        x = _node(graph, "Sub", f"{name}/Sub", [x, constants["offset"]])
    clipped = _node(graph, "Clip", f"{name}/Clip", [x, constants["min"], constants["max"]])
    return _node(graph, "QuantizeLinear", f"{name}/QuantizeLinear", [clipped, constants["scale"], constants["zero_point"]],
                 dtype=np.int8)


def _quantize_activation(graph: gs.Graph, marker: gs.Node, grid: PointGrid) -> gs.Variable:
    """Activation -> [Sub c] -> Clip to the k-bit range -> Q -> DQ (the codes of ``x - c``).

    The input of a Concat is quantized part by part and the INT8 codes are concatenated before
    the one DQ (the same codes: every step is elementwise). OpenVINO's CPU plugin computes an
    INT8 convolution wrongly when Q/DQ sits after (or before) a float Concat on CPUs without AMX
    (measured: 0.2-0.3 relative error on AVX-512 VNNI and AVX2 with OpenVINO 2026.4, any width);
    on concatenated codes it is exact, and TensorRT and ONNX Runtime run either form.
    """
    if grid.channel_axis is not None:
        raise HarmoqError(f"{grid.name}: per-channel activation grid; TensorRT allows per-tensor only")
    x, name = marker.inputs[0], grid.name
    step = float(grid.step)
    constants = {key: _const(f"{name}.{key}", np.array(value, dtype)) for key, value, dtype in (
        ("offset", float(grid.offset), np.float32), ("min", grid.qmin * step, np.float32),
        ("max", grid.qmax * step, np.float32), ("scale", step, np.float32), ("zero_point", 0, np.int8))}
    parts = _concat_parts(x)
    if parts is None:
        codes = _activation_codes(graph, x, grid, name, constants)
    else:
        concat = x.inputs[0]
        pieces = [_activation_codes(graph, part, grid, f"{name}/part{i}", constants) for i, part in enumerate(parts)]
        codes = _node(graph, "Concat", f"{name}/ConcatCodes", pieces, {"axis": concat.attrs["axis"]}, dtype=np.int8)
    return _node(graph, "DequantizeLinear", f"{name}/DequantizeLinear", [codes, constants["scale"], constants["zero_point"]])


def _add_output_term(graph: gs.Graph, layer: gs.Node, term: gs.Tensor, name: str) -> None:
    """``layer``'s output becomes ``output + term`` for every consumer."""
    out = layer.outputs[0]
    corrected = _var(f"{name}.corrected")
    _replace_uses(graph, out, corrected)
    graph.nodes.append(gs.Node("Add", name=f"{name}/AddCorrection", inputs=[out, term], outputs=[corrected]))


def _fold_into_bias(graph: gs.Graph, layer: gs.Node, weight: np.ndarray, offset: float, name: str) -> None:
    """Add ``W_hat c`` to the bias of ``layer`` (an unpadded Conv, a Gemm, or a MatMul [+ bias Add])."""
    if layer.op == "Conv":
        delta, bias_index = offset * weight.reshape(weight.shape[0], -1).sum(axis=1), 2
    elif layer.op == "Gemm":
        delta, bias_index = offset * weight.sum(axis=1 if layer.attrs.get("transB", 0) else 0), 2
    else:
        delta = offset * weight.sum(axis=-2)
        adds = [n for n in layer.outputs[0].outputs if n.op == "Add"
                and any(isinstance(t, gs.Constant) and t.shape == tuple(delta.shape) for t in n.inputs)]
        if len(layer.outputs[0].outputs) != 1 or len(adds) != 1:
            _add_output_term(graph, layer, _const(f"{name}.offset_bias", delta.astype(np.float32)), name)
            return
        layer = adds[0]
        bias_index = next(i for i, t in enumerate(layer.inputs) if isinstance(t, gs.Constant))
    old = layer.inputs[bias_index].values if len(layer.inputs) > bias_index else 0.0
    bias = _const(f"{name}.folded_bias", (np.asarray(old, np.float32) + delta).astype(np.float32))
    if len(layer.inputs) > bias_index:
        layer.inputs[bias_index] = bias
    else:
        layer.inputs.append(bias)


def _padded_conv_correction(graph: gs.Graph, conv: gs.Node, weight: np.ndarray, offset: float, name: str) -> None:
    """Add ``conv(c 1)`` (zero-padded, no bias) to a padded conv's output: a one-channel conv of
    a ones map shaped like the input's height and width, with the kernel summed over input channels."""
    x = conv.inputs[0]
    shape = _node(graph, "Shape", f"{name}/Shape", [x], dtype=np.int64)
    size = _node(graph, "Slice", f"{name}/SpatialSize", [
        shape, _const(f"{name}.from", np.array([2], np.int64)), _const(f"{name}.to", np.array([4], np.int64))],
        dtype=np.int64)
    ones_shape = _node(graph, "Concat", f"{name}/OnesShape", [_const(f"{name}.one_one", np.array([1, 1], np.int64)),
                                                              size], {"axis": 0}, dtype=np.int64)
    ones = _node(graph, "ConstantOfShape", f"{name}/Ones", [ones_shape],
                 {"value": gs.Constant(f"{name}.one", np.array([1.0], np.float32))})
    kernel = (offset * weight.sum(axis=1, keepdims=True)).astype(np.float32)
    attrs = {k: v for k, v in conv.attrs.items() if k in ("dilations", "pads", "strides", "auto_pad", "kernel_shape")}
    term = _node(graph, "Conv", f"{name}/BorderAwareOffset", [ones, _const(f"{name}.offset_kernel", kernel)], attrs)
    _add_output_term(graph, conv, term, name)


def _matmul_correction(graph: gs.Graph, matmul: gs.Node, offsets: dict[int, float], name: str) -> None:
    """``(A' + a)(B' + b) = A'B' + b rowsum(A') + a colsum(B' + b)`` after an INT8 MatMul."""
    left, right = matmul.inputs[0], matmul.inputs[1]
    a, b = offsets.get(0, 0.0), offsets.get(1, 0.0)
    terms = []
    if b:
        rows = _node(graph, "ReduceSum", f"{name}/RowSum", [left, _const(f"{name}.last", np.array([-1], np.int64))],
                     {"keepdims": 1})
        terms.append(_node(graph, "Mul", f"{name}/RowTerm", [rows, _const(f"{name}.b", np.array(b, np.float32))]))
    if a:
        restored = _node(graph, "Add", f"{name}/RightRestored", [right, _const(f"{name}.b_back", np.array(b, np.float32))]) \
            if b else right
        cols = _node(graph, "ReduceSum", f"{name}/ColSum",
                     [restored, _const(f"{name}.second_last", np.array([-2], np.int64))], {"keepdims": 1})
        terms.append(_node(graph, "Mul", f"{name}/ColTerm", [cols, _const(f"{name}.a", np.array(a, np.float32))]))
    term = terms[0] if len(terms) == 1 else _node(graph, "Add", f"{name}/Terms", terms)
    _add_output_term(graph, matmul, term, name)


def _is_padded(conv: gs.Node) -> bool:
    return any(conv.attrs.get("pads", [0])) or conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")


def insert_qdq(graph: gs.Graph, grids: dict[str, PointGrid]) -> gs.Graph:
    """Replace every QuantPoint marker of ``graph`` by Q/DQ for its grid (in place; returned)."""
    markers = [n for n in graph.nodes if n.op == MARKER_OP]
    names = {n.attrs["name"] for n in markers}
    if names != set(grids):
        missing = sorted(set(grids) - names)
        raise HarmoqError(f"the exported graph has {len(names)} quantization points, the model "
                          f"{len(grids)} (first missing: {missing[0] if missing else '-'})")
    weights = {}
    for marker in markers:
        if isinstance(marker.inputs[0], gs.Constant):
            dq_out, value = _dequantize_weight(graph, marker, grids[marker.attrs["name"]])
            weights[dq_out.name] = value
    matmul_offsets: dict[str, tuple[gs.Node, dict[int, float]]] = {}
    for marker in markers:
        grid = grids[marker.attrs["name"]]
        if isinstance(marker.inputs[0], gs.Constant):
            continue
        out, offset = marker.outputs[0], float(grid.offset)
        dq_out = _quantize_activation(graph, marker, grid)
        consumers = list(out.outputs)
        layer = consumers[0] if len(consumers) == 1 else None
        weight = next((weights[t.name] for t in layer.inputs if t.name in weights), None) if layer else None
        if not offset:
            pass
        elif layer is not None and weight is not None and layer.op in ("MatMul", "Gemm", "Conv") \
                and not (layer.op == "Conv" and _is_padded(layer)):
            _fold_into_bias(graph, layer, weight, offset, grid.name)
        elif layer is not None and weight is not None and layer.op == "Conv":
            _padded_conv_correction(graph, layer, weight, offset, grid.name)
        elif layer is not None and layer.op == "MatMul" and weight is None:
            index = next(i for i, t in enumerate(layer.inputs) if t is out)
            matmul_offsets.setdefault(layer.name, (layer, {}))[1][index] = offset
        else:
            dq_out = _node(graph, "Add", f"{grid.name}/AddOffset", [
                dq_out, _const(f"{grid.name}.offset_back", np.array(offset, np.float32))])
        _replace_uses(graph, out, dq_out)
        marker.outputs.clear()
    for layer, offsets in matmul_offsets.values():
        _matmul_correction(graph, layer, offsets, f"{layer.name}.offsets")
    graph.nodes[:] = [n for n in graph.nodes if n.op != MARKER_OP]
    return graph.cleanup().toposort()
