"""Export parity: calibrate, export to Q/DQ ONNX, validate on ONNX Runtime against PyTorch, per image.

For each model and bit width: a calibration artifact (``--method``, ``--target tensorrt``, kept under
runs/export/ and reused when its settings match), the Q/DQ graph at ``--tile`` (TensorRT rules
checked by the exporter), and ``validate_graph`` on the datasets. Also measured, in the same run:

- tiling: the float and the fake-quantized PyTorch model on whole images versus tiled (Set5 PSNR);
- PyTorch's own run-to-run spread: the fake-quantized model tiled with a different thread count,
  which decides rounding ties differently, the yardstick for free-running comparisons.

Writes docs/results/export_parity.json and .md; ``--resume`` keeps finished configurations of a run
with the same protocol on the same host.

    .venv/bin/python scripts/bench_export.py                       # DCTLSA x2 + CRAFT x4, W4A4/W3A3/W2A2
    .venv/bin/python scripts/bench_export.py --models CRAFT_x4 --bits 3 --iters 8
"""

import argparse
import json
import time

import numpy as np
import torch
from benchlib import MODELS, RESULTS, machine, resumable_rows, today

from harmoq_deploy.calibrate import apply_artifact, calibrate, load_artifact, make_method, method_record, save_artifact
from harmoq_deploy.data import describe_calibration, load_datasets, sample_calibration_crops, to_rgb8, to_tensor
from harmoq_deploy.engine import Tiling, TorchRunner, validate_graph
from harmoq_deploy.engine.upscale import super_resolve
from harmoq_deploy.engine.validate import summarize
from harmoq_deploy.eval import psnr_y
from harmoq_deploy.export import export_calibrated, save_onnx
from harmoq_deploy.io import write_atomic
from harmoq_deploy.models import load_model
from harmoq_deploy.paths import PROJECT_ROOT, benchmarks_root, calib_root, shared_weights
from harmoq_deploy.quant import QuantConfig

RUNS = PROJECT_ROOT / "runs" / "export"
STEM = "export_parity"


