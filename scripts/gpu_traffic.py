"""Kernel launches and bytes moved per tile in eager PyTorch, counted on the CPU: the argument for the GPU forms' speed.

Every ATen operation that makes a new tensor is one kernel launch in eager mode on a GPU; it reads
its tensor inputs and writes its output once (a lower bound of its device-memory traffic: a GPU
kernel may re-read, a cache may spare a read). Counted with a ``TorchDispatchMode`` on one LR
tile (default 64x64) of the model:

- FP32 eager, and the same operations with every float tensor in FP16 (half the float bytes,
  what FP16 eager moves);
- the low-bit runtime (``to_lowbit_runtime``, MinMax W3A3) eager, where each packed layer is the
  quantization ops plus one ``harmoq::lowbit_linear`` launch;
- how many of the low-bit runtime's bytes are the quantization round trip that ``torch.compile``
  fuses into the producing kernel (the float input read and the int8 codes written by separate
  kernels), and the weights' bytes packed against FP16.

Writes docs/results/gpu_traffic.json and .md. Compiled and CUDA-graph forms are argued from these
counts in docs/export.md, section 5; their timings come from scripts/bench_gpu.py on a GPU.

    python scripts/gpu_traffic.py --model DCTLSA_x2 --tile 64
"""

import argparse
import json
from collections import Counter

import torch
from benchlib import MODELS, RESULTS, today
from torch.utils._python_dispatch import TorchDispatchMode

from harmoq_deploy.calibrate import calibrate, make_method
from harmoq_deploy.data import sample_calibration_crops
from harmoq_deploy.io import write_atomic
from harmoq_deploy.models import load_model
from harmoq_deploy.paths import calib_root, shared_weights
from harmoq_deploy.plugins.torch_op import LowBitLinear, to_lowbit_runtime
from harmoq_deploy.quant import QuantConfig

QUANTIZE_OPS = {"sub", "div", "round", "clamp", "_to_copy", "movedim", "permute", "clone"}
NO_KERNEL = {"_unsafe_view", "empty", "empty_like", "empty_strided", "detach", "lift_fresh", "alias"}
# the ops a fusing compiler cannot melt into a neighbour: each still reads its inputs and writes its
# output once; every elementwise op (and the quantization) can ride in their prologues/epilogues
ANCHORS = {"addmm", "mm", "bmm", "convolution", "lowbit_linear", "native_layer_norm", "_softmax",
           "native_batch_norm", "_native_batch_norm_legit_no_training", "pixel_shuffle", "upsample_nearest2d",
           "upsample_bilinear2d", "constant_pad_nd", "roll"}


class Traffic(TorchDispatchMode):
    """Launches and bytes (inputs read + output written) of every ATen op that makes a tensor."""

    def __init__(self):
        super().__init__()
        self.launches, self.float_bytes, self.other_bytes = Counter(), 0, 0
        self.anchor_float_elements, self.anchor_other_bytes = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        results = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
        name = func._schema.name.split("::")[-1]
        if not results or _is_view(func) or name in NO_KERNEL:  # no kernel launched
            return out
        self.launches[name] += 1
        for t in [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)] + results:
            if t.is_floating_point():
                self.float_bytes += t.numel() * t.element_size()
                self.anchor_float_elements += t.numel() if name in ANCHORS else 0
            else:
                self.other_bytes += t.numel() * t.element_size()
                self.anchor_other_bytes += t.numel() * t.element_size() if name in ANCHORS else 0
        return out

    def fused_bytes(self, float_size: int = 2) -> int:
        """Bytes if every op but the anchors were fused into them, floats at ``float_size`` bytes."""
        return self.anchor_float_elements * float_size + self.anchor_other_bytes

    @property
    def anchor_launches(self) -> int:
        return sum(v for k, v in self.launches.items() if k in ANCHORS)


def _is_view(func) -> bool:
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


