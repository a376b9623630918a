"""GPU: the Triton LowBitLinear kernel against the CPU reference, and DCTLSA x2 latency, in one run.

1. Exactness: random shapes at 2, 3 and 4 bits; the kernel's integer accumulation (scale 1, bias
   0, so the float output is the int32 sum itself) must equal the CPU reference exactly, the
   full epilogue must match within float rounding, and the fused requantizing epilogue
   (``out_scale``) must give the reference's codes.
2. Latency on a ``--size`` LR input (default 256x256), medians after warm-up, peak memory:
   FP32 eager; FP16 (autocast) with ``torch.compile`` (CUDA graphs, ``reduce-overhead``); the low-bit runtime
   at W4A4, W3A3, W2A2 eager (FP32 islands, one launch per op) and in its fast form
   (``fast_lowbit_runtime``: FP16 islands, ``torch.compile`` fusing each layer's input
   quantization into its producer, CUDA graphs); then FP16 and the fast W3A3 runtime on a batch
   of 64x64 tiles covering the same area. The quantized models come from a quick MinMax
   calibration: latency does not depend on the bounds.

Writes docs/results/gpu.json and gpu.md with the device name. Needs a CUDA GPU and Triton.
``--dry-run`` runs the same code on the CPU (the kernel in Triton's interpreter, a small input,
no compilation, no CUDA graphs) and writes into ``--results`` instead: it checks the script, not
the GPU. ``scripts/gpu_check.sh`` runs it on a lent GPU.

    python scripts/bench_gpu.py --size 256x256 --repeats 50
    TRITON_INTERPRET=1 python scripts/bench_gpu.py --dry-run --results /tmp/gpu_dry
"""

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import MODELS, RESULTS, today

from harmoq_deploy.calibrate import calibrate, make_method
from harmoq_deploy.data import sample_calibration_crops
from harmoq_deploy.io import write_atomic
from harmoq_deploy.models import load_model
from harmoq_deploy.paths import calib_root, shared_weights
from harmoq_deploy.plugins.packing import code_range, pack
from harmoq_deploy.plugins.reference import lowbit_linear
from harmoq_deploy.plugins.torch_op import fast_lowbit_runtime, to_lowbit_runtime
from harmoq_deploy.plugins.triton_kernel import lowbit_linear_triton
from harmoq_deploy.quant import QuantConfig


def check_kernel(device: str, cases: int, largest: int) -> list[dict]:
    rng = np.random.default_rng(int(time.time()))  # fresh shapes and values every run
    rows = []
    for case in range(cases):
        bits = (2, 3, 4)[case % 3]
        m, k, n = (int(v) for v in rng.integers(1, largest, 3))
        low, high = code_range(bits)
        codes = rng.integers(low, high + 1, (n, k))
        x = torch.from_numpy(rng.integers(-127, 128, (m, k)).astype(np.int8))
        words = pack(codes, bits)
        on = {"x": x.to(device), "w": torch.from_numpy(words).to(device)}
        ones, zeros = torch.ones(n), torch.zeros(n)
        exact = lowbit_linear(x, words, bits, k, ones, zeros)
        got = lowbit_linear_triton(on["x"], on["w"], bits, k, ones.to(device), zeros.to(device)).cpu()
        scale, bias = torch.rand(n), torch.randn(n)
        expected = lowbit_linear(x, words, bits, k, scale, bias)
        full = lowbit_linear_triton(on["x"], on["w"], bits, k, scale.to(device), bias.to(device)).cpu()
        step = float(expected.abs().max()) / 3 or 1.0
        codes_out = lowbit_linear_triton(on["x"], on["w"], bits, k, scale.to(device), bias.to(device),
                                         out_scale=step, out_bits=bits).cpu()
        reference_codes = lowbit_linear(x, words, bits, k, scale, bias, out_scale=step, out_bits=bits)
        rows.append({"bits": bits, "m": m, "k": k, "n": n, "accumulation_equal": bool(torch.equal(got, exact)),
                     "epilogue_max_abs_diff": float((full - expected).abs().max()),
                     # codes may differ by one step only where y / out_scale is a float tie
                     "requantized_codes_differing": int((codes_out != reference_codes).sum())})
    return rows


