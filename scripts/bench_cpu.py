"""CPU latency of quantized engines against every float runtime on the machine, one run on one host.

For each model the float graph runs on ONNX Runtime FP32, OpenVINO FP32 and OpenVINO bf16 (where
the CPU has bf16); each width's Q/DQ graph (a quick calibration: DOBI or MinMax, whose bounds do
not change the speed) runs as the OpenVINO engine, and, for reference, on ONNX Runtime. All of
one model's runners are timed round-robin on one LR tile (batch 1, the tile the engine folders
use), so drift of the machine hits all alike; the ratio is to the fastest float runtime. Every
engine is validated as ``harmoq-build engine`` validates it: decision-matched parity of the graph
against PyTorch on ONNX Runtime, and the OpenVINO engine free-running (PSNR against HR and the
float model), here on crops of Set5 so that the table fits in one run. OpenVINO's per-layer
profile gives the share of the engine's time in layers that stay float. A throughput section
times a whole LR frame for the CNNs at a larger tile.

Writes docs/results/cpu_latency.json and docs/results/cpu_latency.md.

    .venv/bin/python scripts/bench_cpu.py                                   # the full table
    .venv/bin/python scripts/bench_cpu.py --models IMDN_x2 --bits 8,4      # one model
"""

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import torch
from benchlib import RESULTS, machine, run_script, today

from harmoq_deploy.calibrate import calibrate, make_method
from harmoq_deploy.data import ImagePair, load_datasets, sample_calibration_crops
from harmoq_deploy.engine import OnnxRuntimeRunner, Tiling, run_tiled, validate_graph
from harmoq_deploy.engine.bench import cpu_description
from harmoq_deploy.engine.runners import OpenVinoRunner, openvino_bf16
from harmoq_deploy.engine.validate import compare_engine, summarize
from harmoq_deploy.export import to_float_graph, to_qdq_graph
from harmoq_deploy.io import write_atomic
from harmoq_deploy.models import load_model
from harmoq_deploy.paths import benchmarks_root, calib_root, shared_weights
from harmoq_deploy.quant import QuantConfig, quantizers

STEM = "cpu_latency"
#: name -> (checkpoint in ../shared/weights, or a random spandrel instance), LR tile, widths, frame tile
REAL = {"IMDN_x2": "IMDN_x2.pth", "PAN_x2": "PANx2_DF2K.pth", "DCTLSA_x2": "DCTLSA_X2.pt", "CRAFT_x4": "team34_craft.pth"}
RANDOM = ("Compact_x4", "ESRGAN_x4")
TILES = {"IMDN_x2": 128, "PAN_x2": 128, "DCTLSA_x2": 64, "CRAFT_x4": 64, "Compact_x4": 128, "ESRGAN_x4": 64}
CNNS = ("IMDN_x2", "PAN_x2", "Compact_x4", "ESRGAN_x4")
ENGINE_PSNR_TOLERANCE_DB = 0.2  # the engine pipeline's acceptance of a backend's free-running PSNR


def _random_checkpoint(name: str, folder: Path) -> Path:
    """A random-weight checkpoint of spandrel's own class (speed and coverage only, not quality)."""
    from harmoq_deploy.models._spandrel import import_spandrel

    import_spandrel()
    torch.manual_seed(0)
    if name == "Compact_x4":
        from spandrel.architectures.Compact import Compact

        net = Compact(num_feat=64, num_conv=16, upscale=4, act_type="prelu")  # realesr-animevideov3's shape
    else:
        from spandrel.architectures.ESRGAN import ESRGAN

        net = ESRGAN(num_filters=64, num_blocks=6, scale=4)  # RealESRGAN_x4plus_anime_6B's shape
    path = folder / f"{name}_random.pth"
    torch.save(net.state_dict(), path)
    return path


def _validation_crops(scale: int, tile: int, images: int) -> dict[str, list[ImagePair]]:
    """The first ``images`` Set5 images cut to their central LR tile (HR to match)."""
    side = tile
    pairs = []
    for pair in load_datasets(["Set5"], benchmarks_root(), scale)["Set5"][:images]:
        h, w = pair.lr.shape[:2]
        top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
        lr = pair.lr[top:top + side, left:left + side]
        hr = pair.hr[top * scale:(top + lr.shape[0]) * scale, left * scale:(left + lr.shape[1]) * scale]
        pairs.append(ImagePair(pair.name, hr, lr))
    return {"Set5 crops": pairs}


