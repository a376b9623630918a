"""FP, MinMax, Percentile, DOBI, 2DQuant and HarmoQ side by side: same weights, crops and seeds.

Writes docs/results/<stem>.json and .md (rows: model, bits, method, dataset, psnr, ssim,
calib_seconds). Each finished configuration is written at once; ``--resume`` keeps the rows of
an earlier run with the same settings on the same host and computes only the missing ones, so a long
table can be filled across several sittings (a file from another host is refused: docs/method.md,
section 4). ``--ablation`` replaces the method list with HarmoQ's ablation (DOBI -> +SRC -> +HSO ->
+ABR on the bounds -> +ABR on the biases too -> +ABR on the weights too = HarmoQ).

    .venv/bin/python scripts/bench_quality.py                        # the full table (hours on a CPU)
    .venv/bin/python scripts/bench_quality.py --models IMDN_x2 --bits 3 --datasets Set5 --iters 40
"""

import argparse
import time

from benchlib import (MODELS, RESULTS, QualityRow, bit_widths, machine, resumable_rows, run_script, today,
                      write_results)

from harmoq_deploy.calibrate import OPTIMIZING_METHODS, HarmoQ, calibrate, make_method
from harmoq_deploy.calibrate.methods import DEFAULT_BATCH, DEFAULT_BIAS_LR, DEFAULT_ITERS, DEFAULT_WEIGHT_BOUND_LRS, \
    DEFAULT_WEIGHT_LR
from harmoq_deploy.data import load_benchmark, sample_calibration_crops
from harmoq_deploy.eval import score_pairs
from harmoq_deploy.models import load_model
from harmoq_deploy.paths import benchmarks_root, calib_root, shared_weights
from harmoq_deploy.quant import QuantConfig

METHODS = ("minmax", "percentile", "dobi", "2dquant", "harmoq", "harmoq@tensorrt")
#: labels of their own for a method run with settings other than its defaults: label -> (method, settings),
#: run only when named in --methods. HarmoQ's ABR with the bounds alone refined (`harmoq-frozen-bias`, HarmoQ
#: before 2026-11-29) and with the biases too (`harmoq-frozen-weights`); the controls that give DQC HarmoQ's
#: freedom, the biases (`2dquant+bias`) or the biases and weights (`2dquant+free`): not the paper's 2DQuant.
#: `-uniform-weight-lr`: the weights refined at one rate for every width (HarmoQ's first weight refinement);
#: `harmoq-refined-guard`: HSO and SRC judged after a short refinement from each state, not on the states they
#: leave (docs/method.md, section 4); `harmoq-unrounded`: HarmoQ before SRC rounded its weights with error
#: feedback and ABR moved the weight grids slowly (section 1); `harmoq-slow-grids`: the weight grids always slow, never
#: tried at the activations' rate (HarmoQ of 2026-11-30, seventh sitting; section 3).
VARIANTS = {"harmoq-frozen-bias": ("harmoq", dict(bias_lr=0.0, weight_lr=0.0)),
            "harmoq-frozen-weights": ("harmoq", dict(weight_lr=0.0)),
            "2dquant+bias": ("2dquant", dict(bias_lr=DEFAULT_BIAS_LR)),
            "2dquant+free": ("2dquant", dict(bias_lr=DEFAULT_BIAS_LR, weight_lr=DEFAULT_WEIGHT_LR)),
            "harmoq-uniform-weight-lr": ("harmoq", dict(weight_lr_by_width=False)),
            "harmoq-refined-guard": ("harmoq", dict(guard_iters=20)),
            "harmoq-slow-grids": ("harmoq", dict(weight_bound_lrs=(DEFAULT_WEIGHT_BOUND_LRS[0],))),
            "harmoq-unrounded": ("harmoq", dict(rounding_damping=None, weight_bound_lrs=(None,))),
            "2dquant+free-uniform-weight-lr": ("2dquant", dict(bias_lr=DEFAULT_BIAS_LR, weight_lr=DEFAULT_WEIGHT_LR,
                                                                weight_lr_by_width=False))}
#: a method label ending in this runs on the grids TensorRT executes exactly (QuantConfig.target)
TENSORRT = "@tensorrt"
ABLATION = {"dobi": dict(src=False, hso=False, abr=False), "dobi+src": dict(hso=False, abr=False),
            "dobi+src+hso": dict(abr=False), "dobi+src+hso+abr": dict(bias_lr=0.0, weight_lr=0.0),
            "dobi+src+hso+abr+bias": dict(weight_lr=0.0), "dobi+src+hso+abr+bias+weights (harmoq)": {}}


