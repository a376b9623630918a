"""Harmonized Scale Optimization (HSO): per-channel scales that balance activation and weight
quantization difficulty, folded into neighbouring ops so the float function is unchanged.

A layer computes ``W x = (W diag(s)) (diag(s)^-1 x)``. Dividing input channel ``j`` by ``s_j``
moves range from the activation into column ``j`` of the weight. Under a uniform quantizer the
squared error of a channel grows with its range squared over the squared level count, so the
per-channel objective

    sum_j  r_x,j^2 / (s_j^2 Na^2)  +  r_w,j^2 s_j^2 / Nw^2,     Na = 2^ba - 1, Nw = 2^bw - 1,

(``r_x,j`` the activation range of channel ``j``, ``r_w,j`` the largest magnitude in weight
column ``j``) is minimised by ``s_j = sqrt(r_x,j / r_w,j * Nw / Na)``. Activations are
quantized per tensor and weights per output channel, so a common factor of ``s`` (the bit
ratio included) is absorbed by the grids: only the shape of ``s`` across channels matters,
and the per-channel model ignores that the per-tensor activation step is set by the widest
channel. HSO therefore takes the closed form's family ``s_j = r_x,j^a / r_w,j^(1 - a)``
(``a = 1/2`` the balance point above) and, per fold group, keeps the member (or no scaling)
whose measured quantized output error ``E ||Q_w(W diag(s)) Q_a(diag(s)^-1 x) - W x||^2`` on
calibration inputs is lowest at the bits in use.

A scale is applied only where it folds exactly: into the per-channel affine parameters of the
op that produces the input (LayerNorm, a Linear or convolution, possibly through a positively
homogeneous activation such as (Leaky)ReLU). Candidate producers are found by execution order
and every fold is verified on a probe input (float output unchanged to 1e-5 relative);
anything else, a residual stream, GELU in between, is left alone.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.layers import QUANT_LAYER_TYPES, QuantConv2d, QuantLinear
from ..quant.quantizer import UniformQuantizer, fake_quantize
from .baselines import Dobi

EXPONENTS = (0.25, 0.5, 0.75)
EXACT = 1e-5


@dataclass
class FoldGroup:
    """Consumers sharing one input produced by ``producer``; ``scale`` is the scale now applied."""

    producer: str
    consumers: tuple[str, ...]
    scale: torch.Tensor
    #: the closed form's exponent ``a`` of the applied scale; NaN while unscaled
    exponent: torch.Tensor = field(default_factory=lambda: torch.tensor(float("nan")))
    #: float inputs of each consumer on a few calibration crops, in the unscaled space
    inputs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def _has_direct_params(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None and not isinstance(module, UniformQuantizer)


def _channels_out(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    params = list(module.parameters(recurse=False))
    if params and all(p.dim() == 1 and p.shape == params[0].shape for p in params):
        return params[0].shape[0]  # LayerNorm / BatchNorm-style per-channel affine
    return None


def _channels_in(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _candidates(model: nn.Module, example: torch.Tensor) -> dict[str, list[str]]:
    """producer -> consumers, pairing each quantized layer with the last param-holding op that
    finished before it started, when that op emits as many channels as the layer takes."""
    events: list[tuple[str, str]] = []
    names = {m: n for n, m in model.named_modules()}
    consumers = {m for m in names if isinstance(m, QUANT_LAYER_TYPES) and getattr(m, "groups", 1) == 1}
    handles = []
    for module, name in names.items():
        if module in consumers:
            handles.append(module.register_forward_pre_hook(lambda m, i, n=name: events.append(("start", n))))
        if _has_direct_params(module):
            handles.append(module.register_forward_hook(lambda m, i, o, n=name: events.append(("done", n))))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    groups: dict[str, list[str]] = {}
    paired: set[str] = set()
    last_done = None
    for kind, name in events:
        if kind == "done":
            last_done = name
        elif last_done is not None and name not in paired \
                and _channels_out(model.get_submodule(last_done)) == _channels_in(model.get_submodule(name)):
            groups.setdefault(last_done, []).append(name)
            paired.add(name)
    return groups


def _input_columns(layer: nn.Module) -> tuple[int, ...]:
    """Shape that broadcasts a per-input-channel vector over ``layer.weight``."""
    return (1, -1) if isinstance(layer, nn.Linear) else (1, -1, 1, 1)


@torch.no_grad()
def _rescale(model: nn.Module, producer: str, consumers, ratio: torch.Tensor) -> None:
    """Divide the producer's output channels by ``ratio`` and multiply the consumers' inputs by it."""
    prod = model.get_submodule(producer)
    for param in prod.parameters(recurse=False):
        param.div_(ratio.reshape((-1,) + (1,) * (param.dim() - 1)).to(param))
    quantizer = getattr(prod, "weight_quantizer", None)
    if isinstance(quantizer, UniformQuantizer) and quantizer.per_channel:
        # A row scaled by 1/r has its per-channel grid scaled by 1/r: its quantization is unchanged.
        quantizer.upper.div_(ratio.to(quantizer.upper))
        if quantizer.lower is not None:
            quantizer.lower.div_(ratio.to(quantizer.lower))
    for name in consumers:
        layer = model.get_submodule(name)
        layer.weight.mul_(ratio.reshape(_input_columns(layer)).to(layer.weight))


def _folds_exactly(model: nn.Module, producer: str, consumers, example, reference) -> bool:
    if isinstance(getattr(model.get_submodule(producer), "weight_quantizer", None), UniformQuantizer) \
            and not model.get_submodule(producer).weight_quantizer.per_channel:
        return False
    channels = _channels_in(model.get_submodule(consumers[0]))
    ratio = torch.rand(channels, generator=torch.Generator().manual_seed(1)) * 1.5 + 0.5
    saved = {n: p.detach().clone() for n, p in model.named_parameters()
             if n.startswith(tuple(f"{m}." for m in (producer, *consumers)))}
    try:
        _rescale(model, producer, consumers, ratio)
        with torch.no_grad():
            out = model(example)
        return bool((out - reference).norm() <= EXACT * reference.norm())
    finally:
        with torch.no_grad():
            for n, value in saved.items():
                model.get_parameter(n).copy_(value)


def find_fold_groups(model: nn.Module, example: torch.Tensor) -> list[FoldGroup]:
    """Every producer/consumers pair of ``model`` where a per-channel scale folds exactly.

    Quantization must be disabled while this runs: folds are checked on the float function.
    """
    with torch.no_grad():
        reference = model(example)
    groups = []
    for producer, consumers in _candidates(model, example).items():
        if _folds_exactly(model, producer, consumers, example, reference):
            channels = _channels_in(model.get_submodule(consumers[0]))
            groups.append(FoldGroup(producer, tuple(consumers), torch.ones(channels)))
    return groups


def record_inputs(model: nn.Module, groups: list[FoldGroup], crops: torch.Tensor) -> None:
    """Store each consumer's float input on ``crops`` (quantization disabled) in its group."""
    wanted = {c: g for g in groups for c in g.consumers}
    handles = [model.get_submodule(c).register_forward_pre_hook(
        lambda m, i, c=c: wanted[c].inputs.setdefault(c, i[0].detach().clone())) for c in wanted]
    try:
        with torch.no_grad():
            model(crops.to(next(model.parameters())))
    finally:
        for handle in handles:
            handle.remove()


