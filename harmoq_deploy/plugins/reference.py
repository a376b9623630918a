"""The CPU reference of ``harmoq::LowBitLinear``: the ground truth every other implementation matches.

The operator (docs/lowbit_operator.md): a Linear or 1x1 convolution on k-bit activation codes carried
as INT8 and packed k-bit weights, with exact integer accumulation and a fused epilogue:

    acc[.., n] = sum_k x[.., k] * w[n, k]              (integers, exact)
    y[.., n]   = float32(acc) * scale[n] + bias[n]     (scale = weight step[n] * activation step)
    out        = y, or the codes clip(round(y / out_scale), +-(2^(out_bits-1) - 1)) as INT8

Inputs are channels-last (``[..., K]``); the exporter puts a 1x1 convolution's NCHW input into
that order around the node.
"""

import numpy as np
import torch

from .packing import unpack


def lowbit_linear(x_codes: torch.Tensor, packed: np.ndarray, bits: int, in_features: int, scale: torch.Tensor,
                  bias: torch.Tensor | None = None, out_scale: float = 0.0, out_bits: int = 8) -> torch.Tensor:
    if x_codes.dtype != torch.int8:
        raise TypeError(f"activation codes must be int8, got {x_codes.dtype}")
    weights = torch.from_numpy(unpack(packed, bits, in_features).astype(np.float64))
    # float64 holds every integer below 2^53 exactly, so this BLAS product is the exact integer sum
    # (|x w| <= 127 * 7 per term) at a fraction of an int64 matmul's cost on a CPU
    acc = x_codes.to(torch.float64) @ weights.T
    y = acc.to(torch.float32) * scale.to(torch.float32)
    if bias is not None:
        y = y + bias.to(torch.float32)
    if out_scale:
        top = 2 ** (out_bits - 1) - 1
        y = torch.clamp(torch.round(y / out_scale), -top, top).to(torch.int8)
    return y
