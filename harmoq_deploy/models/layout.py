"""What the quantizer needs to know about an architecture beyond its modules.

Kept beside each architecture (like spandrel's ``detect``), so adding an architecture is
one declaration, not a special case in the quantizer.
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
    """

    family: str
    attention_modules: tuple[str, ...] = ()
    float_modules: tuple[str, ...] = ()
    excluded_modules: tuple[str, ...] = ()
    feature_taps: str = ""


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
