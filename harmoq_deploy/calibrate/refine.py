"""Gradient refinement of the quantizer bounds by distillation to the float model (weights frozen unless asked).

This is 2DQuant's DQC stage and the optimisation loop HarmoQ's ABR builds on. The teacher is the
same network with its quantizers bypassed, evaluated once before any weight changes (``Teacher``),
so no second copy of the weights is held. Objective:

    L = L1(out_Q, out_FP) + feature_weight * sum_g MSE(n(f_g^Q), n(f_g^FP)),

with f_g the output of residual group g (the layout's ``feature_taps``) and n() the L2
normalisation of each sample's flattened features. Adam on the bounds, cosine decay, the weight
quantizers' bounds at their own rate when ``weight_bound_lr`` is set (HarmoQ tries its rounded
weights' grids nearly still and at the activations' rate, and keeps the better); with
``bias_lr > 0`` also on the biases of the quantized layers, and with ``weight_lr > 0`` on their
weights, each at its own learning rate (the weights' scaled to their grid, ``weight_lr_scale``).
HarmoQ's ABR refines SRC's corrected weights and biases this way, against the grids the bounds
are moving to; 2DQuant keeps every weight frozen. The weights pass their quantizer with the
straight-through gradient, so a step that moves a weight across a rounding threshold changes
the deployed code.

The loop checkpoints its full state (the model's state dict, so bounds and anything a
``between_steps`` hook changed, the ``carry`` tensors, optimiser, schedule, random generator)
atomically every ``checkpoint_every`` iterations; started again with the same checkpoint path it resumes
and ends exactly where an uninterrupted run would.
"""

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HarmoqError, first_line
from ..io import write_atomic
from ..progress import progress_bar
from ..quant import is_weight_quantizer, quantizers, set_quantization_enabled
from ..quant.layers import QUANT_LAYER_TYPES


@dataclass
class RefineSettings:
    iters: int = 200
    batch: int = 8
    lr: float = 1e-2
    feature_weight: float = 5.0
    checkpoint_every: int = 25
    bias_lr: float = 0.0
    weight_lr: float = 0.0
    #: the rate of the weight quantizers' bounds; None: ``lr``, like the activations'
    weight_bound_lr: float | None = None
    #: scale ``weight_lr`` with each layer's weight grid (``weight_lr_scale``); False: ``weight_lr`` at every width
    weight_lr_by_width: bool = True


#: the weight grid at which ``weight_lr`` applies unscaled: 3 bits, asymmetric (7 steps across the range)
WEIGHT_LR_REFERENCE_LEVELS = 7


def weight_lr_scale(levels: int) -> float:
    """The factor on ``weight_lr`` for a weight grid of ``levels`` steps across its range.

    Adam moves a parameter by about its rate per step whatever the gradient's size, and a weight
    grid's step is its range over its level count, ranges being alike across widths. One rate for
    every width would move a 2-bit weight by 3/7 as many grid steps as a 3-bit one; scaled, the
    rate moves weights by the same fraction of a step at every width (docs/method.md, section 3).
    """
    return WEIGHT_LR_REFERENCE_LEVELS / levels


def feature_modules(model: nn.Module, pattern: str) -> dict[str, nn.Module]:
    if not pattern:
        return {}
    return {name: m for name, m in model.named_modules() if re.fullmatch(pattern, name)}


class _FeatureRecorder:
    def __init__(self, modules: dict[str, nn.Module]):
        self.features: dict[str, torch.Tensor] = {}
        # a block returning a tuple (e.g. SPAN's) is tapped at its first output, its features
        self.handles = [m.register_forward_hook(lambda _m, _i, out, n=name: self.features.__setitem__(
                            n, out if isinstance(out, torch.Tensor) else out[0]))
                        for name, m in modules.items()]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1), dim=1)


def distillation_loss(out_q, out_fp, feats_q: dict, feats_fp: dict, feature_weight: float) -> torch.Tensor:
    loss = F.l1_loss(out_q, out_fp)
    for name, target in feats_fp.items():
        loss = loss + feature_weight * F.mse_loss(_normalised(feats_q[name]), _normalised(target))
    return loss


