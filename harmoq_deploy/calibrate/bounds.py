"""Set quantizer bounds with a baseline method: weights from the weights, activations from data."""

import torch
from torch import nn

from ..quant import is_weight_quantizer, quantizers
from ..quant.quantizer import UniformQuantizer
from .observe import ActivationStats


def owner_weight(model: nn.Module, quantizer_name: str) -> torch.Tensor:
    return model.get_submodule(quantizer_name.rpartition(".")[0]).weight.detach()


def set_weight_bounds(q: UniformQuantizer, weight: torch.Tensor, method) -> None:
    rows = weight.detach().reshape(weight.shape[0] if q.per_channel else 1, -1).float()
    lower, upper = method.bounds(rows, rows.amin(dim=1), rows.amax(dim=1), q.levels, q.symmetric, activation=False)
    q.set_bounds(lower if q.per_channel else lower[0], upper if q.per_channel else upper[0])


def set_activation_bounds(q: UniformQuantizer, stats: ActivationStats, method) -> None:
    lower, upper = method.bounds(stats.sample[None], torch.tensor([stats.minimum]), torch.tensor([stats.maximum]),
                                 q.levels, q.symmetric, activation=True)
    q.set_bounds(lower[0], upper[0])


def initialise_bounds(model: nn.Module, method, activations: dict[str, ActivationStats]) -> None:
    for name, q in quantizers(model).items():
        if is_weight_quantizer(name):
            set_weight_bounds(q, owner_weight(model, name), method)
        else:
            set_activation_bounds(q, activations[name], method)
