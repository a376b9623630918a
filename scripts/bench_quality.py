"""FP, MinMax, Percentile, DOBI, 2DQuant and HarmoQ side by side: same weights, crops and seeds.

Writes docs/results/<stem>.json and .md (rows: model, bits, method, dataset, psnr, ssim,
calib_seconds). Each finished configuration is written at once; ``--resume`` keeps the rows of
an earlier run with the same settings on the same host and computes only the missing ones, so a long
table can be filled over several runs (a file from another host is refused: float results depend
on the host). ``--methods`` takes method names and the presets of ``harmoq_deploy.calibrate.presets``;
``--ablation`` replaces them with HarmoQ's ablation (DOBI -> +SRC -> +HSO -> +ABR on the bounds ->
+ABR on the biases too -> +ABR on the weights too = HarmoQ).

    .venv/bin/python scripts/bench_quality.py                        # the full table (hours on a CPU)
    .venv/bin/python scripts/bench_quality.py --models IMDN_x2 --bits 3 --datasets Set5 --iters 40
"""

import argparse
import time
from dataclasses import replace

from benchlib import (MODELS, MORE_MODELS, RESULTS, QualityRow, bit_widths, machine, resumable_rows, run_script, today,
                      write_results)

from harmoq_deploy import defaults
from harmoq_deploy.calibrate import OPTIMIZING_METHODS, calibrate, make_method, presets
from harmoq_deploy.data import ImagePair, load_benchmark, sample_calibration_crops
from harmoq_deploy.eval import score_pairs, super_resolve
from harmoq_deploy.models import load_model
from harmoq_deploy.paths import benchmarks_root, calib_root, shared_weights
from harmoq_deploy.quant import QuantConfig

METHODS = ("minmax", "percentile", "dobi", "2dquant", "harmoq", "harmoq@tensorrt")
#: a method label ending in this runs on the grids TensorRT executes exactly (QuantConfig.target)
TENSORRT = "@tensorrt"


def _method(label: str, args):
    refine = dict(iters=args.iters, batch=args.batch)
    if label in presets.ABLATION:
        return presets.build_ablation(label, **refine)
    base = label.removesuffix(TENSORRT)
    if presets.resolve(base) is not None:
        return presets.build(base, **refine)
    return make_method(base, **(refine if base in OPTIMIZING_METHODS else {}))


def float_targets(model, pairs: list[ImagePair]) -> list[ImagePair]:
    """``pairs`` with the float model's own output in place of the HR image."""
    return [replace(p, hr=super_resolve(model, p.lr)) for p in pairs]


def canonical_label(label: str) -> str:
    """A method label under its preset's current name (older names stay valid, on the command line
    and in the rows ``--resume`` keeps)."""
    base = label.removesuffix(TENSORRT)
    return presets.canonical(base) + label[len(base):]


def table_order(rows: list[QualityRow]) -> list[QualityRow]:
    """Rows grouped by model (first seen first), then FP and widest bits first, then method in
    the order of the method list, however many runs (``--resume``) they were computed in."""
    models = list(dict.fromkeys(r.model for r in rows))
    labels = list(dict.fromkeys(("fp", *METHODS, *presets.PRESETS, *presets.ABLATION)))

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


def protocol(settings: dict) -> str:
    """The results page's protocol line for a run with ``settings`` (crops, patch, seed, iters, batch)."""
    return (f"PSNR/SSIM on Y (BT.601), border = scale, uint8 output. Calibration: {settings['crops']} LR crops of "
            f"{settings['patch']}x{settings['patch']} from DIV2K_valid_crop256 (seed {settings['seed']}), the same for "
            f"every method; 2DQuant's DQC and HarmoQ's ABR: {settings['iters']} iterations of batch {settings['batch']}. "
            "Methods at their defaults; other labels are the presets in harmoq_deploy/calibrate/presets.py. Weights "
            "per output channel, activations per tensor, asymmetric, except `@tensorrt` rows: the grids TensorRT "
            "executes exactly (symmetric weights). `calib s`: wall time of the whole calibration.")


