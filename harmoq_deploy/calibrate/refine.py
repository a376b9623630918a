"""Gradient refinement of the quantizer bounds by distillation to the float model (weights frozen).

This is 2DQuant's DQC stage and the optimisation loop HarmoQ's ABR builds on. The teacher is the
same network with its quantizers bypassed, so no second copy of the weights is held. Objective:

    L = L1(out_Q, out_FP) + feature_weight * sum_g MSE(n(f_g^Q), n(f_g^FP)),

with f_g the output of residual group g (the layout's ``feature_taps``) and n() the L2
normalisation of each sample's flattened features. Adam on the bounds only, cosine decay.

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
from ..quant import quantizers, set_quantization_enabled


@dataclass
class RefineSettings:
    iters: int = 200
    batch: int = 8
    lr: float = 1e-2
    feature_weight: float = 5.0
    checkpoint_every: int = 25


def feature_modules(model: nn.Module, pattern: str) -> dict[str, nn.Module]:
    if not pattern:
        return {}
    return {name: m for name, m in model.named_modules() if re.fullmatch(pattern, name)}


class _FeatureRecorder:
    def __init__(self, modules: dict[str, nn.Module]):
        self.features: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(lambda _m, _i, out, n=name: self.features.__setitem__(n, out))
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


def distillation_step_loss(model: nn.Module, batch: torch.Tensor, recorder: _FeatureRecorder,
                           feature_weight: float) -> torch.Tensor:
    """The distillation loss of ``model`` on ``batch``: its bypassed self is the teacher."""
    with torch.no_grad():
        set_quantization_enabled(model, False)
        out_fp = model(batch)
        feats_fp = dict(recorder.features)
        set_quantization_enabled(model, True)
    out_q = model(batch)
    return distillation_loss(out_q, out_fp, recorder.features, feats_fp, feature_weight)


def _bound_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for q in quantizers(model).values() for p in (q.lower, q.upper) if p is not None]


def refine_bounds(model: nn.Module, crops: torch.Tensor, feature_pattern: str, settings: RefineSettings,
                  seed: int = 0, checkpoint: Path | None = None,
                  between_steps: Callable[[int], None] | None = None,
                  carry: dict[str, torch.Tensor] | None = None, fingerprint: dict | None = None) -> list[float]:
    """Refine every quantizer bound of ``model`` in place; return the loss of each iteration run.

    ``between_steps(i)`` runs after optimiser step ``i`` (HarmoQ re-solves its scales there);
    ``carry`` holds tensors it updates in place that a resumed run needs back. A checkpoint is
    only resumed by a run with the same ``fingerprint`` (default: the settings).
    """
    fingerprint = fingerprint if fingerprint is not None else vars(settings)
    carry = carry or {}
    if settings.iters < 0 or settings.batch < 1:
        raise HarmoqError("--iters must be >= 0 and --batch >= 1")
    params = _bound_parameters(model)
    frozen = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(settings.iters, 1))
    generator = torch.Generator().manual_seed(seed)
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        start = _restore(checkpoint, model, carry, optimizer, schedule, generator, fingerprint)
    recorder = _FeatureRecorder(feature_modules(model, feature_pattern))
    device = params[0].device
    losses = []
    try:
        for i in progress_bar(range(start, settings.iters), "refining bounds", total=settings.iters - start):
            batch = crops[torch.randint(len(crops), (settings.batch,), generator=generator)].to(device)
            loss = distillation_step_loss(model, batch, recorder, settings.feature_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _keep_ordered(model)
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


@torch.no_grad()
def _keep_ordered(model: nn.Module) -> None:
    """Project the bounds back to ``upper > lower`` after a step: a quantizer whose bounds cross
    has no grid (and an artifact could not store it)."""
    for q in quantizers(model).values():
        lower, _ = q.bounds()
        q.upper.copy_(torch.maximum(q.upper, lower + MIN_RANGE))


MIN_RANGE = 1e-6


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
