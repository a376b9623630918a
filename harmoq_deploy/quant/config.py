"""What to quantize and how: a plain dataclass, serialised verbatim into calibration artifacts."""

from dataclasses import asdict, dataclass

from .. import defaults
from ..errors import HarmoqError
from .quantizer import check_bits

LAYER_KINDS = ("linear", "matmul", "conv")
TARGETS = ("any", "tensorrt")
FAMILY_DEFAULT_LAYERS = {
    # 2DQuant's coverage: every Linear in the transformer blocks and both attention-matmul inputs.
    "transformer": ("linear", "matmul"),
    # CNNs have neither; their quantizable compute is the body convolutions.
    "cnn": ("conv",),
}


@dataclass
class QuantConfig:
    """Bits and coverage of a quantized model.

    layers: which op kinds get quantizers (``linear``, ``matmul``, ``conv``); ``None`` takes the
        architecture family's default (transformers: linear + matmul; CNNs: conv).
    skip: extra module-name prefixes to keep in float, on top of the architecture's first conv
        and upsampler, which always stay float.
    weight_per_channel: per-output-channel weight bounds (TensorRT's weight granularity);
        activations are always per-tensor.
    target: ``"tensorrt"`` (the default, so that every default calibration exports) constrains
        the grids to what TensorRT executes exactly: symmetric per-channel weights (zero point 0; a weight offset would
        multiply the data). Activations stay asymmetric: the exporter shifts each range to
        symmetric and restores the offset exactly around the INT8 op (bias folds, LayerNorm
        beta, matmul and padded-conv correction terms; see ``export.qdq``). ``"any"`` leaves the
        weight grids free too (research: the exporter refuses asymmetric weights).
    """

    wbits: int = 4
    abits: int = 4
    layers: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()
    weight_per_channel: bool = True
    weight_symmetric: bool = False
    act_symmetric: bool = False
    target: str = defaults.TARGET

    def __post_init__(self):
        if self.target not in TARGETS:
            raise HarmoqError(f"unknown target {self.target!r}; choose from {', '.join(TARGETS)}")
        if self.target == "tensorrt":
            self.weight_symmetric, self.weight_per_channel = True, True
        check_bits(self.wbits)
        check_bits(self.abits)
        if self.layers is not None:
            self.layers = tuple(self.layers)
            unknown = set(self.layers) - set(LAYER_KINDS)
            if unknown:
                raise HarmoqError(f"unknown layer kind(s) {sorted(unknown)}; choose from {list(LAYER_KINDS)}")
        self.skip = tuple(self.skip)

    def layers_for(self, layout) -> tuple[str, ...]:
        """The op kinds to quantize in a network of ``layout`` (an ``ArchLayout``)."""
        if self.layers is not None:
            return self.layers
        return layout.layers or FAMILY_DEFAULT_LAYERS[layout.family]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "QuantConfig":
        return cls(**data)
