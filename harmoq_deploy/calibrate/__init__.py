"""Calibration stage: turn a float model plus calibration crops into a calibrated quantized model."""

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import HarmoqError
from ..models import LoadedModel
from ..quant import QuantConfig, quantize_model
from . import presets
from .artifact import Artifact, apply_artifact, load_artifact, save_artifact
from .baselines import BASELINES, Dobi
from .bounds import initialise_bounds
from .methods import OPTIMIZING_METHODS, HarmoQ, StepReport, TwoDQuant
from .observe import observe_activations

METHODS = tuple(BASELINES) + tuple(OPTIMIZING_METHODS)

__all__ = ["METHODS", "OPTIMIZING_METHODS", "Artifact", "Calibrated", "HarmoQ", "TwoDQuant", "apply_artifact", "calibrate",
           "load_artifact", "make_method", "method_record", "presets", "save_artifact"]


@dataclass
class Calibrated:
    """A calibrated quantized model and what its method changed beyond the bounds."""

    model: nn.Module
    corrected_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: list[StepReport] = field(default_factory=list)
    scales: dict[str, dict] = field(default_factory=dict)


def make_method(name: str, **settings):
    factories = {**BASELINES, **OPTIMIZING_METHODS}
    if name not in factories:
        raise HarmoqError(f"unknown calibration method {name!r}; choose from {', '.join(METHODS)}")
    try:
        return factories[name](**settings)
    except TypeError:
        raise HarmoqError(f"method {name} does not take settings {sorted(settings)}") from None


def calibrate(source: LoadedModel, config: QuantConfig, method, crops: torch.Tensor, seed: int = 0,
              batch_size: int = 8, checkpoint: Path | None = None, device: str = "cpu") -> Calibrated:
    """Quantize ``source.module`` in place per ``config`` and calibrate it with ``method``.

    Optimising methods (2DQuant, HarmoQ) start from DOBI bounds; ``checkpoint`` lets their
    refinement resume after an interruption.
    """
    if len(crops) == 0:
        raise HarmoqError("no calibration crops to calibrate on")
    model = quantize_model(source.module.to(device), config, source.layout)
    activations = observe_activations(model, crops, batch_size=batch_size, seed=seed)
    optimizing = method.name in OPTIMIZING_METHODS
    initialise_bounds(model, Dobi() if optimizing else method, activations)
    if not optimizing:
        return Calibrated(model)
    result = method.run(model, crops, source.layout, seed=seed, checkpoint=checkpoint)
    return Calibrated(model, result.changed_parameters, result.steps, result.scales)


def method_record(method, calibrated: Calibrated | None = None) -> dict:
    record = {"name": method.name, "settings": asdict(method)}
    if calibrated is not None and calibrated.steps:
        record["steps"] = [asdict(s) for s in calibrated.steps]
    if calibrated is not None and calibrated.scales:
        record["hso_scales"] = {producer: {"consumers": s["consumers"], "exponent": s["exponent"],
                                           "scale": f"tensor:hso:{producer}"}
                                for producer, s in calibrated.scales.items()}
    return record
