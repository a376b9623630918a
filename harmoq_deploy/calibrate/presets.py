"""Named variants of the optimising methods: each is the method with a few settings changed.

The benchmarks run them by name side by side with the defaults (``scripts/bench_quality.py
--methods``) and the results files label their rows with these names. ``harmoq`` and
``2dquant`` themselves are the methods' defaults.

    >>> from harmoq_deploy.calibrate.presets import build
    >>> build("harmoq-slow-grids", iters=100).weight_bound_lrs
    (0.001,)
"""

from dataclasses import dataclass

from .. import defaults
from .methods import OPTIMIZING_METHODS


@dataclass(frozen=True)
class Preset:
    """``method`` (a key of ``OPTIMIZING_METHODS``) with ``settings`` in place of its defaults."""

    method: str
    settings: dict
    summary: str


PRESETS = {
    "harmoq-slow-grids": Preset(
        "harmoq", dict(weight_bound_lrs=(defaults.WEIGHT_BOUND_LRS[0],)),
        "ABR moves the weight grids at the slow rate only, without the rate trial"),
    "harmoq-unrounded": Preset(
        "harmoq", dict(rounding_damping=None, weight_bound_lrs=(None,)),
        "SRC rounds to nearest, and ABR moves the weight grids at the activations' rate"),
    "harmoq-uniform-weight-lr": Preset(
        "harmoq", dict(weight_lr_by_width=False),
        "ABR refines the weights at one rate for every bit width"),
    "harmoq-frozen-weights": Preset(
        "harmoq", dict(weight_lr=0.0),
        "ABR refines the bounds and the biases, not the weights"),
    "harmoq-bounds-only": Preset(
        "harmoq", dict(bias_lr=0.0, weight_lr=0.0),
        "ABR refines the bounds alone (biases and weights frozen)"),
    "harmoq-refined-guard": Preset(
        "harmoq", dict(guard_iters=20),
        "HSO and SRC judged after 20 refinement iterations from each state, not on the states themselves"),
    "2dquant+bias": Preset(
        "2dquant", dict(bias_lr=defaults.BIAS_LR),
        "control, not the paper's 2DQuant: DQC also refines the biases at HarmoQ's rate"),
    "2dquant+free": Preset(
        "2dquant", dict(bias_lr=defaults.BIAS_LR, weight_lr=defaults.WEIGHT_LR),
        "control, not the paper's 2DQuant: DQC also refines biases and weights at HarmoQ's rates"),
    "2dquant+free-uniform-weight-lr": Preset(
        "2dquant", dict(bias_lr=defaults.BIAS_LR, weight_lr=defaults.WEIGHT_LR, weight_lr_by_width=False),
        "2dquant+free with one weight rate for every bit width"),
}

#: the variants of ``harmoq-unrounded`` that the results files compare it with
_UNROUNDED = PRESETS["harmoq-unrounded"].settings
PRESETS |= {f"harmoq-unrounded-{name.removeprefix('harmoq-')}":
            Preset("harmoq", {**_UNROUNDED, **PRESETS[name].settings}, f"harmoq-unrounded, and {PRESETS[name].summary}")
            for name in ("harmoq-uniform-weight-lr", "harmoq-frozen-weights", "harmoq-bounds-only", "harmoq-refined-guard")}

#: older names that results files still carry, and the preset each one is
ALIASES = {"harmoq-frozen-bias": "harmoq-bounds-only"}

#: HarmoQ's ablation, DOBI -> +SRC -> +HSO -> +ABR on the bounds -> +the biases -> +the weights (= HarmoQ)
ABLATION = {
    "dobi": dict(src=False, hso=False, abr=False),
    "dobi+src": dict(hso=False, abr=False),
    "dobi+src+hso": dict(abr=False),
    "dobi+src+hso+abr": dict(bias_lr=0.0, weight_lr=0.0),
    "dobi+src+hso+abr+bias": dict(weight_lr=0.0),
    "dobi+src+hso+abr+bias+weights (harmoq)": {},
}


def canonical(name: str) -> str:
    """``name``, or the preset an older name stands for."""
    return ALIASES.get(name, name)


def resolve(name: str) -> Preset | None:
    """The preset called ``name`` (or by an older name), None for a plain method name."""
    return PRESETS.get(canonical(name))


def build(name: str, **settings):
    """The method a preset names, with ``settings`` (e.g. ``iters``, ``batch``) on top of the preset's."""
    preset = resolve(name)
    if preset is None:
        raise KeyError(f"no preset {name!r}; presets: {', '.join(PRESETS)}")
    return OPTIMIZING_METHODS[preset.method](**{**preset.settings, **settings})


def build_ablation(rung: str, **settings):
    """HarmoQ at one rung of its ablation (a key of ``ABLATION``), with ``settings`` on top."""
    return OPTIMIZING_METHODS["harmoq"](**{**ABLATION[rung], **settings})
