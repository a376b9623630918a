"""``harmoq::LowBitLinear`` on the GPU: a Triton kernel (unpack -> INT8 tensor-core dot -> fused epilogue).

Each program computes a ``BLOCK_M x BLOCK_N`` tile of the output. For each ``BLOCK_K`` slice it
loads the INT8 activation codes, loads the two 32-bit words each weight value can touch and
unpacks them in registers exactly as ``packing.unpack`` does (a 3-bit value starting at bit 30 or
31 takes its high bits from the next word), accumulates ``tl.dot`` in int32, and finishes with
``float32(acc) * scale[n] + bias[n]`` and, optionally, the next layer's activation quantization.

Two uses: ``lowbit_linear_triton`` launches it from PyTorch (``torch.ops.harmoq.lowbit_linear`` on
CUDA), and ``compile_ptx`` compiles it to PTX for a given compute capability without a GPU, for
TensorRT's AOT plugin. TensorRT launches an AOT kernel with exactly the plugin's input tensors,
its extra scalar arguments and its outputs (``LAUNCH_PARAMETERS``); Triton 3.3 and newer append
scratch-memory pointers to every kernel's parameters, so ``compile_ptx`` removes them from the
PTX entry, which is sound only because this kernel needs no scratch memory and never reads them
(both checked; otherwise it refuses).

Triton is imported lazily. The kernel's results are checked against the CPU reference in
Triton's interpreter (``TRITON_INTERPRET=1``, on the CPU) at the production tiles by
``tests/test_plugins.py``, its PTX by ``tests/test_tensorrt_plugin.py``, and on a GPU by
``scripts/bench_gpu.py`` (not yet run).
"""

import re
from dataclasses import dataclass

import torch

from ..errors import HarmoqError


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def lowbit_linear_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, M, N, K, words, y_ptr,
                             BITS: tl.constexpr, OUT_SCALE: tl.constexpr, OUT_MAX: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # argument order (inputs, integer scalars, output) is the one TensorRT's AOT plugins launch with
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=(rows[:, None] < M) & (ks[None, :] < K), other=0)
            start = ks * BITS
            word, shift = start // 32, (start % 32).to(tl.uint32)
            in_range = (ks[:, None] < K) & (cols[None, :] < N)
            low = tl.load(w_ptr + cols[None, :] * words + word[:, None], mask=in_range, other=0)
            high = tl.load(w_ptr + cols[None, :] * words + word[:, None] + 1,
                           mask=in_range & (word[:, None] + 1 < words), other=0)
            low, high = low.to(tl.uint32, bitcast=True), high.to(tl.uint32, bitcast=True)
            up = (32 - shift) % 32  # shift 0: nothing comes from the next word (masked below)
            stream = (low >> shift[:, None]) | tl.where(shift[:, None] > 0, high << up[:, None], 0)
            unsigned = (stream & ((1 << BITS) - 1)).to(tl.int32)
            w = (unsigned - (1 << (BITS - 1))).to(tl.int8)
            acc += tl.dot(x, w, out_dtype=tl.int32)
        scale = tl.load(scale_ptr + cols, mask=cols < N, other=0.0)
        bias = tl.load(bias_ptr + cols, mask=cols < N, other=0.0)
        y = acc.to(tl.float32) * scale[None, :] + bias[None, :]
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        if OUT_SCALE > 0:
            scaled = y / OUT_SCALE
            nearest = tl.floor(scaled + 0.5)
            # half to even, as torch.round: a tie rounded up to an odd integer goes down instead
            nearest = tl.where(((nearest - scaled) == 0.5) & (nearest % 2 != 0), nearest - 1, nearest)
            codes = tl.minimum(tl.maximum(nearest, -OUT_MAX), OUT_MAX)
            tl.store(y_ptr + rows[:, None] * N + cols[None, :], codes.to(tl.int8), mask=mask)
        else:
            tl.store(y_ptr + rows[:, None] * N + cols[None, :], y, mask=mask)

    return lowbit_linear_kernel


_compiled = []


def kernel():
    """The ``@triton.jit`` kernel (built on first use)."""
    if not _compiled:
        _compiled.append(_kernel())
    return _compiled[0]


# The launch TensorRT's AOT plugins make: the input tensors, the integer scalars of the plugin's
# extra arguments, then the outputs; nothing else.
LAUNCH_PARAMETERS = ("x_ptr", "w_ptr", "scale_ptr", "bias_ptr", "M", "N", "K", "words", "y_ptr")
SIGNATURE = {"x_ptr": "*i8", "w_ptr": "*i32", "scale_ptr": "*fp32", "bias_ptr": "*fp32", "M": "i32", "N": "i32",
             "K": "i32", "words": "i32", "y_ptr": "*fp32"}
