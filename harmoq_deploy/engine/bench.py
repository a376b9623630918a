"""``harmoq-build bench``: latency and peak memory of an engine against every float runtime, one run.

Each measurement runs in a fresh spawned process, so its peak memory is its own: a whole image
of ``size`` through the shared tiling, warm-up runs, then timed runs (median and interquartile
range). For a CPU engine (ONNX Runtime or OpenVINO) the float references are the FP32 graph kept
in the engine folder on every float runtime here, on the same threads: ONNX Runtime FP32,
OpenVINO FP32 and OpenVINO bf16 where the CPU has bf16; the speed-up is against the fastest of
them, and the CPU's instruction sets are recorded, since they decide that ranking. Peak memory
is the process's peak resident set minus the resident set before the runner was created. On TensorRT the reference is that FP32 graph built by TensorRT
in the same process, and memory is torch's CUDA peak plus the engine's own device memory
(unverified here: no machine this ran on had TensorRT). On the PyTorch low-bit runtime the
reference is the float checkpoint in PyTorch eager on the same device.
"""

import multiprocessing
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import HarmoqError
from .bundle import EngineBundle, open_bundle
from .tiling import Tiling, run_tiled


@dataclass
class Measurement:
    label: str
    backend: str
    median_ms: float
    iqr_ms: float
    runs: int
    peak_memory_mb: float
    memory_kind: str


@dataclass(frozen=True)
class Subject:
    """What one spawned process times: the engine, or the FP32 graph on a float ``runtime``."""

    label: str
    role: str  # "engine" or "fp32_graph"
    runtime: str = ""  # for fp32_graph on a CPU: onnxruntime, or openvino
    precision: str = ""  # openvino: f32 or bf16


_ISA_FLAGS = (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX-512 VNNI", "avx512_vnni"), ("AVX-VNNI", "avx_vnni"),
              ("AVX-512 BF16", "avx512_bf16"), ("AMX-BF16", "amx_bf16"), ("AMX-INT8", "amx_int8"))


def cpu_description() -> dict:
    """The CPU's model name and the instruction sets that decide int8/bf16 speed (from /proc/cpuinfo)."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "instruction_sets": [name for name, flag in _ISA_FLAGS if flag in flags]}


def float_subjects(backend: str) -> list[Subject]:
    """Every float runtime the engine is compared with (see the module docstring)."""
    if backend == "torch":
        return [Subject("FP32 checkpoint, PyTorch", "fp32_graph", "torch")]
    if backend == "tensorrt":
        return [Subject("FP32 graph, TensorRT", "fp32_graph", "tensorrt")]
    subjects = [Subject("FP32 graph, ONNX Runtime", "fp32_graph", "onnxruntime")]
    try:
        from .runners import openvino_bf16

        bf16 = openvino_bf16()
    except ImportError:
        return subjects
    subjects.append(Subject("FP32 graph, OpenVINO f32", "fp32_graph", "openvino", "f32"))
    if bf16:
        subjects.append(Subject("FP32 graph, OpenVINO bf16", "fp32_graph", "openvino", "bf16"))
    return subjects


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _runner(bundle: EngineBundle, subject: Subject, threads: int | None):
    if subject.role == "engine":
        return bundle.runner(threads)
    if subject.runtime == "torch":
        from ..models import load_model
        from .runners import TorchRunner

        return TorchRunner(load_model(bundle.source_checkpoint()).module, "cuda" if _cuda() else "cpu")
    if subject.runtime == "tensorrt":
        from .tensorrt import BuildSettings, TensorRTRunner, build_engine

        engine, _ = build_engine(bundle.file("fp32_graph"), BuildSettings(tile=bundle.tile))
        return TensorRTRunner(engine)
    if subject.runtime == "openvino":
        from .runners import OpenVinoRunner, openvino_cache_root

        return OpenVinoRunner(bundle.file("fp32_graph"), threads, subject.precision, cache=openvino_cache_root())
    from .runners import OnnxRuntimeRunner

    return OnnxRuntimeRunner(bundle.file("fp32_graph"), threads)


def _measure(path: str, subject: Subject, size: tuple[int, int], warmup: int, repeats: int,
             threads: int | None) -> dict:
    """Runs in a spawned process: time ``subject`` of the bundle at ``path``."""
    bundle = open_bundle(Path(path))
    before = _rss_mb()
    runner = _runner(bundle, subject, threads)
    image = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
    tiling = Tiling(bundle.tile, bundle.overlap)
    cuda = bundle.backend == "tensorrt" or (bundle.backend == "torch" and _cuda())
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        run_tiled(runner, image, bundle.scale, tiling)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_tiled(runner, image, bundle.scale, tiling)
        times.append((time.perf_counter() - start) * 1000)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    if cuda:
        engine_memory = runner.device_memory_bytes if bundle.backend == "tensorrt" else 0
        memory = (torch.cuda.max_memory_allocated() + engine_memory) / 2**20
        kind = "CUDA peak (torch allocations + TensorRT engine device memory)"
    else:
        memory, kind = _rss_mb() - before, "peak resident set growth"
    return {"median_ms": statistics.median(times), "iqr_ms": quartiles[2] - quartiles[0], "runs": repeats,
            "peak_memory_mb": memory, "memory_kind": kind, "backend": getattr(runner, "backend", bundle.backend),
            "version": getattr(runner, "version", "")}


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise HarmoqError(f"--size must look like 256x256, got {text!r}") from None
    if height < 1 or width < 1:
        raise HarmoqError(f"--size must be positive, got {text!r}")
    return height, width


def bench(path: Path, size: tuple[int, int], warmup: int = 2, repeats: int = 10,
          threads: int | None = None) -> tuple[EngineBundle, list[Measurement]]:
    """Every float runtime, then the engine, measured one after the other, each in its own process."""
    bundle = open_bundle(path)
    if min(size) < bundle.tile:
        raise HarmoqError(f"--size {size[0]}x{size[1]} is smaller than the engine's {bundle.tile}x{bundle.tile} tile; "
                          f"benchmark at least one whole tile")
    if warmup < 0 or repeats < 1:
        raise HarmoqError("--warmup must be >= 0 and --repeats >= 1")
    subjects = float_subjects(bundle.backend) + [Subject("quantized engine", "engine")]
    context = multiprocessing.get_context("spawn")
    results = []
    with context.Pool(1, maxtasksperchild=1) as pool:
        for subject in subjects:
            row = pool.apply(_measure, (str(path), subject, size, warmup, repeats, threads))
            results.append(Measurement(label=subject.label, backend=f"{row['backend']} {row['version']}".strip(),
                                       median_ms=row["median_ms"], iqr_ms=row["iqr_ms"], runs=row["runs"],
                                       peak_memory_mb=row["peak_memory_mb"], memory_kind=row["memory_kind"]))
    return bundle, results


def as_dict(bundle: EngineBundle, size: tuple[int, int], results: list[Measurement]) -> dict:
    """The measurements, the engine's speed-up over the fastest float runtime, and the CPU."""
    *references, engine = results
    fastest = min(references, key=lambda r: r.median_ms)
    return {"engine": str(bundle.path), "backend": bundle.backend, "size": list(size), "tile": bundle.tile,
            "overlap": bundle.overlap, "cpu": cpu_description(), "measurements": [asdict(r) for r in results],
            "fastest_float": fastest.label, "speedup": fastest.median_ms / engine.median_ms,
            "memory_ratio": engine.peak_memory_mb / fastest.peak_memory_mb if fastest.peak_memory_mb else None}
