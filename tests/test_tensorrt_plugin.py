"""The TensorRT plugin through NVIDIA's real ``tensorrt.plugin`` package, and the kernel it builds into engines.

``tensorrt.plugin`` comes from the ``tensorrt-cu12-bindings`` wheel; only its compiled module is
replaced (``tensorrt_standin.py``). The calls below are the ones TensorRT makes on a quickly
deployable plugin while building an engine: create it through the registered creator, ask for
output types and shapes, then (AOT) for the launch parameters and the kernel.
"""

import re

import numpy as np
import pytest

import tensorrt_standin as standin
from harmoq_deploy.engine.tensorrt import AMPERE, BuildSettings, aot_capability, config_choices
from harmoq_deploy.plugins import tensorrt_plugin
from harmoq_deploy.plugins.packing import words_per_row
from harmoq_deploy.plugins.triton_kernel import BLOCK_M, BLOCK_N, LAUNCH_PARAMETERS, NUM_WARPS, compile_ptx

K, N, BITS = 45, 70, 3
X_SHAPE = (2, 33, K)  # rows = 66: two row blocks of 64


@pytest.fixture()
def trt():
    module = standin.load()
    import tensorrt.plugin  # noqa: F401  (NVIDIA's package, on the stand-in)

    tensorrt_plugin._state.update(registered=False, capability=None)
    yield module
    tensorrt_plugin._state.update(registered=False, capability=None)
    standin.unload()


def _fields(trt):
    return trt.PluginFieldCollection([
        trt.PluginField("in_features", np.array([K], np.int32), trt.PluginFieldType.INT32),
        trt.PluginField("bits", np.array([BITS], np.int32), trt.PluginFieldType.INT32),
        trt.PluginField("plugin_namespace", b"harmoq", trt.PluginFieldType.CHAR),
        trt.PluginField("plugin_version", b"1", trt.PluginFieldType.CHAR)])


def _create(trt, request):
    creator = trt.get_plugin_registry().get_creator("LowBitLinear", "1", "harmoq")
    assert creator is not None, "register() puts the creator in TensorRT's registry"
    return creator.create_plugin("LowBitLinear", "harmoq", _fields(trt), trt.TensorRTPhase.BUILD, request)


def _input_shapes():
    return [X_SHAPE, (N, words_per_row(K, BITS)), (N,), (N,)]


def _shape_exprs(trt, shapes):
    exprs = []
    for shape in shapes:
        dims = trt.DimsExprs(len(shape))
        for i, d in enumerate(shape):
            dims[i] = trt.IDimensionExpr(d)
        exprs.append(dims)
    return exprs


def _planned(trt, plugin):
    """Types and shapes, as the builder asks for them first."""
    types = [trt.int8, trt.int32, trt.float32, trt.float32]
    out_types = plugin.get_output_data_types(types, [len(s) for s in _input_shapes()])
    out_shapes = plugin.get_output_shapes(_shape_exprs(trt, _input_shapes()), [], standin.ExprBuilder())
    return out_types, [[d.get_constant_value() for d in dims] for dims in out_shapes]


def test_register_defines_both_implementations_and_tensorrt_needs_the_aot_preference(trt):
    assert tensorrt_plugin.register() == "aot"
    assert tensorrt_plugin.register() == "aot", "idempotent"
    with pytest.raises(ValueError, match="both AOT and JIT implementations.*PREFER_AOT_PYTHON_PLUGINS"):
        _create(trt, trt.QuickPluginCreationRequest.UNKNOWN)
    plugin = _create(trt, trt.QuickPluginCreationRequest.PREFER_AOT)
    assert isinstance(plugin, trt.IPluginV3QuickAOTBuild) and not isinstance(plugin, trt.IPluginV3QuickRuntime)
    assert isinstance(_create(trt, trt.QuickPluginCreationRequest.PREFER_JIT), trt.IPluginV3QuickRuntime)
    # what the builder does for a plugin-format graph: that network flag, which TensorRT turns into PREFER_AOT
    assert config_choices(BuildSettings(), 11, lowbit_plugin=True)["network_flags"] == ["PREFER_AOT_PYTHON_PLUGINS"]
    assert config_choices(BuildSettings(), 11)["network_flags"] == []


def test_output_type_and_shape(trt):
    tensorrt_plugin.register()
    out_types, out_shapes = _planned(trt, _create(trt, trt.QuickPluginCreationRequest.PREFER_AOT))
    assert out_types == [trt.float32] and out_shapes == [[2, 33, N]]


@pytest.mark.parametrize("hw_compat, device, target", [("ampere+", 90, "sm_80"), ("none", 80, "sm_80"),
                                                        ("none", 90, "sm_90a")])