def _method(label: str, args):
    refine = dict(iters=args.iters, batch=args.batch)
    if label in ABLATION:
        return HarmoQ(**refine, **ABLATION[label])
    base = label.removesuffix(TENSORRT)
    name, settings = VARIANTS.get(base, (base, {}))
    return make_method(name, **(refine if name in OPTIMIZING_METHODS else {}), **settings)


def table_order(rows: list[QualityRow]) -> list[QualityRow]:
    """Rows grouped by model (first seen first), then FP and widest bits first, then method in
    the order of the method list, however many sittings (``--resume``) they were computed in."""
    models = list(dict.fromkeys(r.model for r in rows))
    labels = list(dict.fromkeys(("fp", *METHODS, *VARIANTS, *ABLATION)))

    def key(row: QualityRow) -> tuple:
        weight_bits = 0 if row.bits == "FP" else int(row.bits[1:row.bits.index("A")])
        method = labels.index(row.method) if row.method in labels else len(labels)
        return models.index(row.model), row.bits != "FP", -weight_bits, method

    return sorted(rows, key=key)


def margins(rows: list[QualityRow], better: str, base: str) -> str:
    """PSNR/SSIM of ``better`` minus ``base`` for every cell both have, and the mean margin at each bit
    width, over all its cells and per set."""
    cells = {(r.model, r.bits, r.method, r.dataset): r for r in rows}
    lines, per_set = [], {}
    for (model, bits, method, dataset), row in cells.items():
        other = cells.get((model, bits, base, dataset))
        if method != better or other is None:
            continue
        d_psnr, d_ssim = row.psnr - other.psnr, row.ssim - other.ssim
        per_set.setdefault(bits, {}).setdefault(dataset, []).append(d_psnr)
        lines.append(f"| {model} | {bits} | {dataset} | {d_psnr:+.3f} | {d_ssim:+.4f} |")
    if not lines:
        return ""

    def mean(values: list[float], unit: str) -> str:
        return f"{sum(values) / len(values):+.3f} dB over {len(values)} {unit}{'s' if len(values) > 1 else ''}"

    means = ", ".join(f"{bits} {mean(sum(sets.values(), []), 'cell')}" for bits, sets in per_set.items())
    by_set = [f"- {bits}: " + ", ".join(f"{d} {mean(v, 'model')}" for d, v in sets.items()) for bits, sets in per_set.items()]
    return "\n".join([f"## {better} minus {base}", "", "| model | bits | dataset | PSNR | SSIM |", "|---|---|---|---|---|",
                      *lines, "", f"Mean PSNR margin: {means}.", "", "Per set:", "", *by_set, ""])