def _time_round_robin(runners: dict, sample: np.ndarray, warmup: int, repeats: int, run=None) -> dict[str, dict]:
    run = run or (lambda runner: runner(sample))
    for runner in runners.values():
        for _ in range(warmup):
            run(runner)
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            run(runner)
            times[name].append((time.perf_counter() - start) * 1000)
    out = {}
    for name, samples in times.items():
        q1, _, q3 = statistics.quantiles(samples, n=4) if len(samples) > 1 else (samples[0],) * 3
        out[name] = {"median_ms": statistics.median(samples), "iqr_ms": q3 - q1, "runs": repeats}
    return out


def _float_share(graph: onnx.ModelProto, sample: np.ndarray, threads: int) -> dict:
    """OpenVINO's per-layer profile of the engine: the share of its time in layers that are not int8."""
    runner = OpenVinoRunner(graph, threads, profile=True)
    for _ in range(3):
        runner(sample)
    kernels = {layer["name"]: layer["precision"] for layer in runner.layers()}
    total = float_us = 0.0
    by_type: dict[str, float] = {}
    for layer in runner.profile():
        total += layer["us"]
        if kernels.get(layer["name"], "") not in ("i8", "u8"):
            float_us += layer["us"]
            by_type[layer["type"]] = by_type.get(layer["type"], 0.0) + layer["us"]
    top = sorted(by_type.items(), key=lambda kv: -kv[1])[:4]
    return {"float_share": float_us / total if total else 0.0,
            "top_float_types": [{"type": t, "share": us / total} for t, us in top], "int8": runner.int8_summary()}


def _validate(graph, model, float_model, scale, datasets, tiling, threads) -> dict:
    reports = validate_graph(graph, model, float_model, scale, datasets, tiling, threads)
    summary = summarize(reports, 50.0)
    engine = OpenVinoRunner(graph, threads)
    rows = compare_engine(engine, model, float_model, scale, datasets, tiling)
    engine_psnr = float(np.mean([r["psnr"] for r in rows]))
    passed = summary["passed"] and engine_psnr >= summary["mean_psnr"] - ENGINE_PSNR_TOLERANCE_DB
    failure = summary.get("failure", "") or ("" if passed else _engine_failure(engine_psnr, summary["mean_psnr"]))
    return {"passed": passed, "graph_passed": summary["passed"], "failure": failure,
            "min_parity_db": summary["min_parity_db"], "codes_differing": summary["codes_differing"],
            "codes": summary["codes"], "graph_psnr": summary["mean_psnr"], "torch_psnr": summary["mean_torch_psnr"],
            "engine_psnr": engine_psnr, "engine_vs_fp32_db": min(r["vs_fp32_db"] for r in rows),
            "engine_free_parity_db": min(r["free_parity_db"] for r in rows)}


def _engine_failure(engine_psnr: float, graph_psnr: float) -> str:
    return (f"the OpenVINO engine's PSNR {engine_psnr:.3f} is {graph_psnr - engine_psnr:.3f} dB below the graph's "
            f"on ONNX Runtime, more than {ENGINE_PSNR_TOLERANCE_DB} dB")


def _frame(name: str, float_graph, engines: dict, frame: tuple[int, int], tile: int, threads: int, bf16: bool,
           repeats: int, scale: int) -> dict:
    """Whole-frame latency at ``tile``: the fastest float runtime kind (OpenVINO bf16, else f32) and the engines."""
    image = np.random.default_rng(0).random((1, 3, *frame), dtype=np.float32)
    tiling = Tiling(tile, 16)
    runners = {"OpenVINO bf16" if bf16 else "OpenVINO f32": OpenVinoRunner(float_graph, threads, "bf16" if bf16 else "f32")}
    runners |= {label: OpenVinoRunner(graph, threads) for label, graph in engines.items()}
    timed = _time_round_robin(runners, image, 1, repeats, run=lambda runner: run_tiled(runner, image, scale, tiling))
    print(f"{name} frame {frame[1]}x{frame[0]} at tile {tile}: " +
          ", ".join(f"{k} {v['median_ms']:.0f} ms" for k, v in timed.items()), flush=True)
    return {"tile": tile, "frame": list(frame), "times": timed}


