"""Quantize both inputs of the activation x activation products inside attention modules.

SR transformers write attention as ``q @ k.transpose(-2, -1)`` and ``attn @ v`` (or a two-operand
``einsum``) inline in a module's ``forward`` or in helper functions it calls. Rather than copying
every architecture's attention code, a ``TorchFunctionMode`` is active only while such a module
runs and hands the i-th product's operands to the i-th pair of quantizers. The number of products
is found once, by probing. A product belongs to the innermost such module running: an outer
module's mode never sees the products an inner one already quantized.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .quantizer import UniformQuantizer

_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm}
_EINSUMS = {torch.einsum, torch.functional.einsum}


class MatmulQuantizers(nn.Module):
    """The quantizers of one attention module: ``pairs[i]`` = (left, right) operand of matmul i."""

    def __init__(self, pairs: list[tuple[UniformQuantizer, UniformQuantizer]]):
        super().__init__()
        self.pairs = nn.ModuleList(nn.ModuleList(pair) for pair in pairs)
        #: MACs of each matmul in the last forward (for the coverage report)
        self.last_macs: list[int] = [0] * len(pairs)


def _is_activation(x) -> bool:
    return isinstance(x, torch.Tensor) and not isinstance(x, nn.Parameter)


def product_operands(func, args) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The two operands of a matmul, bmm, ``@`` or two-operand einsum call whose operands are
    both activations (not parameters); None for any other call."""
    if func in _MATMULS and len(args) >= 2:
        operands = args[:2]
    elif func in _EINSUMS and len(args) == 2 and isinstance(args[1], (list, tuple)) and len(args[1]) == 2:
        operands = tuple(args[1])
    elif func in _EINSUMS and len(args) == 3 and isinstance(args[0], str):
        operands = args[1:]
    else:
        return None
    return tuple(operands) if all(_is_activation(a) for a in operands) else None


def _with_operands(func, args, left, right) -> tuple:
    if func in _EINSUMS:
        return (args[0], left, right)
    return (left, right, *args[2:])


def product_macs(func, args, out: torch.Tensor) -> int:
    """Multiply-accumulates of a product found by ``product_operands``."""
    left, right = product_operands(func, args)
    if func not in _EINSUMS:
        return out.numel() * left.shape[-1]
    equation = args[0].replace(" ", "")
    inputs = equation.split("->")[0].split(",")
    if "." in equation or len(inputs) != 2:
        return out.numel() * left.shape[-1]
    sizes = {}
    for letters, tensor in zip(inputs, (left, right)):
        sizes.update(zip(letters, tensor.shape))
    macs = 1
    for size in sizes.values():
        macs *= int(size)
    return macs


def _is_activation_matmul(func, args) -> bool:
    return product_operands(func, args) is not None


_paused = [0]


@contextmanager
def unquantized_matmuls() -> Iterator[None]:
    """Matmuls inside are left alone even within an attention module: calibration code running
    in a hook there (SRC's solves) must not be mistaken for the module's own matmuls."""
    _paused[0] += 1
    try:
        yield
    finally:
        _paused[0] -= 1


class _QuantizeMatmulOperands(TorchFunctionMode):
    def __init__(self, quantizers: MatmulQuantizers):
        super().__init__()
        self.quantizers = quantizers
        self.index = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _paused[0] or not _is_activation_matmul(func, args):
            return func(*args, **kwargs)
        if self.index >= len(self.quantizers.pairs):
            raise RuntimeError("attention module ran more matmuls than were probed")
        left_q, right_q = self.quantizers.pairs[self.index]
        left, right = product_operands(func, args)
        quantized_args = _with_operands(func, args, left_q(left), right_q(right))
        with unquantized_matmuls():  # an enclosing module's mode must not take this product too
            out = func(*quantized_args, **kwargs)
        self.quantizers.last_macs[self.index] = product_macs(func, quantized_args, out)
        self.index += 1
        return out


class _CountMatmuls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if _paused[0] or not _is_activation_matmul(func, args):
            return func(*args, **(kwargs or {}))
        self.count += 1
        with unquantized_matmuls():  # counted once, by the innermost module
            return func(*args, **(kwargs or {}))


def _enter_mode(module: nn.Module, _inputs) -> None:
    mode = _QuantizeMatmulOperands(module.harmoq_matmuls)
    module._harmoq_modes.append(mode)
    mode.__enter__()


def _exit_mode(module: nn.Module, _inputs, _output) -> None:
    module._harmoq_modes.pop().__exit__(None, None, None)


def attach_matmul_quantizers(module: nn.Module, quantizers: MatmulQuantizers) -> None:
    """Make ``module`` quantize the operands of its matmuls with ``quantizers``."""
    module.harmoq_matmuls = quantizers
    module._harmoq_modes = []
    module.register_forward_pre_hook(_enter_mode)
    module.register_forward_hook(_exit_mode, always_call=True)


def count_matmuls(model: nn.Module, modules: list[nn.Module], example: torch.Tensor) -> list[int]:
    """Run ``model`` once; return the most activation x activation matmuls one call of each module made."""
    most = {id(m): 0 for m in modules}
    active: list[_CountMatmuls] = []

    def enter(_module, _inputs):
        active.append(_CountMatmuls())
        active[-1].__enter__()

    def leave(module, _inputs, _output):
        counter = active.pop()
        counter.__exit__(None, None, None)
        most[id(module)] = max(most[id(module)], counter.count)

    handles = [h for m in modules for h in (m.register_forward_pre_hook(enter),
                                             m.register_forward_hook(leave, always_call=True))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return [most[id(m)] for m in modules]
