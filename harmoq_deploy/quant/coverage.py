"""Which ops a quantized model runs in low bit, and what share of the model's FLOPs they carry."""

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .layers import QuantConv2d, QuantLinear
from .apply import quantizers, set_quantization_enabled
from .matmul import MatmulQuantizers


@dataclass(frozen=True)
class CoveredOp:
    name: str
    kind: str
    flops: int


@dataclass(frozen=True)
class CoverageReport:
    ops: list[CoveredOp]
    total_flops: int
    input_size: tuple[int, int]

    @property
    def quantized_flops(self) -> int:
        return sum(op.flops for op in self.ops)

    @property
    def quantized_share(self) -> float:
        return self.quantized_flops / self.total_flops if self.total_flops else 0.0

    def by_kind(self) -> dict[str, tuple[int, float]]:
        """Number of ops and FLOP share per op kind."""
        summary: dict[str, tuple[int, float]] = {}
        for op in self.ops:
            count, share = summary.get(op.kind, (0, 0.0))
            summary[op.kind] = (count + 1, share + op.flops / self.total_flops)
        return summary

    def summary(self) -> str:
        """One line: how many ops run quantized, by kind, and their share of the model's FLOPs."""
        h, w = self.input_size
        kinds = ", ".join(f"{count} {kind}" for kind, (count, _) in self.by_kind().items())
        return (f"quantized: {len(self.ops)} ops ({kinds or 'none'}), {self.quantized_share:.1%} of the model's "
                f"{self.total_flops / 1e9:.3f} GFLOPs at a {h}x{w} input")

    def to_markdown(self) -> str:
        h, w = self.input_size
        lines = [f"Quantized ops at a {h}x{w} input: {len(self.ops)}, "
                 f"{self.quantized_share:.1%} of {self.total_flops / 1e9:.3f} GFLOPs", "",
                 "| op | kind | GFLOPs | share |", "|---|---|---|---|"]
        lines += [f"| {op.name} | {op.kind} | {op.flops / 1e9:.4f} | {op.flops / self.total_flops:.2%} |"
                  for op in self.ops]
        return "\n".join(lines)


def _layer_flops(layer: nn.Module, output: torch.Tensor) -> int:
    per_output = layer.weight[0].numel() if isinstance(layer, nn.Conv2d) else layer.in_features
    return 2 * output.numel() * per_output


def coverage_report(model: nn.Module, input_size: tuple[int, int] = (64, 64)) -> CoverageReport:
    """Run ``model`` once at ``input_size`` with quantizers bypassed and attribute FLOPs to quantized ops.

    FLOPs are counted as torch's FlopCounterMode counts them (2 per multiply-accumulate).
    """
    layer_flops: dict[str, int] = {}
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (QuantLinear, QuantConv2d))}
    matmuls = {name.rpartition(".")[0]: m for name, m in model.named_modules() if isinstance(m, MatmulQuantizers)}
    handles = [
        layer.register_forward_hook(
            lambda m, _i, out, name=name: layer_flops.__setitem__(name, layer_flops.get(name, 0) + _layer_flops(m, out)))
        for name, layer in layers.items()
    ]
    previously_enabled = {name: q.enabled for name, q in quantizers(model).items()}
    set_quantization_enabled(model, False)
    param = next(model.parameters())
    example = torch.rand(1, 3, *input_size, generator=torch.Generator().manual_seed(0)).to(param)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        for name, q in quantizers(model).items():
            q.enabled = previously_enabled[name]
    ops = [CoveredOp(name, "linear" if isinstance(layer, QuantLinear) else "conv", layer_flops.get(name, 0))
           for name, layer in layers.items()]
    ops += [CoveredOp(f"{owner}.matmul{i}" if owner else f"matmul{i}", "matmul", 2 * macs)
            for owner, module in matmuls.items() for i, macs in enumerate(module.last_macs)]
    return CoverageReport(ops=ops, total_flops=counter.get_total_flops(), input_size=input_size)
