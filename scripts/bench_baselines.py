"""FP, MinMax, Percentile and DOBI side by side: same weights, same calibration crops, one run.

Writes docs/results/baselines.json and docs/results/baselines.md.

    .venv/bin/python scripts/bench_baselines.py            # the full table (about an hour on 2 cores)
    .venv/bin/python scripts/bench_baselines.py --models IMDN_x2 --bits 4 --datasets Set5
"""

import argparse
import time

from benchlib import MODELS, QualityRow, machine, today, write_results

from harmoq_deploy.calibrate import make_method
from harmoq_deploy.calibrate.bounds import initialise_bounds
from harmoq_deploy.calibrate.observe import observe_activations
from harmoq_deploy.data import load_benchmark, sample_calibration_crops
from harmoq_deploy.eval import score_pairs
from harmoq_deploy.models import load_model
from harmoq_deploy.paths import benchmarks_root, calib_root, shared_weights
from harmoq_deploy.quant import QuantConfig, quantize_model

METHODS = ("minmax", "percentile", "dobi")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--bits", default="4,3,2")
    parser.add_argument("--datasets", default="Set5,Set14")
    parser.add_argument("--crops", type=int, default=32)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stem", default="baselines")
    args = parser.parse_args()
    models, datasets = args.models.split(","), args.datasets.split(",")
    bit_widths = [int(b) for b in args.bits.split(",")]
    meta = {
        "title": "Classic PTQ baselines side by side", "script": "scripts/bench_baselines.py", "date": today(),
        "machine": machine(),
        "protocol": (f"PSNR/SSIM on Y (BT.601), border = scale, uint8 output. Calibration: {args.crops} LR crops of "
                     f"{args.patch}x{args.patch} from DIV2K_valid_crop256 (seed {args.seed}), the same for every "
                     "method. Coverage: the architecture's default (transformers: every block Linear + both "
                     "attention-matmul inputs; CNNs: body convs); weights per-channel, activations per-tensor, "
                     "asymmetric. `calib s` = wall time of observing the activations plus setting the bounds."),
        "crops": args.crops, "patch": args.patch, "seed": args.seed,
    }
    rows: list[QualityRow] = []
    for key in models:
        source = load_model(shared_weights(MODELS[key]))
        pairs = {d: load_benchmark(benchmarks_root(), d, source.scale) for d in datasets}
        for d, p in pairs.items():
            score = score_pairs(source.module, p, source.scale, f"{key} FP {d}")
            rows.append(QualityRow(key, "FP", "fp", d, score.psnr, score.ssim, 0.0))
            print(f"{key} FP {d}: {score.psnr:.3f} / {score.ssim:.4f}", flush=True)
        crops = sample_calibration_crops(calib_root(), args.crops, args.patch, source.scale, args.seed)
        start = time.perf_counter()
        # Statistics of the float activations depend on neither method nor bits: gather them once.
        observed = quantize_model(load_model(shared_weights(MODELS[key])).module, QuantConfig(), source.layout)
        stats = observe_activations(observed, crops, seed=args.seed)
        observe_seconds = time.perf_counter() - start
        for bits in bit_widths:
            for name in METHODS:
                start = time.perf_counter()
                model = quantize_model(load_model(shared_weights(MODELS[key])).module,
                                       QuantConfig(wbits=bits, abits=bits), source.layout)
                initialise_bounds(model, make_method(name), stats)
                seconds = observe_seconds + time.perf_counter() - start
                for d, p in pairs.items():
                    score = score_pairs(model, p, source.scale, f"{key} W{bits}A{bits} {name} {d}")
                    rows.append(QualityRow(key, f"W{bits}A{bits}", name, d, score.psnr, score.ssim, round(seconds, 2)))
                    print(f"{key} W{bits}A{bits} {name} {d}: {score.psnr:.3f} / {score.ssim:.4f} "
                          f"(calib {seconds:.1f}s)", flush=True)
        write_results(args.stem, rows, meta)


if __name__ == "__main__":
    main()
