"""Infer an architecture's quantization layout from the network itself.

The float model is run once on a small random image, watched by forward hooks on every module and
a ``TorchFunctionMode`` that sees every torch call, wherever it is made (``forward``, helper
functions, top-level code). Only the image requires grad during that run, so a tensor that
requires grad is exactly one that depends on the image: an activation. From that one trace:

- the first weighted layer run reads the image, and the tail makes the output: the layers that
  feed the first upsampling op (PixelShuffle, enlarging interpolation, transposed conv) after the
  last repeated block, every layer after it, and the final layer. They stay in float;
- layers the forward never runs stay float (there is nothing to quantize), and so do layers
  whose input does not depend on the image (position-bias MLPs over a coordinate grid)
  stay in float too, by class where every instance of a module class holds only such layers;
- activation x activation products (matmul, bmm, ``@``, two-operand einsum with both operands
  depending on the image) belong to the innermost module running them: its class is an
  attention module, and both operands of each of its products get a quantizer;
- the quantized op kinds follow the FLOP split of what remains: Linear layers plus the products
  when they carry at least as many FLOPs as the convolutions (2DQuant's transformer coverage),
  else the convolutions plus any products;
- the feature taps for distillation are the outputs of the repeated blocks: the largest group (by
  parameters) of two or more same-class sibling modules that hold layers and return a tensor (or
  a tuple led by one), e.g. the children of a ModuleList of residual groups.
"""

import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .layout import ArchLayout

_PROBE_SIDE = 32
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_UPSAMPLING = {F.pixel_shuffle, torch.pixel_shuffle, F.interpolate, F.conv_transpose2d, torch.conv_transpose2d}


@dataclass
class _Layer:
    name: str
    kind: str  # "conv", "linear" or "deconv" (transposed conv: never quantized)
    position: int
    flops: int
    constant_input: bool


@dataclass
class _Product:
    owner: str
    owner_class: str
    flops: int


@dataclass
class _Trace:
    layers: dict[str, _Layer] = field(default_factory=dict)
    products: list[_Product] = field(default_factory=list)
    upsampling: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)  # position, layers feeding it
    outputs: dict[int, tuple] = field(default_factory=dict)  # id of a layer's output -> (weak ref, layer)
    tensor_outputs: set[str] = field(default_factory=set)  # modules whose output is a tensor
    position: int = 0

    def producers(self, args) -> tuple[str, ...]:
        """The layers whose outputs are among ``args`` (a live tensor, not a reused id)."""
        entries = (self.outputs.get(id(a)) for a in args if isinstance(a, torch.Tensor))
        live = [a for a in args if isinstance(a, torch.Tensor)]
        return tuple(entry[1] for entry, a in zip(entries, live) if entry is not None and entry[0]() is a)


def _depends_on_image(x) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad


def _layer_kind(module: nn.Module) -> str | None:
    if type(module) is nn.Conv2d:
        return "conv"
    if type(module) is nn.Linear:
        return "linear"
    if isinstance(module, nn.ConvTranspose2d):
        return "deconv"
    return None


def _enlarges(func, args, out) -> bool:
    if func is not F.interpolate:
        return func in _UPSAMPLING
    return isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] > args[0].shape[-1]


class _Watch(TorchFunctionMode):
    def __init__(self, trace: _Trace, stack: list[tuple[str, str]]):
        super().__init__()
        self.trace, self.stack = trace, stack

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from ..quant.matmul import product_macs, product_operands

        out = func(*args, **(kwargs or {}))
        operands = product_operands(func, args)
        if operands is not None and self.stack and all(_depends_on_image(t) for t in operands):
            owner, owner_class = self.stack[-1]
            self.trace.products.append(_Product(owner, owner_class, 2 * product_macs(func, args, out)))
        elif func in _UPSAMPLING and _enlarges(func, args, out):
            self.trace.position += 1
            self.trace.upsampling.append((self.trace.position, self.trace.producers(args)))
        return out


def _run(model: nn.Module, image: torch.Tensor) -> _Trace:
    trace, stack = _Trace(), []

    def enter(name, module, inputs):
        stack.append((name, type(module).__name__))
        kind = _layer_kind(module)
        if kind and name not in trace.layers:
            trace.position += 1
            trace.layers[name] = _Layer(name, kind, trace.position, 0, not _depends_on_image(inputs[0]))

    def leave(name, module, inputs, output):
        stack.pop()
        if isinstance(output, torch.Tensor) or (isinstance(output, tuple) and output
                                                 and isinstance(output[0], torch.Tensor)):
            trace.tensor_outputs.add(name)
        kind = _layer_kind(module)
        if kind and isinstance(output, torch.Tensor):
            per_output = module.weight[0].numel() if kind != "linear" else module.in_features
            if kind == "deconv":
                per_output = module.weight.shape[0] * module.weight[0, 0].numel() // module.groups
            trace.layers[name].flops += 2 * output.numel() * per_output
            trace.outputs[id(output)] = (weakref.ref(output), name)

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, i, name=name: enter(name, m, i)))
        handles.append(module.register_forward_hook(lambda m, i, o, name=name: leave(name, m, i, o),
                                                    always_call=True))
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad(), _Watch(trace, stack):
            model(image.clone().requires_grad_(True) * 1)
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
    return trace


