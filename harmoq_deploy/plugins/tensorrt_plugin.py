"""``harmoq::LowBitLinear`` as a TensorRT plugin (``tensorrt.plugin``, TensorRT 10.7+ quickly deployable plugins).

``register()`` defines the plugin once per process, lazily importing TensorRT and Triton:

- the shape/type descriptor: X int8 ``[..., K]`` -> Y float32 ``[..., N]`` with N from the words;
- an AOT implementation: the Triton kernel compiled to PTX (``triton_kernel.compile_ptx``) for
  the compute capability ``aot_target`` names (sm_80 for ``--hw-compat ampere+``), with the grid
  and the integer arguments (rows, N, K, words) given as symbolic expressions of the input
  shapes, so a built engine runs it without Python;
- a JIT implementation (Python at run time) calling ``torch.ops.harmoq.lowbit_linear`` on
  TensorRT's stream, for TensorRT versions without AOT plugins (no ``QuickPluginCreationRequest``).

With both implementations defined TensorRT refuses to pick one: the network must be created with
``NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS`` (``engine/tensorrt.py`` does that for
every plugin-format graph), and then the AOT kernel is the one built into the engine.

The ONNX parser maps the exported ``LowBitLinear`` nodes to the plugin by op type, with the
``plugin_namespace`` / ``plugin_version`` attributes the exporter writes.

VERIFIED ON CPU (``tests/test_tensorrt_plugin.py``): registration, the output shape and type, the
AOT preference and the launch parameters, through NVIDIA's own ``tensorrt.plugin`` package with
only its compiled module replaced by a stand-in; the PTX's entry parameters against that launch.
NOT VERIFIED: a TensorRT build or run with the plugin (no TensorRT libraries on any machine this
project ran on); the JIT path (needs a CUDA GPU and TensorRT).
"""

from contextlib import contextmanager

from ..errors import HarmoqError
from .onnx_function import DOMAIN, OP

PLUGIN_ID = f"{DOMAIN}::{OP}"
_state = {"registered": False, "capability": None}


@contextmanager
def aot_target(capability: int):
    """Compile the AOT kernel for compute capability ``capability`` (e.g. 80) during an engine build."""
    previous, _state["capability"] = _state["capability"], capability
    try:
        yield
    finally:
        _state["capability"] = previous


def _capability() -> int:
    if _state["capability"] is not None:
        return _state["capability"]
    import torch

    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def _describe(trt, trtp) -> None:
    # plugin_namespace and plugin_version are node attributes the ONNX parser reads itself; they are
    # declared so that a parser passing every node attribute as a plugin field is accepted too
    @trtp.register(PLUGIN_ID)
    def describe(x: trtp.TensorDesc, w: trtp.TensorDesc, scale: trtp.TensorDesc, bias: trtp.TensorDesc,
                 in_features: int, bits: int, plugin_namespace: str, plugin_version: str) -> trtp.TensorDesc:
        out = x.like()
        out.shape_expr[-1] = w.shape_expr[0]
        out.dtype = trt.float32
        return out


def _implement(trt, trtp) -> str:
    """Define the implementations; returns which one TensorRT will build (``aot`` or ``jit``)."""
    from .triton_kernel import BLOCK_M, BLOCK_N, LAUNCH_PARAMETERS, compile_ptx

    if hasattr(trtp, "aot_impl"):
        @trtp.aot_impl(PLUGIN_ID)
        def compile_kernel(x: trtp.TensorDesc, w: trtp.TensorDesc, scale: trtp.TensorDesc, bias: trtp.TensorDesc,
                           in_features: int, bits: int, plugin_namespace: str, plugin_version: str,
                           outputs: tuple[trtp.TensorDesc], tactic: int
                           ) -> tuple[str, str, trtp.KernelLaunchParams, trtp.SymIntExprs]:
            compiled = compile_ptx(bits, _capability())
            if compiled.parameters != len(LAUNCH_PARAMETERS):
                raise HarmoqError(f"the PTX entry takes {compiled.parameters} parameters; TensorRT passes "
                                  f"{len(LAUNCH_PARAMETERS)}")
            rows = x.shape_expr.numel() // in_features
            params = trtp.KernelLaunchParams()
            params.grid_x = trtp.cdiv(rows, BLOCK_M)
            params.grid_y = trtp.cdiv(w.shape_expr[0], BLOCK_N)
            params.block_x = compiled.num_warps * 32
            params.shared_mem = compiled.shared_bytes
            # the scalars between the input tensors and the output, in the kernel's order: M, N, K, words
            extra = trtp.SymIntExprs(4)
            extra[0], extra[1] = trtp.SymInt32(rows), trtp.SymInt32(w.shape_expr[0])
            extra[2], extra[3] = trtp.SymInt32(in_features), trtp.SymInt32(w.shape_expr[1])
            return compiled.name, compiled.ptx, params, extra

    @trtp.impl(PLUGIN_ID)
    def run(x: trtp.Tensor, w: trtp.Tensor, scale: trtp.Tensor, bias: trtp.Tensor, in_features: int, bits: int,
            plugin_namespace: str, plugin_version: str, outputs: tuple[trtp.Tensor], stream: int) -> None:
        import torch

        from .torch_op import lowbit_linear_op  # noqa: F401  (registers torch.ops.harmoq.lowbit_linear)

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            result = torch.ops.harmoq.lowbit_linear(torch.as_tensor(x, device="cuda"), torch.as_tensor(w, device="cuda"),
                                                    bits, in_features, torch.as_tensor(scale, device="cuda"),
                                                    torch.as_tensor(bias, device="cuda"))
            torch.as_tensor(outputs[0], device="cuda").copy_(result)

    return "aot" if hasattr(trtp, "aot_impl") else "jit"


def _undefine(trtp) -> None:
    """Drop a half-made definition, so that the next ``register()`` starts afresh instead of
    failing with "already has a definition"."""
    namespace = getattr(trtp.op, DOMAIN, None)
    if namespace is not None and OP in vars(namespace):
        delattr(namespace, OP)


def register() -> str:
    """Make ``harmoq::LowBitLinear`` known to TensorRT in this process (idempotent; a failed attempt
    leaves nothing behind). Returns the implementation TensorRT builds: ``aot`` or ``jit``."""
    if _state["registered"]:
        return _state["registered"]
    import tensorrt as trt
    import tensorrt.plugin as trtp

    try:
        _describe(trt, trtp)
        implementation = _implement(trt, trtp)
    except Exception:
        _undefine(trtp)
        raise
    _state["registered"] = implementation
    return implementation
