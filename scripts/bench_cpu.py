"""CPU latency of the exported graphs in ONNX Runtime: FP32 graph versus Q/DQ graph, one run.

For each tile size, both graphs of the same model are exported and timed in ONNX Runtime's CPU
provider with the same threads: warm-up runs, then ``--repeats`` timed runs of one tile; medians
and interquartile ranges, the Q/DQ / FP32 ratio, and the file sizes. PyTorch eager FP32 on the same
tile is timed alongside for reference. Latency does not depend on the bounds, so the Q/DQ graph
comes from a quick MinMax calibration (``--target tensorrt``, the grids the exporter needs).

    .venv/bin/python scripts/bench_cpu.py                 # DCTLSA x2, tiles 32/64/96, W3A3
"""

import argparse
import collections
import json
import os
import statistics
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from benchlib import MODELS, RESULTS, today

from harmoq_deploy.calibrate import calibrate, make_method
from harmoq_deploy.data import sample_calibration_crops
from harmoq_deploy.engine import OnnxRuntimeRunner, TorchRunner
from harmoq_deploy.export import to_float_graph, to_qdq_graph
from harmoq_deploy.io import write_atomic
from harmoq_deploy.models import load_model
from harmoq_deploy.paths import calib_root, shared_weights
from harmoq_deploy.quant import QuantConfig, quantization_disabled

STEM = "cpu_latency"
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger",
                   "DynamicQuantizeMatMul", "MatMulNBits")


