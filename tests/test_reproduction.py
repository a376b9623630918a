"""Our harness reproduces the reference FP figures of ../shared/README.md and the published IMDN figure."""

import pytest

from harmoq_deploy.eval import evaluate
from harmoq_deploy.models import load_model

CASES = [
    # checkpoint, PSNR, SSIM (Set5), PSNR tolerance
    ("DCTLSA_X2.pt", 38.246, 0.9614, 0.005),  # shared/README.md reference table
    ("IMDN_x2.pth", 38.00, 0.9605, 0.005),  # published (two decimals)
]


@pytest.mark.parametrize("checkpoint, psnr, ssim, tolerance", CASES)
def test_set5_fp_figures(shared, checkpoint, psnr, ssim, tolerance):
    loaded = load_model(shared / "weights" / checkpoint)
    score = evaluate(loaded.module, loaded.scale, ["Set5"], shared / "data" / "benchmarks")["Set5"]
    assert score.n == 5
    assert score.psnr == pytest.approx(psnr, abs=tolerance)
    assert score.ssim == pytest.approx(ssim, abs=0.0002)
