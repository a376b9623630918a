"""The k-bit uniform fake quantizer with learnable bounds (2DQuant's quantizer, extended).

Asymmetric: ``s = (u - l) / (2^b - 1)``, integers ``q in [0, 2^b - 1]``, ``x_hat = l + s q``.
Symmetric (a constraint, ``l = -u``): integers ``q in [-(2^(b-1) - 1), 2^(b-1) - 1]`` with zero
point 0, ``s = u / (2^(b-1) - 1)``. This is the narrow signed grid TensorRT executes: zero is
exactly representable, at the price of one level (a 2-bit symmetric quantizer is ternary).

Rounding uses the straight-through estimator; clipping is ``clamp(x, l, u)`` with tensor bounds,
so ``l`` and ``u`` receive gradient from the values clipped at each end and, through ``s``, from
every value inside the range.
"""

import torch
from torch import nn

from ..errors import HarmoqError

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: int) -> int:
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise HarmoqError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


class _FakeQuantize(torch.autograd.Function):
    """Quantize-dequantize with the straight-through gradients written out.

    The same gradients as autograd through ``round_ste((clamp(x, l, u) - l) / s) * s + l`` with
    ``s = (u - l) / n`` and straight-through rounding, but it keeps one saved tensor instead of
    six and runs far fewer kernels: bound refinement on a CPU spends much of its time here. Inside the range,
    ``d/du = (r - t) / n = -d/dl`` (``t`` the scaled value, ``r`` its rounding) and ``d/dx = 1``;
    below it ``d/dl = 1``; above it ``d/du = 1``.
    """

    @staticmethod
    def forward(ctx, x, lower, upper, levels):
        step = (upper - lower).clamp_min(1e-8) / levels
        scaled = (torch.maximum(torch.minimum(x, upper), lower) - lower) / step
        ctx.save_for_backward(x, lower, upper)
        ctx.levels = levels
        return torch.round(scaled).mul_(step).add_(lower)

    @staticmethod
    def backward(ctx, grad):
        x, lower, upper = ctx.saved_tensors
        step = (upper - lower).clamp_min(1e-8) / ctx.levels
        below, above = x < lower, x > upper
        inside = ~(below | above)
        scaled = (x - lower) / step
        offset = (torch.round(scaled) - scaled).masked_fill_(~inside, 0) / ctx.levels
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_lower = grad_upper = None
        if ctx.needs_input_grad[1]:
            grad_lower = _sum_to(grad * (below.to(grad.dtype) - offset), lower)
        if ctx.needs_input_grad[2]:
            grad_upper = _sum_to(grad * (above.to(grad.dtype) + offset), upper)
        return grad_x, grad_lower, grad_upper, None


def _sum_to(grad: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """Sum a gradient over the dimensions its bound was broadcast along."""
    return grad.sum_to_size(bound.shape) if bound.dim() else grad.sum()


def fake_quantize(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, levels: int) -> torch.Tensor:
    """Quantize-dequantize ``x`` onto ``levels + 1`` evenly spaced values from ``lower`` to ``upper``."""
    lower, upper = torch.as_tensor(lower).to(x), torch.as_tensor(upper).to(x)
    return _FakeQuantize.apply(x, lower, upper, levels)


class UniformQuantizer(nn.Module):
    """Fake-quantizes a tensor to ``bits`` bits between learnable bounds.

    ``channel_axis`` selects per-channel bounds along that axis (``num_channels`` of them);
    ``None`` means one pair of bounds for the whole tensor. Bounds start undefined: a quantizer
    must be calibrated (``set_bounds``) before it is used with ``enabled`` set.
    """

    def __init__(self, bits: int, *, symmetric: bool = False, channel_axis: int | None = None,
                 num_channels: int = 1):
        super().__init__()
        self.bits = check_bits(bits)
        self.symmetric = symmetric
        self.channel_axis = channel_axis
        shape = (num_channels,) if channel_axis is not None else ()
        self.upper = nn.Parameter(torch.ones(shape))
        self.lower = None if symmetric else nn.Parameter(-torch.ones(shape))
        self.register_buffer("calibrated", torch.tensor(False), persistent=True)
        self.enabled = True
        #: called with every input tensor when set; calibration uses it to gather statistics
        self.observer = None

    @property
    def per_channel(self) -> bool:
        return self.channel_axis is not None

    @property
    def levels(self) -> int:
        """Number of quantization steps between the bounds (integer values minus one)."""
        return 2**self.bits - 2 if self.symmetric else 2**self.bits - 1

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        lower = -self.upper if self.symmetric else self.lower
        return lower, self.upper

    @torch.no_grad()
    def set_bounds(self, lower: torch.Tensor | float, upper: torch.Tensor | float) -> None:
        """Store the bounds as given (for a symmetric quantizer only ``upper`` is kept)."""
        upper = torch.as_tensor(upper, dtype=self.upper.dtype).reshape(self.upper.shape)
        lower = torch.as_tensor(lower, dtype=self.upper.dtype).reshape(self.upper.shape)
        if not (torch.isfinite(lower).all() and torch.isfinite(upper).all()):
            raise ValueError("quantizer bounds must be finite")
        if (upper < lower).any():
            raise ValueError("quantizer upper bound below its lower bound")
        self.upper.copy_(upper)
        if not self.symmetric:
            self.lower.copy_(lower)
        self.calibrated.fill_(True)

    def _broadcast(self, bound: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.channel_axis is None:
            return bound
        shape = [1] * x.dim()
        shape[self.channel_axis] = -1
        return bound.reshape(shape)

    def step(self) -> torch.Tensor:
        lower, upper = self.bounds()
        return (upper - lower).clamp_min(1e-8) / self.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer(x)
        if not self.enabled:
            return x
        if not self.calibrated:
            raise RuntimeError("quantizer used before calibration; set its bounds first")
        lower, upper = (self._broadcast(b, x) for b in self.bounds())
        return fake_quantize(x, lower, upper, self.levels)

    @torch.no_grad()
    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """The integer codes of ``x`` on this quantizer's grid (``qmin..qmax``)."""
        lower, upper = (self._broadcast(b, x) for b in self.bounds())
        step = self._broadcast(self.step(), x)
        return torch.round((torch.clamp(x, lower, upper) - lower) / step) + self.qmin

    def extra_repr(self) -> str:
        granularity = f"per-channel(axis={self.channel_axis})" if self.per_channel else "per-tensor"
        kind = "symmetric" if self.symmetric else "asymmetric"
        return f"bits={self.bits}, {kind}, {granularity}"
