"""``torch.ops.harmoq.lowbit_linear`` and the low-bit PyTorch runtime built on it.

The custom op dispatches to the CPU reference or, for CUDA tensors, to the Triton kernel, so
``to_lowbit_runtime`` turns a calibrated fake-quant model into one that really computes its
quantized Linear layers (and unpadded 1x1 convolutions) with packed k-bit weights and integer
accumulation: the input is quantized to INT8 codes on the layer's grid (offset removed; ``W c``
is in the bias, as the exporter folds it), and the op returns the dequantized output in the
input's float type. Attention matmuls and float layers run as before. ``harmoq-build engine
--backend torch`` is this runtime on a CUDA device.

The fast GPU form is ``fast_lowbit_runtime``: the float layers in FP16 (autocast), the whole
model under ``torch.compile`` with CUDA graphs. The op has a fake (meta) implementation, so the compiler
traces through it and fuses each layer's input quantization (subtract, divide, round, clamp,
cast: five kernels in eager) into the kernel that produces the input, and the permutes around
1x1 convolutions into that kernel's indexing. Weights stay packed (k/32 of FP32's bytes) and
are unpacked in registers by the Triton kernel. ``docs/export.md`` (section 5) counts the
bytes and launches per tile of each form; ``scripts/bench_gpu.py`` times them.
"""

import numpy as np
import torch
from torch import nn

from ..export.points import PointGrid, point_grids
from ..quant.layers import QuantConv2d, QuantLinear
from .packing import PACKED_BITS, pack
from .reference import lowbit_linear


@torch.library.custom_op("harmoq::lowbit_linear", mutates_args=())
def lowbit_linear_op(x_codes: torch.Tensor, packed: torch.Tensor, bits: int, in_features: int, scale: torch.Tensor,
                     bias: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if x_codes.is_cuda:
        from .triton_kernel import lowbit_linear_triton

        return lowbit_linear_triton(x_codes, packed, bits, in_features, scale, bias, out_dtype=out_dtype)
    return lowbit_linear(x_codes, packed.cpu().numpy(), bits, in_features, scale, bias).to(out_dtype)


@lowbit_linear_op.register_fake
def _(x_codes, packed, bits, in_features, scale, bias, out_dtype=torch.float32):
    return x_codes.new_empty((*x_codes.shape[:-1], packed.shape[0]), dtype=out_dtype)


class LowBitLinear(nn.Module):
    """A quantized Linear (or unpadded 1x1 conv, channels moved last) computed by the custom op."""

    def __init__(self, layer: QuantLinear | QuantConv2d, weight_grid: PointGrid, input_grid: PointGrid, bits: int):
        super().__init__()
        codes = weight_grid.integers(layer.weight.detach()).reshape(layer.weight.shape[0], -1)
        w_hat = torch.from_numpy(codes.astype(np.float32)) * torch.from_numpy(weight_grid.step)[:, None]
        bias = layer.bias.detach().float().cpu() if layer.bias is not None else torch.zeros(len(codes))
        self.register_buffer("packed", torch.from_numpy(pack(codes, bits)))
        self.register_buffer("scale", torch.from_numpy(weight_grid.step * np.float32(input_grid.step)))
        self.register_buffer("bias", bias + w_hat.sum(dim=1) * float(input_grid.offset))
        self.bits, self.in_features, self.channels_first = bits, codes.shape[1], isinstance(layer, QuantConv2d)
        self.step, self.offset = float(input_grid.step), float(input_grid.offset)
        self.qmin, self.qmax = input_grid.qmin, input_grid.qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            x = x.movedim(1, -1)
        # the grid decision in float32 whatever the island's type, as the fake-quant model decides it
        codes = torch.clamp(torch.round((x.float() - self.offset) / self.step), self.qmin, self.qmax).to(torch.int8)
        y = torch.ops.harmoq.lowbit_linear(codes, self.packed, self.bits, self.in_features, self.scale, self.bias,
                                           x.dtype)
        return y.movedim(-1, 1) if self.channels_first else y


def _packable(layer: nn.Module, grid: PointGrid) -> int | None:
    if isinstance(layer, QuantConv2d) and (layer.kernel_size != (1, 1) or layer.padding not in ((0, 0), "valid")
                                           or layer.stride != (1, 1) or layer.groups != 1):
        return None
    if not grid.symmetric or grid.bits not in PACKED_BITS:
        return None
    return grid.bits


def to_lowbit_runtime(model: nn.Module) -> tuple[nn.Module, int]:
    """Replace (in place) every packable quantized layer by ``LowBitLinear``; returns the model and the count."""
    grids = point_grids(model)
    replaced = 0
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, (QuantLinear, QuantConv2d)):
            continue
        weight_grid, input_grid = grids[f"{name}.weight_quantizer"], grids[f"{name}.input_quantizer"]
        bits = _packable(layer, weight_grid)
        if bits is None:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, LowBitLinear(layer, weight_grid, input_grid, bits))
        replaced += 1
    return model, replaced


def fast_lowbit_runtime(runtime: nn.Module, device: str = "cuda", dtype: torch.dtype = torch.float16,
                        compile_mode: str | None = "reduce-overhead"):
    """The low-bit runtime as it should run on a GPU: float islands under autocast to ``dtype``
    (matrix products and convolutions in ``dtype``, the reductions autocast keeps in float32; the
    low-bit layers decide their codes in float32 and return ``dtype``), compiled with
    ``compile_mode`` (``reduce-overhead``: inductor kernels replayed as one CUDA graph per input
    shape; None: eager). Returns a callable taking and returning float32 tiles ``[n, 3, h, w]``."""
    runtime = runtime.eval().to(device)
    forward = torch.compile(runtime, mode=compile_mode) if compile_mode else runtime

    @torch.no_grad()
    def run(tiles: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device, dtype=dtype):
            return forward(tiles.to(device)).float()

    return run