def test_aot_launch_parameters_and_ptx(trt, hw_compat, device, target):
    """The AOT kernel TensorRT would build into the engine: PTX for the right architecture, whose
    entry takes exactly what TensorRT's launch passes (inputs, the extra scalars, the output)."""
    tensorrt_plugin.register()
    plugin = _create(trt, trt.QuickPluginCreationRequest.PREFER_AOT)
    _, (out_shape,) = _planned(trt, plugin)
    plugin.set_tactic(0)
    descs = [trt.PluginTensorDesc(s, t) for s, t in zip(_input_shapes() + [tuple(out_shape)],
                                                         [trt.int8, trt.int32, trt.float32, trt.float32, trt.float32])]
    launch, extra = standin.KernelLaunchParams(), standin.SymExprSetter()
    capability = aot_capability(BuildSettings(hardware_compatibility=hw_compat), device)
    with tensorrt_plugin.aot_target(capability):
        plugin.get_launch_params(_shape_exprs(trt, _input_shapes()), [trt.DynamicPluginTensorDesc(d) for d in descs],
                                 4, launch, extra, standin.ExprBuilder())
    value = {name: getattr(launch, name).expr.get_constant_value()
             for name in ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")}
    rows = X_SHAPE[0] * X_SHAPE[1]
    assert value["grid_x"] == -(-rows // BLOCK_M) == 2 and value["grid_y"] == -(-N // BLOCK_N) == 2
    assert value["block_x"] == NUM_WARPS * 32 and value["grid_z"] == value["block_y"] == value["block_z"] == 1
    assert value["shared_mem"] > 0
    assert [e.expr.get_constant_value() for e in extra] == [rows, N, K, words_per_row(K, BITS)], "M, N, K, words"
    assert all(e.dtype == trt.PluginArgDataType.INT32 for e in extra)

    name, ptx = plugin.get_kernel(descs[:4], descs[4:])
    ptx = ptx.decode()
    assert re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1) == target
    entry = re.search(rf"\.entry\s+{name}\s*\((.*?)\)", ptx, re.S).group(1)
    params = re.findall(r"\.param\s+\.(u64|u32)", entry)
    # 4 input pointers, the 4 scalars TensorRT passes as extra arguments, the output pointer
    assert params == ["u64"] * 4 + ["u32"] * 4 + ["u64"] == ["u64" if p.endswith("ptr") else "u32"
                                                          for p in LAUNCH_PARAMETERS]


def test_ampere_plus_builds_sm_80_code_on_any_gpu():
    assert aot_capability(BuildSettings(hardware_compatibility="ampere+"), 90) == AMPERE == 80
    assert aot_capability(BuildSettings(hardware_compatibility="ampere+"), 120) == 80
    assert aot_capability(BuildSettings(), 90) == 90


def test_hidden_scratch_parameters_are_dropped_only_because_the_kernel_never_reads_them():
    import triton

    from harmoq_deploy.plugins import triton_kernel

    compiled = compile_ptx(BITS, 80)
    raw = triton.compile(triton.compiler.ASTSource(
        fn=triton_kernel.kernel(), signature={**triton_kernel.SIGNATURE, **dict.fromkeys(triton_kernel.CONSTEXPRS,
                                                                                         "constexpr")},
        constexprs={"BITS": BITS, "OUT_SCALE": 0.0, "OUT_MAX": 127, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}),
        target=triton.backends.compiler.GPUTarget("cuda", 80, 32), options={"num_warps": NUM_WARPS})
    declared = triton_kernel._entry_parameters(raw.asm["ptx"], raw.metadata.name)
    assert compiled.parameters == len(LAUNCH_PARAMETERS) <= len(declared)
    for hidden in declared[len(LAUNCH_PARAMETERS):]:  # Triton >= 3.3 appends scratch pointers
        assert f"[{hidden}]" not in raw.asm["ptx"]
    # a kernel that read one would be refused rather than launched with a missing argument
    read = raw.asm["ptx"].replace("ret;", f"ld.param.u64 %rd1, [{declared[-1]}];\n\tret;", 1)
    if len(declared) > len(LAUNCH_PARAMETERS):
        with pytest.raises(Exception, match="reads its hidden parameter"):
            triton_kernel._drop_hidden_parameters(read, raw.metadata.name, raw.metadata)


def test_a_failed_registration_can_be_retried(trt, monkeypatch):
    def broken(trt_module, trtp):
        raise RuntimeError("no kernel")

    real = tensorrt_plugin._implement
    monkeypatch.setattr(tensorrt_plugin, "_implement", broken)
    with pytest.raises(RuntimeError, match="no kernel"):
        tensorrt_plugin.register()
    monkeypatch.setattr(tensorrt_plugin, "_implement", real)
    assert tensorrt_plugin.register() == "aot", "no 'already has a definition' on the second attempt"
    assert isinstance(_create(trt, trt.QuickPluginCreationRequest.PREFER_AOT), trt.IPluginV3QuickAOTBuild)
