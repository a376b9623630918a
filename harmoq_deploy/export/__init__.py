"""Export stage: a calibrated quantized model -> ONNX with TensorRT-legal Q/DQ."""

from .exporter import (INPUT, OUTPUT, attention_window, check_dynamic_support, check_tile, export_calibrated,
                       graph_metadata, load_onnx, save_onnx, set_metadata, to_float_graph, to_qdq_graph)
from .points import PointGrid, point_grids
from .rules import RuleViolation, check_trt_rules, trt_rule_violations

__all__ = [
    "INPUT", "OUTPUT", "PointGrid", "RuleViolation", "attention_window", "check_dynamic_support", "check_tile",
    "check_trt_rules", "export_calibrated", "graph_metadata", "load_onnx", "point_grids", "save_onnx",
    "set_metadata", "to_float_graph", "to_qdq_graph", "trt_rule_violations",
]
