"""scripts/depth_snr.py measures every layer against the float model as loaded, not against the
calibrated model with its quantizers bypassed (HarmoQ changes weights, so that is no float model)."""

import math
import sys

import torch

from harmoq_deploy.models import load_model
from harmoq_deploy.paths import PROJECT_ROOT
from harmoq_deploy.quant import QuantConfig, quantize_model, set_quantization_enabled

sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
from depth_snr import layer_snr  # noqa: E402


def test_a_changed_weight_shows_from_its_layer_on(shared):
    loaded = load_model(shared / "weights" / "IMDN_x2.pth")
    model = quantize_model(load_model(loaded.path).module, QuantConfig(), loaded.layout)
    set_quantization_enabled(model, False)
    images = [torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))]
    assert all(math.isinf(v) for v in layer_snr(model, loaded.module, images).values())

    with torch.no_grad():
        model.IMDB2.c1.weight.mul_(1.01)
    snr = layer_snr(model, loaded.module, images)
    assert all(math.isinf(snr[name]) for name in snr if name.startswith("IMDB1."))
    assert 30 < snr["IMDB2.c1"] < 50
    assert math.isfinite(snr["output"])
