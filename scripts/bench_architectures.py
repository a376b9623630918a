"""Every architecture people deploy, end to end: what gets quantized, then a validated W4A4 engine.

For random-weight instances of the architectures in ``harmoq_deploy.models.zoo`` (the configs
users ship) and for every real checkpoint in ../shared/weights: the layout used (hand-written or
inferred), the quantized op count and FLOP share at a 64x64 input, then
``harmoq-build engine --bits 4 --method dobi`` (calibrate, export, build, validate on a small
set) with the validation's parity and PSNR against the float model. Every row ends in a validated
engine or a one-line refusal saying why. Writes docs/results/architectures.json and .md after
each model; rows already there (same settings, same host) are kept, so the run resumes, and
``--only NAME`` runs one model (e.g. one per CPU-lock acquisition).

    .venv/bin/python scripts/bench_architectures.py --list
    flock /tmp/coord/cpu.lock .venv/bin/python scripts/bench_architectures.py --only Compact
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from benchlib import MODELS, MORE_MODELS, RESULTS, header, machine, run_script, today, write_report

from harmoq_deploy.errors import HarmoqError, first_line
from harmoq_deploy.models import load_model
from harmoq_deploy.models.zoo import ZOO, save_random_checkpoint
from harmoq_deploy.paths import PROJECT_ROOT, benchmarks_root, calib_root, shared_weights
from harmoq_deploy.quant import QuantConfig, coverage_report, quantize_model

STEM = "architectures"
VALIDATION = "Set5-centre"
REAL = {**MODELS, **MORE_MODELS}
CANDIDATES = [*ZOO, *sorted(REAL, key=lambda k: (k.split("_")[0], k))]


def _checkpoint(name: str, folder: Path) -> tuple[Path, str]:
    if name in ZOO:
        return save_random_checkpoint(name, folder / f"{name}_random.pth"), f"random weights, {ZOO[name].note}"
    return shared_weights(REAL[name]), f"checkpoint {REAL[name]}"


def _coverage(path: Path) -> dict:
    source = load_model(path)
    layout = source.layout
    report = coverage_report(quantize_model(source.module, QuantConfig(wbits=4, abits=4), layout), (64, 64))
    return {"architecture": source.architecture, "scale": source.scale,
            "layout": "inferred" if layout.inferred else "hand-written",
            "ops": len(report.ops), "flop_share": round(report.quantized_share, 4),
            "kinds": {kind: count for kind, (count, _) in report.by_kind().items()},
            "gflops_64": round(report.total_flops / 1e9, 3)}


def _validation_set(folder: Path, scale: int, tile: int) -> Path:
    """Set5's HR images cropped at the centre to one LR tile each (LR made in code by MATLAB-exact
    bicubic), so that validating every architecture stays within minutes on a CPU."""
    root = folder / f"validation_x{scale}"
    hr = root / VALIDATION / "HR"
    if not hr.is_dir():
        hr.mkdir(parents=True)
        side = tile * scale
        for image in sorted((benchmarks_root() / "Set5" / "HR").glob("*.png")):
            pixels = np.asarray(Image.open(image).convert("RGB"))
            top, left = (pixels.shape[0] - side) // 2, (pixels.shape[1] - side) // 2
            Image.fromarray(pixels[top:top + side, left:left + side]).save(hr / image.name)
    return root


def _engine(path: Path, scale: int, out: Path, args) -> dict:
    command = [str(Path(sys.executable).parent / "harmoq-build"), "engine", "--model", str(path), "--bits", "4",
               "--method", "dobi", "--backend", "onnxruntime", "--calib", str(calib_root()), "--crops",
               str(args.crops), "--tile", str(args.tile), "--datasets", VALIDATION,
               "--data-root", str(_validation_set(out.parent, scale, args.tile)), "-o", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT)
    seconds = round(time.perf_counter() - start, 1)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        return {"engine": "refused", "why": (errors or done.stderr.strip().splitlines()[-1:] or ["no output"])[-1],
                "seconds": seconds}
    report = json.loads((out / "report.json").read_text())
    summary, images = report["validation"]["summary"], report["validation"]["images"]
    return {"engine": "validated" if summary["passed"] else "failed validation",
            "min_parity_db": round(summary["min_parity_db"], 1),
            "vs_fp32_db": round(float(np.mean([i["vs_fp32_db"] for i in images])), 2),
            "psnr_hr": round(summary["mean_psnr"], 3), "images": summary["images"],
            "codes_differing": summary["codes_differing"], "codes": summary["codes"],
            "seconds": seconds, "why": summary.get("failure", "")}


def run_one(name: str, args, work: Path) -> dict:
    row = {"model": name}
    try:
        path, row["source"] = _checkpoint(name, work)
        row.update(_coverage(path))
    except HarmoqError as exc:
        return {**row, "engine": "refused", "why": f"error: {first_line(exc)}"}
    row.update(_engine(path, row["scale"], work / f"{name}_engine", args))
    return row


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = header(meta) + [
        "| model | weights | layout | quantized ops (kinds) | FLOP share | engine | parity min dB | vs FP32 dB | "
        "PSNR vs HR | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kinds = ", ".join(f"{n} {k}" for k, n in r.get("kinds", {}).items())
        ops = f"{r['ops']} ({kinds})" if "ops" in r else "-"
        share = f"{r['flop_share']:.1%}" if "flop_share" in r else "-"
        engine = r["engine"] if r["engine"] == "validated" else f"{r['engine']}: {r['why']}"
        parity = f"{r['min_parity_db']:.1f}" if "min_parity_db" in r else "-"
        vs_fp = f"{r['vs_fp32_db']:.2f}" if "vs_fp32_db" in r else "-"
        hr = f"{r['psnr_hr']:.3f}" if "psnr_hr" in r and not r["source"].startswith("random") else "-"
        lines.append(f"| {r['model']} x{r.get('scale', '?')} | {r.get('source', '-')} | {r.get('layout', '-')} | "
                     f"{ops} | {share} | {engine} | {parity} | {vs_fp} | {hr} | {r.get('seconds', 0):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model names (default: every one not yet in the results)")
    parser.add_argument("--list", action="store_true", help="print the model names and exit")
    parser.add_argument("--tile", type=int, default=48, help="LR tile of the engines and of the validation crops")
    parser.add_argument("--crops", type=int, default=32)
    parser.add_argument("--redo", action="store_true", help="recompute rows already in the results")
    args = parser.parse_args()
    if args.list:
        print("\n".join(CANDIDATES))
        return
    names = args.only.split(",") if args.only else CANDIDATES
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(CANDIDATES)}")
    meta = {"title": "Architectures: coverage and a validated W4A4 engine each", "script": "scripts/bench_architectures.py",
            "date": today(), "machine": machine(), "tile": args.tile, "crops": args.crops,
            "protocol": (f"Quantized ops and their FLOP share: the default coverage (`harmoq-build coverage`) at a 64x64 "
                         "input. Engine: `harmoq-build engine --bits 4 --method dobi --backend onnxruntime --tile "
                         f"{args.tile}` with {args.crops} calibration crops from DIV2K_valid_crop256, validated on "
                         f"{VALIDATION} (the five Set5 images cropped at the centre to one {args.tile}x{args.tile} LR "
                         "tile each, LR by MATLAB-exact bicubic): parity "
                         "= PSNR between the ONNX graph and the PyTorch fake-quantized model on the graph's decisions "
                         "(minimum over the images, 50 dB threshold), vs FP32 = mean PSNR of the graph's output against "
                         "the float model's, PSNR vs HR = the standard protocol (real checkpoints only; random weights "
                         "make no image). Random-weight rows check coverage, export and parity, not quality.")}
    path = RESULTS / f"{STEM}.json"
    rows = {}
    if path.is_file():
        previous = json.loads(path.read_text())
        same = all(previous["meta"].get(k) == meta[k] for k in ("machine", "tile", "crops"))
        rows = {r["model"]: r for r in previous["rows"]} if same else {}
    with tempfile.TemporaryDirectory(prefix="bench_architectures_") as tmp:
        for name in names:
            if name in rows and not args.redo:
                continue
            print(f"=== {name}", flush=True)
            rows[name] = run_one(name, args, Path(tmp))
            print(json.dumps(rows[name]), flush=True)
            ordered = [rows[n] for n in CANDIDATES if n in rows]
            write_report(STEM, {"meta": meta, "rows": ordered}, _markdown(ordered, meta))


if __name__ == "__main__":
    run_script(main)
