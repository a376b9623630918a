"""Quantization points: where the fake-quantized model quantizes, and on which grid.

During export every ``UniformQuantizer`` becomes a ``harmoq::QuantPoint`` marker node that
carries the quantizer's module path, so the ONNX graph keeps the exact places the calibration
chose (weights, layer inputs, both matmul operands) while the float network exports as usual.
The rewrite (``qdq.py``) then replaces each marker by TensorRT-legal Q/DQ, reading the grid
from the ``PointGrid`` of that path.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..quant import UniformQuantizer, quantizers

MARKER_DOMAIN, MARKER_OP = "harmoq", "QuantPoint"


@dataclass(frozen=True)
class PointGrid:
    """The k-bit grid of one quantizer, in the form Q/DQ needs.

    The fake quantizer's values are ``offset + step * n`` with integers ``n`` in
    ``[qmin, qmax]``: for a symmetric grid ``offset = 0`` and ``n`` in ``±(2^(b-1) - 1)``; an
    asymmetric grid ``l + s q`` (``q`` in ``0..2^b - 1``) is the same set of values written as
    ``c + s n`` with ``c = l + s 2^(b-1)`` and ``n`` in ``[-2^(b-1), 2^(b-1) - 1]``, which fits
    INT8 with zero point 0.
    """

    name: str
    bits: int
    step: np.ndarray
    offset: np.ndarray
    qmin: int
    qmax: int
    channel_axis: int | None
    quantizer: UniformQuantizer

    @property
    def symmetric(self) -> bool:
        return not np.any(self.offset)

    def integers(self, value: torch.Tensor) -> np.ndarray:
        """The integer codes of a constant (a weight), rounded exactly as the fake quantizer rounds."""
        return (self.quantizer.integers(value) - self.quantizer.qmin + self.qmin).numpy().astype(np.int8)


def point_grids(model: nn.Module) -> dict[str, PointGrid]:
    grids = {}
    for name, q in quantizers(model).items():
        lower, upper = (b.detach().float().cpu() for b in q.bounds())
        step = q.step().detach().float().cpu()
        if q.symmetric:
            offset, qmin, qmax = torch.zeros_like(step), q.qmin, q.qmax
        else:
            half = 2 ** (q.bits - 1)
            offset, qmin, qmax = lower + step * half, -half, half - 1
        grids[name] = PointGrid(
            name=name, bits=q.bits, step=step.numpy().astype(np.float32),
            offset=offset.numpy().astype(np.float32), qmin=qmin, qmax=qmax,
            channel_axis=q.channel_axis, quantizer=q)
    return grids


class _QuantPoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, name):
        return x.clone()

    @staticmethod
    def symbolic(g, x, name):
        return g.op(f"{MARKER_DOMAIN}::{MARKER_OP}", x, name_s=name).setType(x.type())


@contextmanager
def quant_point_markers(model: nn.Module) -> Iterator[None]:
    """Within the block, every quantizer of ``model`` passes its input through unchanged as a
    ``harmoq::QuantPoint`` node named after it (for ``torch.onnx.export``)."""
    patched = quantizers(model)
    for name, q in patched.items():
        q.forward = lambda x, name=name: _QuantPoint.apply(x, name)
    try:
        yield
    finally:
        for q in patched.values():
            del q.forward
