"""Calibration stage: turn a float model plus calibration crops into a calibrated quantized model."""

from dataclasses import asdict

import torch
from torch import nn

from ..errors import HarmoqError
from ..models import LoadedModel
from ..quant import QuantConfig, quantize_model
from .artifact import Artifact, apply_artifact, load_artifact, save_artifact
from .baselines import BASELINES
from .bounds import initialise_bounds
from .observe import observe_activations

METHODS = tuple(BASELINES)

__all__ = ["METHODS", "Artifact", "apply_artifact", "calibrate", "load_artifact", "make_method", "save_artifact"]


def make_method(name: str, **settings):
    if name not in BASELINES:
        raise HarmoqError(f"unknown calibration method {name!r}; choose from {', '.join(METHODS)}")
    return BASELINES[name](**settings)


def calibrate(source: LoadedModel, config: QuantConfig, method, crops: torch.Tensor,
              seed: int = 0, batch_size: int = 8) -> nn.Module:
    """Quantize ``source.module`` in place per ``config`` and set every bound with ``method``."""
    if len(crops) == 0:
        raise HarmoqError("no calibration crops to calibrate on")
    model = quantize_model(source.module, config, source.layout)
    activations = observe_activations(model, crops, batch_size=batch_size, seed=seed)
    initialise_bounds(model, method, activations)
    return model


def method_record(method) -> dict:
    return {"name": method.name, "settings": asdict(method)}
