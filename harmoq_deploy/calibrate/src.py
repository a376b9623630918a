"""Structural Residual Calibration (SRC): correct each layer's weights for the detail its
activation quantization removes.

For a quantized layer computing ``y = (W + dW) q`` with ``q = Q_a(x)`` its quantized input and
``dx = q - x`` the activation-quantization error, SRC solves

    min_dW  E || H (W dx + dW q) ||^2 + lambda ||dW||_F^2

where ``H`` is a Laplacian over the input's spatial grid: only the high-frequency part of the
output error (edges, texture: the structure SSIM sees) is asked of the weights. ``H`` acts on
positions and ``W`` on channels, so they commute, ``H(W dx + dW q) = W dx_H + dW q_H``, and
the normal equations give Theorem 1 with the projection on the spatial side:

    dW* = -W E[dx_H q_H^T] (E[q_H q_H^T] + lambda I)^-1.

The Laplacian annihilates constants, so the low-frequency (mean) error is left to the bias,
where it belongs: ``db* = -E[W dx + dW* q]``. ``lambda`` is ``ridge`` times the mean diagonal of
``E[q_H q_H^T]``, which makes it independent of the activation scale.

Layers are corrected in network order inside one forward pass: a pre-hook on each layer solves
from the input it actually receives (upstream layers already corrected and quantized), updates
the weights, re-initialises the layer's weight bounds for the corrected weights, and then lets
the layer run, so downstream layers see the corrected output. lambda is chosen per layer by
hold-out: fitted on half the crops, each candidate (and no correction at all) is scored by the
layer's quantized output error on the other half, weight quantization of the corrected weights
included, which SRC's objective leaves out. With ``rounding_damping`` set each candidate is also
tried rounded onto its weight grid one input column at a time, each column's rounding error
compensated by the columns not yet rounded (OPTQ's update), which is the rest of the layer's
least-squares objective once the weights must lie on the grid. See docs/method.md, section 1.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.layers import QUANT_LAYER_TYPES, QuantConv2d
from ..quant.matmul import unquantized_matmuls
from ..quant.quantizer import fake_quantize

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
MAX_ROWS = 1 << 15


def _laplacian_2d(maps: torch.Tensor) -> torch.Tensor:
    """5-point Laplacian of ``[B, C, H, W]`` maps, replicate-padded so borders add no false edges."""
    channels = maps.shape[1]
    kernel = _LAPLACIAN.to(maps).expand(channels, 1, 3, 3)
    return F.conv2d(F.pad(maps, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)


def _laplacian_tokens(x: torch.Tensor) -> torch.Tensor:
    """High-pass a Linear's input ``[..., C]`` over its spatial grid: ``[B, H, W, C]``, or a
    square token grid ``[B, N = n^2, C]`` (a whole image or one attention window); any other
    token layout is high-passed along its token axis."""
    if x.dim() == 4:
        return _laplacian_2d(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    tokens = x.reshape(-1, *x.shape[-2:]) if x.dim() >= 2 else x[None, None]
    side = math.isqrt(tokens.shape[1])
    if side * side == tokens.shape[1] and side > 1:
        grid = tokens.reshape(tokens.shape[0], side, side, tokens.shape[2]).permute(0, 3, 1, 2)
        return _laplacian_2d(grid).permute(0, 2, 3, 1)
    padded = F.pad(tokens.transpose(1, 2), (1, 1), mode="replicate")
    kernel = torch.tensor([1.0, -2.0, 1.0]).to(x).expand(tokens.shape[2], 1, 3)
    return F.conv1d(padded, kernel, groups=tokens.shape[2]).transpose(1, 2)


def layer_rows(layer: nn.Module, x: torch.Tensor, high_pass: bool) -> torch.Tensor:
    """The vectors ``layer``'s weight multiplies, one row each: channels for a Linear, im2col
    patches for a convolution; spatially high-passed first when ``high_pass``."""
    if isinstance(layer, QuantConv2d):
        maps = _laplacian_2d(x) if high_pass else x
        patches = F.unfold(maps, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    tokens = _laplacian_tokens(x) if high_pass else x
    return tokens.reshape(-1, x.shape[-1])


def supports_src(layer: nn.Module) -> bool:
    return isinstance(layer, QUANT_LAYER_TYPES) and getattr(layer, "groups", 1) == 1


def _sample_rows(*rows: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    if rows[0].shape[0] <= MAX_ROWS:
        return rows
    index = torch.randperm(rows[0].shape[0], generator=generator)[:MAX_ROWS].to(rows[0].device)
    return tuple(r[index] for r in rows)


def solve_correction(weight: torch.Tensor, q_h: torch.Tensor, dx_h: torch.Tensor, ridge: float) -> torch.Tensor:
    """Theorem 1: ``dW* = -W E[dx_H q_H^T] (E[q_H q_H^T] + lambda I)^-1`` from matched rows."""
    q_h, dx_h = q_h.double(), dx_h.double()
    gram = q_h.T @ q_h / len(q_h)
    cross = dx_h.T @ q_h / len(q_h)
    lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
    system = gram + lam * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    flat = weight.reshape(weight.shape[0], -1).double()
    return -torch.linalg.solve(system, cross.T @ flat.T).T.reshape(weight.shape).to(weight.dtype)


def structural_objective(layer: nn.Module, x: torch.Tensor, correction: torch.Tensor | None = None) -> float:
    """``E || H (W dx + dW q) ||^2`` of ``layer`` on input ``x`` (per output value), ``dW`` = ``correction``."""
    with torch.no_grad():
        q = layer.input_quantizer(x)
        q_h, dx_h = layer_rows(layer, q, True), layer_rows(layer, q - x, True)
        weight = layer.weight.reshape(layer.weight.shape[0], -1)
        err = dx_h @ weight.T
        if correction is not None:
            err = err + q_h @ correction.reshape(weight.shape).T
        return err.pow(2).mean().item()


def rounding_factor(q_rows: torch.Tensor, damping: float) -> torch.Tensor:
    """The upper Cholesky factor of ``(E[q q^T] + damping * mean diag I)^-1`` that
    ``round_with_feedback`` propagates rounding errors with; input columns that never fire get a
    unit diagonal, so the Gram is invertible and their weights are rounded without feedback."""
    q_rows = q_rows.double()
    gram = q_rows.T @ q_rows / len(q_rows)
    dead = gram.diagonal() <= 0
    gram[dead, dead] = 1.0
    gram.diagonal().add_(damping * gram.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(gram)), upper=True)


def round_with_feedback(weight: torch.Tensor, quantizer: nn.Module, factor: torch.Tensor) -> torch.Tensor:
    """``weight`` on its quantizer's grid, one input column at a time, each column's rounding error
    pushed onto the columns not yet rounded so that ``E || (W - W_rounded) q ||^2`` stays small
    (OPTQ's update, Frantar et al. 2023; ``factor`` from ``rounding_factor``)."""
    flat = weight.detach().reshape(weight.shape[0], -1).double().clone()
    lower, upper = (b.detach().double() for b in quantizer.bounds())
    for i in range(flat.shape[1]):
        rounded = fake_quantize(flat[:, i], lower, upper, quantizer.levels)
        error = (flat[:, i] - rounded) / factor[i, i]
        flat[:, i:] -= error[:, None] * factor[i, i:][None, :]
        flat[:, i] = rounded
    return flat.reshape(weight.shape).to(weight.dtype)


@dataclass
class _LayerFit:
    """One layer's SRC problem, from the input it receives: the high-passed rows Theorem 1 is solved on
    (the batch's first half), the rows its candidates are scored on (the second half), and the float
    output those should reach."""

    layer: nn.Module
    weight: torch.Tensor
    q_h: torch.Tensor
    dx_h: torch.Tensor
    rows_q: torch.Tensor
    target: torch.Tensor
    mean_dx: torch.Tensor
    mean_q: torch.Tensor
    rounding: torch.Tensor | None

    @classmethod
    def from_input(cls, layer: nn.Module, x: torch.Tensor, generator: torch.Generator,
                   rounding_damping: float | None) -> "_LayerFit":
        q = layer.input_quantizer(x)
        half = max(x.shape[0] // 2, 1)
        fit, check = slice(0, half), slice(half if x.shape[0] > 1 else 0, None)
        q_h, dx_h = _sample_rows(layer_rows(layer, q[fit], True), layer_rows(layer, (q - x)[fit], True),
                                 generator=generator)
        rows_q, rows_x = _sample_rows(layer_rows(layer, q[check], False), layer_rows(layer, x[check], False),
                                      generator=generator)
        fit_rows_q = layer_rows(layer, q[fit], False)
        weight = layer.weight.detach().clone()
        rounding = None
        if rounding_damping is not None and layer.weight_quantizer.channel_axis in (None, 0):
            rounding = rounding_factor(_sample_rows(fit_rows_q, generator=generator)[0], rounding_damping)
        return cls(layer, weight, q_h, dx_h, rows_q, rows_x @ weight.reshape(weight.shape[0], -1).T,
                   layer_rows(layer, (q - x)[fit], False).mean(0), fit_rows_q.mean(0), rounding)

    @property
    def flat(self) -> torch.Tensor:
        return self.weight.reshape(self.weight.shape[0], -1)

    def candidate(self, d_weight: torch.Tensor, rounded: bool, reset_weight_bounds: Callable[[nn.Module], None],
                  biased: bool = True) -> "_Candidate":
        """``weight + d_weight`` (rounded onto its grid if asked) with its least-squares bias change when
        ``biased``, scored by its held-out output error; the layer is left holding it."""
        layer, flat = self.layer, self.flat
        layer.weight.copy_(self.weight + d_weight)
        reset_weight_bounds(layer)
        if rounded:
            layer.weight.copy_(round_with_feedback(layer.weight, layer.weight_quantizer, self.rounding))
        d_weight = layer.weight.detach() - self.weight
        d_bias = -(self.mean_dx @ flat.T + self.mean_q @ d_weight.reshape(flat.shape).T) \
            if biased and layer.bias is not None else torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
        quantized = layer.weight_quantizer(layer.weight).reshape(flat.shape)
        error = (self.rows_q @ quantized.T + d_bias - self.target).pow(2).mean().item()
        bounds = {k: v.clone() for k, v in layer.weight_quantizer.state_dict().items()}
        return _Candidate(error, d_weight, d_bias, bounds)


@dataclass
class _Candidate:
    error: float
    d_weight: torch.Tensor
    d_bias: torch.Tensor
    bounds: dict[str, torch.Tensor]


def _correct_layer(fit: _LayerFit, ridges: tuple[float, ...],
                   reset_weight_bounds: Callable[[nn.Module], None]) -> str | None:
    """Apply to ``fit.layer`` the candidate with the lowest held-out error: no change, a ridge's
    correction, rounded or not, or the rounding alone. Returns its label, None for no change."""
    best, label = fit.candidate(torch.zeros_like(fit.weight), False, reset_weight_bounds, biased=False), None
    corrections = [(None, torch.zeros_like(fit.weight))] + \
        [(r, solve_correction(fit.weight, fit.q_h, fit.dx_h, r)) for r in ridges]
    rounds = [False, True] if fit.rounding is not None else [False]
    for ridge, d_weight in corrections:
        for rounded in rounds:
            if ridge is None and not rounded:
                continue
            result = fit.candidate(d_weight, rounded, reset_weight_bounds)
            if result.error < best.error:
                best = result
                label = "+".join(part for part in ((str(ridge) if ridge is not None else ""),
                                                    ("round" if rounded else "")) if part)
    layer = fit.layer
    layer.weight.copy_(fit.weight + best.d_weight)
    layer.weight_quantizer.load_state_dict(best.bounds)
    if label is not None and layer.bias is not None:
        layer.bias.add_(best.d_bias)
    return label


class _InNetworkOrder:
    """The forward pre-hook that corrects each layer once, from the first input it receives."""

    def __init__(self, ridges, reset_weight_bounds, generator: torch.Generator, rounding_damping: float | None):
        self.ridges, self.reset_weight_bounds = ridges, reset_weight_bounds
        self.generator, self.rounding_damping = generator, rounding_damping
        self.visited: set[str] = set()
        self.chosen: dict[str, str] = {}

    def __call__(self, name: str, layer: nn.Module, inputs) -> None:
        if name in self.visited:
            return
        self.visited.add(name)
        with unquantized_matmuls():
            fit = _LayerFit.from_input(layer, inputs[0], self.generator, self.rounding_damping)
            label = _correct_layer(fit, self.ridges, self.reset_weight_bounds)
        if label is not None:
            self.chosen[name] = label


def structural_residual_calibration(model: nn.Module, crops: torch.Tensor, ridges: tuple[float, ...],
                                    reset_weight_bounds: Callable[[nn.Module], None],
                                    seed: int = 0, rounding_damping: float | None = None) -> dict[str, str]:
    """Correct every supported quantized layer of ``model`` in network order.

    Each layer solves Theorem 1 on the first half of the batch for every relative lambda in
    ``ridges``. With ``rounding_damping`` set, each of those corrections (and no correction)
    is also tried rounded onto the weight grid by ``round_with_feedback``, from the Gram of the
    layer's quantized input on that half. The layer keeps the candidate (or no change) whose
    quantized output, weight quantization included, is closest to the float output on the
    second half. ``reset_weight_bounds(layer)`` re-initialises a layer's weight bounds for its
    current weights; rounding keeps the bounds of the weights it rounds. Returns the choice
    per changed layer: the ridge, ``+round`` when rounded, or ``round`` alone.
    """
    layers = {name: m for name, m in model.named_modules() if supports_src(m)}
    corrector = _InNetworkOrder(ridges, reset_weight_bounds, torch.Generator().manual_seed(seed), rounding_damping)
    crops = crops.to(next(model.parameters()))
    handles = [m.register_forward_pre_hook(partial(corrector, name)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            model(crops)
    finally:
        for handle in handles:
            handle.remove()
    return corrector.chosen
