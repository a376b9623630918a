"""``harmoq-build engine``: calibrate -> export -> build -> validate -> a sealed engine folder.

Each stage hands the next a typed artifact (calibrated model, Q/DQ graph, engine, validation
reports); nothing reaches ``engines/NAME`` unless every stage succeeded, validation included.
"""

import copy
import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch

from ..calibrate import apply_artifact, calibrate, load_artifact, make_method, method_record, save_artifact
from ..calibrate.artifact import Artifact
from ..data import BUNDLED, bundled_photos, describe_calibration, load_datasets, sample_calibration_crops
from ..errors import HarmoqError
from ..export import export_calibrated, save_onnx, to_float_graph
from ..io import staging_folder
from ..models import LoadedModel, load_model
from ..progress import stages
from ..quant import QuantConfig, coverage_report
from .bundle import EngineBundle, seal
from .tensorrt import BuildSettings, build_engine, tensorrt_status
from .tiling import Tiling
from .validate import ImageReport, compare_engine, summarize, validate_graph

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")


@dataclass
class EngineRequest:
    """Everything ``harmoq-build engine`` was asked for (defaults: the CLI's)."""

    model_path: Path
    output: Path
    wbits: int
    abits: int
    method: str = "harmoq"
    artifact: Path | None = None
    backend: str = "auto"
    tile: int = 64
    overlap: int = 16
    calib: Path | None = None
    crops: int = 32
    patch: int = 64
    seed: int = 0
    method_settings: dict = field(default_factory=dict)
    datasets: tuple[str, ...] = ("Set5",)
    data_root: Path | None = None
    threshold_db: float = 50.0
    hardware_compatibility: str = "none"
    timing_cache: Path | None = None


