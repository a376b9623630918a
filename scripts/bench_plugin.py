"""Plugin format versus Q/DQ: ONNX sizes, and both graphs against PyTorch on Set5 tiles, one run.

For each model and bit width (artifacts from scripts/bench_export.py when present, else a quick
MinMax calibration, --target tensorrt): the FP32, Q/DQ and plugin graphs at ``--tile``; their file
sizes and the weight bytes of the layers the plugin packs; then, on the centre tile of every Set5
image, each quantized graph with its decisions matched to PyTorch (parity, codes differing) and
the plugin graph against the Q/DQ graph free-running (an image smaller than the tile is reflect-padded
up to it, as the engines do).

    .venv/bin/python scripts/bench_plugin.py
"""

import argparse
import json

import numpy as np
import torch
from benchlib import MODELS, RESULTS, today

from harmoq_deploy.calibrate import apply_artifact, calibrate, load_artifact, make_method
from harmoq_deploy.data import load_benchmark, sample_calibration_crops, to_tensor
from harmoq_deploy.engine import OnnxRuntimeRunner
from harmoq_deploy.engine.tiling import pad_to_tile
from harmoq_deploy.engine.validate import DecisionStats, forced_decisions, output_psnr, with_code_outputs
from harmoq_deploy.export import export_calibrated, point_grids, to_float_graph
from harmoq_deploy.export.plugin import to_plugin_graph
from harmoq_deploy.io import write_atomic
from harmoq_deploy.models import load_model
from harmoq_deploy.plugins.onnx_function import OP
from harmoq_deploy.paths import PROJECT_ROOT, benchmarks_root, calib_root, shared_weights
from harmoq_deploy.quant import QuantConfig

RUNS = PROJECT_ROOT / "runs" / "export"


def _model(name: str, bits: int):
    source = load_model(shared_weights(MODELS[name]))
    folder = next(iter(sorted(RUNS.glob(f"{name}_w{bits}a{bits}_*"))), None) if RUNS.is_dir() else None
    if folder is not None and folder.is_dir():
        artifact = load_artifact(folder)
        return apply_artifact(artifact, source), artifact.manifest, source, f"{artifact.manifest['method']['name']} artifact"
    crops = sample_calibration_crops(calib_root(), 8, 48, source.scale, 0)
    config = QuantConfig(wbits=bits, abits=bits, target="tensorrt")
    model = calibrate(source, config, make_method("minmax"), crops).model
    manifest = {"quant_config": config.to_dict(), "method": {"name": "minmax"},
                "source": {"scale": source.scale, "architecture": source.architecture, "sha256": source.sha256}}
    return model, manifest, source, "minmax (quick)"


def _decision_probe(graph, model):
    """Runs a tile through ``graph`` and through ``model`` forced to the graph's codes: (parity dB, stats)."""
    probed, names = with_code_outputs(graph)
    runner, grids = OnnxRuntimeRunner(probed), point_grids(model)

    def probe(tile: np.ndarray) -> tuple[float, DecisionStats]:
        outputs = runner.run_all(tile)
        stats = DecisionStats()
        with torch.no_grad(), forced_decisions(model, grids, dict(zip(names, outputs[1:])), stats):
            ours = model(torch.from_numpy(tile)).numpy()
        return output_psnr(outputs[0], ours), stats

    return probe


