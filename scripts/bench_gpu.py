"""GPU: the Triton LowBitLinear kernel against the CPU reference, and DCTLSA x2 latency, in one run.

1. Exactness: random shapes at 2, 3 and 4 bits; the kernel's integer accumulation (scale 1, bias
   0, so the float output is the int32 sum itself) must equal the CPU reference exactly, and the
   full epilogue must match within float rounding.
2. Latency on a ``--size`` LR input (default 256x256), medians after warm-up, peak memory:
   FP32 eager; FP16 with ``torch.compile``; the low-bit runtime (``to_lowbit_runtime``: packed
   k-bit Linear layers through the Triton kernel) at W4A4, W3A3, W2A2, eager and under a CUDA
   graph. The quantized models come from a quick MinMax calibration: latency does not depend on
   the bounds.

Writes docs/results/gpu.json and gpu.md with the device name. Needs a CUDA GPU and Triton.

    python scripts/bench_gpu.py --size 256x256 --repeats 50
"""

import argparse
import copy
import json
import statistics

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
from harmoq_deploy.plugins.torch_op import to_lowbit_runtime
from harmoq_deploy.plugins.triton_kernel import lowbit_linear_triton
from harmoq_deploy.quant import QuantConfig


def check_kernel(cases: int = 24) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for case in range(cases):
        bits = (2, 3, 4)[case % 3]
        m, k, n = (int(v) for v in rng.integers(1, 300, 3))
        low, high = code_range(bits)
        codes = rng.integers(low, high + 1, (n, k))
        x = torch.from_numpy(rng.integers(-127, 128, (m, k)).astype(np.int8))
        words = pack(codes, bits)
        ones, zeros = torch.ones(n), torch.zeros(n)
        exact = lowbit_linear(x, words, bits, k, ones, zeros)
        got = lowbit_linear_triton(x.cuda(), torch.from_numpy(words).cuda(), bits, k, ones.cuda(), zeros.cuda()).cpu()
        scale, bias = torch.rand(n), torch.randn(n)
        full = lowbit_linear_triton(x.cuda(), torch.from_numpy(words).cuda(), bits, k, scale.cuda(), bias.cuda()).cpu()
        expected = lowbit_linear(x, words, bits, k, scale, bias)
        rows.append({"bits": bits, "m": m, "k": k, "n": n, "accumulation_equal": bool(torch.equal(got, exact)),
                     "epilogue_max_abs_diff": float((full - expected).abs().max())})
    return rows


def timed(fn, x, warmup: int, repeats: int) -> dict:
    torch.cuda.synchronize()
    for _ in range(warmup):
        fn(x)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "p10_ms": float(np.percentile(times, 10)),
            "p90_ms": float(np.percentile(times, 90)), "peak_mb": torch.cuda.max_memory_allocated() / 2**20}


def cuda_graph(model, x):
    """``model`` captured once on a static input buffer; replays copy the input in."""
    static = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            model(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        output = model(static)

    def run(inp):
        static.copy_(inp)
        graph.replay()
        return output

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="DCTLSA_x2", choices=sorted(MODELS))
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: bench_gpu.py needs a CUDA GPU")
    height, width = (int(v) for v in args.size.split("x"))
    device = torch.cuda.get_device_name()
    kernel_rows = check_kernel()
    print(f"kernel: {sum(r['accumulation_equal'] for r in kernel_rows)}/{len(kernel_rows)} exact", flush=True)

    x = torch.rand(1, 3, height, width, device="cuda")
    rows = {}
    with torch.no_grad():
        fp32 = load_model(shared_weights(MODELS[args.model])).module.cuda().eval()
        rows["FP32 eager"] = timed(fp32, x, args.warmup, args.repeats)
        fp16 = torch.compile(copy.deepcopy(fp32).half())
        rows["FP16 torch.compile"] = timed(lambda t: fp16(t.half()), x, args.warmup, args.repeats)
        for bits in (4, 3, 2):
            source = load_model(shared_weights(MODELS[args.model]))
            crops = sample_calibration_crops(calib_root(), 8, 48, source.scale, 0)
            model = calibrate(source, QuantConfig(wbits=bits, abits=bits, target="tensorrt"), make_method("minmax"),
                              crops).model
            runtime, replaced = to_lowbit_runtime(model)
            runtime = runtime.cuda().eval()
            rows[f"W{bits}A{bits} low-bit runtime"] = {**timed(runtime, x, args.warmup, args.repeats), "layers": replaced}
            rows[f"W{bits}A{bits} low-bit runtime, CUDA graph"] = timed(cuda_graph(runtime, x), x, args.warmup,
                                                                          args.repeats)
            print(f"W{bits}A{bits}: {rows[f'W{bits}A{bits} low-bit runtime']['median_ms']:.2f} ms", flush=True)
    base = rows["FP32 eager"]["median_ms"]
    meta = {"script": "scripts/bench_gpu.py", "date": today(), "device": device, "model": args.model,
            "size": [height, width], "torch": torch.__version__, "warmup": args.warmup, "repeats": args.repeats}
    write_atomic(RESULTS / "gpu.json", (json.dumps({"meta": meta, "kernel": kernel_rows, "latency": rows},
                                                   indent=1) + "\n").encode())
    lines = [f"# GPU: {args.model} on {device}", "", f"Generated by `scripts/bench_gpu.py` on {meta['date']}, torch "
             f"{torch.__version__}, LR input {height}x{width}, {args.warmup} warm-up runs, {args.repeats} timed runs "
             "(CUDA events).", "",
             f"Kernel exactness: integer accumulation equal to the CPU reference in "
             f"{sum(r['accumulation_equal'] for r in kernel_rows)} of {len(kernel_rows)} random shapes; largest "
             f"epilogue difference {max(r['epilogue_max_abs_diff'] for r in kernel_rows):.2e}.", "",
             "| configuration | median ms | p10-p90 ms | speedup vs FP32 eager | peak MB |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['median_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} | "
                     f"{base / r['median_ms']:.2f}x | {r['peak_mb']:.0f} |")
    write_atomic(RESULTS / "gpu.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