def _optimized_ops(graph: onnx.ModelProto, threads: int) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs after its own optimisation (what it fused
    into integer kernels and which Q/DQ nodes it had to keep)."""
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
        ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        ops = collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    return {"nodes": sum(ops.values()), "integer_kernels": sum(ops[op] for op in INTEGER_KERNELS),
            "QuantizeLinear": ops["QuantizeLinear"], "DequantizeLinear": ops["DequantizeLinear"]}


def _time(runs: dict, tile: np.ndarray, warmup: int, repeats: int) -> dict[str, dict]:
    """Times the runners round-robin, so drift of the machine (clock, other load) hits all alike."""
    for run in runs.values():
        for _ in range(warmup):
            run(tile)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(tile)
            times[name].append((time.perf_counter() - start) * 1000)
    result = {}
    for name, samples in times.items():
        q1, _, q3 = statistics.quantiles(samples, n=4)
        result[name] = {"median_ms": statistics.median(samples), "iqr_ms": q3 - q1, "runs": repeats}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="DCTLSA_x2", choices=sorted(MODELS))
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--tiles", default="32,64,96")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = load_model(shared_weights(MODELS[args.model]))
    crops = sample_calibration_crops(calib_root(), 4, 32, source.scale, 0)
    model = calibrate(source, QuantConfig(wbits=args.bits, abits=args.bits, target="tensorrt"),
                      make_method("minmax"), crops).model
    rows = []
    for tile_side in (int(t) for t in args.tiles.split(",")):
        tile = np.random.default_rng(0).random((1, 3, tile_side, tile_side), dtype=np.float32)
        fp32, qdq = to_float_graph(model, tile_side), to_qdq_graph(model, tile_side)
        row = {"tile": tile_side, "fp32_bytes": fp32.ByteSize(), "qdq_bytes": qdq.ByteSize(),
               "fp32_ops": _optimized_ops(fp32, args.threads), "qdq_ops": _optimized_ops(qdq, args.threads)}
        with quantization_disabled(model):
            row |= _time({"onnxruntime_fp32": OnnxRuntimeRunner(fp32, args.threads),
                          "onnxruntime_qdq": OnnxRuntimeRunner(qdq, args.threads), "torch_fp32": TorchRunner(model)},
                         tile, args.warmup, args.repeats)
        row["qdq_over_fp32"] = row["onnxruntime_qdq"]["median_ms"] / row["onnxruntime_fp32"]["median_ms"]
        rows.append(row)
        print(f"tile {tile_side}: ORT FP32 {row['onnxruntime_fp32']['median_ms']:.1f} ms, Q/DQ "
              f"{row['onnxruntime_qdq']['median_ms']:.1f} ms ({row['qdq_over_fp32']:.2f}x)", flush=True)
    meta = {"script": "scripts/bench_cpu.py", "date": today(), "model": args.model, "bits": f"W{args.bits}A{args.bits}",
            "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
            "onnxruntime": ort.__version__, "torch": torch.__version__, "cpu_cores": os.cpu_count()}
    write_atomic(RESULTS / f"{STEM}.json", (json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n").encode())
    lines = [f"# CPU latency: ONNX Runtime FP32 graph versus Q/DQ graph ({args.model}, {meta['bits']})", "",
             f"Generated by `scripts/bench_cpu.py` on {meta['date']}: ONNX Runtime {ort.__version__} CPU provider, "
             f"torch {torch.__version__}, {args.threads} threads, one tile per run, {args.warmup} warm-up runs then "
             f"{args.repeats} timed runs of each, taken round-robin; median (interquartile range) in ms.", "",
             "| LR tile | ORT FP32 | ORT Q/DQ | Q/DQ ÷ FP32 | PyTorch FP32 eager | FP32 ONNX MB | Q/DQ ONNX MB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cell = lambda k: f"{r[k]['median_ms']:.1f} ({r[k]['iqr_ms']:.1f})"  # noqa: E731
        lines.append(f"| {r['tile']}x{r['tile']} | {cell('onnxruntime_fp32')} | {cell('onnxruntime_qdq')} | "
                     f"{r['qdq_over_fp32']:.2f} | {cell('torch_fp32')} | {r['fp32_bytes'] / 1e6:.2f} | "
                     f"{r['qdq_bytes'] / 1e6:.2f} |")
    ops, fp32_ops, ratios = rows[-1]["qdq_ops"], rows[-1]["fp32_ops"], [r["qdq_over_fp32"] for r in rows]
    verdict = ("slower than the FP32 graph at every tile size" if min(ratios) > 1 else
               "faster than the FP32 graph at every tile size" if max(ratios) < 1 else
               "not faster than the FP32 graph in general")
    lines += ["", f"On this CPU the Q/DQ graph is {verdict}: Q/DQ ÷ FP32 is {min(ratios):.2f} to "
              f"{max(ratios):.2f} over the tile sizes. Why, measured from the graph ONNX Runtime runs after its own optimisation "
              f"(the {rows[-1]['tile']}x{rows[-1]['tile']} tile): it turned {ops['integer_kernels']} ops into integer "
              f"kernels (QLinearConv, QLinearMatMul, MatMulInteger...) and kept {ops['QuantizeLinear']} QuantizeLinear "
              f"and {ops['DequantizeLinear']} DequantizeLinear nodes, {ops['nodes']} nodes in all against "
              f"{fp32_ops['nodes']} for the FP32 graph. Its integer fusions match fixed node groups (for QLinearConv "
              "and QLinearMatMul: DequantizeLinear inputs -> op -> QuantizeLinear on the output), while in this graph "
              "each quantized conv or matmul feeds float work first (bias, offset correction, LayerNorm, GELU, "
              "softmax, residual adds) and its activations carry the k-bit clip; where nothing is fused the "
              "convolutions and matmuls run in FP32 exactly as before and every quantizer adds "
              "Sub/Clip/QuantizeLinear/DequantizeLinear passes over its activation. The Q/DQ graph is the exchange "
              "format for TensorRT, which does fuse these groups into INT8 kernels on a GPU; on CPU it buys no speed, "
              "only INT8 weights, a quarter of the FP32 bytes in the quantized layers (the file sizes above; the "
              "plugin format packs them to k bits, docs/results/plugin.md).", ""]
    write_atomic(RESULTS / f"{STEM}.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