CONSTEXPRS = ("BITS", "OUT_SCALE", "OUT_MAX", "BLOCK_M", "BLOCK_N", "BLOCK_K")
BLOCK_M, BLOCK_N, BLOCK_K, NUM_WARPS = 64, 64, 32, 4  # int8 tl.dot needs K blocks of 32 or more on a GPU


@dataclass(frozen=True)
class CompiledKernel:
    """PTX of the kernel for one GPU architecture, with what a launch needs."""

    name: str
    ptx: str
    target: str  # the PTX ``.target`` line's architecture (sm_80, sm_90a, ...)
    parameters: int  # parameters of the PTX entry
    num_warps: int
    shared_bytes: int


def _entry_parameters(ptx: str, name: str) -> list[str]:
    entry = re.search(rf"\.entry\s+{name}\s*\((.*?)\)", ptx, re.S)
    if entry is None:
        raise HarmoqError(f"PTX has no entry {name}")
    return re.findall(rf"({name}_param_\d+)", entry.group(1))


def _drop_hidden_parameters(ptx: str, name: str, metadata) -> str:
    """Remove the parameters Triton appends after the declared ones (since Triton 3.3 a global and,
    since 3.4, a profiling scratch pointer), which TensorRT's AOT launch does not pass. Allowed
    only when the kernel needs no scratch memory and never reads them; refused otherwise."""
    parameters = _entry_parameters(ptx, name)
    hidden = parameters[len(LAUNCH_PARAMETERS):]
    for field in ("global_scratch_size", "profile_scratch_size"):
        if getattr(metadata, field, 0):
            raise HarmoqError(f"the Triton kernel needs {field} = {getattr(metadata, field)}, which a TensorRT "
                              "AOT launch cannot provide")
    for parameter in hidden:
        if re.search(rf"\[{parameter}\]", ptx):
            raise HarmoqError(f"the Triton kernel reads its hidden parameter {parameter}")
        ptx = re.sub(rf",\s*\.param[^,()]*?\b{parameter}\b", "", ptx, count=1)
    return ptx


def compile_ptx(bits: int, capability: int, out_scale: float = 0.0, out_bits: int = 8) -> CompiledKernel:
    """The kernel compiled to PTX for compute capability ``capability`` (80 = A100; 90 = H100, for
    which Triton emits ``sm_90a``), without a GPU. Its entry takes exactly ``LAUNCH_PARAMETERS``."""
    import triton
    from triton.backends.compiler import GPUTarget

    signature = {**SIGNATURE, **{name: "constexpr" for name in CONSTEXPRS}}
    constexprs = {"BITS": bits, "OUT_SCALE": float(out_scale), "OUT_MAX": 2 ** (out_bits - 1) - 1,
                  "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "BLOCK_K": BLOCK_K}
    if out_scale:
        signature["y_ptr"] = "*i8"
    source = triton.compiler.ASTSource(fn=kernel(), signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": NUM_WARPS})
    name = compiled.metadata.name
    ptx = _drop_hidden_parameters(compiled.asm["ptx"], name, compiled.metadata)
    target = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    return CompiledKernel(name=name, ptx=ptx, target=target, parameters=len(_entry_parameters(ptx, name)),
                          num_warps=compiled.metadata.num_warps, shared_bytes=compiled.metadata.shared)


def lowbit_linear_triton(x_codes: torch.Tensor, packed: torch.Tensor, bits: int, in_features: int,
                         scale: torch.Tensor, bias: torch.Tensor, out_scale: float = 0.0, out_bits: int = 8,
                         out_dtype: torch.dtype = torch.float32, block_m: int = BLOCK_M, block_n: int = BLOCK_N,
                         block_k: int = BLOCK_K) -> torch.Tensor:
    """The Triton implementation: same arguments and results as ``reference.lowbit_linear``
    (``packed`` as a tensor on the device). ``out_dtype`` (float32 or float16) is the float
    output's type: the epilogue runs in float32 and rounds once on the store."""
    import triton

    shape = x_codes.shape
    x = x_codes.reshape(-1, in_features).contiguous()
    rows, cols = x.shape[0], packed.shape[0]
    y = torch.empty((rows, cols), dtype=torch.int8 if out_scale else out_dtype, device=x.device)
    grid = (triton.cdiv(rows, block_m), triton.cdiv(cols, block_n))
    kernel()[grid](x, packed.contiguous(), scale.float().contiguous(), bias.float().contiguous(), rows, cols,
                   in_features, packed.shape[1], y, BITS=bits, OUT_SCALE=float(out_scale),
                   OUT_MAX=2 ** (out_bits - 1) - 1, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                   num_warps=NUM_WARPS)
    return y.reshape(*shape[:-1], cols)