def choose_backend(requested: str) -> tuple[str, str]:
    """The backend to build for and a sentence saying why; fails before any work if unusable."""
    if requested not in BACKENDS:
        raise HarmoqError(f"--backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "onnxruntime":
        return "onnxruntime", "ONNX Runtime (CPU) as requested"
    if requested == "torch":
        if torch.cuda.is_available():
            return "torch", f"PyTorch low-bit runtime (Triton kernels) on {torch.cuda.get_device_name()}, as requested"
        return "torch", "PyTorch low-bit runtime as requested; no CUDA GPU here, so on the CPU with the reference kernels"
    available, reason = tensorrt_status()
    if requested == "tensorrt":
        if not available:
            raise HarmoqError(f"--backend tensorrt: {reason}")
        return "tensorrt", f"{reason}, as requested"
    if available:
        return "tensorrt", f"auto: {reason} found"
    return "onnxruntime", f"auto: ONNX Runtime (CPU), because TensorRT is not available here: {reason}"


def describe_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _calibrated(request: EngineRequest, source: LoadedModel, staging: Path) -> tuple[torch.nn.Module, Artifact]:
    """The calibrated model and its artifact, saved into ``staging/artifact``."""
    if request.artifact is not None:
        artifact = load_artifact(request.artifact)
        model = apply_artifact(artifact, source)
        shutil.copytree(artifact.path, staging / "artifact")
        return model, load_artifact(staging / "artifact")
    images = request.calib if request.calib is not None else bundled_photos()
    config = QuantConfig(wbits=request.wbits, abits=request.abits, target="tensorrt")
    method = make_method(request.method, **request.method_settings)
    crops = sample_calibration_crops(images, request.crops, request.patch, source.scale, request.seed)
    checkpoint = request.output.parent / f".{request.output.name}.checkpoint.pt"
    calibrated = calibrate(source, config, method, crops, seed=request.seed, checkpoint=checkpoint)
    save_artifact(staging / "artifact", calibrated.model, source, config, method_record(method, calibrated),
                  describe_calibration(images, request.crops, request.patch, source.scale, request.seed), request.seed,
                  corrected_weights=calibrated.corrected_weights, scales=calibrated.scales)
    checkpoint.unlink(missing_ok=True)
    return calibrated.model, load_artifact(staging / "artifact")


def _check_tile_fits(datasets: dict, tile: int) -> None:
    largest = max(max(p.lr.shape[0], p.lr.shape[1]) for pairs in datasets.values() for p in pairs)
    if tile > largest:
        raise HarmoqError(f"--tile {tile} is larger than every validation image (largest LR side {largest}); "
                          f"use a tile of at most {largest}")


def build(request: EngineRequest, say=print) -> tuple[EngineBundle, dict]:
    """Run every stage and seal ``request.output``; ``say`` receives one line per stage."""
    backend, reason = choose_backend(request.backend)
    trt_available, trt_reason = tensorrt_status()
    say(f"backend: {reason}")
    source = load_model(request.model_path)
    float_model = copy.deepcopy(source.module)  # calibration quantizes source.module in place
    datasets = load_datasets(list(request.datasets), request.data_root, source.scale)
    _check_tile_fits(datasets, request.tile)
    tiling = Tiling(request.tile, request.overlap)
    seconds = {}
    staging = staging_folder(request.output)
    try:
        with stages(4) as tracker:
            tracker.start("calibrating" if request.artifact is None else "loading the artifact")
            start = time.perf_counter()
            model, artifact = _calibrated(request, source, staging)
            seconds["calibrate"] = time.perf_counter() - start
            say(f"calibrated: {artifact.manifest['method']['name']} W{artifact.config.wbits}A{artifact.config.abits} "
                f"({seconds['calibrate']:.0f}s); {coverage_report(model).summary()}")
            tracker.done()

            tracker.start("exporting")
            start = time.perf_counter()
            graph = export_calibrated(model, artifact.manifest, request.tile)
            save_onnx(graph, staging / "model.onnx")
            save_onnx(to_float_graph(float_model, request.tile), staging / "fp32.onnx")
            seconds["export"] = time.perf_counter() - start
            say(f"exported: Q/DQ graph, {len(graph.graph.node)} nodes, TensorRT rules pass ({seconds['export']:.0f}s)")
            tracker.done()

            tracker.start("building")
            start = time.perf_counter()
            roles = {"graph": "model.onnx", "fp32_graph": "fp32.onnx", "artifact": "artifact",
                     "report": "report.json", "report_md": "report.md"}
            build_info, engine_runner = _build(backend, staging, request, roles)
            seconds["build"] = time.perf_counter() - start
            say(f"built: {backend} engine ({seconds['build']:.1f}s)")
            tracker.done()

            tracker.start("validating")
            start = time.perf_counter()
            reports = validate_graph(graph, model, float_model, source.scale, datasets, tiling)
            summary = summarize(reports, request.threshold_db)
            for line in summary["lines"]:
                say(line)
            if not summary["passed"]:
                raise HarmoqError(f"validation failed, no engine written: {summary['failure']}")
            engine_rows = None
            if backend != "onnxruntime":
                engine_rows = compare_engine(engine_runner, model, float_model, source.scale, datasets, tiling)
                say(f"{backend} engine: mean PSNR {np.mean([r['psnr'] for r in engine_rows]):.3f}, free-running "
                    f"parity with PyTorch min {min(r['free_parity_db'] for r in engine_rows):.1f} dB")
            seconds["validate"] = time.perf_counter() - start
            tracker.done()

        report = _report(request, source, artifact, graph, backend, reason, build_info, (trt_available, trt_reason),
                         tiling, reports, summary, seconds)
        report["validation"]["engine_free_running"] = engine_rows
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (staging / "report.md").write_text(report_markdown(report))
        sidecar = {"backend": backend, "scale": source.scale, "tile": request.tile, "overlap": request.overlap,
                   "input": graph.graph.input[0].name, "output": graph.graph.output[0].name, "roles": roles,
                   "source_path": str(source.path), "source_sha256": source.sha256, "created": report["created"]}
        bundle = seal(staging, request.output, sidecar)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bundle, report


def _build(backend: str, staging: Path, request: EngineRequest, roles: dict) -> tuple[dict, object]:
    """Make the engine file in ``staging`` and name it in ``roles``; returns the build facts and,
    for an engine that is not ONNX Runtime's, its runner (compared free-running with PyTorch)."""
    if backend == "torch":
        from .runners import LowBitTorchRunner

        runner = LowBitTorchRunner(staging / "artifact", request.model_path)
        roles["engine"] = "artifact"
        return {"torch": torch.__version__, "device": runner.device, "lowbit_layers": runner.lowbit_layers}, runner
    if backend == "tensorrt":
        from .tensorrt import TensorRTRunner

        settings = BuildSettings(tile=request.tile, hardware_compatibility=request.hardware_compatibility,
                                 timing_cache=request.timing_cache)
        engine, info = build_engine(staging / "model.onnx", settings)
        (staging / "model.plan").write_bytes(engine)
        roles["engine"] = "model.plan"
        return info, TensorRTRunner(engine)
    import onnxruntime as ort

    from .runners import OnnxRuntimeRunner

    OnnxRuntimeRunner(staging / "model.onnx")  # ONNX Runtime compiles at load: this checks the graph loads
    roles["engine"] = "model.onnx"
    return {"onnxruntime": ort.__version__, "providers": ["CPUExecutionProvider"]}, None


def _report(request, source, artifact, graph: onnx.ModelProto, backend, reason, build_info, trt, tiling,
            reports: list[ImageReport], summary: dict, seconds: dict) -> dict:
    import harmoq_deploy

    scale, tile = source.scale, tiling.tile
    device = torch.cuda.get_device_name() if backend == "tensorrt" or (backend == "torch" and torch.cuda.is_available()) \
        else describe_cpu()
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "harmoq_deploy": harmoq_deploy.__version__,
        "source": {"path": str(source.path), "sha256": source.sha256, "architecture": source.architecture,
                   "scale": scale},
        "quantization": {"wbits": artifact.config.wbits, "abits": artifact.config.abits,
                         "method": artifact.manifest["method"]["name"], "target": artifact.config.target,
                         "calibration": artifact.manifest["calibration"],
                         "artifact_reused_from": str(request.artifact) if request.artifact else None},
        "backend": {"name": backend, "why": reason, "device": device, **build_info},
        "tensorrt": {"available": trt[0], "status": trt[1]},
        "input": {"name": graph.graph.input[0].name, "shape": [1, 3, tile, tile]},
        "output": {"name": graph.graph.output[0].name, "shape": [1, 3, tile * scale, tile * scale]},
        "tiling": asdict(tiling),
        "validation": {"datasets": list(request.datasets), "threshold_db": request.threshold_db,
                       "summary": {k: v for k, v in summary.items() if k != "lines"},
                       "images": [r.to_dict() for r in reports]},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }


