"""What to quantize and how: a plain dataclass, serialised verbatim into calibration artifacts."""

from dataclasses import asdict, dataclass

from ..errors import HarmoqError
from .quantizer import check_bits

LAYER_KINDS = ("linear", "matmul", "conv")
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
    """

    wbits: int = 4
    abits: int = 4
    layers: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()
    weight_per_channel: bool = True
    weight_symmetric: bool = False
    act_symmetric: bool = False

    def __post_init__(self):
        check_bits(self.wbits)
        check_bits(self.abits)
        if self.layers is not None:
            self.layers = tuple(self.layers)
            unknown = set(self.layers) - set(LAYER_KINDS)
            if unknown:
                raise HarmoqError(f"unknown layer kind(s) {sorted(unknown)}; choose from {list(LAYER_KINDS)}")
        self.skip = tuple(self.skip)

    def layers_for(self, family: str) -> tuple[str, ...]:
        return self.layers if self.layers is not None else FAMILY_DEFAULT_LAYERS[family]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "QuantConfig":
        return cls(**data)
