"""``check_trt_rules``: what TensorRT's explicit quantization accepts, checked on an ONNX model.

The rules (../shared/docs/background.md, section 3): Q/DQ zero points are constant zeros; scales
are constant, finite, strictly positive and of the dtype of the float tensor they scale; the
quantized type is INT8 (TensorRT has no INT2/INT3 type; INT4 only for constant weights);
per-channel scales only where the quantized tensor is a constant (weights); activations are
per-tensor. No marker node of the exporter may survive.
"""

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import HarmoqError
from .points import MARKER_OP

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
_INT8 = onnx.TensorProto.INT8
_WEIGHT_ONLY = {onnx.TensorProto.INT4}


@dataclass(frozen=True)
class RuleViolation:
    node: str
    rule: str

    def __str__(self) -> str:
        return f"{self.node}: {self.rule}"


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.constant_types = {t.name: t.data_type for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                tensor = node.attribute[0].t
                self.constants[node.output[0]] = numpy_helper.to_array(tensor)
                self.constant_types[node.output[0]] = tensor.data_type
        inferred = onnx.shape_inference.infer_shapes(model)
        self.types = dict(self.constant_types)
        for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            self.types[info.name] = info.type.tensor_type.elem_type

    def is_constant(self, name: str) -> bool:
        return name in self.constants


def _check_qdq(node: onnx.NodeProto, g: _Graph) -> list[str]:
    problems = []
    inputs = list(node.input) + [""] * (3 - len(node.input))
    data, scale, zero = inputs[:3]
    label = "QuantizeLinear" if node.op_type == "QuantizeLinear" else "DequantizeLinear"
    if not zero:
        problems.append("zero point missing (it must be an explicit constant 0)")
    elif not g.is_constant(zero):
        problems.append("zero point is not a constant")
    elif np.any(g.constants[zero].astype(np.float64) != 0):
        problems.append("zero point is not 0 (TensorRT quantization is symmetric)")
    if not g.is_constant(scale):
        problems.append("scale is not a constant")
    else:
        values = g.constants[scale].astype(np.float64)
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            problems.append("scale not strictly positive and finite")
        if values.size > 1 and not g.is_constant(data):
            problems.append("per-channel scale on an activation (only constant weights may be per-channel)")
    # Q's integer type is its zero point's (UINT8 without one); DQ's is its input's.
    if label == "QuantizeLinear":
        int_type = g.constant_types.get(zero, onnx.TensorProto.UINT8 if not zero else None)
    else:
        int_type = g.types.get(data)
    if int_type != _INT8 and not (int_type in _WEIGHT_ONLY and label == "DequantizeLinear" and g.is_constant(data)):
        type_name = onnx.TensorProto.DataType.Name(int_type) if int_type else "unknown"
        problems.append(f"quantized type {type_name} (TensorRT runs INT8 here; no INT2/INT3)")
    float_name = data if label == "QuantizeLinear" else node.output[0]
    float_type, scale_type = g.types.get(float_name), g.types.get(scale)
    if float_type in _FLOAT_TYPES and scale_type is not None and scale_type != float_type:
        problems.append(f"scale dtype {onnx.TensorProto.DataType.Name(scale_type)} differs from the "
                        f"tensor's {onnx.TensorProto.DataType.Name(float_type)}")
    return [f"{label} {p}" for p in problems]


def trt_rule_violations(model: onnx.ModelProto) -> list[RuleViolation]:
    """Every violation of TensorRT's quantization rules in ``model`` (empty when it complies)."""
    g = _Graph(model)
    found = []
    for node in model.graph.node:
        name = node.name or node.output[0]
        if node.op_type == MARKER_OP:
            found.append(RuleViolation(name, f"unrewritten {MARKER_OP} marker"))
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            found += [RuleViolation(name, p) for p in _check_qdq(node, g)]
    return found


def check_trt_rules(model: onnx.ModelProto) -> None:
    """Raise ``HarmoqError`` naming the first violation (and how many there are), if any."""
    found = trt_rule_violations(model)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise HarmoqError(f"graph breaks TensorRT's quantization rules: {found[0]}{more}")