def run(name: str, bits: int, tile_side: int) -> dict:
    model, manifest, source, origin = _model(name, bits)
    qdq = export_calibrated(model, manifest, tile_side)
    plugin, converted = to_plugin_graph(qdq)
    fp32 = to_float_graph(load_model(shared_weights(MODELS[name])).module, tile_side)
    shapes = {t.name: list(t.dims) for t in plugin.graph.initializer}
    lowbit = [n for n in plugin.graph.node if n.op_type == OP]
    weights = sum(shapes[n.input[1]][0] * next(a.i for a in n.attribute if a.name == "in_features") for n in lowbit)
    packed_bytes = sum(4 * shapes[n.input[1]][0] * shapes[n.input[1]][1] for n in lowbit)
    row = {"model": name, "bits": f"W{bits}A{bits}", "calibration": origin, "lowbit_layers": converted,
           "fp32_onnx_bytes": fp32.ByteSize(), "qdq_onnx_bytes": qdq.ByteSize(), "plugin_onnx_bytes": plugin.ByteSize(),
           "packed_layer_weights": weights, "packed_fp32_bytes": weights * 4, "packed_qdq_bytes": weights,
           "packed_plugin_bytes": int(packed_bytes), "tiles": []}
    qdq_probe, plugin_probe = _decision_probe(qdq, model), _decision_probe(plugin, model)
    qdq_runner, plugin_runner = OnnxRuntimeRunner(qdq), OnnxRuntimeRunner(plugin)
    for pair in load_benchmark(benchmarks_root(), "Set5", source.scale):
        lr = pad_to_tile(to_tensor(pair.lr).numpy(), tile_side)
        top, left = (lr.shape[2] - tile_side) // 2, (lr.shape[3] - tile_side) // 2
        tile = np.ascontiguousarray(lr[:, :, top:top + tile_side, left:left + tile_side])
        qdq_parity, qdq_stats = qdq_probe(tile)
        plugin_parity, plugin_stats = plugin_probe(tile)
        free = output_psnr(qdq_runner(tile), plugin_runner(tile))
        row["tiles"].append({"image": pair.name, "qdq_parity_db": qdq_parity, "plugin_parity_db": plugin_parity,
                             "plugin_vs_qdq_free_db": free, "qdq_only_ties": qdq_stats.only_ties,
                             "plugin_only_ties": plugin_stats.only_ties,
                             "plugin_codes_differing": plugin_stats.differing, "codes": plugin_stats.codes})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="DCTLSA_x2,CRAFT_x4")
    parser.add_argument("--bits", default="4,3,2")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        for bits in (int(b) for b in args.bits.split(",")):
            rows.append(run(name, bits, args.tile))
            worst = min(min(t["qdq_parity_db"], t["plugin_parity_db"]) for t in rows[-1]["tiles"])
            print(f"{name} W{bits}A{bits}: {rows[-1]['lowbit_layers']} layers packed, parity min {worst:.1f} dB", flush=True)
    meta = {"script": "scripts/bench_plugin.py", "date": today(), "tile": args.tile}
    write_atomic(RESULTS / "plugin.json", (json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n").encode())
    mb = 1e6
    lines = ["# Plugin format (packed k-bit LowBitLinear) versus Q/DQ", "",
             f"Generated by `scripts/bench_plugin.py` on {meta['date']}: {args.tile}x{args.tile} LR tiles, ONNX Runtime "
             "CPU (the plugin node runs through its ONNX function).", "",
             "## Sizes", "",
             "| model | bits | packed layers | their weights: FP32 / Q/DQ / plugin KB | plugin ÷ FP32 | whole ONNX MB: FP32 / Q/DQ / plugin |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['bits']} | {r['lowbit_layers']} | {r['packed_fp32_bytes'] / 1e3:.0f} / "
                     f"{r['packed_qdq_bytes'] / 1e3:.0f} / {r['packed_plugin_bytes'] / 1e3:.0f} | "
                     f"{r['packed_plugin_bytes'] / r['packed_fp32_bytes']:.3f} | {r['fp32_onnx_bytes'] / mb:.2f} / "
                     f"{r['qdq_onnx_bytes'] / mb:.2f} / {r['plugin_onnx_bytes'] / mb:.2f} |")
    lines += ["", "## Set5 centre tiles (images smaller than the tile reflect-padded): each graph against PyTorch with decisions matched (parity dB), and plugin "
              "against Q/DQ free-running", "",
              "| model | bits | image | Q/DQ parity | plugin parity | codes differing (plugin) | plugin vs Q/DQ free |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        for t in r["tiles"]:
            lines.append(f"| {r['model']} | {r['bits']} | {t['image']} | {t['qdq_parity_db']:.1f} | "
                         f"{t['plugin_parity_db']:.1f} | {t['plugin_codes_differing']} of {t['codes']} "
                         f"({'ties' if t['plugin_only_ties'] else 'NOT ties'}) | {t['plugin_vs_qdq_free_db']:.1f} |")
    lines += ["", "Free-running, the two graphs differ only where a rounding tie is decided differently (the "
              "plugin accumulates integers exactly, the Q/DQ graph in float32); docs/export.md, section 3, explains "
              "why that spreads.", ""]
    write_atomic(RESULTS / "plugin.md", "\n".join(lines).encode())


if __name__ == "__main__":
    main()
