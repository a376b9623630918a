"""Layers that fake-quantize their weight and their input activation.

They subclass the float layers and share their parameters, so a quantized model keeps the
float model's state-dict keys (plus the quantizers') and any code that inspects
``isinstance(m, nn.Linear)`` keeps working.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import UniformQuantizer


class QuantLinear(nn.Linear):
    weight_quantizer: UniformQuantizer
    input_quantizer: UniformQuantizer

    @classmethod
    def wrap(cls, linear: nn.Linear, weight_quantizer: UniformQuantizer,
             input_quantizer: UniformQuantizer) -> "QuantLinear":
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.weight_quantizer, layer.input_quantizer = weight_quantizer, input_quantizer
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantConv2d(nn.Conv2d):
    weight_quantizer: UniformQuantizer
    input_quantizer: UniformQuantizer

    @classmethod
    def wrap(cls, conv: nn.Conv2d, weight_quantizer: UniformQuantizer,
             input_quantizer: UniformQuantizer) -> "QuantConv2d":
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                     "transposed", "output_padding", "groups", "padding_mode",
                     "_reversed_padding_repeated_twice"):
            setattr(layer, attr, getattr(conv, attr))
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.weight_quantizer, layer.input_quantizer = weight_quantizer, input_quantizer
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


QUANT_LAYER_TYPES = (QuantLinear, QuantConv2d)
