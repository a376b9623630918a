"""Fake-quantization core: the uniform quantizer, quantized layers and ``quantize_model``."""

from .apply import (is_weight_quantizer, quantization_disabled, quantize_model, quantizers,
                    set_quantization_enabled)
from .config import QuantConfig
from .coverage import CoverageReport, coverage_report
from .layers import QuantConv2d, QuantLinear
from .quantizer import MAX_BITS, MIN_BITS, UniformQuantizer, check_bits

__all__ = [
    "MAX_BITS", "MIN_BITS", "CoverageReport", "QuantConfig", "QuantConv2d", "QuantLinear",
    "UniformQuantizer", "check_bits", "coverage_report", "is_weight_quantizer", "quantization_disabled", "quantize_model",
    "quantizers", "set_quantization_enabled",
]