def write_table(stem: str, rows: list[QualityRow], meta: dict, ablation: bool) -> None:
    """The results file in table order, with the margins of each comparison its rows allow."""
    comparisons = [("dobi+src+hso+abr+bias+weights (harmoq)", "dobi")] if ablation else \
        [("harmoq", "2dquant"), ("harmoq-uniform-weight-lr", "2dquant"), ("harmoq-frozen-weights", "2dquant"),
         ("harmoq-frozen-bias", "2dquant"), ("harmoq", "2dquant+free"), ("harmoq-frozen-weights", "2dquant+bias"),
         ("harmoq@tensorrt", "harmoq"), ("harmoq-refined-guard", "harmoq")]
    ordered = table_order(rows)
    appendix = "\n".join(filter(None, (margins(ordered, better, base) for better, base in comparisons)))
    write_results(stem, ordered, meta, appendix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--bits", default=[4, 3, 2], type=bit_widths, help="comma-separated, e.g. 4,3,2")
    parser.add_argument("--datasets", default="Set5,Set14,CBSD68")
    parser.add_argument("--crops", type=int, default=32)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", type=int, default=DEFAULT_ITERS, help="2DQuant DQC / HarmoQ ABR iterations")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--methods", default=",".join(METHODS), help="labels; NAME@tensorrt = TensorRT grids")
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--stem", default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    stem = args.stem or ("ablation" if args.ablation else "quality")
    methods = tuple(ABLATION) if args.ablation else tuple(args.methods.split(","))
    models, datasets = args.models.split(","), args.datasets.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    for label in methods:
        _method(label, args)  # an unknown label fails here, not after hours of earlier rows
    settings = {"crops": args.crops, "patch": args.patch, "seed": args.seed, "iters": args.iters, "batch": args.batch}
    meta = {
        "title": "HarmoQ ablation" if args.ablation else "PTQ methods side by side",
        "script": "scripts/bench_quality.py", "date": today(), "machine": machine(), **settings,
        "protocol": (f"PSNR/SSIM on Y (BT.601), border = scale, uint8 output. Calibration: {args.crops} LR crops of "
                     f"{args.patch}x{args.patch} from DIV2K_valid_crop256 (seed {args.seed}), the same for every "
                     f"method; 2DQuant DQC and HarmoQ ABR: {args.iters} iterations of batch {args.batch}, Adam lr 1e-2, "
                     "cosine; HarmoQ's SRC rounds its corrected weights onto their grids with error feedback "
                     f"(damping {HarmoQ.rounding_damping:g}) and its ABR moves the weight grids at lr "
                     f"{' or '.join(f'{r:g}' for r in HarmoQ.weight_bound_lrs)}, whichever reaches the lower loss on "
                     f"the held-out crops after {HarmoQ.rate_trial_iters} refinement iterations on the others "
                     "(`harmoq-unrounded`: neither rounding nor a slower rate, HarmoQ before 2026-11-30, seventh "
                     f"sitting; `harmoq-slow-grids`: {DEFAULT_WEIGHT_BOUND_LRS[0]:g} without a trial, HarmoQ of that "
                     "sitting), and also refines the biases and weights of the quantized layers (Adam lr "
                     f"{DEFAULT_BIAS_LR:g} and {DEFAULT_WEIGHT_LR:g}, the latter scaled by 7 over the weight "
                     "grid's step count (x7/3 at 2 bits, x1 at 3, x7/15 at 4 on asymmetric grids); "
                     "`-uniform-weight-lr` rows use "
                     f"{DEFAULT_WEIGHT_LR:g} at every width; `harmoq-frozen-weights`: the biases alone, "
                     "`harmoq-frozen-bias`: neither, HarmoQ before 2026-11-29; `2dquant+bias` and `2dquant+free`: the "
                     "controls that give DQC the same freedom, not the paper's 2DQuant; `harmoq-refined-guard`: "
                     f"HSO and SRC judged after {VARIANTS['harmoq-refined-guard'][1]['guard_iters']} refinement "
                     f"iterations on the crops other than the {HarmoQ.guard_crops} they hold out). "
                     "Coverage: the architecture's default; weights per-channel, activations per-tensor, "
                     "asymmetric, except `@tensorrt` rows: the grids TensorRT executes exactly (symmetric "
                     "per-channel weights; activations per tensor, their offsets restored exactly by the exporter). "
                     "`calib s` = wall time of the whole calibration (observation included)."),
    }
    rows: list[QualityRow] = []
    path = RESULTS / f"{stem}.json"
    if args.resume and path.is_file():
        rows = [QualityRow(**r) for r in resumable_rows(path, meta, tuple(settings))]
    done = {(r.model, r.bits, r.method, r.dataset) for r in rows}

    def write() -> None:
        write_table(stem, rows, meta, args.ablation)

    def record(row: QualityRow) -> None:
        rows.append(row)
        done.add((row.model, row.bits, row.method, row.dataset))
        print(f"{row.model} {row.bits} {row.method} {row.dataset}: {row.psnr:.3f} / {row.ssim:.4f} "
              f"(calib {row.calib_seconds:.1f}s)", flush=True)
        write()

    for key in models:
        source = load_model(shared_weights(MODELS[key]))
        pairs = {d: load_benchmark(benchmarks_root(), d, source.scale) for d in datasets}
        for d, p in pairs.items():
            if (key, "FP", "fp", d) not in done:
                score = score_pairs(source.module, p, source.scale, f"{key} FP {d}")
                record(QualityRow(key, "FP", "fp", d, score.psnr, score.ssim, 0.0))
        crops = sample_calibration_crops(calib_root(), args.crops, args.patch, source.scale, args.seed)
        for bits in args.bits:
            for label in methods:
                wanted = [d for d in datasets if (key, f"W{bits}A{bits}", label, d) not in done]
                if not wanted:
                    continue
                start = time.perf_counter()
                config = QuantConfig(wbits=bits, abits=bits, target="tensorrt" if label.endswith(TENSORRT) else "any")
                calibrated = calibrate(load_model(shared_weights(MODELS[key])), config, _method(label, args), crops,
                                       seed=args.seed)
                seconds = round(time.perf_counter() - start, 1)
                for step in calibrated.steps:
                    print(f"  {step.name}: applied={step.applied} loss {step.loss_before} -> {step.loss_after} "
                          f"({step.seconds:.0f}s) {step.detail}", flush=True)
                for d in wanted:
                    score = score_pairs(calibrated.model, pairs[d], source.scale, f"{key} W{bits}A{bits} {label} {d}")
                    record(QualityRow(key, f"W{bits}A{bits}", label, d, score.psnr, score.ssim, seconds))
    write()


if __name__ == "__main__":
    run_script(main)