def _channel_view(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x if isinstance(layer, QuantLinear) else x.transpose(1, -1)


def _layer_out(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, QuantConv2d):
        return layer._conv_forward(x, weight, layer.bias)
    return F.linear(x, weight, layer.bias)


def _scaled(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor):
    """Input and weight of ``layer`` after the scale ``scale`` (relative to the unscaled space)."""
    x_scaled = _channel_view(layer, _channel_view(layer, x) / scale.to(x))
    return x_scaled, weight * scale.reshape(_input_columns(layer)).to(weight)


def _quantize_like(q: UniformQuantizer, x: torch.Tensor, lower, upper) -> torch.Tensor:
    shape = [1] * x.dim()
    if q.per_channel:
        shape[q.channel_axis] = -1
    return fake_quantize(x, torch.as_tensor(lower).reshape(shape if q.per_channel else ()),
                         torch.as_tensor(upper).reshape(shape if q.per_channel else ()), q.levels)


def _fresh_bounds(q: UniformQuantizer, values: torch.Tensor, activation: bool) -> tuple[torch.Tensor, torch.Tensor]:
    rows = values.reshape(values.shape[0], -1) if q.per_channel else values.reshape(1, -1)
    if rows.shape[1] > (1 << 16):
        rows = rows[:, torch.randperm(rows.shape[1], generator=torch.Generator().manual_seed(0))[:1 << 16]]
    lower, upper = Dobi().bounds(rows.float(), rows.amin(1), rows.amax(1), q.levels, q.symmetric,
                                 activation=activation)
    return (lower, upper) if q.per_channel else (lower[0], upper[0])


def _remapped_bounds(q: UniformQuantizer, old: torch.Tensor, new: torch.Tensor):
    """The quantizer's current bounds moved from ``old`` values to ``new``, keeping where they sit
    relative to the range (the clipping ratios bound refinement has learned)."""
    def extremes(v):
        rows = v.reshape(v.shape[0], -1) if q.per_channel else v.reshape(1, -1)
        lo, hi = rows.amin(1), rows.amax(1)
        return (lo, hi) if q.per_channel else (lo[0], hi[0])

    (old_lo, old_hi), (new_lo, new_hi) = extremes(old), extremes(new)
    if q.symmetric:
        ratio = torch.maximum(new_lo.abs(), new_hi.abs()) / torch.maximum(old_lo.abs(), old_hi.abs()).clamp_min(1e-12)
        upper = q.upper.detach() * ratio
        return -upper, upper
    ratio = (new_hi - new_lo) / (old_hi - old_lo).clamp_min(1e-12)
    lower, upper = (b.detach() for b in q.bounds())
    return new_lo + (lower - old_lo) * ratio, new_lo + (upper - old_lo) * ratio


def _unscaled_weight(layer: nn.Module, group: FoldGroup) -> torch.Tensor:
    """``layer``'s weight with the group's current scale taken back out."""
    return layer.weight.detach() / group.scale.reshape(_input_columns(layer)).to(layer.weight)


def _group_error(model: nn.Module, group: FoldGroup, scale: torch.Tensor, keep_learned: bool) -> float:
    """Quantized output error of the group's consumers with ``scale`` applied (in place of the
    current one); bounds are fresh DOBI bounds, or the current ones remapped when ``keep_learned``."""
    error = 0.0
    for name in group.consumers:
        layer = model.get_submodule(name)
        x = group.inputs[name]
        weight = _unscaled_weight(layer, group)
        reference = _layer_out(layer, x, weight)
        new = _scaled(layer, x, weight, scale)
        pair = (layer.input_quantizer, layer.weight_quantizer)
        if keep_learned:
            old = _scaled(layer, x, weight, group.scale)
            bounds = [_remapped_bounds(q, o, n) for q, o, n in zip(pair, old, new)]
        else:
            bounds = [_fresh_bounds(q, n, activation=q is layer.input_quantizer) for q, n in zip(pair, new)]
        out = _layer_out(layer, *(_quantize_like(q, n, *b) for q, n, b in zip(pair, new, bounds)))
        error += (out - reference).pow(2).mean().item()
    return error


def closed_form_scale(model: nn.Module, group: FoldGroup, exponent: float) -> torch.Tensor:
    """``s_j = r_x,j^a / r_w,j^(1-a)``, normalised to geometric mean 1, from unscaled statistics."""
    x_range = None
    w_range = None
    for name in group.consumers:
        layer = model.get_submodule(name)
        x = _channel_view(layer, group.inputs[name])
        r_x = x.reshape(-1, x.shape[-1]).abs().amax(0)
        weight = _unscaled_weight(layer, group)
        r_w = weight.transpose(0, 1).reshape(weight.shape[1], -1).abs().amax(1)
        x_range = r_x if x_range is None else torch.maximum(x_range, r_x)
        w_range = r_w if w_range is None else torch.maximum(w_range, r_w)
    scale = x_range.clamp_min(1e-5).pow(exponent) / w_range.clamp_min(1e-5).pow(1 - exponent)
    return (scale / scale.log().mean().exp()).cpu()


@torch.no_grad()
def solve_group(model: nn.Module, group: FoldGroup, keep_learned: bool) -> bool:
    """Re-solve one group's scale; apply it if it lowers the measured error. Returns whether it changed.

    With ``keep_learned`` the quantizers' current bounds are carried to the new scale (ABR's
    re-solves); otherwise candidates are compared with fresh DOBI bounds and the caller
    re-initialises the bounds afterwards.
    """
    best = None
    best_error = _group_error(model, group, group.scale, keep_learned)
    for exponent in EXPONENTS:
        scale = closed_form_scale(model, group, exponent)
        error = _group_error(model, group, scale, keep_learned)
        if error < best_error * (1 - 1e-6):
            best, best_error = (exponent, scale), error
    if best is None:
        return False
    exponent, scale = best
    moved = []
    if keep_learned:
        for name in group.consumers:
            layer = model.get_submodule(name)
            x = group.inputs[name]
            weight = _unscaled_weight(layer, group)
            old = _scaled(layer, x, weight, group.scale)
            new = _scaled(layer, x, weight, scale)
            moved.append((layer.input_quantizer, _remapped_bounds(layer.input_quantizer, old[0], new[0])))
            moved.append((layer.weight_quantizer, _remapped_bounds(layer.weight_quantizer, old[1], new[1])))
    apply_scale(model, group, scale, exponent)
    for q, (lower, upper) in moved:
        q.upper.copy_(upper)
        if q.lower is not None:
            q.lower.copy_(lower)
    return True


@torch.no_grad()
def apply_scale(model: nn.Module, group: FoldGroup, scale: torch.Tensor, exponent: float = float("nan")) -> None:
    """Fold ``scale`` (in place of the group's current one) into its producer and consumers."""
    _rescale(model, group.producer, group.consumers, scale / group.scale)
    group.scale.copy_(scale)
    group.exponent.fill_(exponent)
