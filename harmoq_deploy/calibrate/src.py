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
included, which SRC's objective leaves out. See docs/method.md.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.layers import QUANT_LAYER_TYPES, QuantConv2d
from ..quant.matmul import unquantized_matmuls

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


def structural_residual_calibration(model: nn.Module, crops: torch.Tensor, ridges: tuple[float, ...],
                                    reset_weight_bounds: Callable[[nn.Module], None],
                                    seed: int = 0) -> dict[str, float]:
    """Correct every supported quantized layer of ``model`` in network order.

    Each layer solves Theorem 1 on the first half of the batch for every relative lambda in
    ``ridges`` and keeps the one (or no correction) whose quantized output, weight quantization
    included, is closest to the float output on the second half. ``reset_weight_bounds(layer)``
    re-initialises a layer's weight bounds for its current weights. Returns the ridge chosen
    per corrected layer.
    """
    layers = {name: m for name, m in model.named_modules() if supports_src(m)}
    visited: set[str] = set()
    chosen: dict[str, float] = {}
    generator = torch.Generator().manual_seed(seed)
    crops = crops.to(next(model.parameters()))

    def correct(layer: nn.Module, inputs, name: str) -> None:
        if name in visited:
            return
        visited.add(name)
        with unquantized_matmuls():
            _correct(layer, inputs[0], name)

    def _correct(layer: nn.Module, x: torch.Tensor, name: str) -> None:
        q = layer.input_quantizer(x)
        half = max(x.shape[0] // 2, 1)
        fit, check = slice(0, half), slice(half if x.shape[0] > 1 else 0, None)
        q_h, dx_h = _sample_rows(layer_rows(layer, q[fit], True), layer_rows(layer, (q - x)[fit], True),
                                 generator=generator)
        rows_q, rows_x = _sample_rows(layer_rows(layer, q[check], False), layer_rows(layer, x[check], False),
                                      generator=generator)
        mean_dx, mean_q = (layer_rows(layer, t[fit], False).mean(0) for t in (q - x, q))
        weight = layer.weight.detach().clone()
        flat = weight.reshape(weight.shape[0], -1)
        target = rows_x @ flat.T

        def held_out_error(d_weight: torch.Tensor, d_bias: torch.Tensor) -> float:
            layer.weight.copy_(weight + d_weight)
            reset_weight_bounds(layer)
            quantized = layer.weight_quantizer(layer.weight).reshape(flat.shape)
            return (rows_q @ quantized.T + d_bias - target).pow(2).mean().item()

        no_bias = torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
        best = (held_out_error(torch.zeros_like(weight), no_bias), torch.zeros_like(weight), no_bias, None)
        for ridge in ridges:
            d_weight = solve_correction(weight, q_h, dx_h, ridge)
            d_bias = -(mean_dx @ flat.T + mean_q @ d_weight.reshape(flat.shape).T) if layer.bias is not None \
                else no_bias
            error = held_out_error(d_weight, d_bias)
            if error < best[0]:
                best = (error, d_weight, d_bias, ridge)
        _, d_weight, d_bias, ridge = best
        layer.weight.copy_(weight + d_weight)
        reset_weight_bounds(layer)
        if ridge is not None:
            if layer.bias is not None:
                layer.bias.add_(d_bias)
            chosen[name] = ridge

    handles = [m.register_forward_pre_hook(lambda m, i, n=name: correct(m, i, n)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            model(crops)
    finally:
        for handle in handles:
            handle.remove()
    return chosen
