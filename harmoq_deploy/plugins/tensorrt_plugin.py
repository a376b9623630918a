"""``harmoq::LowBitLinear`` as a TensorRT plugin (``tensorrt.plugin``, TensorRT 10.7+ quick-deployable plugins).

``register()`` defines the plugin once per process, lazily importing TensorRT and Triton:

- the shape/type descriptor: X int8 ``[..., K]`` -> Y float32 ``[..., N]`` with N from the words;
- an AOT implementation: the Triton kernel compiled to PTX for the engine's GPU, with the grid and
  the integer arguments (rows, N, K, words) given as symbolic expressions of the input shapes,
  so a built engine runs it without Python;
- a JIT implementation (Python at run time) calling ``torch.ops.harmoq.lowbit_linear`` on
  TensorRT's stream, used where the AOT path is not taken.

The ONNX parser maps the exported ``LowBitLinear`` nodes to it by op type with the
``plugin_namespace`` / ``plugin_version`` attributes the exporter writes.

UNVERIFIED: written against the TensorRT ``tensorrt.plugin`` documentation; no machine this
project ran on had TensorRT, so none of this has executed. The kernel itself is checked
(Triton interpreter on CPU; ``scripts/bench_gpu.py`` on a GPU).
"""

from .onnx_function import DOMAIN, OP

PLUGIN_ID = f"{DOMAIN}::{OP}"
BLOCK_M, BLOCK_N, BLOCK_K, NUM_WARPS = 64, 64, 32, 4
_registered = []


def register() -> None:
    """Make ``harmoq::LowBitLinear`` known to TensorRT in this process (idempotent)."""
    if _registered:
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp
    import torch

    from .torch_op import lowbit_linear_op  # noqa: F401  (registers torch.ops.harmoq.lowbit_linear)
    from .triton_kernel import kernel

    @trtp.register(PLUGIN_ID)
    def describe(x: trtp.TensorDesc, w: trtp.TensorDesc, scale: trtp.TensorDesc, bias: trtp.TensorDesc,
                 in_features: int, bits: int, plugin_namespace: str, plugin_version: str) -> trtp.TensorDesc:
        out = x.like()
        out.shape_expr[-1] = w.shape_expr[0]
        out.dtype = trt.float32
        return out

    @trtp.aot_impl(PLUGIN_ID)
    def compile_kernel(x: trtp.TensorDesc, w: trtp.TensorDesc, scale: trtp.TensorDesc, bias: trtp.TensorDesc,
                       in_features: int, bits: int, plugin_namespace: str, plugin_version: str,
                       outputs: tuple[trtp.TensorDesc], tactic: int):
        import triton
        from triton.backends.compiler import GPUTarget

        signature = {"x_ptr": "*i8", "w_ptr": "*i32", "scale_ptr": "*fp32", "bias_ptr": "*fp32", "M": "i32",
                     "N": "i32", "K": "i32", "words": "i32", "y_ptr": "*fp32"}
        constants = {"BITS": bits, "OUT_SCALE": 0.0, "OUT_MAX": 127, "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N,
                     "BLOCK_K": BLOCK_K}
        major, minor = torch.cuda.get_device_capability()
        compiled = triton.compile(triton.compiler.ASTSource(fn=kernel(), signature=signature, constexprs=constants),
                                  target=GPUTarget("cuda", major * 10 + minor, 32), options={"num_warps": NUM_WARPS})
        rows = x.shape_expr.numel() // in_features
        params = trtp.KernelLaunchParams()
        params.grid_x = trtp.cdiv(rows, BLOCK_M)
        params.grid_y = trtp.cdiv(w.shape_expr[0], BLOCK_N)
        params.block_x = compiled.metadata.num_warps * 32
        params.shared_mem = compiled.metadata.shared
        extra = trtp.SymIntExprs(4)
        extra[0], extra[1] = trtp.SymInt32(rows), trtp.SymInt32(w.shape_expr[0])
        extra[2], extra[3] = trtp.SymInt32(in_features), trtp.SymInt32(w.shape_expr[1])
        return compiled.metadata.name, compiled.asm["ptx"], params, extra

    @trtp.impl(PLUGIN_ID)
    def run(x: trtp.Tensor, w: trtp.Tensor, scale: trtp.Tensor, bias: trtp.Tensor, in_features: int, bits: int,
            plugin_namespace: str, plugin_version: str, outputs: tuple[trtp.Tensor], stream: int) -> None:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            result = torch.ops.harmoq.lowbit_linear(torch.as_tensor(x, device="cuda"), torch.as_tensor(w, device="cuda"),
                                                    bits, in_features, torch.as_tensor(scale, device="cuda"),
                                                    torch.as_tensor(bias, device="cuda"))
            torch.as_tensor(outputs[0], device="cuda").copy_(result)

    _registered.append(PLUGIN_ID)