class Teacher:
    """The float model's outputs and tapped features on a set of crops, computed once.

    Taken from ``model`` with its quantizers bypassed, at construction: build it before anything
    changes the float function (SRC's weight corrections do), so that every later loss is
    measured against the float model the user handed in and not against a corrected one.
    Refinement may change the quantized layers' weights and biases too, and the teacher must not
    follow them; caching it also saves a forward pass per step.
    """

    def __init__(self, model: nn.Module, crops: torch.Tensor, feature_pattern: str, chunk: int = 8):
        self.crops = crops.to(next(model.parameters()))
        self.feature_pattern = feature_pattern
        outputs, features = [], []
        recorder = _FeatureRecorder(feature_modules(model, feature_pattern))
        set_quantization_enabled(model, False)
        try:
            with torch.no_grad():
                for start in range(0, len(self.crops), chunk):
                    outputs.append(model(self.crops[start:start + chunk]))
                    features.append(dict(recorder.features))
        finally:
            set_quantization_enabled(model, True)
            recorder.close()
        self.outputs = torch.cat(outputs)
        self.features = {name: torch.cat([f[name] for f in features]) for name in recorder.features}

    def loss(self, model: nn.Module, index: torch.Tensor, recorder: _FeatureRecorder,
             feature_weight: float) -> torch.Tensor:
        """The distillation loss of the quantized ``model`` on crops ``index``."""
        out_q = model(self.crops[index])
        feats_fp = {name: f[index] for name, f in self.features.items()}
        return distillation_loss(out_q, self.outputs[index], recorder.features, feats_fp, feature_weight)

    def judge(self, model: nn.Module, feature_weight: float) -> float:
        """The distillation loss of the quantized ``model`` on all the teacher's crops."""
        recorder = _FeatureRecorder(feature_modules(model, self.feature_pattern))
        try:
            with torch.no_grad():
                return self.loss(model, torch.arange(len(self.crops)), recorder, feature_weight).item()
        finally:
            recorder.close()


def _bound_parameters(model: nn.Module, weights: bool) -> list[nn.Parameter]:
    """The bounds of the weight quantizers (``weights``) or of all the others."""
    return [p for name, q in quantizers(model).items() if is_weight_quantizer(name) == weights
            for p in (q.lower, q.upper) if p is not None]


def _quantized_layer_biases(model: nn.Module) -> list[nn.Parameter]:
    return [m.bias for m in model.modules() if isinstance(m, QUANT_LAYER_TYPES) and m.bias is not None]


def _weight_groups(model: nn.Module, settings: RefineSettings) -> list[dict]:
    """Adam groups for the quantized layers' weights, one per weight grid width."""
    by_levels: dict[int, list[nn.Parameter]] = {}
    for m in model.modules():
        if isinstance(m, QUANT_LAYER_TYPES):
            by_levels.setdefault(m.weight_quantizer.levels, []).append(m.weight)
    return [{"params": params,
             "lr": settings.weight_lr * (weight_lr_scale(levels) if settings.weight_lr_by_width else 1.0)}
            for levels, params in by_levels.items()]


