"""A stand-in for TensorRT's compiled Python module, so NVIDIA's pure-Python layers run on a CPU.

The ``tensorrt-cu12-bindings`` wheel (pinned in requirements/cpu.lock) installs the package
``tensorrt_bindings``: ``__init__.py``, the pure-Python ``plugin/`` package (``tensorrt.plugin``)
and the compiled ``tensorrt.so``, which needs TensorRT's libraries to load. ``load()`` puts this
module in the place of ``tensorrt_bindings.tensorrt``, runs the wheel's own ``__init__.py`` and
makes the package importable as ``tensorrt`` (as the ``tensorrt`` metapackage does), so
``import tensorrt.plugin`` runs NVIDIA's code unchanged.

Only what that code touches is here, with TensorRT's names (checked against the names in the
real compiled module by ``tests/test_tensorrt_api.py``). Shape expressions are evaluated eagerly:
every input dimension is a build-time constant, so the symbolic expressions the plugin returns
can be read back as numbers.
"""

import enum
import importlib
import importlib.util
import sys
import types

import numpy as np

__version__ = "11.4.0.106"


def _enum(name: str, members: str) -> type:
    return enum.IntEnum(name, [(m, i) for i, m in enumerate(members.split())])


DataType = _enum("DataType", "FLOAT HALF INT8 INT32 BOOL UINT8 FP8 BF16 INT64 INT4 FP4")
float32, float16, int8, int32, bool, uint8 = (DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32,
                                              DataType.BOOL, DataType.UINT8)
fp8, bfloat16, int64, int4, fp4 = DataType.FP8, DataType.BF16, DataType.INT64, DataType.INT4, DataType.FP4
TensorFormat = _enum("TensorFormat", "LINEAR CHW2 HWC8 CHW4 CHW16 CHW32 DHWC8 CDHW32 HWC DLA_LINEAR DLA_HWC4 HWC16 DHWC")
PluginFieldType = _enum("PluginFieldType", "FLOAT16 FLOAT32 FLOAT64 INT8 INT16 INT32 CHAR DIMS UNKNOWN BF16 INT64 "
                                           "FP8 INT4 FP4")
TensorRTPhase = _enum("TensorRTPhase", "BUILD RUNTIME")
QuickPluginCreationRequest = _enum("QuickPluginCreationRequest", "UNKNOWN PREFER_JIT PREFER_AOT STRICT_JIT STRICT_AOT")
DimensionOperation = _enum("DimensionOperation", "SUM PROD MAX MIN SUB EQUAL LESS FLOOR_DIV CEIL_DIV")
PluginArgType = _enum("PluginArgType", "INT")
PluginArgDataType = _enum("PluginArgDataType", "INT8 INT16 INT32")
NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag",
                                      "STRONGLY_TYPED PREFER_AOT_PYTHON_PLUGINS PREFER_JIT_PYTHON_PLUGINS")


class ILogger:
    Severity = _enum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE")

    def __init__(self, min_severity=None):
        self.messages = []

    def log(self, severity, message):
        self.messages.append((severity, message))


class Logger(ILogger):
    pass


class _Interface:
    def __init__(self, *args, **kwargs):
        pass


# classes the wheel's __init__.py decorates, and the plugin interfaces tensorrt.plugin derives from
for _name in ("ICudaEngine IExecutionContext Runtime IHostMemory Builder INetworkDefinition OnnxParser IBuilderConfig "
              "ITensor IPluginV3 IPluginV3QuickCore IPluginV3QuickBuild IPluginV3QuickRuntime IPluginV3QuickAOTBuild "
              "IPluginCreatorV3Quick ISymExpr IExprBuilder").split():
    globals()[_name] = type(_name, (_Interface,), {})


class Dims(tuple):
    MAX_DIMS = 8


class IDimensionExpr:
    """A dimension expression whose value is known (every shape here is a build-time constant)."""

    def __init__(self, value: int):
        self.value = int(value)

    def is_constant(self) -> bool:
        return True

    def get_constant_value(self) -> int:
        return self.value


_OPERATIONS = {
    DimensionOperation.SUM: lambda a, b: a + b, DimensionOperation.PROD: lambda a, b: a * b,
    DimensionOperation.MAX: max, DimensionOperation.MIN: min, DimensionOperation.SUB: lambda a, b: a - b,
    DimensionOperation.EQUAL: lambda a, b: int(a == b), DimensionOperation.LESS: lambda a, b: int(a < b),
    DimensionOperation.FLOOR_DIV: lambda a, b: a // b, DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b),
}


class ExprBuilder(IExprBuilder):
    def constant(self, value: int) -> IDimensionExpr:
        return IDimensionExpr(value)

    def operation(self, op, first: IDimensionExpr, second: IDimensionExpr) -> IDimensionExpr:
        return IDimensionExpr(_OPERATIONS[op](first.value, second.value))


class DimsExprs(list):
    def __init__(self, length: int):
        super().__init__([None] * length)


class PluginField:
    def __init__(self, name: str, data=None, type=PluginFieldType.UNKNOWN):
        self.name, self.type = name, type
        self.data = np.frombuffer(data, np.int8) if isinstance(data, bytes) else np.asarray(data)


class PluginFieldCollection(list):
    pass


class PluginTensorDesc:
    def __init__(self, dims=(), type=DataType.FLOAT, format=TensorFormat.LINEAR, scale=1.0):
        self.dims, self.type, self.format, self.scale = Dims(dims), type, format, scale


class DynamicPluginTensorDesc:
    def __init__(self, desc: PluginTensorDesc):
        self.desc, self.min, self.max = desc, desc.dims, desc.dims


class KernelLaunchParams:
    """What ``IPluginV3QuickAOTBuild.get_launch_params`` fills in."""

    grid_x = grid_y = grid_z = block_x = block_y = block_z = shared_mem = None


class SymExprSetter(list):
    """The extra kernel arguments ``get_launch_params`` sets (``nbSymExprs`` of them)."""

    @property
    def nbSymExprs(self):
        return len(self)

    @nbSymExprs.setter
    def nbSymExprs(self, count):
        self[:] = [None] * count


class _PluginRegistry:
    def __init__(self):
        self.creators = {}

    def register_creator(self, creator, namespace: str) -> bool:
        key = (creator.name, creator.plugin_version, namespace)
        if key in self.creators:
            return False  # as TensorRT: a second creator of the same name is refused
        self.creators[key] = creator
        return True

    def get_creator(self, name: str, version: str, namespace: str = ""):
        return self.creators.get((name, version, namespace))


_registry = _PluginRegistry()


def get_plugin_registry() -> _PluginRegistry:
    return _registry


def load(bindings_package: str = "tensorrt_bindings") -> types.ModuleType:
    """Import the wheel's ``tensorrt_bindings`` with this module as its compiled part, as ``tensorrt``.
    Call ``unload()`` afterwards: it removes every module this put in ``sys.modules``."""
    spec = importlib.util.find_spec(bindings_package)
    if spec is None:
        raise ImportError(f"{bindings_package} is not installed (requirements/cpu.lock pins tensorrt-cu12-bindings)")
    sys.modules[f"{bindings_package}.tensorrt"] = sys.modules[__name__]
    package = importlib.import_module(bindings_package)
    sys.modules["tensorrt"] = package
    return package


def unload(bindings_package: str = "tensorrt_bindings") -> None:
    for name in [n for n in sys.modules if n in ("tensorrt", bindings_package) or n.startswith(("tensorrt.",
                                                                                                  f"{bindings_package}."))]:
        del sys.modules[name]
    _registry.creators.clear()
