"""TensorRT builder and runner for the exported Q/DQ graphs (TensorRT 10.x and 11.x Python API).

``tensorrt`` is imported lazily: everything else in the project works without it, and asking
for this backend where it is missing fails with one line naming the missing piece.

What the builder does: parse the ONNX graph; create the network strongly typed (TensorRT 10 asks
for it with a creation flag, TensorRT 11 networks always are), so precision comes from the graph
itself (Q/DQ -> INT8 kernels, everything else FP32); no implicit-INT8 calibrator, no precision
builder flags. One optimisation profile: the fixed tile, or min/opt/max sides for a dynamic
graph. Optional hardware compatibility (``ampere+``: an engine for A100 built on any Ampere or
newer GPU). A timing cache is loaded before and saved after every build, so rebuilding the
same layers is fast. The runner keeps device buffers as torch CUDA tensors and runs on torch's
current stream: no second CUDA library.

VERIFICATION STATUS: the pure parts (``profile_shapes``, ``config_choices``,
``tensorrt_status``) are unit-tested. The parts that call TensorRT have not been executed in this
project: no machine it ran on had TensorRT (PyPI only has download stubs of the builder wheels
and the lent GPU machine has none installed). They follow the TensorRT 10/11 API reference.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HarmoqError, first_line
from ..io import write_atomic

HARDWARE_COMPATIBILITY = {"none": "NONE", "ampere+": "AMPERE_PLUS"}


@dataclass(frozen=True)
class BuildSettings:
    """What the TensorRT engine is built for.

    tile: the LR tile side of a fixed-shape graph; ``None`` for a dynamic graph, which gets a
        profile from ``min_side`` to ``max_side`` tuned at ``opt_side``.
    hardware_compatibility: ``none`` (this GPU's architecture) or ``ampere+``.
    """

    tile: int | None = 64
    min_side: int = 32
    opt_side: int = 64
    max_side: int = 256
    hardware_compatibility: str = "none"
    workspace_gib: float = 4.0
    timing_cache: Path | None = None

    def __post_init__(self):
        if self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise HarmoqError(f"--hw-compat must be one of {', '.join(HARDWARE_COMPATIBILITY)}, "
                              f"got {self.hardware_compatibility!r}")
        if self.tile is None and not 0 < self.min_side <= self.opt_side <= self.max_side:
            raise HarmoqError("dynamic profile sides must satisfy 0 < min <= opt <= max")


def profile_shapes(settings: BuildSettings) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes of the optimisation profile (batch 1, NCHW)."""
    if settings.tile is not None:
        fixed = (1, 3, settings.tile, settings.tile)
        return fixed, fixed, fixed
    return tuple((1, 3, side, side) for side in (settings.min_side, settings.opt_side, settings.max_side))


def config_choices(settings: BuildSettings, major_version: int) -> dict:
    """The builder options applied for ``settings`` on TensorRT ``major_version`` (recorded in reports)."""
    if major_version < 10:
        raise HarmoqError(f"TensorRT {major_version}.x is too old: the builder needs TensorRT 10 or newer")
    return {
        # TensorRT 11 networks are always strongly typed; 10 needs the flag.
        "strongly_typed_flag": major_version == 10,
        "hardware_compatibility_level": HARDWARE_COMPATIBILITY[settings.hardware_compatibility],
        "workspace_bytes": int(settings.workspace_gib * (1 << 30)),
        "profile": [list(s) for s in profile_shapes(settings)],
        "timing_cache": str(settings.timing_cache) if settings.timing_cache else None,
    }


def tensorrt_status() -> tuple[bool, str]:
    """Whether the TensorRT backend can run here, and why (the missing piece) if not."""
    try:
        import tensorrt as trt
    except ImportError:
        return False, "the tensorrt Python package is not installed (pip install harmoq-deploy[tensorrt])"
    except Exception as exc:  # a stub wheel or a broken install raises on import
        return False, f"tensorrt does not import ({first_line(exc)})"
    import torch

    if not torch.cuda.is_available():
        return False, f"TensorRT {trt.__version__} is installed but torch sees no CUDA GPU"
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}"


def _tensorrt():
    available, reason = tensorrt_status()
    if not available:
        raise HarmoqError(f"TensorRT backend unavailable: {reason}")
    import tensorrt as trt

    return trt


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def uses_lowbit_plugin(onnx_path: Path) -> bool:
    """Whether the graph has ``harmoq::LowBitLinear`` nodes (plugin format) that need the plugin registered."""
    import onnx

    from ..plugins.onnx_function import OP

    return any(node.op_type == OP for node in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def build_engine(onnx_path: Path, settings: BuildSettings) -> tuple[bytes, dict]:
    """Build a serialized engine from an exported graph; returns it and the choices made."""
    trt = _tensorrt()
    major = int(trt.__version__.split(".")[0])
    choices = config_choices(settings, major)
    logger = _logger(trt)
    trt.init_libnvinfer_plugins(logger, "")
    if uses_lowbit_plugin(onnx_path):
        from ..plugins.tensorrt_plugin import register

        register()
    builder = trt.Builder(logger)
    flags = 0
    if choices["strongly_typed_flag"]:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise HarmoqError(f"TensorRT cannot parse {onnx_path.name}: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, choices["workspace_bytes"])
    config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel,
                                                  choices["hardware_compatibility_level"])
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, *profile_shapes(settings))
    config.add_optimization_profile(profile)
    cache_bytes = settings.timing_cache.read_bytes() if settings.timing_cache and settings.timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise HarmoqError("TensorRT failed to build the engine (see the TensorRT log above)")
    if settings.timing_cache is not None:
        write_atomic(settings.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized)), {**choices, "tensorrt": trt.__version__}


class TensorRTRunner:
    """A serialized engine on the current CUDA device; a TileRunner like the others."""

    backend = "tensorrt"

    def __init__(self, engine_bytes: bytes):
        import torch

        trt = _tensorrt()
        self._torch = torch
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise HarmoqError("TensorRT cannot load the engine (built by another TensorRT version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_name = inputs[0]
        self.output_name = next(n for n in names if n not in inputs)
        self.version = trt.__version__

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        torch = self._torch
        outputs = []
        stream = torch.cuda.current_stream()
        for tile in tiles:
            x = torch.from_numpy(np.ascontiguousarray(tile[None], np.float32)).cuda()
            self.context.set_input_shape(self.input_name, tuple(x.shape))
            y = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            self.context.set_tensor_address(self.output_name, y.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise HarmoqError("TensorRT failed to run the engine")
            outputs.append(y)
        stream.synchronize()
        return torch.cat(outputs).cpu().numpy()
