"""TensorRT builder and runner for the exported graphs (TensorRT 10.x and 11.x Python API, through polygraphy).

``tensorrt`` is imported lazily: everything else in the project works without it, and asking
for this backend where it is missing fails with one line naming the missing piece.

What the builder does: polygraphy's loaders parse the ONNX graph (``NetworkFromOnnxPath``),
configure the build (``CreateConfig``: one optimisation profile, the workspace, the hardware
compatibility level, the timing cache loaded before the build) and build it
(``EngineBytesFromNetwork``, which saves the timing cache after). The network is strongly typed
(TensorRT 10 asks for it with a creation flag, TensorRT 11 networks always are), so precision
comes from the graph itself: Q/DQ -> INT8 kernels, everything else FP32; no calibrator, no
precision flags. ``--hw-compat ampere+`` builds an engine for A100 on any Ampere-or-newer GPU.

A plugin-format graph (``harmoq::LowBitLinear`` nodes) needs two things polygraphy cannot
express: the plugin registered in the process (``plugins/tensorrt_plugin.py``; done before every
build and every load), and the network created with ``PREFER_AOT_PYTHON_PLUGINS``, because the
plugin has both an AOT and a JIT implementation and TensorRT refuses to choose. That network is
made here and handed to polygraphy's config and build loaders. The AOT kernel is compiled for
``aot_capability(settings)``: sm_80 PTX for ``ampere+``, this GPU's architecture otherwise.

The runner is polygraphy's ``TrtRunner`` fed with torch CUDA tensors.

VERIFICATION STATUS: the pure parts (``profile_shapes``, ``config_choices``, ``aot_capability``,
``tensorrt_status``) are unit-tested; every TensorRT attribute this module and the plugin use is
checked against the names in the TensorRT 10 and 11 Python bindings (``tests/test_tensorrt_api.py``),
and the plugin is driven through NVIDIA's ``tensorrt.plugin`` with a stand-in for the compiled
module. The build and the run have not been executed: no machine this project ran on had
TensorRT's libraries (PyPI's builder wheels are download stubs here, and the lent GPU machines
have none).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import HarmoqError, first_line

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


AMPERE = 80  # compute capability of the A100, the oldest GPU an ``ampere+`` engine runs on


def aot_capability(settings: BuildSettings, device_capability: int) -> int:
    """The compute capability the plugin's AOT kernel is compiled for: sm_80 for ``ampere+``
    (PTX for sm_80 runs on every newer GPU; Triton's sm_90 code is sm_90a, Hopper only), the
    building GPU's otherwise."""
    return AMPERE if settings.hardware_compatibility == "ampere+" else device_capability


def config_choices(settings: BuildSettings, major_version: int, lowbit_plugin: bool = False) -> dict:
    """The builder options applied for ``settings`` on TensorRT ``major_version`` (recorded in reports);
    ``lowbit_plugin``: the graph has ``harmoq::LowBitLinear`` nodes."""
    if major_version < 10:
        raise HarmoqError(f"TensorRT {major_version}.x is too old: the builder needs TensorRT 10 or newer")
    return {
        # TensorRT 11 networks are always strongly typed; 10 needs the flag.
        "strongly_typed_flag": major_version == 10,
        # both plugin implementations are defined, so TensorRT must be told which to take
        "network_flags": ["PREFER_AOT_PYTHON_PLUGINS"] if lowbit_plugin else [],
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


def uses_lowbit_plugin(onnx_path: Path) -> bool:
    """Whether the graph has ``harmoq::LowBitLinear`` nodes (plugin format) that need the plugin registered."""
    import onnx

    from ..plugins.onnx_function import OP

    return any(node.op_type == OP for node in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def _network_preferring_aot(trt, onnx_path: Path, strongly_typed: bool):
    """builder, network and parser of a plugin-format graph, the network created with
    ``PREFER_AOT_PYTHON_PLUGINS`` (polygraphy's ONNX loaders take parser flags, not network flags)."""
    from polygraphy.backend.trt import util as trt_util

    logger = trt_util.get_trt_logger()
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise HarmoqError(f"TensorRT cannot parse {onnx_path.name}: {errors[0] if errors else 'unknown error'}")
    return builder, network, parser


def build_engine(onnx_path: Path, settings: BuildSettings) -> tuple[bytes, dict]:
    """Build a serialized engine from an exported graph; returns it and the choices made."""
    trt = _tensorrt()
    import torch
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    major = int(trt.__version__.split(".")[0])
    plugin = uses_lowbit_plugin(onnx_path)
    choices = config_choices(settings, major, plugin)
    if plugin:
        from ..plugins.tensorrt_plugin import aot_target, register

        register()
        major_cc, minor_cc = torch.cuda.get_device_capability()
        capability = aot_capability(settings, major_cc * 10 + minor_cc)
        choices["plugin_aot_capability"] = capability
        network = _network_preferring_aot(trt, onnx_path, choices["strongly_typed_flag"])
    else:
        aot_target = None
        network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=choices["strongly_typed_flag"])
    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
    low, opt, high = profile_shapes(settings)
    cache = settings.timing_cache
    config = CreateConfig(
        profiles=[Profile().add(input_name, min=low, opt=opt, max=high)],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: choices["workspace_bytes"]},
        hardware_compatibility_level=getattr(trt.HardwareCompatibilityLevel, choices["hardware_compatibility_level"]),
        load_timing_cache=str(cache) if cache is not None and cache.is_file() else None)
    build = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(cache) if cache is not None else None)
    try:
        if aot_target is not None:
            with aot_target(choices["plugin_aot_capability"]):
                serialized = build()
        else:
            serialized = build()
    except Exception as exc:  # polygraphy reports build failures by raising PolygraphyException
        raise HarmoqError(f"TensorRT failed to build the engine: {first_line(exc)}") from None
    return bytes(serialized), {**choices, "tensorrt": trt.__version__}


class TensorRTRunner:
    """A serialized engine on the current CUDA device (polygraphy's ``TrtRunner``); a TileRunner like the others.

    ``lowbit_plugin``: the engine was built from a plugin-format graph, so the plugin is
    registered before the engine is deserialized (a JIT plugin engine cannot load without it).
    """

    backend = "tensorrt"

    def __init__(self, engine_bytes: bytes, lowbit_plugin: bool = False):
        import torch
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        trt = _tensorrt()
        if lowbit_plugin:
            from ..plugins.tensorrt_plugin import register

            register()
        self._torch = torch
        try:
            self.runner = TrtRunner(EngineFromBytes(engine_bytes))
            self.runner.activate()
        except Exception as exc:  # polygraphy raises PolygraphyException when TensorRT returns no engine
            raise HarmoqError(f"TensorRT cannot load the engine (built by another TensorRT version or for another "
                              f"GPU?): {first_line(exc)}") from None
        self.engine = self.runner.engine
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if n != self.input_name)
        self.version = trt.__version__

    @property
    def device_memory_bytes(self) -> int:
        """The engine's own device memory (activations and scratch), outside torch's allocator."""
        return int(self.engine.device_memory_size_v2)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        torch = self._torch
        outputs = []
        for tile in tiles:
            x = torch.from_numpy(np.ascontiguousarray(tile[None], np.float32)).cuda()
            result = self.runner.infer({self.input_name: x}, copy_outputs_to_host=True)
            outputs.append(result[self.output_name].float())
        return torch.cat(outputs).numpy()