def report_markdown(report: dict) -> str:
    s = report["validation"]["summary"]
    q, b = report["quantization"], report["backend"]
    lines = [
        f"# Engine: {report['source']['architecture']} x{report['source']['scale']}, {q['method']} W{q['wbits']}A{q['abits']}",
        "",
        f"- Source checkpoint: `{report['source']['path']}` (sha256 `{report['source']['sha256']}`)",
        f"- Backend: {b['name']} on {b['device']}: {b['why']}",
        f"- TensorRT: {'available' if report['tensorrt']['available'] else 'not available'} ({report['tensorrt']['status']})",
        f"- Input {report['input']['name']} {report['input']['shape']} -> output {report['output']['name']} "
        f"{report['output']['shape']}; images of any size run as {report['tiling']['tile']}-pixel tiles with "
        f"{report['tiling']['overlap']}-pixel overlap",
        f"- Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report["seconds"].items()),
        f"- Created {report['created']} by harmoq-deploy {report['harmoq_deploy']}",
        "",
        f"## Validation ({', '.join(report['validation']['datasets'])})",
        "",
        f"Parity (decisions matched) min {s['min_parity_db']:.1f} dB (threshold {report['validation']['threshold_db']:g} dB); "
        f"{s['codes_differing']} of {s['codes']} k-bit codes differ from PyTorch's, "
        f"{'all' if s['only_ties'] else 'NOT all'} at float ties.",
        "",
        "| image | parity dB | vs FP32 dB | PSNR / SSIM (engine) | PSNR / SSIM (PyTorch) |",
        "|---|---|---|---|---|",
    ]
    for r in report["validation"]["images"]:
        lines.append(f"| {r['dataset']}/{r['image']} | {r['parity_db']:.1f} | {r['vs_fp32_db']:.1f} | "
                     f"{r['psnr']:.3f} / {r['ssim']:.4f} | {r['torch_psnr']:.3f} / {r['torch_ssim']:.4f} |")
    lines += ["", f"Mean PSNR: engine {s['mean_psnr']:.3f}, PyTorch {s['mean_torch_psnr']:.3f}.", ""]
    return "\n".join(lines)


def default_data_root() -> Path | None:
    from ..paths import benchmarks_root

    return benchmarks_root() if benchmarks_root().is_dir() else None


def default_datasets() -> tuple[str, ...]:
    return ("Set5",) if default_data_root() is not None else (BUNDLED,)
