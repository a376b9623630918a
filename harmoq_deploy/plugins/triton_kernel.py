"""``harmoq::LowBitLinear`` on the GPU: a Triton kernel (unpack -> INT8 tensor-core dot -> fused epilogue).

Each program computes a ``BLOCK_M x BLOCK_N`` tile of the output. For each ``BLOCK_K`` slice it
loads the INT8 activation codes, loads the two 32-bit words each weight value can touch and
unpacks them in registers exactly as ``packing.unpack`` does (a 3-bit value starting at bit 30 or
31 takes its high bits from the next word), accumulates ``tl.dot`` in int32, and finishes with
``float32(acc) * scale[n] + bias[n]`` and, optionally, the next layer's activation quantization.

Triton is imported lazily (CPU-only installs do not have it). The kernel's integer results are
checked against the CPU reference by ``tests/test_plugins.py`` in Triton's interpreter mode
(``TRITON_INTERPRET=1``, on the CPU) where Triton is installed, and by ``scripts/bench_gpu.py``
on a GPU.
"""

import torch


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
    """The ``@triton.jit`` kernel (compiled on first use; TensorRT's AOT plugin compiles it to PTX)."""
    if not _compiled:
        _compiled.append(_kernel())
    return _compiled[0]


def lowbit_linear_triton(x_codes: torch.Tensor, packed: torch.Tensor, bits: int, in_features: int,
                         scale: torch.Tensor, bias: torch.Tensor, out_scale: float = 0.0, out_bits: int = 8,
                         block_m: int = 64, block_n: int = 64, block_k: int = 32) -> torch.Tensor:
    """The Triton implementation: same arguments and results as ``reference.lowbit_linear``
    (``packed`` as a tensor on the device)."""
    import triton

    shape = x_codes.shape
    x = x_codes.reshape(-1, in_features).contiguous()
    rows, cols = x.shape[0], packed.shape[0]
    y = torch.empty((rows, cols), dtype=torch.int8 if out_scale else torch.float32, device=x.device)
    grid = (triton.cdiv(rows, block_m), triton.cdiv(cols, block_n))
    kernel()[grid](x, packed.contiguous(), scale.float().contiguous(), bias.float().contiguous(), rows, cols,
                       in_features, packed.shape[1], y, BITS=bits, OUT_SCALE=float(out_scale),
                       OUT_MAX=2 ** (out_bits - 1) - 1, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return y.reshape(*shape[:-1], cols)