def bench_model(name: str, args, folder: Path, bf16: bool) -> dict:
    path = shared_weights(REAL[name]) if name in REAL else _random_checkpoint(name, folder)
    tile = TILES[name]
    source = load_model(path)
    float_model = copy.deepcopy(source.module)
    float_graph = to_float_graph(float_model, tile)
    widths = [b for b in args.bits if name in REAL or b in (8, 4)]
    crops = sample_calibration_crops(calib_root(), args.crops, 32, source.scale, 0)
    datasets = None if name not in REAL else _validation_crops(source.scale, tile, args.images)
    sample = np.random.default_rng(0).random((1, 3, tile, tile), dtype=np.float32)
    runners = {"ORT FP32": OnnxRuntimeRunner(float_graph, args.threads),
               "OpenVINO f32": OpenVinoRunner(float_graph, args.threads, "f32")}
    if bf16:
        runners["OpenVINO bf16"] = OpenVinoRunner(float_graph, args.threads, "bf16")
    floats = list(runners)
    engines, rows, models = {}, [], {}
    for bits in widths:
        working = copy.deepcopy(source)
        working.module = copy.deepcopy(float_model)
        method = args.method if not (name in CNNS and name not in REAL) else "minmax"
        start = time.perf_counter()
        calibrated = calibrate(working, QuantConfig(wbits=bits, abits=bits, target="tensorrt"), make_method(method),
                               crops)
        seconds = time.perf_counter() - start
        quantized = len(quantizers(calibrated.model))
        graph = to_qdq_graph(calibrated.model, tile)
        label = f"W{bits}A{bits}"
        engines[label], models[label] = graph, calibrated.model
        runners[f"{label} OpenVINO"] = OpenVinoRunner(graph, args.threads)
        if bits == 8:  # the Q/DQ graph on ONNX Runtime, once per model: what engines shipped before OpenVINO
            runners[f"{label} ORT"] = OnnxRuntimeRunner(graph, args.threads)
        row = {"model": name, "bits": label, "method": method, "calib_seconds": seconds, "quantized_layers": quantized,
               "engine_mb": graph.ByteSize() / 1e6, "fp32_mb": float_graph.ByteSize() / 1e6,
               "profile": _float_share(graph, sample, args.threads)}
        if quantized == 0:
            row["validation"] = {"passed": False, "failure": "no layer quantized: the model ran as float"}
        elif datasets is not None:
            row["validation"] = _validate(graph, calibrated.model, float_model, source.scale, datasets,
                                          Tiling(tile, 16), args.threads)
        else:
            row["validation"] = _random_validation(graph, calibrated.model, float_model, source.scale, tile, args.threads)
        print(f"{name} {label}: {row['profile']['int8']}; validation "
              f"{'passed' if row['validation']['passed'] else 'FAILED: ' + row['validation'].get('failure', '')}",
              flush=True)
        rows.append(row)
    timed = _time_round_robin(runners, sample, args.warmup, args.repeats)
    fastest = min(floats, key=lambda k: timed[k]["median_ms"])
    for row in rows:
        row["times"] = {k: timed[k] for k in floats} | {"engine OpenVINO": timed[f"{row['bits']} OpenVINO"]}
        if f"{row['bits']} ORT" in timed:
            row["times"]["graph ORT"] = timed[f"{row['bits']} ORT"]
        row["fastest_float"] = fastest
        row["speedup"] = timed[fastest]["median_ms"] / timed[f"{row['bits']} OpenVINO"]["median_ms"]
        print(f"{name} {row['bits']}: engine {timed[row['bits'] + ' OpenVINO']['median_ms']:.1f} ms, fastest float "
              f"{fastest} {timed[fastest]['median_ms']:.1f} ms: {row['speedup']:.2f}x", flush=True)
    result = {"model": name, "tile": tile, "scale": source.scale, "architecture": source.architecture,
              "random_weights": name not in REAL, "rows": rows}
    if name in CNNS and args.frame:
        frame_tile = args.frame_tile
        frame_engines = {label: to_qdq_graph(models[label], frame_tile) for label in engines if label in ("W8A8", "W4A4")}
        result["frame"] = _frame(name, to_float_graph(float_model, frame_tile), frame_engines, args.frame, frame_tile,
                                 args.threads, bf16, args.frame_repeats, source.scale)
    return result