def refine_bounds(model: nn.Module, crops: torch.Tensor, feature_pattern: str, settings: RefineSettings,
                  seed: int = 0, checkpoint: Path | None = None,
                  between_steps: Callable[[int], None] | None = None,
                  carry: dict[str, torch.Tensor] | None = None, fingerprint: dict | None = None,
                  teacher: Teacher | None = None, description: str = "refining bounds") -> list[float]:
    """Refine every quantizer bound of ``model`` in place (and, at ``settings.bias_lr`` and
    ``settings.weight_lr`` when > 0, the biases and weights of its quantized layers); return the
    loss of each iteration run.

    ``teacher`` holds the float model's outputs on ``crops``; without one it is taken from
    ``model`` as refinement starts, which is right only if nothing has changed its weights.

    ``between_steps(i)`` runs after optimiser step ``i`` (HarmoQ re-solves its scales there);
    ``carry`` holds tensors it updates in place that a resumed run needs back. A checkpoint is
    only resumed by a run with the same ``fingerprint`` (default: the settings).
    """
    fingerprint = fingerprint if fingerprint is not None else vars(settings)
    carry = carry or {}
    if settings.iters < 0 or settings.batch < 1:
        raise HarmoqError("--iters must be >= 0 and --batch >= 1")
    weight_bound_lr = settings.lr if settings.weight_bound_lr is None else settings.weight_bound_lr
    groups = [{"params": _bound_parameters(model, False), "lr": settings.lr},
              {"params": _bound_parameters(model, True), "lr": weight_bound_lr}]
    if settings.bias_lr > 0:
        groups.append({"params": _quantized_layer_biases(model), "lr": settings.bias_lr})
    if settings.weight_lr > 0:
        groups.extend(_weight_groups(model, settings))
    params = [p for g in groups for p in g["params"]]
    frozen = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(groups)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(settings.iters, 1))
    generator = torch.Generator().manual_seed(seed)
    floors = _range_floors(model)
    recorder = _FeatureRecorder(feature_modules(model, feature_pattern))
    crops = crops.to(params[0].device)
    losses = []
    try:
        # taken before the checkpoint is restored, so a resumed run sees the very teacher an
        # uninterrupted one did (re-folds shift the last float bit)
        if teacher is None and settings.iters:
            teacher = Teacher(model, crops, feature_pattern)
        start = 0
        if checkpoint is not None and checkpoint.is_file():
            start = _restore(checkpoint, model, carry, optimizer, schedule, generator, fingerprint)
        for i in progress_bar(range(start, settings.iters), description, total=settings.iters - start):
            index = torch.randint(len(crops), (settings.batch,), generator=generator)
            loss = teacher.loss(model, index.to(crops.device), recorder, settings.feature_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _check_finite(params, i)
            optimizer.step()
            _keep_open(model, floors)
            schedule.step()
            if between_steps is not None:
                between_steps(i)
            losses.append(loss.item())
            if checkpoint is not None and ((i + 1) % settings.checkpoint_every == 0 or i + 1 == settings.iters):
                _save(checkpoint, i + 1, model, carry, optimizer, schedule, generator, fingerprint)
    finally:
        recorder.close()
        set_quantization_enabled(model, True)
        for p, flag in frozen.items():
            p.requires_grad_(flag)
    return losses


def _check_finite(params: list[nn.Parameter], i: int) -> None:
    """Stop at the first non-finite gradient: Adam would write NaN into every bound it touches,
    and the calibration would end 'successfully' with a model that outputs noise."""
    if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
        raise HarmoqError(f"bound refinement diverged at iteration {i + 1}: a bound's gradient is NaN or infinite")


@torch.no_grad()
def _keep_open(model: nn.Module, floors: dict[str, torch.Tensor]) -> None:
    """Project each quantizer back to ``upper - lower >= floor`` after a step: crossed bounds have
    no grid (an artifact could not store them), and a range squeezed to nothing sends every
    value to one level, a collapse the loss cannot climb out of once the step size is ~0."""
    for name, q in quantizers(model).items():
        lower, _ = q.bounds()
        if q.symmetric:
            q.upper.copy_(torch.maximum(q.upper, floors[name] / 2))
        else:
            q.upper.copy_(torch.maximum(q.upper, lower + floors[name]))


#: the narrowest range refinement may leave a quantizer, as a fraction of its starting range
MIN_RANGE_FRACTION = 0.05


def _range_floors(model: nn.Module) -> dict[str, torch.Tensor]:
    floors = {}
    for name, q in quantizers(model).items():
        lower, upper = q.bounds()
        floors[name] = ((upper - lower).detach() * MIN_RANGE_FRACTION).clamp_min(1e-6)
    return floors


def _save(path: Path, done: int, model, carry, optimizer, schedule, generator, fingerprint) -> None:
    buffer = io.BytesIO()
    torch.save({"done": done, "fingerprint": fingerprint, "model": model.state_dict(), "carry": carry,
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "generator": generator.get_state()}, buffer)
    write_atomic(path, buffer.getvalue())


def _restore(path: Path, model, carry, optimizer, schedule, generator, fingerprint) -> int:
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:
        raise HarmoqError(f"{path}: unreadable refinement checkpoint ({first_line(exc)})") from None
    if state.get("fingerprint") != fingerprint or set(state.get("carry", {})) != set(carry) \
            or set(state.get("model", {})) != set(model.state_dict()):
        raise HarmoqError(f"{path}: checkpoint of a different run (settings or model differ); delete it to start over")
    model.load_state_dict(state["model"])
    with torch.no_grad():
        for name, tensor in carry.items():
            tensor.copy_(state["carry"][name])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    generator.set_state(state["generator"])
    return state["done"]