def count(model, x) -> Traffic:
    traffic = Traffic()
    with torch.no_grad(), traffic:
        model(x)
    return traffic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="DCTLSA_x2", choices=sorted(MODELS))
    parser.add_argument("--tile", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.rand(1, 3, args.tile, args.tile)
    source = load_model(shared_weights(MODELS[args.model]))
    fp32 = count(source.module.eval(), x)
    crops = sample_calibration_crops(calib_root(), 8, 48, source.scale, 0)
    model = calibrate(load_model(shared_weights(MODELS[args.model])), QuantConfig(wbits=3, abits=3, target="tensorrt"),
                      make_method("minmax"), crops).model
    runtime, replaced = to_lowbit_runtime(model)
    lowbit = count(runtime.eval(), x)
    layers = [m for m in runtime.modules() if isinstance(m, LowBitLinear)]
    packed_bytes = sum(m.packed.numel() * 4 for m in layers)
    fp16_weight_bytes = sum(m.packed.shape[0] * m.in_features * 2 for m in layers)
    # the quantization round trip per packed layer, when not fused: read the float input, write int8 codes
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a: inputs.__setitem__(id(mod), a[0].numel())) for m in layers]
    with torch.no_grad():
        runtime(x)
    for hook in hooks:
        hook.remove()
    elements = sum(inputs.values())
    row = {
        "fp32_eager": {"launches": sum(fp32.launches.values()), "bytes": fp32.float_bytes + fp32.other_bytes},
        "fp16_eager": {"launches": sum(fp32.launches.values()), "bytes": fp32.float_bytes // 2 + fp32.other_bytes},
        "lowbit_eager": {"launches": sum(lowbit.launches.values()), "bytes": lowbit.float_bytes + lowbit.other_bytes,
                         "lowbit_linear_launches": lowbit.launches["lowbit_linear"],
                         "quantization_launches": sum(v for k, v in lowbit.launches.items() if k in QUANTIZE_OPS)},
        "fp16_fused": {"launches": fp32.anchor_launches, "bytes": fp32.fused_bytes(2)},
        "lowbit_fused": {"launches": lowbit.anchor_launches, "bytes": lowbit.fused_bytes(2)},
        "packed_layers": replaced, "packed_layer_input_elements": elements,
        "weights_packed_bytes": packed_bytes, "weights_fp16_bytes": fp16_weight_bytes,
        "top_ops_fp32": fp32.launches.most_common(8), "top_ops_lowbit": lowbit.launches.most_common(8),
    }
    meta = {"script": "scripts/gpu_traffic.py", "date": today(), "model": args.model, "tile": args.tile,
            "torch": torch.__version__}
    write_atomic(RESULTS / "gpu_traffic.json", (json.dumps({"meta": meta, **row}, indent=1) + "\n").encode())
    mb = 2**20
    lines = [f"# Launches and bytes per {args.tile}x{args.tile} tile: {args.model} (eager, counted on the CPU)", "",
             f"Generated by `scripts/gpu_traffic.py` on {meta['date']}, torch {torch.__version__}: every ATen "
             "operation that makes a tensor counted as one launch reading its inputs and writing its output once "
             "(a lower bound of device-memory traffic). MinMax W3A3 for the low-bit runtime. The fused rows keep "
             f"only the ops a compiler cannot fuse away ({', '.join(sorted(ANCHORS))}), floats in FP16: the "
             "traffic torch.compile can approach at best.", "",
             "| form | launches | MB moved |", "|---|---|---|"]
    for name, key in (("FP32 eager", "fp32_eager"), ("FP16 eager (same ops, half the float bytes)", "fp16_eager"),
                      ("low-bit runtime, eager (FP32 islands)", "lowbit_eager"),
                      ("FP16, everything fused into the anchors (compiled bound)", "fp16_fused"),
                      ("low-bit, FP16 islands, fused (compiled bound)", "lowbit_fused")):
        lines.append(f"| {name} | {row[key]['launches']} | {row[key]['bytes'] / mb:.1f} |")
    lines += ["", f"Packed layers: {replaced}, {row['lowbit_eager']['lowbit_linear_launches']} `lowbit_linear` launches "
              f"and {row['lowbit_eager']['quantization_launches']} launches of the quantization ops around them "
              f"(subtract, divide, round, clamp, cast, permute copies); their inputs total {elements} elements. "
              f"Weights: {packed_bytes / 1024:.1f} KiB packed against {fp16_weight_bytes / 1024:.1f} KiB in FP16.", "",
              "Most frequent ops, FP32 eager: " + ", ".join(f"{k} {v}" for k, v in row["top_ops_fp32"]) + ".",
              "Most frequent ops, low-bit eager: " + ", ".join(f"{k} {v}" for k, v in row["top_ops_lowbit"]) + "."]
    write_atomic(RESULTS / "gpu_traffic.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