def _artifact(name: str, bits: int, args) -> tuple[object, float]:
    """The calibration artifact of (model, bits), calibrated now unless a matching one exists."""
    folder = RUNS / f"{name}_w{bits}a{bits}_{args.method}"
    settings = {"iters": args.iters, "batch": args.batch} if args.method in ("2dquant", "harmoq") else {}
    method = make_method(args.method, **settings)
    timing = RUNS / f"{folder.name}.seconds"
    if (folder / "manifest.json").is_file() and timing.is_file():
        artifact = load_artifact(folder)
        # compared as JSON: the manifest stores tuples as lists
        if artifact.manifest["method"]["settings"] == json.loads(json.dumps(method_record(method)["settings"])):
            return artifact, float(timing.read_text())
    source = load_model(shared_weights(MODELS[name]))
    config = QuantConfig(wbits=bits, abits=bits, target="tensorrt")
    crops = sample_calibration_crops(calib_root(), args.crops, args.patch, source.scale, 0)
    start = time.perf_counter()
    checkpoint = RUNS / f".{folder.name}.checkpoint.pt"
    calibrated = calibrate(source, config, method, crops, checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    save_artifact(folder, calibrated.model, source, config, method_record(method, calibrated),
                  describe_calibration(calib_root(), args.crops, args.patch, source.scale, 0), 0,
                  corrected_weights=calibrated.corrected_weights, scales=calibrated.scales)
    write_atomic(timing, f"{seconds:.1f}\n".encode())
    checkpoint.unlink(missing_ok=True)
    return load_artifact(folder), seconds


def _tiled_psnr(model, pairs, scale, tiling) -> list[float]:
    runner = TorchRunner(model)
    return [psnr_y(super_resolve(runner, p.lr, scale, tiling), p.hr, scale) for p in pairs]


def _whole_psnr(model, pairs, scale) -> list[float]:
    runner = TorchRunner(model)
    return [psnr_y(to_rgb8(torch.from_numpy(runner(to_tensor(p.lr).numpy()))), p.hr, scale) for p in pairs]


def run_config(name: str, bits: int, args) -> dict:
    artifact, calib_seconds = _artifact(name, bits, args)
    source = load_model(shared_weights(MODELS[name]))
    model = apply_artifact(artifact, source)
    start = time.perf_counter()
    graph = export_calibrated(model, artifact.manifest, args.tile)
    export_seconds = time.perf_counter() - start
    onnx_path = RUNS / f"{name}_w{bits}a{bits}_{args.method}_t{args.tile}.onnx"
    save_onnx(graph, onnx_path)
    tiling = Tiling(args.tile, args.overlap)
    start = time.perf_counter()
    float_model = load_model(shared_weights(MODELS[name])).module
    datasets = load_datasets(args.datasets, benchmarks_root(), source.scale)
    reports = validate_graph(graph, model, float_model, source.scale, datasets, tiling, threads=args.threads)
    validate_seconds = time.perf_counter() - start
    summary = {k: v for k, v in summarize(reports, args.threshold).items() if k not in ("lines", "failure")}

    pairs = [p for d in datasets.values() for p in d]
    spread = None
    if bits == args.spread_bits:
        torch.set_num_threads(args.other_threads)
        spread = float(np.mean(_tiled_psnr(model, pairs, source.scale, tiling)))
        torch.set_num_threads(args.threads)
    tiling_check = {}
    if bits == args.bits[0]:
        whole_q, tiled_q = _whole_psnr(model, pairs, source.scale), [r.torch_psnr for r in reports]
        whole_fp = _whole_psnr(float_model, pairs, source.scale)
        tiled_fp = _tiled_psnr(float_model, pairs, source.scale, tiling)
        tiling_check = {"fp_whole": float(np.mean(whole_fp)), "fp_tiled": float(np.mean(tiled_fp)),
                        "quant_whole": float(np.mean(whole_q)), "quant_tiled": float(np.mean(tiled_q))}
    return {
        "model": name, "bits": f"W{bits}A{bits}", "method": artifact.manifest["method"]["name"],
        "target": artifact.manifest["quant_config"]["target"], "calib_seconds": calib_seconds,
        "export_seconds": export_seconds, "validate_seconds": validate_seconds,
        "onnx_bytes": onnx_path.stat().st_size, "nodes": len(graph.graph.node),
        "quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in graph.graph.node),
        "summary": summary, "mean_torch_psnr_other_threads": spread,
        "tiling": tiling_check, "images": [r.to_dict() for r in reports],
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# {meta['title']}", "", f"Generated by `{meta['script']}` on {meta['date']} ({meta['machine']}).", "",
             meta["protocol"], "",
             "| model | bits | min parity dB | codes differing (all float ties) | widest tie (steps) | PSNR ONNX | "
             "PSNR PyTorch, graph's decisions | PSNR PyTorch free | ONNX − PyTorch free | PyTorch, other thread count − "
             "PyTorch | min free parity dB | ONNX MB | export s | validate s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]
        widest = max(i["decisions"]["widest_tie"] for i in r["images"])
        other = r["mean_torch_psnr_other_threads"]
        spread = "-" if other is None else f"{other - s['mean_torch_psnr']:+.3f}"
        lines.append(
            f"| {r['model']} | {r['bits']} | {s['min_parity_db']:.1f} | {s['codes_differing']} of {s['codes']} "
            f"({'yes' if s['only_ties'] else 'NO'}) | {widest:.1e} | {s['mean_psnr']:.3f} | {s['mean_matched_psnr']:.3f} | "
            f"{s['mean_torch_psnr']:.3f} | {s['psnr_difference_db']:+.3f} | {spread} | {s['min_free_parity_db']:.1f} | "
            f"{r['onnx_bytes'] / 1e6:.2f} | {r['export_seconds']:.0f} | {r['validate_seconds']:.0f} |")
    lines += ["", "## Parity per image (dB, decisions matched)", "",
              "| model | bits | " + " | ".join(i["image"] for i in rows[0]["images"]) + " |",
              "|---|---|" + "---|" * len(rows[0]["images"])]
    for r in rows:
        lines.append(f"| {r['model']} | {r['bits']} | " + " | ".join(f"{i['parity_db']:.1f}" for i in r["images"]) + " |")
    lines += ["", "## Tiling versus whole images (PyTorch, mean PSNR-Y)", "",
              "| model | FP whole | FP tiled | Δ | quantized whole | quantized tiled | Δ |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["tiling"]
        if t:
            lines.append(f"| {r['model']} ({r['bits']}) | {t['fp_whole']:.3f} | {t['fp_tiled']:.3f} | "
                         f"{t['fp_tiled'] - t['fp_whole']:+.3f} | {t['quant_whole']:.3f} | {t['quant_tiled']:.3f} | "
                         f"{t['quant_tiled'] - t['quant_whole']:+.3f} |")
    return "\n".join(lines + ["", meta["notes"], ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="DCTLSA_x2,CRAFT_x4")
    parser.add_argument("--bits", default="4,3,2")
    parser.add_argument("--method", default="harmoq")
    parser.add_argument("--iters", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crops", type=int, default=32)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--datasets", default="Set5")
    parser.add_argument("--threshold", type=float, default=50.0)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--other-threads", type=int, default=1, help="thread count of the run-to-run spread check")
    parser.add_argument("--spread-bits", type=int, default=3, help="bit width whose run-to-run spread is measured")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    args.bits = [int(b) for b in args.bits.split(",")]
    args.datasets = args.datasets.split(",")
    torch.set_num_threads(args.threads)
    RUNS.mkdir(parents=True, exist_ok=True)
    meta = {
        "title": "Export parity: Q/DQ ONNX on ONNX Runtime (CPU) versus the PyTorch fake-quantized model",
        "script": "scripts/bench_export.py", "date": today(), "machine": machine(),
        "protocol": (f"Calibration: {args.method} (iters {args.iters}, batch {args.batch}), --target tensorrt, "
                     f"{args.crops} crops of {args.patch}x{args.patch}, seed 0. Graph: {args.tile}x{args.tile} LR tiles, "
                     f"overlap {args.overlap}, TensorRT rules checked at export. Datasets: {', '.join(args.datasets)}. "
                     "Parity: PSNR (peak 1, RGB, all pixels) between the graph's output and PyTorch's output with the "
                     "graph's k-bit codes (decisions matched); a code may differ only by one step at a float tie "
                     "(within 1e-3 steps of a rounding boundary, or 1e-5 of the bounds' magnitude for a quantizer "
                     f"whose range has collapsed). Threshold {args.threshold:g} dB. PSNR columns: "
                     "mean PSNR-Y against HR, the standard protocol."),
        "notes": ("Free-running columns compare two runs that decide rounding ties independently; at 2-4 bits one "
                  "different tie moves later values across further boundaries, so free-running outputs drift apart "
                  "whatever the backend: the 'other thread count' column is PyTorch against itself."),
    }
    out = RESULTS / f"{STEM}.json"
    rows = resumable_rows(out, meta, ("protocol",)) if args.resume and out.is_file() else []
    done = {(r["model"], r["bits"]) for r in rows}
    for name in args.models.split(","):
        for bits in args.bits:
            if (name, f"W{bits}A{bits}") in done:
                continue
            print(f"{name} W{bits}A{bits} ...", flush=True)
            rows.append(run_config(name, bits, args))
            s = rows[-1]["summary"]
            print(f"  parity min {s['min_parity_db']:.1f} dB, codes {s['codes_differing']}/{s['codes']} ties={s['only_ties']}, "
                  f"PSNR ONNX {s['mean_psnr']:.3f} PyTorch {s['mean_torch_psnr']:.3f}", flush=True)
            write_atomic(out, (json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n").encode())
            write_atomic(RESULTS / f"{STEM}.md", markdown(rows, meta).encode())


if __name__ == "__main__":
    main()