def _random_validation(graph, model, float_model, scale, tile, threads) -> dict:
    """Random-weight models have no meaningful HR: decision-matched parity on random LR tiles only."""
    rng = np.random.default_rng(0)
    pairs = [ImagePair(f"random{i}", (rng.random((tile * scale, tile * scale, 3)) * 255).astype(np.uint8),
                       (rng.random((tile, tile, 3)) * 255).astype(np.uint8)) for i in range(2)]
    summary = summarize(validate_graph(graph, model, float_model, scale, {"random": pairs}, Tiling(tile, 16), threads),
                        50.0)
    return {"passed": summary["passed"], "graph_passed": summary["passed"], "failure": summary.get("failure", ""),
            "min_parity_db": summary["min_parity_db"], "codes_differing": summary["codes_differing"],
            "codes": summary["codes"], "note": "random weights: parity on random LR tiles, no PSNR"}


def markdown(payload: dict) -> str:
    meta = payload["meta"]
    lines = [f"# CPU latency: quantized engines against every float runtime", "",
             f"Generated by `scripts/bench_cpu.py` on {meta['date']}: {meta['cpu']['model']} "
             f"({', '.join(meta['cpu']['instruction_sets'])}), {meta['threads']} threads, OpenVINO {meta['openvino']}, "
             f"ONNX Runtime {meta['onnxruntime']}, {meta['machine']}.", "",
             f"One LR tile per run (batch 1, the tile the engine folders use), {meta['warmup']} warm-up runs then "
             f"{meta['repeats']} timed runs of every runner of a model, round-robin; median (interquartile range) in ms. "
             f"Speed-up: the fastest float runtime's median over the engine's (OpenVINO, int8 kernels, float layers in "
             f"bf16 where the CPU has it). Calibration: {meta['method']} on {meta['crops']} crops (speed does not depend "
             "on the bounds). Validation as `harmoq-build engine` does it, on the central LR tile of the first "
             f"{meta['images']} Set5 images: decision-matched parity of the graph on ONNX Runtime (>= 50 dB, codes differing only at "
             f"float ties) and the OpenVINO engine's PSNR against HR within {ENGINE_PSNR_TOLERANCE_DB} dB of the graph's. "
             "Float share: the part of the engine's time OpenVINO's per-layer profile puts in layers that are not int8.",
             "", ("Timed holding the shared CPU lock" if meta["cpu_lock"] else
                  "**Timed without the shared CPU lock, beside other jobs**") +
             f" (1-minute load average {meta['load_average_start']:.1f} at the start, "
             f"{meta.get('load_average_end', meta['load_average_start']):.1f} at the end, on {os.cpu_count()} cores).", ""]
    lines += ["| model | tile | bits | ORT FP32 | OV f32 | OV bf16 | engine (OV) | speed-up vs fastest float | "
              "Q/DQ graph on ORT | engine / FP32 MB | int8 layers | float share | validation |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in payload["models"]:
        for r in model["rows"]:
            t = r["times"]
            cell = lambda k: f"{t[k]['median_ms']:.1f} ({t[k]['iqr_ms']:.1f})" if k in t else "-"  # noqa: E731
            v = r["validation"]
            verdict = ("passed" if v["passed"] else f"FAILED ({v.get('failure', '')})")
            if v.get("engine_psnr") is not None:
                verdict += (f"; parity {v['min_parity_db']:.1f} dB; PSNR graph {v['graph_psnr']:.3f}, engine "
                            f"{v['engine_psnr']:.3f}, PyTorch {v['torch_psnr']:.3f}")
            elif "min_parity_db" in v:
                verdict += f"; parity {v['min_parity_db']:.1f} dB ({v.get('note', '')})"
            name = model["model"] + (" (random weights)" if model["random_weights"] else "")
            lines.append(f"| {name} | {model['tile']} | {r['bits']} | {cell('ORT FP32')} | {cell('OpenVINO f32')} | "
                         f"{cell('OpenVINO bf16')} | {cell('engine OpenVINO')} | **{r['speedup']:.2f}x** | "
                         f"{cell('graph ORT')} | {r['engine_mb']:.2f} / {r['fp32_mb']:.2f} | "
                         f"{r['profile']['int8'].split(' convolution')[0]} | {100 * r['profile']['float_share']:.0f}% "
                         f"({', '.join(x['type'] for x in r['profile']['top_float_types'][:2])}) | {verdict} |")
    frames = [m for m in payload["models"] if "frame" in m]
    if frames:
        lines += ["", f"## Throughput on a whole LR frame", "",
                  "The CNNs at a larger tile (OpenVINO; 16-pixel overlap, batch 1): one whole frame per run, "
                  f"1 warm-up and {meta['frame_repeats']} timed runs, round-robin; median ms per frame.", "",
                  "| model | LR frame | tile | fastest float | W8A8 engine | W4A4 engine |", "|---|---|---|---|---|---|"]
        for m in frames:
            f, times = m["frame"], m["frame"]["times"]
            fl = next(k for k in times if k.startswith("OpenVINO"))
            cell = lambda k: f"{times[k]['median_ms']:.0f} ({times[fl]['median_ms'] / times[k]['median_ms']:.2f}x)" \
                if k in times else "-"  # noqa: E731
            lines.append(f"| {m['model']} | {f['frame'][1]}x{f['frame'][0]} | {f['tile']} | {fl} "
                         f"{times[fl]['median_ms']:.0f} | {cell('W8A8')} | {cell('W4A4')} |")
    lines += ["", "## Against the goal", "",
              "Goal on this machine kind: the engine at least 1.5x faster than the fastest float runtime on the CNNs, "
              "and no slower than it on DCTLSA x2 and CRAFT x4.", ""]
    for model in payload["models"]:
        goal = 1.5 if model["model"] in CNNS else 1.0
        rows = model["rows"]
        met = [r["bits"] for r in rows if r["speedup"] >= goal]
        shares = [100 * r["profile"]["float_share"] for r in rows]
        lines.append(f"- {model['model']}: speed-up {min(r['speedup'] for r in rows):.2f}x to "
                     f"{max(r['speedup'] for r in rows):.2f}x over {rows[0]['fastest_float']} "
                     f"(goal {goal:g}x: {'met at ' + ', '.join(met) if met else 'not met'}); "
                     f"{min(shares):.0f}-{max(shares):.0f}% of the engine's time in layers that stay float; "
                     f"{sum(r['validation']['passed'] for r in rows)} of {len(rows)} engines validated.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join([*REAL, *RANDOM]))
    parser.add_argument("--bits", default="8,4,3,2")
    parser.add_argument("--method", default="dobi", choices=("dobi", "minmax"))
    parser.add_argument("--crops", type=int, default=8)
    parser.add_argument("--images", type=int, default=5, help="Set5 images whose central LR tile validates each engine")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--frame", default="720x1280", help="LR frame HxW for the CNN throughput section ('' skips)")
    parser.add_argument("--frame-tile", type=int, default=256)
    parser.add_argument("--frame-repeats", type=int, default=3)
    parser.add_argument("--stem", default=STEM)
    parser.add_argument("--render", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args()
    if args.render:
        payload = json.loads((RESULTS / f"{args.stem}.json").read_text())
        write_atomic(RESULTS / f"{args.stem}.md", markdown(payload).encode())
        return
    args.bits = [int(b) for b in args.bits.split(",")]
    args.frame = tuple(int(v) for v in args.frame.split("x")) if args.frame else None
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in REAL and n not in RANDOM]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]}; choose from {', '.join([*REAL, *RANDOM])}")
    torch.set_num_threads(args.threads)
    bf16 = openvino_bf16()
    meta = {"script": "scripts/bench_cpu.py", "date": today(), "machine": machine(), "cpu": cpu_description(),
            "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats, "method": args.method,
            "crops": args.crops, "frame_repeats": args.frame_repeats, "openvino": ov.__version__.split("-")[0],
            "onnxruntime": ort.__version__, "images": args.images, "load_average_start": os.getloadavg()[0],
            "cpu_lock": os.environ.get("HARMOQ_CPU_LOCK") == "1"}
    models = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            models.append(bench_model(name, args, Path(folder), bf16))
            meta["load_average_end"] = os.getloadavg()[0]
            payload = {"meta": meta, "models": models}
            write_atomic(RESULTS / f"{args.stem}.json", (json.dumps(payload, indent=1) + "\n").encode())
            write_atomic(RESULTS / f"{args.stem}.md", markdown(payload).encode())


if __name__ == "__main__":
    run_script(main)
