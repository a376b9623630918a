"""What the quantizer needs to know about an architecture beyond its modules.

Every architecture gets one inferred from the network itself (``infer.infer_layout``); the few
written by hand here and beside IMDN and PAN are kept where they know better (see
tests/test_layouts.py for where the two differ and why).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchLayout:
    """Quantization-relevant structure of one architecture.

    family: ``"transformer"`` quantizes Linear layers and attention matmuls by default
        (the 2DQuant coverage); ``"cnn"`` has neither, so its default covers the body convs.
    attention_modules: class names whose ``forward`` holds activation x activation matmuls
        (``a @ b``); both inputs of each matmul get a quantizer.
    float_modules: module-name prefixes that always stay in float: the first conv and the
        upsampler, where few channels carry the whole image.
    excluded_modules: class names never quantized, e.g. position-bias MLPs whose input is a
        constant coordinate grid rather than an activation.
    feature_taps: a regular expression matching the full names of the residual groups whose
        outputs feature distillation compares (2DQuant's DQC, HarmoQ's ABR).
    layers: the op kinds quantized by default; empty takes the family's.
    architecture: the name errors and reports use.
    inferred: True when found by tracing the network rather than written by hand.
    """

    family: str
    attention_modules: tuple[str, ...] = ()
    float_modules: tuple[str, ...] = ()
    excluded_modules: tuple[str, ...] = ()
    feature_taps: str = ""
    layers: tuple[str, ...] = ()
    architecture: str = ""
    inferred: bool = False


SPANDREL_LAYOUTS: dict[str, ArchLayout] = {
    "SwinIR": ArchLayout(
        family="transformer",
        attention_modules=("WindowAttention",),
        float_modules=("conv_first", "conv_before_upsample", "upsample", "conv_up1",
                       "conv_up2", "conv_hr", "conv_last"),
        feature_taps=r"layers\.\d+",
    ),
    "DCTLSA": ArchLayout(
        family="transformer",
        attention_modules=("WindowAttention",),
        float_modules=("fea_conv", "upsampler"),
        feature_taps=r"B\d+",
    ),
    "CRAFT": ArchLayout(
        family="transformer",
        attention_modules=("Attention_regular", "Attention"),
        float_modules=("conv_first", "upsample"),
        excluded_modules=("DynamicPosBias",),
        feature_taps=r"layers\.\d+",
    ),
}
