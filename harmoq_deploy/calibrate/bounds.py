"""Set every quantizer's bounds with a baseline method: weights from the weights, activations from data."""

import torch
from torch import nn

from ..quant import is_weight_quantizer, quantizers
from .observe import ActivationStats


def owner_weight(model: nn.Module, quantizer_name: str) -> torch.Tensor:
    return model.get_submodule(quantizer_name.rpartition(".")[0]).weight.detach()


def initialise_bounds(model: nn.Module, method, activations: dict[str, ActivationStats]) -> None:
    for name, q in quantizers(model).items():
        if is_weight_quantizer(name):
            weight = owner_weight(model, name)
            rows = weight.reshape(weight.shape[0] if q.per_channel else 1, -1).float()
            minimum, maximum = rows.amin(dim=1), rows.amax(dim=1)
        else:
            stats = activations[name]
            rows = stats.sample[None]
            minimum, maximum = torch.tensor([stats.minimum]), torch.tensor([stats.maximum])
        lower, upper = method.bounds(rows, minimum, maximum, q.levels, q.symmetric,
                                     activation=not is_weight_quantizer(name))
        q.set_bounds(lower if q.per_channel else lower[0], upper if q.per_channel else upper[0])
