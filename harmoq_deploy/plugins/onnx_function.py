"""``harmoq::LowBitLinear`` as an ONNX local function: the operator in standard ONNX ops.

Graphs carry this definition next to their ``LowBitLinear`` nodes, so ONNX Runtime (or any
runtime that inlines local functions) runs them with no custom-op library: the body unpacks the
k-bit words exactly as ``packing.unpack`` does (uint32 shifts; a value that crosses a word
boundary takes its high bits from the next word), accumulates in int32 with ``MatMulInteger``
and applies the float epilogue ``acc * scale + bias`` in the reference's order. A runtime with a
registered ``LowBitLinear`` plugin (TensorRT) can take the node instead.
"""

import onnx
from onnx import TensorProto, helper

DOMAIN, OP = "harmoq", "LowBitLinear"
VERSION = 1
OPSET = 17


def _constant(name: str, dtype: int, value, dims=()) -> onnx.NodeProto:
    values = value if isinstance(value, list) else [value]
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(f"{name}_value", dtype, list(dims), values))


def _attribute_constant(name: str, attribute: str) -> onnx.NodeProto:
    """A Constant whose integer value is the calling node's attribute ``attribute``."""
    node = helper.make_node("Constant", [], [name])
    ref = onnx.AttributeProto(name="value_int", ref_attr_name=attribute, type=onnx.AttributeProto.INT)
    node.attribute.append(ref)
    return node


def lowbit_linear_function() -> onnx.FunctionProto:
    """Inputs X (int8 codes [..., K]), W (int32 words [N, words]), scale [N], bias [N] -> Y float [..., N]."""
    u32, i64 = TensorProto.UINT32, TensorProto.INT64
    nodes = [
        _attribute_constant("K", "in_features"), _attribute_constant("bits", "bits"),
        _constant("zero", i64, 0), _constant("one", i64, 1), _constant("word_bits", i64, 32),
        _constant("zero_1d", i64, [0], [1]), _constant("one_1d", i64, [1], [1]),
        _constant("u32_word_bits", u32, 32), _constant("u32_max_shift", u32, 31),
        _constant("u32_zero", u32, 0), _constant("u32_one", u32, 1), _constant("i32_two", TensorProto.INT32, 2),
        # where each value starts: word index and bit shift
        helper.make_node("Range", ["zero", "K", "one"], ["index"]),
        helper.make_node("Mul", ["index", "bits"], ["start"]),
        helper.make_node("Div", ["start", "word_bits"], ["word"]),
        helper.make_node("Add", ["word", "one"], ["next_word"]),
        helper.make_node("Mod", ["start", "word_bits"], ["start_bit"]),
        helper.make_node("Cast", ["start_bit"], ["shift"], to=u32),
        # the words as uint32, with one zero word appended for values ending in the last word
        helper.make_node("Cast", ["W"], ["words"], to=u32),
        helper.make_node("Shape", ["words"], ["words_shape"]),
        helper.make_node("Slice", ["words_shape", "zero_1d", "one_1d"], ["rows"]),
        helper.make_node("Concat", ["rows", "one_1d"], ["pad_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["pad_shape"], ["pad"], value=helper.make_tensor("z", u32, [1], [0])),
        helper.make_node("Concat", ["words", "pad"], ["padded"], axis=1),
        helper.make_node("Gather", ["padded", "word"], ["low_word"], axis=1),
        helper.make_node("Gather", ["padded", "next_word"], ["high_word"], axis=1),
        helper.make_node("BitShift", ["low_word", "shift"], ["low_part"], direction="RIGHT"),
        # high part: the next word shifted up by 32 - shift (skipped when shift is 0: the value
        # starts on a word boundary, and a 32-bit shift is undefined)
        helper.make_node("Sub", ["u32_word_bits", "shift"], ["up"]),
        helper.make_node("Min", ["up", "u32_max_shift"], ["up_defined"]),
        helper.make_node("BitShift", ["high_word", "up_defined"], ["high_shifted"], direction="LEFT"),
        helper.make_node("Less", ["up", "u32_word_bits"], ["continues"]),
        helper.make_node("Where", ["continues", "high_shifted", "u32_zero"], ["high_part"]),
        helper.make_node("Add", ["low_part", "high_part"], ["stream"]),
        helper.make_node("Cast", ["bits"], ["u32_bits"], to=u32),
        helper.make_node("BitShift", ["u32_one", "u32_bits"], ["levels"], direction="LEFT"),
        helper.make_node("Mod", ["stream", "levels"], ["unsigned"]),
        # offset binary -> signed codes
        helper.make_node("Cast", ["unsigned"], ["unsigned_i32"], to=TensorProto.INT32),
        helper.make_node("Cast", ["levels"], ["levels_i32"], to=TensorProto.INT32),
        helper.make_node("Div", ["levels_i32", "i32_two"], ["half"]),
        helper.make_node("Sub", ["unsigned_i32", "half"], ["codes_i32"]),
        helper.make_node("Cast", ["codes_i32"], ["codes"], to=TensorProto.INT8),
        helper.make_node("Transpose", ["codes"], ["codes_t"], perm=[1, 0]),
        # exact integer accumulation, then the float epilogue
        helper.make_node("MatMulInteger", ["X", "codes_t"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["acc_f", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["Y"]),
    ]
    return helper.make_function(DOMAIN, OP, ["X", "W", "scale", "bias"], ["Y"], nodes,
                                [helper.make_opsetid("", OPSET)], attributes=["in_features", "bits"])
