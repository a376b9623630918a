"""Gather the float activations each quantizer will see, from calibration crops."""

from dataclasses import dataclass

import torch
from torch import nn

from ..progress import progress_bar
from ..quant import is_weight_quantizer, quantizers, set_quantization_enabled


@dataclass
class ActivationStats:
    """Exact extremes of one activation, plus a uniform random sample of its values."""

    minimum: float
    maximum: float
    sample: torch.Tensor


class _Recorder:
    def __init__(self, per_call: int, generator: torch.Generator):
        self.per_call = per_call
        self.generator = generator
        self.minimum = float("inf")
        self.maximum = float("-inf")
        self.samples: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1).float()
        self.minimum = min(self.minimum, x.min().item())
        self.maximum = max(self.maximum, x.max().item())
        if x.numel() > self.per_call:
            x = x[torch.randint(x.numel(), (self.per_call,), generator=self.generator, device=x.device)]
        self.samples.append(x.cpu())


def observe_activations(model: nn.Module, crops: torch.Tensor, batch_size: int = 8,
                        samples_per_batch: int = 1 << 17, seed: int = 0,
                        description: str = "observing activations") -> dict[str, ActivationStats]:
    """Run the float model over ``crops`` and record the input of every activation quantizer."""
    generator = torch.Generator().manual_seed(seed)
    recorders = {name: _Recorder(samples_per_batch, generator)
                 for name, q in quantizers(model).items() if not is_weight_quantizer(name)}
    targets = quantizers(model)
    for name, recorder in recorders.items():
        targets[name].observer = recorder
    set_quantization_enabled(model, False)
    param = next(model.parameters())
    try:
        with torch.no_grad():
            for start in progress_bar(range(0, len(crops), batch_size), description):
                model(crops[start:start + batch_size].to(param))
    finally:
        for name in recorders:
            targets[name].observer = None
        set_quantization_enabled(model, True)
    return {name: ActivationStats(r.minimum, r.maximum, torch.cat(r.samples)) for name, r in recorders.items()}
