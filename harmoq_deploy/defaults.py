"""Defaults shared by the command line and the calibration stage, in one torch-free module.

The CLI imports this to print its ``--help`` without loading torch; ``calibrate.methods`` takes
its dataclass defaults from here, so the two cannot drift apart. docs/method.md gives the
evidence behind each value.
"""

#: calibration crops: how many, the LR side of each, and the sampler's seed
CROPS, PATCH, SEED = 32, 64, 0
#: which grids calibration targets: "tensorrt" (the grids TensorRT executes exactly: symmetric
#: weights; activation offsets restored by the exporter), so that a default calibration always
#: exports and builds, or "any" (asymmetric weights too: research only, refused by the exporter);
#: the symmetric weights' measured cost is small (docs/results/quality.md, the `@tensorrt` rows)
TARGET = "tensorrt"

#: distillation budget of 2DQuant's DQC and HarmoQ's ABR: iterations and crops per step, sized so that
#: DCTLSA x2 at W3A3 calibrates in under 10 minutes on a 2-core CPU (docs/results/quality.md); four
#: times the iterations buy more quality (docs/results/quality_iters400.md)
ITERS, BATCH = 100, 4
#: Adam rate of the quantizer bounds, and the weight of the feature term in the distillation loss
LR, FEATURE_WEIGHT = 1e-2, 5.0
#: rates at which HarmoQ's ABR also refines the quantized layers' biases and weights; the weights'
#: rate is the one at 3 bits, scaled to the grid's step at other widths
BIAS_LR, WEIGHT_LR = 1e-3, 1e-3
#: damping of SRC's rounding with error feedback, relative to the Gram's mean diagonal
ROUNDING_DAMPING = 0.01
#: rates ABR may move the weight grids at (slow, so the rounding keeps its grid, or the activations'
#: rate), each tried for RATE_TRIAL_ITERS iterations on held-out crops, the better one kept
WEIGHT_BOUND_LRS = (1e-3, 1e-2)
RATE_TRIAL_ITERS = 25

#: LR tile side of exported graphs and engines, and the LR pixels neighbouring tiles share
TILE, OVERLAP = 64, 16
