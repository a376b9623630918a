"""``quantize_model``: insert fake quantizers into a float SR network, following a QuantConfig."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import HarmoqError
from ..models.infer import infer_layout
from ..models.layout import ArchLayout
from .config import QuantConfig
from .layers import QuantConv2d, QuantLinear
from .matmul import MatmulQuantizers, attach_matmul_quantizers, count_matmuls
from .quantizer import UniformQuantizer

def _is_kept_float(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _excluded_names(model: nn.Module, layout: ArchLayout, config: QuantConfig) -> tuple[str, ...]:
    excluded = [name for name, m in model.named_modules() if type(m).__name__ in layout.excluded_modules]
    return tuple(layout.float_modules) + config.skip + tuple(excluded)


def _weight_quantizer(layer: nn.Module, config: QuantConfig) -> UniformQuantizer:
    if config.weight_per_channel:
        return UniformQuantizer(config.wbits, symmetric=config.weight_symmetric, channel_axis=0,
                                num_channels=layer.weight.shape[0])
    return UniformQuantizer(config.wbits, symmetric=config.weight_symmetric)


def _act_quantizer(config: QuantConfig) -> UniformQuantizer:
    return UniformQuantizer(config.abits, symmetric=config.act_symmetric)


def _probe_input(model: nn.Module) -> torch.Tensor:
    param = next(model.parameters())
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(param)


def quantize_model(model: nn.Module, config: QuantConfig, layout: ArchLayout | None = None,
                   example_input: torch.Tensor | None = None) -> nn.Module:
    """Replace covered layers of ``model`` in place with fake-quantized ones and return it.

    Quantizers start uncalibrated: run a calibration method (``harmoq_deploy.calibrate``) or load
    an artifact before using the model. ``layout`` defaults to the one inferred from ``model``.
    ``example_input`` is used once to count the matmuls in each attention module (defaults to a
    32x32 random image). A network in which nothing would be quantized is refused (HarmoqError).
    """
    layout = layout or infer_layout(model)
    kinds = config.layers_for(layout)
    keep_float = _excluded_names(model, layout, config)
    replacements = {}
    attention = []
    for name, module in model.named_modules():
        if type(module).__name__ in layout.attention_modules and "matmul" in kinds and not (
                name and _is_kept_float(name, keep_float)):
            attention.append(module)  # the root too: products in its own forward are quantized
        elif _is_kept_float(name, keep_float) or not name:
            continue
        elif type(module) is nn.Linear and "linear" in kinds:
            replacements[name] = QuantLinear.wrap(module, _weight_quantizer(module, config),
                                                  _act_quantizer(config))
        elif type(module) is nn.Conv2d and "conv" in kinds:
            replacements[name] = QuantConv2d.wrap(module, _weight_quantizer(module, config),
                                                  _act_quantizer(config))
    counts = []
    if attention:
        example = example_input if example_input is not None else _probe_input(model)
        counts = count_matmuls(model, attention, example)
    if not replacements and not any(counts):
        architecture = layout.architecture or type(model).__name__
        raise HarmoqError(f"{architecture}: nothing to quantize ({', '.join(kinds)} layers: none outside the "
                          "float first layer and output tail); a W/A engine of it would be the float model")
    if attention:
        for module, count in zip(attention, counts):
            pairs = [(_act_quantizer(config), _act_quantizer(config)) for _ in range(count)]
            attach_matmul_quantizers(module, MatmulQuantizers(pairs))
    for name, layer in replacements.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
    return model


def quantizers(model: nn.Module) -> dict[str, UniformQuantizer]:
    """Every quantizer of ``model`` by its module path, in network definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, UniformQuantizer)}


def is_weight_quantizer(name: str) -> bool:
    return name.endswith("weight_quantizer")


def set_quantization_enabled(model: nn.Module, enabled: bool) -> None:
    for q in quantizers(model).values():
        q.enabled = enabled


@contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` computes in float inside the block; each quantizer's state is restored after."""
    states = {q: q.enabled for q in quantizers(model).values()}
    set_quantization_enabled(model, False)
    try:
        yield model
    finally:
        for q, enabled in states.items():
            q.enabled = enabled