def write_table(stem: str, rows: list[QualityRow], meta: dict, ablation: bool) -> None:
    """The results file in table order, with the margins of each comparison its rows allow."""
    comparisons = [("dobi+src+hso+abr+bias+weights (harmoq)", "dobi")] if ablation else \
        [("harmoq", "2dquant"), ("harmoq", "harmoq-slow-grids"), ("harmoq", "2dquant+free"),
         ("harmoq@tensorrt", "harmoq"), ("harmoq-refined-guard", "harmoq"),
         ("harmoq-uniform-weight-lr", "2dquant"), ("harmoq-frozen-weights", "2dquant"),
         ("harmoq-bounds-only", "2dquant"), ("harmoq-frozen-weights", "2dquant+bias"),
         ("harmoq-unrounded", "2dquant"), ("harmoq-unrounded", "2dquant+free"),
         ("harmoq-unrounded@tensorrt", "harmoq-unrounded"), ("harmoq-unrounded-refined-guard", "harmoq-unrounded"),
         ("harmoq-unrounded-uniform-weight-lr", "2dquant"), ("harmoq-unrounded-frozen-weights", "2dquant"),
         ("harmoq-unrounded-bounds-only", "2dquant")]
    ordered = table_order(rows)
    appendix = "\n".join(filter(None, (margins(ordered, better, base) for better, base in comparisons)))
    write_results(stem, ordered, meta, appendix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--bits", default=[4, 3, 2], type=bit_widths, help="comma-separated, e.g. 4,3,2")
    parser.add_argument("--datasets", default="Set5,Set14,CBSD68")
    parser.add_argument("--crops", type=int, default=defaults.CROPS)
    parser.add_argument("--patch", type=int, default=defaults.PATCH)
    parser.add_argument("--seed", type=int, default=defaults.SEED)
    parser.add_argument("--iters", type=int, default=defaults.ITERS, help="2DQuant DQC / HarmoQ ABR iterations")
    parser.add_argument("--batch", type=int, default=defaults.BATCH)
    parser.add_argument("--methods", default=",".join(METHODS), help="labels; NAME@tensorrt = TensorRT grids")
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--stem", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--against-float", action="store_true",
                        help="also score every quantized model against the float model's own output "
                             "(rows with dataset '<set> vs FP'), for networks not trained on bicubic LR")
    args = parser.parse_args()
    stem = args.stem or ("ablation" if args.ablation else "quality")
    methods = tuple(presets.ABLATION) if args.ablation else tuple(map(canonical_label, args.methods.split(",")))
    models, datasets = args.models.split(","), args.datasets.split(",")
    checkpoints = {**MODELS, **MORE_MODELS}
    unknown = sorted(set(models) - set(checkpoints))
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(checkpoints)}")
    for label in methods:
        _method(label, args)  # an unknown label fails here, not after hours of earlier rows
    settings = {"crops": args.crops, "patch": args.patch, "seed": args.seed, "iters": args.iters, "batch": args.batch}
    meta = {
        "title": "HarmoQ ablation" if args.ablation else "PTQ methods side by side",
        "script": "scripts/bench_quality.py", "date": today(), "machine": machine(), **settings,
        "protocol": protocol(settings),
    }
    rows: list[QualityRow] = []
    path = RESULTS / f"{stem}.json"
    if args.resume and path.is_file():
        rows = [QualityRow(**{**r, "method": canonical_label(r["method"])})
                for r in resumable_rows(path, meta, tuple(settings))]
    done = {(r.model, r.bits, r.method, r.dataset) for r in rows}
    computed = 0

    def write() -> None:
        write_table(stem, rows, meta, args.ablation)

    def record(row: QualityRow) -> None:
        nonlocal computed
        computed += 1
        rows.append(row)
        done.add((row.model, row.bits, row.method, row.dataset))
        print(f"{row.model} {row.bits} {row.method} {row.dataset}: {row.psnr:.3f} / {row.ssim:.4f} "
              f"(calib {row.calib_seconds:.1f}s)", flush=True)
        write()

    sets = [*datasets, *(f"{d} vs FP" for d in datasets if args.against_float)]
    requested = 0
    for key in models:
        cells = [(key, "FP", "fp", d) for d in datasets] + \
            [(key, f"W{bits}A{bits}", label, d) for bits in args.bits for label in methods for d in sets]
        requested += len(cells)
        if all(cell in done for cell in cells):
            continue
        source = load_model(shared_weights(checkpoints[key]))
        pairs = {d: load_benchmark(benchmarks_root(), d, source.scale) for d in datasets}
        if args.against_float:
            pairs |= {f"{d} vs FP": float_targets(source.module, p) for d, p in list(pairs.items())}
        for d, p in pairs.items():
            if (key, "FP", "fp", d) not in done and not d.endswith(" vs FP"):
                score = score_pairs(source.module, p, source.scale, f"{key} FP {d}")
                record(QualityRow(key, "FP", "fp", d, score.psnr, score.ssim, 0.0))
        crops = sample_calibration_crops(calib_root(), args.crops, args.patch, source.scale, args.seed)
        for bits in args.bits:
            for label in methods:
                wanted = [d for d in pairs if (key, f"W{bits}A{bits}", label, d) not in done]
                if not wanted:
                    continue
                start = time.perf_counter()
                config = QuantConfig(wbits=bits, abits=bits, target="tensorrt" if label.endswith(TENSORRT) else "any")
                calibrated = calibrate(load_model(shared_weights(checkpoints[key])), config, _method(label, args), crops,
                                       seed=args.seed)
                seconds = round(time.perf_counter() - start, 1)
                for step in calibrated.steps:
                    print(f"  {step.name}: applied={step.applied} loss {step.loss_before} -> {step.loss_after} "
                          f"({step.seconds:.0f}s) {step.detail}", flush=True)
                for d in wanted:
                    score = score_pairs(calibrated.model, pairs[d], source.scale, f"{key} W{bits}A{bits} {label} {d}")
                    record(QualityRow(key, f"W{bits}A{bits}", label, d, score.psnr, score.ssim, seconds))
    if not computed:
        print(f"nothing to compute: all {requested} requested cells are in {path.name}; left unchanged")
        return
    write()


if __name__ == "__main__":
    run_script(main)
