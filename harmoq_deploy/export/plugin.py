"""Rewrite a Q/DQ graph into the plugin format: quantized Linear / 1x1 layers -> ``harmoq::LowBitLinear``.

A layer qualifies when its weight is a per-channel DequantizeLinear of 2/3/4-bit codes and its
input is the DequantizeLinear of an activation QuantizeLinear: the node then takes the INT8
activation codes straight from the QuantizeLinear and the packed weight words
(``plugins/packing.py``), with ``scale = weight step[n] * activation step`` and the layer's bias
(offset folds included). A 1x1 convolution runs channels-last between two Transposes. Everything
else (attention matmuls, k x k convolutions, 8-bit weights) keeps its Q/DQ. The graph carries
the operator's ONNX function, so ONNX Runtime runs it as is.
"""

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..plugins.onnx_function import DOMAIN, OP, VERSION, lowbit_linear_function
from ..plugins.packing import PACKED_BITS, pack
from .exporter import IR_VERSION, OPSET, graph_metadata, set_metadata


def _constant_input(node: gs.Node, index: int) -> gs.Constant | None:
    tensor = node.inputs[index] if len(node.inputs) > index else None
    return tensor if isinstance(tensor, gs.Constant) else None


def _weight_codes(layer: gs.Node) -> tuple[np.ndarray, np.ndarray, gs.Node, int] | None:
    """``[N, K]`` int codes, per-row steps, the weight's DQ node and the bits that hold the codes,
    if ``layer`` has a packable weight."""
    source = layer.inputs[1]
    dq = source.inputs[0] if isinstance(source, gs.Variable) and source.inputs else None
    if dq is None or dq.op != "DequantizeLinear" or _constant_input(dq, 0) is None:
        return None
    codes, steps = dq.inputs[0].values, np.asarray(dq.inputs[1].values, np.float32)
    if steps.ndim != 1:
        return None
    if layer.op == "MatMul" and codes.ndim == 2 and dq.attrs.get("axis") == 1:
        codes = codes.T
    elif layer.op == "Gemm" and codes.ndim == 2 and layer.attrs.get("transB", 0) and dq.attrs.get("axis", 1) == 0:
        pass
    elif layer.op == "Conv" and codes.ndim == 4 and codes.shape[2:] == (1, 1) and not any(layer.attrs.get("pads", [0])) \
            and all(s == 1 for s in layer.attrs.get("strides", [1])) and layer.attrs.get("group", 1) == 1:
        codes = codes[:, :, 0, 0]
    else:
        return None
    top = int(np.abs(codes).max()) if codes.size else 0
    bits = next((b for b in PACKED_BITS if top <= 2 ** (b - 1) - 1), None)
    return (codes, steps, dq, bits) if bits is not None else None


def _activation_codes(layer: gs.Node) -> tuple[gs.Variable, float] | None:
    """The INT8 codes feeding ``layer`` and their step, if its input is Q -> DQ."""
    source = layer.inputs[0]
    dq = source.inputs[0] if isinstance(source, gs.Variable) and source.inputs else None
    if dq is None or dq.op != "DequantizeLinear":
        return None
    codes = dq.inputs[0]
    quantize = codes.inputs[0] if isinstance(codes, gs.Variable) and codes.inputs else None
    step = _constant_input(dq, 1)
    if quantize is None or quantize.op != "QuantizeLinear" or step is None or np.asarray(step.values).size != 1:
        return None
    return codes, float(np.asarray(step.values).reshape(()))


def _bias_and_output(layer: gs.Node, rows: int) -> tuple[np.ndarray, gs.Variable, gs.Node | None]:
    """The layer's bias (zeros if none), the tensor carrying the biased output, and a bias Add to drop."""
    if layer.op in ("Gemm", "Conv"):
        bias = _constant_input(layer, 2)
        return (np.asarray(bias.values, np.float32) if bias is not None else np.zeros(rows, np.float32),
                layer.outputs[0], None)
    out = layer.outputs[0]
    if len(out.outputs) == 1 and out.outputs[0].op == "Add":
        add = out.outputs[0]
        other = next((t for t in add.inputs if t is not out), None)
        if isinstance(other, gs.Constant) and other.shape == (rows,):
            return np.asarray(other.values, np.float32), add.outputs[0], add
    return np.zeros(rows, np.float32), out, None


def to_plugin_graph(qdq: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The plugin-format graph of an exported Q/DQ graph, and how many layers became LowBitLinear."""
    graph = gs.import_onnx(qdq)
    converted = 0
    for layer in [n for n in graph.nodes if n.op in ("MatMul", "Gemm", "Conv")]:
        weight = _weight_codes(layer)
        activation = _activation_codes(layer) if weight is not None else None
        if activation is None:
            continue
        codes, steps, _, bits = weight
        x_codes, x_step = activation
        rows, length = codes.shape
        bias, output, bias_add = _bias_and_output(layer, rows)
        name = layer.name or output.name
        inputs = [x_codes,
                  gs.Constant(f"{name}.packed", pack(codes, bits)),
                  gs.Constant(f"{name}.scale", (steps * np.float32(x_step)).astype(np.float32)),
                  gs.Constant(f"{name}.bias", bias)]
        attrs = {"in_features": length, "bits": bits, "plugin_namespace": DOMAIN, "plugin_version": str(VERSION)}
        if layer.op == "Conv":
            nhwc = gs.Variable(f"{name}.nhwc", dtype=np.int8)
            graph.nodes.append(gs.Node("Transpose", name=f"{name}/ToChannelsLast", attrs={"perm": [0, 2, 3, 1]},
                                       inputs=[x_codes], outputs=[nhwc]))
            inputs[0] = nhwc
            result = gs.Variable(f"{name}.lowbit", dtype=np.float32)
            graph.nodes.append(gs.Node(OP, name=f"{name}/{OP}", domain=DOMAIN, attrs=attrs, inputs=inputs,
                                       outputs=[result]))
            graph.nodes.append(gs.Node("Transpose", name=f"{name}/ToChannelsFirst", attrs={"perm": [0, 3, 1, 2]},
                                       inputs=[result], outputs=[output]))
        else:
            graph.nodes.append(gs.Node(OP, name=f"{name}/{OP}", domain=DOMAIN, attrs=attrs, inputs=inputs,
                                       outputs=[output]))
        layer.outputs.clear()
        if bias_add is not None:
            bias_add.outputs.clear()
        converted += 1
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    model.ir_version = IR_VERSION
    del model.opset_import[:]
    model.opset_import.extend([onnx.helper.make_opsetid("", OPSET), onnx.helper.make_opsetid(DOMAIN, VERSION)])
    model.functions.append(lowbit_linear_function())
    onnx.checker.check_model(model)
    set_metadata(model, {**graph_metadata(qdq), "format": "plugin"})
    return model, converted