class Timer:
    def __init__(self, device: str, warmup: int, repeats: int):
        self.cuda, self.warmup, self.repeats = device == "cuda", warmup, repeats

    def __call__(self, fn, x) -> dict:
        for _ in range(self.warmup):
            fn(x)
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(self.repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(x)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                start = time.perf_counter()
                fn(x)
                times.append((time.perf_counter() - start) * 1000)
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else float("nan")
        return {"median_ms": statistics.median(times), "p10_ms": float(np.percentile(times, 10)),
                "p90_ms": float(np.percentile(times, 90)), "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="DCTLSA_x2", choices=sorted(MODELS))
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--tile", type=int, default=64, help="tile side of the batched-tiles rows")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--bits", default="3,4,2", help="widths of the low-bit rows, in the order run")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, small (checks the script)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--append-calibration", nargs=2, metavar=("SECONDS", "STATUS"),
                        help="add the calibrate --device cuda timing to an existing gpu.md/gpu.json and stop")
    args = parser.parse_args()
    if args.append_calibration:
        append_calibration(args.results, float(args.append_calibration[0]), args.append_calibration[1])
        return
    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("error: bench_gpu.py needs a CUDA GPU (or --dry-run)")
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("error: --dry-run runs the kernel in Triton's interpreter: set TRITON_INTERPRET=1")
    height, width = (int(v) for v in args.size.split("x"))
    device_name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run: Triton interpreter, no GPU)"
    kernel_rows = check_kernel(device, cases=6 if args.dry_run else 24, largest=80 if args.dry_run else 300)
    exact = sum(r["accumulation_equal"] for r in kernel_rows)
    print(f"kernel: {exact}/{len(kernel_rows)} exact", flush=True)

    compile_mode = None if args.dry_run else "reduce-overhead"
    half = torch.bfloat16 if args.dry_run else torch.float16  # this CPU has no fast FP16
    timer = Timer(device, args.warmup, args.repeats)
    x = torch.rand(1, 3, height, width, device=device)
    tiles = torch.rand((height // args.tile) * (width // args.tile), 3, args.tile, args.tile, device=device)
    rows = {}
    meta = {"script": "scripts/bench_gpu.py", "date": today(), "device": device_name, "model": args.model,
            "size": [height, width], "torch": torch.__version__, "triton": _triton_version(), "warmup": args.warmup,
            "repeats": args.repeats, "dry_run": args.dry_run}
    with torch.no_grad():
        fp32 = load_model(shared_weights(MODELS[args.model])).module.to(device).eval()
        rows["FP32 eager"] = timer(fp32, x)
        fp16 = float_islands(fp32, device, half, compile_mode)
        rows["FP16 torch.compile"] = timer(fp16, x)
        rows[f"FP16 torch.compile, {len(tiles)} tiles of {args.tile}x{args.tile}"] = timer(fp16, tiles)
        write_report(args.results, meta, kernel_rows, rows)  # each step is kept if a later one runs out of time
        for bits in (int(b) for b in args.bits.split(",")):
            source = load_model(shared_weights(MODELS[args.model]))
            crops = sample_calibration_crops(calib_root(), 8, 48, source.scale, 0)
            model = calibrate(source, QuantConfig(wbits=bits, abits=bits, target="tensorrt"), make_method("minmax"),
                              crops).model
            runtime, replaced = to_lowbit_runtime(model)
            eager = copy.deepcopy(runtime).to(device).eval()
            rows[f"W{bits}A{bits} low-bit, eager FP32"] = {**timer(eager, x), "layers": replaced}
            fast = fast_lowbit_runtime(runtime, device, half, compile_mode)
            rows[f"W{bits}A{bits} low-bit, fast (FP16, compiled, CUDA graphs)"] = timer(fast, x)
            if bits == 3:
                rows[f"W3A3 low-bit, fast, {len(tiles)} tiles of {args.tile}x{args.tile}"] = timer(fast, tiles)
            print(f"W{bits}A{bits}: eager {rows[f'W{bits}A{bits} low-bit, eager FP32']['median_ms']:.2f} ms, fast "
                  f"{rows[f'W{bits}A{bits} low-bit, fast (FP16, compiled, CUDA graphs)']['median_ms']:.2f} ms",
                  flush=True)
            write_report(args.results, meta, kernel_rows, rows)


def float_islands(model, device: str, dtype: torch.dtype, compile_mode: str | None):
    """The float model as a user runs it fast: autocast to ``dtype``, compiled (CUDA graphs)."""
    forward = torch.compile(copy.deepcopy(model), mode=compile_mode) if compile_mode else copy.deepcopy(model)

    def run(t):
        with torch.autocast(device_type=device, dtype=dtype):
            return forward(t)

    return run


def _triton_version() -> str:
    import triton

    return triton.__version__


def write_report(results: Path, meta: dict, kernel_rows: list[dict], rows: dict) -> None:
    results.mkdir(parents=True, exist_ok=True)
    write_atomic(results / "gpu.json", (json.dumps({"meta": meta, "kernel": kernel_rows, "latency": rows},
                                                   indent=1) + "\n").encode())
    base, fp16 = rows["FP32 eager"]["median_ms"], rows["FP16 torch.compile"]["median_ms"]
    timing = "CUDA events" if not meta["dry_run"] else "wall clock, CPU"
    lines = [f"# GPU: {meta['model']} on {meta['device']}", "",
             f"Generated by `scripts/bench_gpu.py` on {meta['date']}, torch {meta['torch']}, Triton {meta['triton']}, "
             f"LR input {meta['size'][0]}x{meta['size'][1]}, {meta['warmup']} warm-up runs, {meta['repeats']} timed "
             f"runs ({timing}).", "",
             f"Kernel exactness: integer accumulation equal to the CPU reference in "
             f"{sum(r['accumulation_equal'] for r in kernel_rows)} of {len(kernel_rows)} random shapes; largest "
             f"epilogue difference {max(r['epilogue_max_abs_diff'] for r in kernel_rows):.2e}; requantized codes "
             f"differing from the reference's: {sum(r['requantized_codes_differing'] for r in kernel_rows)}.", "",
             "| configuration | median ms | p10-p90 ms | vs FP32 eager | vs FP16 compiled | peak MB |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['median_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} | "
                     f"{base / r['median_ms']:.2f}x | {fp16 / r['median_ms']:.2f}x | {r['peak_mb']:.0f} |")
    write_atomic(results / "gpu.md", ("\n".join(lines) + "\n").encode())


def append_calibration(results: Path, seconds: float, status: str) -> None:
    """``calibrate --device cuda`` of DCTLSA x2 W3A3 (HarmoQ, default budget), timed by gpu_check.sh."""
    data = json.loads((results / "gpu.json").read_text())
    options = "--device cpu --iters 1 --crops 2 --patch 32 (dry run)" if data["meta"]["dry_run"] else \
        "--device cuda (default budget: 32 crops, 100 iterations)"
    command = f"harmoq-build calibrate --model DCTLSA_X2.pt --bits 3 --method harmoq --target tensorrt {options}"
    data["calibration"] = {"command": command, "seconds": seconds, "status": status}
    write_atomic(results / "gpu.json", (json.dumps(data, indent=1) + "\n").encode())
    line = f"\nCalibration on the same device: `{command}`: {seconds:.1f} s wall, {status}.\n"
    write_atomic(results / "gpu.md", ((results / "gpu.md").read_text() + line).encode())


if __name__ == "__main__":
    main()