def attention_window(model: nn.Module) -> int:
    """The largest attention window of ``model`` (1 for networks without window attention)."""
    sizes = [1]
    for module in model.modules():
        window = getattr(module, "window_size", None)
        if isinstance(window, int):
            sizes.append(window)
        elif isinstance(window, (tuple, list)) and all(isinstance(w, int) for w in window):
            sizes.append(max(window))
    return max(sizes)


def _probe_side(model: nn.Module) -> int:
    return max(_PROBE_SIDE, 2 * attention_window(model))


def _repeated_blocks(model: nn.Module, trace: _Trace) -> list[str]:
    """The largest group (by parameters) of >= 2 same-class siblings that hold weighted layers
    and return tensors: the network's repeated blocks."""
    best, best_params = [], 0
    for parent_name, parent in model.named_modules():
        groups: dict[type, list[tuple[str, nn.Module]]] = {}
        for child_name, child in parent.named_children():
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if (_layer_kind(child) is None and not isinstance(child, _CONTAINERS)
                    and any(True for _ in child.children()) and full in trace.tensor_outputs):
                groups.setdefault(type(child), []).append((full, child))
        for members in groups.values():
            names = [n for n, _ in members]
            if len(members) < 2 or not all(any(l.startswith(n + ".") for l in trace.layers) for n in names):
                continue
            params = sum(p.numel() for _, m in members for p in m.parameters())
            if params > best_params:
                best, best_params = names, params
    return best


def _tail(trace: _Trace, blocks: list[str]) -> set[str]:
    layers = sorted(trace.layers.values(), key=lambda layer: layer.position)
    tail = {layers[-1].name}
    in_blocks = [l.position for l in layers if any(l.name.startswith(b + ".") for b in blocks)]
    body_end = max(in_blocks, default=0)
    after_body = [u for u in trace.upsampling if u[0] > body_end] or trace.upsampling[-1:]
    if after_body:
        start, feeders = after_body[0]
        tail |= {l.name for l in layers if l.position > start} | set(feeders)
    return tail


def _excluded_classes(model: nn.Module, layers: dict[str, _Layer], constant: set[str]) -> tuple[set[str], set[str]]:
    """``constant`` layers as module classes, each the innermost enclosing class every instance
    of which holds constant-input layers only (e.g. CRAFT's DynamicPosBias), and the names of the
    constant layers no such class covers."""
    def held(name: str) -> set[str]:
        return {l for l in layers if l.startswith(name + ".")}

    instances: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if name and _layer_kind(module) is None and not isinstance(module, _CONTAINERS):
            instances.setdefault(type(module).__name__, []).append(name)
    pure = {cls for cls, names in instances.items() if all(held(n) and held(n) <= constant for n in names)}
    owner_class = {name: type(module).__name__ for name, module in model.named_modules()}
    classes, uncovered = set(), set()
    for layer in constant:
        parts = layer.split(".")
        ancestors = (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1))
        cls = next((owner_class[a] for a in ancestors if owner_class[a] in pure), None)
        if cls is None:
            uncovered.add(layer)
        else:
            classes.add(cls)
    return classes, uncovered


def infer_layout(model: nn.Module, architecture: str = "") -> ArchLayout:
    """The layout of ``model`` (a float SR network in eval mode) from one traced run."""
    param = next(model.parameters())
    side = _probe_side(model)
    first = _run(model, torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(param))
    if not first.layers:
        return ArchLayout(family="cnn", architecture=architecture or type(model).__name__)
    constant = {name for name, layer in first.layers.items() if layer.constant_input}
    excluded, constant_layers = _excluded_classes(model, first.layers, constant)
    blocks = _repeated_blocks(model, first)
    first_layer = min(first.layers.values(), key=lambda layer: layer.position).name
    # layers the forward never runs (e.g. SPAN's training-time branches) have nothing to quantize
    unused = {name for name, m in model.named_modules() if _layer_kind(m) and name not in first.layers}
    kept_float = {first_layer} | _tail(first, blocks) | constant_layers
    products = first.products
    attention = tuple(dict.fromkeys(p.owner_class for p in products if not p.owner.startswith(tuple(
        f"{name}." for name in kept_float)) and p.owner not in kept_float))
    body = [l for l in first.layers.values() if l.name not in kept_float and l.name not in constant]
    conv_flops = sum(l.flops for l in body if l.kind == "conv")
    attention_flops = sum(l.flops for l in body if l.kind == "linear") + sum(
        p.flops for p in products if p.owner_class in attention)
    if attention_flops >= conv_flops and attention_flops:
        family, layers = "transformer", ("linear", "matmul")
    else:
        family, layers = "cnn", ("conv", "matmul") if attention else ("conv",)
    ordered = sorted(kept_float, key=lambda name: first.layers[name].position) + sorted(unused)
    return ArchLayout(
        family=family,
        attention_modules=attention,
        float_modules=tuple(ordered),
        excluded_modules=tuple(sorted(excluded)),
        feature_taps="|".join(name.replace(".", r"\.") for name in blocks),
        layers=layers,
        architecture=architecture or type(model).__name__,
        inferred=True,
    )
