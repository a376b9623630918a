"""Where the signal dies: the SNR of every quantized layer's output against the float model.

For each method, calibrates the model (same crops and seed as bench_quality.py), runs it and the
float model on the LR images of one benchmark set, and reports per quantized layer (in the
order the network defines them) ``10 log10(E[y_fp^2] / E[(y_q - y_fp)^2])`` over all images.
The body's last layers and the output tell whether the quantized body still adds the float
signal or only noise that refinement has to mute. Read inner layers with care: a conv's output
before its activation carries error the activation discards, and a layer whose output HarmoQ's
HSO rescaled (a fold's producer) differs from the float layer by that scale, which its consumers
undo, so its SNR is low by construction.

Writes docs/results/<stem>.json and .md.

    .venv/bin/python scripts/depth_snr.py --model IMDN_x2 --bits 2,3 --methods dobi,2dquant,harmoq
"""

import argparse
import math

import torch
from benchlib import MODELS, bit_widths, header, machine, run_script, today, write_report

from harmoq_deploy.calibrate import calibrate, make_method
from harmoq_deploy.data import load_benchmark, sample_calibration_crops
from harmoq_deploy.data.images import to_tensor
from harmoq_deploy.models import load_model
from harmoq_deploy.paths import benchmarks_root, calib_root, shared_weights
from harmoq_deploy.quant import QuantConfig
from harmoq_deploy.quant.layers import QUANT_LAYER_TYPES


def _record_outputs(network: torch.nn.Module, names: list[str], into: dict) -> list:
    """Hooks that keep the output of each module of ``network`` named in ``names`` in ``into``."""
    modules = dict(network.named_modules())
    return [modules[n].register_forward_hook(lambda _m, _i, out, n=n: into.__setitem__(n, out)) for n in names]


def layer_snr(model: torch.nn.Module, reference: torch.nn.Module, images: list[torch.Tensor]) -> dict[str, float]:
    """SNR in dB of each quantized layer's output (and the network output) of ``model`` over
    ``images``, against the same layer of ``reference``, the float model as loaded. (Not ``model``
    with its quantizers bypassed: HarmoQ changes weights and biases, so that is no float model.)"""
    layers = [name for name, m in model.named_modules() if isinstance(m, QUANT_LAYER_TYPES)]
    signal = dict.fromkeys([*layers, "output"], 0.0)
    noise = dict.fromkeys(signal, 0.0)
    quantized, expected = {}, {}
    handles = _record_outputs(model, layers, quantized) + _record_outputs(reference, layers, expected)
    try:
        with torch.no_grad():
            for image in images:
                quantized["output"], expected["output"] = model(image), reference(image)
                for name in signal:
                    signal[name] += expected[name].pow(2).sum().item()
                    noise[name] += (quantized[name] - expected[name]).pow(2).sum().item()
    finally:
        for h in handles:
            h.remove()
    return {n: 10 * math.log10(signal[n] / noise[n]) if noise[n] else math.inf for n in signal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="IMDN_x2", choices=list(MODELS))
    parser.add_argument("--bits", default=[2, 3], type=bit_widths, help="comma-separated, e.g. 2,3")
    parser.add_argument("--methods", default="dobi,2dquant,harmoq")
    parser.add_argument("--dataset", default="Set5")
    parser.add_argument("--crops", type=int, default=32)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stem", default=None, help="default: depth_snr_<model>")
    args = parser.parse_args()
    source = load_model(shared_weights(MODELS[args.model]))
    crops = sample_calibration_crops(calib_root(), args.crops, args.patch, source.scale, args.seed)
    images = [to_tensor(pair.lr) for pair in load_benchmark(benchmarks_root(), args.dataset, source.scale)]
    columns: dict[str, dict[str, float]] = {}
    for bits in args.bits:
        for label in args.methods.split(","):
            calibrated = calibrate(load_model(shared_weights(MODELS[args.model])), QuantConfig(wbits=bits, abits=bits),
                                   make_method(label), crops, seed=args.seed)
            column = columns[f"W{bits}A{bits} {label}"] = layer_snr(calibrated.model, source.module, images)
            print(f"W{bits}A{bits} {label}: output SNR {column['output']:.2f} dB", flush=True)
    meta = {"title": f"Layer output SNR against the float model, {args.model}", "script": "scripts/depth_snr.py",
            "date": today(), "machine": machine(),
            "protocol": (f"SNR = 10 log10(E[y_fp^2] / E[(y_q - y_fp)^2]) in dB of each quantized layer's output "
                         f"against the same layer of the float model as loaded (HarmoQ changes weights), "
                         f"summed over the LR images of {args.dataset}; the quantized model runs on its own "
                         f"quantized activations, so errors accumulate with depth. Calibration: {args.crops} "
                         f"crops of {args.patch}x{args.patch}, seed {args.seed}, each method's default settings.")}
    names = list(next(iter(columns.values())))
    table = ["| layer | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    table += [f"| {n} | " + " | ".join(f"{c[n]:.2f}" for c in columns.values()) + " |" for n in names]
    # an error-free layer has SNR inf, which strict JSON cannot hold: null stands for it
    finite = {k: {n: v if math.isfinite(v) else None for n, v in c.items()} for k, c in columns.items()}
    write_report(args.stem or f"depth_snr_{args.model}", {"meta": meta, "snr_db": finite},
                 "\n".join([*header(meta), *table, ""]))


if __name__ == "__main__":
    run_script(main)
