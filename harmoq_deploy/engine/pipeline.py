"""``harmoq-build engine``: calibrate -> export -> build -> validate -> a sealed engine folder.

Each stage hands the next a typed artifact (calibrated model, Q/DQ graph, engine, validation
reports); nothing reaches ``engines/NAME`` unless every stage succeeded, validation included.
"""

import copy
import json
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
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

BACKENDS = ("auto", "tensorrt", "openvino", "onnxruntime", "torch")
#: the engine must reach the validated graph's mean PSNR against HR within this (dB); see docs/export.md
ENGINE_PSNR_TOLERANCE_DB = 0.2


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
    graph_format: str = "qdq"  # or "plugin": packed 2/3/4-bit layers as harmoq::LowBitLinear nodes


@dataclass
class BackendChoice:
    """The backend an engine is built for and a sentence saying why; ``cpu`` until ``auto`` has
    measured ONNX Runtime against OpenVINO on the exported graph."""

    name: str
    why: str


def choose_backend(requested: str) -> BackendChoice:
    """The backend to build for and why; fails before any work if it is unusable."""
    if requested not in BACKENDS:
        raise HarmoqError(f"--backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "onnxruntime":
        return BackendChoice("onnxruntime", "ONNX Runtime (CPU) as requested")
    if requested == "openvino":
        return BackendChoice("openvino", f"OpenVINO {_openvino_version()} (CPU) as requested")
    if requested == "torch":
        if torch.cuda.is_available():
            return BackendChoice("torch", f"PyTorch low-bit runtime (Triton kernels) on {torch.cuda.get_device_name()}, "
                                          "as requested")
        return BackendChoice("torch", "PyTorch low-bit runtime as requested; no CUDA GPU here, so on the CPU with the "
                                      "reference kernels")
    available, reason = tensorrt_status()
    if requested == "tensorrt":
        if not available:
            raise HarmoqError(f"--backend tensorrt: {reason}")
        return BackendChoice("tensorrt", f"{reason}, as requested")
    if available:
        return BackendChoice("tensorrt", f"auto: {reason} found")
    return BackendChoice("cpu", f"auto: a CPU backend, because TensorRT is not available here: {reason}")


def _openvino_version() -> str:
    try:
        import openvino as ov
    except ImportError:
        raise HarmoqError("--backend openvino: the openvino package is not installed (pip install openvino)") from None
    return ov.__version__.split("-")[0]


def _median_ms(runner, tile: np.ndarray, runs: int) -> float:
    runner(tile)  # warm-up: first-run allocations and lazy initialisation
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner(tile)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def pick_cpu_backend(graph: Path, tile: int, runs: int = 5) -> BackendChoice:
    """``auto`` on a CPU: whichever of ONNX Runtime and OpenVINO runs the exported graph faster
    here, timed on one tile (median of ``runs`` after a warm-up); OpenVINO only if it imports."""
    from .runners import OnnxRuntimeRunner, OpenVinoRunner, openvino_cache_root

    sample = np.random.default_rng(0).random((1, 3, tile, tile), dtype=np.float32)
    ort_ms = _median_ms(OnnxRuntimeRunner(graph), sample, runs)
    try:
        openvino = OpenVinoRunner(graph, cache=openvino_cache_root())
    except ImportError:
        return BackendChoice("onnxruntime", "auto: ONNX Runtime (CPU): TensorRT and OpenVINO are not installed")
    ov_ms = _median_ms(openvino, sample, runs)
    times = (f"a {tile}x{tile} tile takes {ov_ms:.1f} ms on OpenVINO {openvino.version} and {ort_ms:.1f} ms on "
             f"ONNX Runtime here (median of {runs})")
    if ov_ms < ort_ms:
        return BackendChoice("openvino", f"auto: OpenVINO (CPU), measured faster: {times}")
    return BackendChoice("onnxruntime", f"auto: ONNX Runtime (CPU), measured faster: {times}")


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


@dataclass
class EngineBuild:
    """What the stages of one ``build`` hand each other: the inputs first, each stage's artifact after."""

    request: EngineRequest
    backend: BackendChoice
    source: LoadedModel
    float_model: torch.nn.Module
    datasets: dict
    tiling: Tiling
    staging: Path
    roles: dict = field(default_factory=lambda: {"graph": "model.onnx", "fp32_graph": "fp32.onnx", "artifact": "artifact",
                                                 "report": "report.json", "report_md": "report.md"})
    seconds: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None
    artifact: Artifact | None = None
    graph: onnx.ModelProto | None = None
    build_info: dict = field(default_factory=dict)
    engine_runner: object = None
    reports: list[ImageReport] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    engine_rows: list[dict] | None = None


class StageTimer:
    """``with timer("export", "exporting") as done:`` shows the stage, times it into ``seconds`` and
    says each line given to ``done`` with the stage's seconds once it has finished."""

    def __init__(self, tracker, seconds: dict, say):
        self.tracker, self.seconds, self.say = tracker, seconds, say

    @contextmanager
    def __call__(self, key: str, label: str) -> Iterator:
        self.tracker.start(label)
        lines = []
        start = time.perf_counter()
        yield lines.append
        self.seconds[key] = time.perf_counter() - start
        for line in lines:
            self.say(f"{line} ({self.seconds[key]:.1f}s)")
        self.tracker.done()


def build(request: EngineRequest, say=print) -> tuple[EngineBundle, dict]:
    """Run every stage and seal ``request.output``; ``say`` receives one line per stage."""
    choice = choose_backend(request.backend)
    _check_graph_format(request.graph_format, choice.name)
    say(f"backend: {choice.why}")
    source = load_model(request.model_path)
    float_model = copy.deepcopy(source.module)  # calibration quantizes source.module in place
    datasets = load_datasets(list(request.datasets), request.data_root, source.scale)
    _check_tile_fits(datasets, request.tile)
    run = EngineBuild(request, choice, source, float_model, datasets, Tiling(request.tile, request.overlap),
                      staging_folder(request.output))
    try:
        with stages(4) as tracker:
            timed = StageTimer(tracker, run.seconds, say)
            with timed("calibrate", "calibrating" if request.artifact is None else "loading the artifact") as done:
                _calibrate_stage(run, done)
            with timed("export", "exporting") as done:
                _export_stage(run, done)
            with timed("build", "building") as done:
                _build_stage(run, say, done)
            with timed("validate", "validating") as done:
                _validate_stage(run, say, done)
        bundle, report = _seal(run)
    finally:
        shutil.rmtree(run.staging, ignore_errors=True)
    return bundle, report


def _calibrate_stage(run: EngineBuild, done) -> None:
    run.model, run.artifact = _calibrated(run.request, run.source, run.staging)
    done(f"calibrated: {run.artifact.manifest['method']['name']} W{run.artifact.config.wbits}A{run.artifact.config.abits}; "
         f"{coverage_report(run.model).summary()}")


def _export_stage(run: EngineBuild, done) -> None:
    run.graph = export_calibrated(run.model, run.artifact.manifest, run.request.tile)
    if run.request.graph_format == "plugin":
        run.graph = _plugin_graph(run.graph, done)
    save_onnx(run.graph, run.staging / "model.onnx")
    save_onnx(to_float_graph(run.float_model, run.request.tile), run.staging / "fp32.onnx")
    kind = "plugin" if run.request.graph_format == "plugin" else "Q/DQ"
    done(f"exported: {kind} graph, {len(run.graph.graph.node)} nodes, TensorRT rules pass")


def _build_stage(run: EngineBuild, say, done) -> None:
    if run.backend.name == "cpu":
        run.backend = pick_cpu_backend(run.staging / "model.onnx", run.request.tile)
        say(f"backend: {run.backend.why}")
    run.build_info, run.engine_runner = _build(run.backend.name, run.staging, run.request, run.roles)
    detail = f", {run.build_info['int8_layers']}" if "int8_layers" in run.build_info else ""
    done(f"built: {run.backend.name} engine{detail}")


def _validate_stage(run: EngineBuild, say, done) -> None:
    """Decision-matched parity of the graph on ONNX Runtime (the reference), then the engine itself
    free-running when it is another runtime; either failing stops the build."""
    run.reports = validate_graph(run.graph, run.model, run.float_model, run.source.scale, run.datasets, run.tiling)
    run.summary = summarize(run.reports, run.request.threshold_db)
    for line in run.summary["lines"]:
        say(line)
    if not run.summary["passed"]:
        raise HarmoqError(f"validation failed, no engine written: {run.summary['failure']}")
    if run.engine_runner is None:
        return
    rows = compare_engine(run.engine_runner, run.model, run.float_model, run.source.scale, run.datasets, run.tiling)
    run.engine_rows = rows
    engine_psnr = float(np.mean([r["psnr"] for r in rows]))
    say(f"{run.backend.name} engine: mean PSNR {engine_psnr:.3f} (graph on ONNX Runtime {run.summary['mean_psnr']:.3f}), "
        f"free-running parity with PyTorch min {min(r['free_parity_db'] for r in rows):.1f} dB, against FP32 min "
        f"{min(r['vs_fp32_db'] for r in rows):.1f} dB")
    if engine_psnr < run.summary["mean_psnr"] - ENGINE_PSNR_TOLERANCE_DB:
        raise HarmoqError(f"validation failed, no engine written: the {run.backend.name} engine's mean PSNR "
                          f"{engine_psnr:.3f} is more than {ENGINE_PSNR_TOLERANCE_DB} dB below the validated graph's "
                          f"{run.summary['mean_psnr']:.3f}")
    done(f"{run.backend.name} engine validated")


def _seal(run: EngineBuild) -> tuple[EngineBundle, dict]:
    report = _report(run)
    (run.staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (run.staging / "report.md").write_text(report_markdown(report))
    sidecar = {"backend": run.backend.name, "graph_format": run.request.graph_format, "scale": run.source.scale,
               "tile": run.request.tile, "overlap": run.request.overlap, "input": run.graph.graph.input[0].name,
               "output": run.graph.graph.output[0].name, "roles": run.roles, "source_path": str(run.source.path),
               "source_sha256": run.source.sha256, "created": report["created"]}
    if "precision" in run.build_info:
        sidecar["precision"] = run.build_info["precision"]
    return seal(run.staging, run.request.output, sidecar), report


GRAPH_FORMATS = ("qdq", "plugin")


def _check_graph_format(graph_format: str, backend: str) -> None:
    if graph_format not in GRAPH_FORMATS:
        raise HarmoqError(f"--format must be one of {', '.join(GRAPH_FORMATS)}, got {graph_format!r}")
    if graph_format == "plugin" and backend == "torch":
        raise HarmoqError("--format plugin builds a graph for TensorRT or ONNX Runtime; --backend torch runs the "
                          "packed layers itself (use --format qdq)")


def _plugin_graph(graph: onnx.ModelProto, say) -> onnx.ModelProto:
    """The packed low-bit graph of the Q/DQ graph (``harmoq::LowBitLinear`` nodes); refused if nothing packs."""
    from ..export.plugin import to_plugin_graph

    plugin, converted = to_plugin_graph(graph)
    if not converted:
        raise HarmoqError("--format plugin: no quantized layer of this model packs into LowBitLinear (2/3/4-bit "
                          "Linear or 1x1 convolution layers); use --format qdq")
    say(f"packed: {converted} layers as harmoq::LowBitLinear (plugin format)")
    return plugin


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
        return info, TensorRTRunner(engine, lowbit_plugin=request.graph_format == "plugin")
    if backend == "openvino":
        from .runners import OpenVinoRunner, openvino_cache_root

        runner = OpenVinoRunner(staging / "model.onnx", cache=openvino_cache_root())
        roles["engine"] = "model.onnx"  # OpenVINO compiles the graph at load (cached by what it depends on)
        return {"openvino": runner.version.split()[0], "precision": runner.precision, "cpu": runner.device,
                "int8_layers": runner.int8_summary()}, runner
    import onnxruntime as ort

    from .runners import OnnxRuntimeRunner

    OnnxRuntimeRunner(staging / "model.onnx")  # ONNX Runtime compiles at load: this checks the graph loads
    roles["engine"] = "model.onnx"
    return {"onnxruntime": ort.__version__, "providers": ["CPUExecutionProvider"]}, None


def _report(run: EngineBuild) -> dict:
    import harmoq_deploy

    source, artifact, graph, backend, request = run.source, run.artifact, run.graph, run.backend.name, run.request
    scale, tile = source.scale, run.tiling.tile
    trt_available, trt_reason = tensorrt_status()
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
        "backend": {"name": backend, "why": run.backend.why, "device": device, **run.build_info},
        "tensorrt": {"available": trt_available, "status": trt_reason},
        "input": {"name": graph.graph.input[0].name, "shape": [1, 3, tile, tile]},
        "output": {"name": graph.graph.output[0].name, "shape": [1, 3, tile * scale, tile * scale]},
        "tiling": asdict(run.tiling),
        "validation": {"datasets": list(request.datasets), "threshold_db": request.threshold_db,
                       "summary": {k: v for k, v in run.summary.items() if k != "lines"},
                       "images": [r.to_dict() for r in run.reports], "engine_free_running": run.engine_rows},
        "seconds": {k: round(v, 2) for k, v in run.seconds.items()},
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
    lines += ["", f"Mean PSNR: graph on ONNX Runtime {s['mean_psnr']:.3f}, PyTorch {s['mean_torch_psnr']:.3f}.", ""]
    rows = report["validation"].get("engine_free_running")
    if rows:
        lines += [f"## The {b['name']} engine, free-running", "",
                  "| image | parity with PyTorch dB | vs FP32 dB | PSNR / SSIM |", "|---|---|---|---|"]
        lines += [f"| {r['dataset']}/{r['image']} | {r['free_parity_db']:.1f} | {r['vs_fp32_db']:.1f} | "
                  f"{r['psnr']:.3f} / {r['ssim']:.4f} |" for r in rows]
        lines += ["", f"Mean PSNR: {b['name']} engine {np.mean([r['psnr'] for r in rows]):.3f}.", ""]
    return "\n".join(lines)


def default_data_root() -> Path | None:
    from ..paths import benchmarks_root

    return benchmarks_root() if benchmarks_root().is_dir() else None


def default_datasets() -> tuple[str, ...]:
    return ("Set5",) if default_data_root() is not None else (BUNDLED,)
