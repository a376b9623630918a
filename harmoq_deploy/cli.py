"""``harmoq-build``: the command line. Thin: parse, call the pipeline stages, print."""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from . import defaults
from .errors import HarmoqError
from .io import write_atomic

_out = Console(soft_wrap=True)
_err = Console(stderr=True)

DEFAULT_CROPS, DEFAULT_PATCH, DEFAULT_SEED = defaults.CROPS, defaults.PATCH, defaults.SEED
DEFAULT_ITERS, DEFAULT_BATCH, DEFAULT_BIAS_LR, DEFAULT_WEIGHT_LR = (defaults.ITERS, defaults.BATCH, defaults.BIAS_LR,
                                                                    defaults.WEIGHT_LR)
DEFAULT_WEIGHT_BOUND_LRS = ",".join(f"{rate:g}" for rate in defaults.WEIGHT_BOUND_LRS)
DEFAULT_TILE, DEFAULT_OVERLAP = defaults.TILE, defaults.OVERLAP
METHOD_HELP = "minmax, percentile, dobi, 2dquant or harmoq."


def _bits_options(f):
    f = click.option("--abits", type=int, help="Activation bits (default: --bits).")(f)
    f = click.option("--wbits", type=int, help="Weight bits (default: --bits).")(f)
    f = click.option("--bits", type=int, help="Weight and activation bits, 2..8.")(f)
    return f


def _calib_options(f):
    f = click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Seed of the crop sampler.")(f)
    f = click.option("--patch", type=int, default=DEFAULT_PATCH, show_default=True, help="LR crop side in pixels.")(f)
    f = click.option("--crops", type=int, default=DEFAULT_CROPS, show_default=True, help="Number of calibration crops.")(f)
    f = click.option("--calib", type=click.Path(path_type=Path), help="Folder of calibration images (HR).")(f)
    f = click.option("--layers", help="Op kinds to quantize, comma-separated: linear,matmul,conv "
                                      "(default: the architecture family's).")(f)
    f = click.option("--target", type=click.Choice(["any", "tensorrt"]), default=defaults.TARGET, show_default=True,
                     help="tensorrt: only grids TensorRT executes exactly (symmetric weights, activation "
                          "offsets only where they fold into a bias).")(f)
    f = click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")(f)
    f = click.option("--batch", type=int, default=DEFAULT_BATCH, show_default=True,
                     help="2dquant/harmoq: crops per refinement step.")(f)
    f = click.option("--iters", type=int, default=DEFAULT_ITERS, show_default=True,
                     help="2dquant/harmoq: bound-refinement iterations (more = better, slower).")(f)
    f = _abr_rate_options(f)
    return f


def _abr_rate_options(f):
    f = click.option("--weight-bound-lrs",
                     help="harmoq: rates ABR may move the weight grids' bounds at, comma-separated; each is tried "
                          "for a short refinement judged on held-out crops and the best is kept. One rate skips "
                          "the trials (faster; 0.001 keeps SRC's rounding on its grid) "
                          f"[default: {DEFAULT_WEIGHT_BOUND_LRS}]")(f)
    f = click.option("--weight-lr", type=float,
                     help="harmoq: learning rate at which ABR also refines the quantized layers' (SRC-corrected) "
                          f"weights, at 3 bits (scaled to the grid step at other widths); 0 keeps them frozen "
                          f"[default: {DEFAULT_WEIGHT_LR:g}]")(f)
    return click.option("--bias-lr", type=float,
                        help="harmoq: learning rate at which ABR also refines the quantized layers' biases; "
                             f"0 keeps them frozen [default: {DEFAULT_BIAS_LR:g}]")(f)


def _quant_config(bits, wbits, abits, layers, target="any"):
    from .quant import QuantConfig

    wbits, abits = wbits or bits, abits or bits
    if wbits is None or abits is None:
        raise HarmoqError("give --bits, or both --wbits and --abits")
    kinds = tuple(k.strip() for k in layers.split(",") if k.strip()) if layers else None
    return QuantConfig(wbits=wbits, abits=abits, layers=kinds, target=target)


def _check_device(device: str) -> str:
    import torch

    if device not in ("cpu", "cuda"):
        raise HarmoqError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise HarmoqError("--device cuda: torch sees no CUDA GPU on this machine")
    return device


def _weight_bound_lrs(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(dict.fromkeys(float(part) for part in text.split(",")))
    except ValueError:
        rates = ()
    if not rates or not all(0 < rate < float("inf") for rate in rates):
        raise HarmoqError(f"--weight-bound-lrs takes comma-separated rates > 0, got {text!r}")
    return rates


def _method_settings(method_name: str, iters: int, batch: int, bias_lr: float | None = None,
                     weight_lr: float | None = None, weight_bound_lrs: str | None = None) -> dict:
    """``--iters``/``--batch`` and HarmoQ's ABR rates checked, as the settings of a method that
    refines by distillation."""
    from .calibrate import OPTIMIZING_METHODS

    if iters < 0 or batch < 1:
        raise HarmoqError("--iters must be >= 0 and --batch >= 1")
    harmoq_only = {k: v for k, v in (("bias_lr", bias_lr), ("weight_lr", weight_lr),
                                     ("weight_bound_lrs", weight_bound_lrs)) if v is not None}
    if harmoq_only and method_name != "harmoq":
        option = "--" + next(iter(harmoq_only)).replace("_", "-")
        raise HarmoqError(f"{option} is a harmoq setting; {method_name} refines only the bounds at one rate")
    for key in ("bias_lr", "weight_lr"):
        if key in harmoq_only and not harmoq_only[key] >= 0:
            raise HarmoqError(f"--{key.replace('_', '-')} must be >= 0, got {harmoq_only[key]:g}")
    if weight_bound_lrs is not None:
        harmoq_only["weight_bound_lrs"] = _weight_bound_lrs(weight_bound_lrs)
    if method_name not in OPTIMIZING_METHODS:
        return {}
    return {"iters": iters, "batch": batch, **harmoq_only}


@dataclass(frozen=True)
class CalibrationRequest:
    """What ``calibrate`` and ``eval --method`` were asked to calibrate with, checked."""

    method: str
    settings: dict
    config: object
    calib: Path
    crops: int
    patch: int
    seed: int
    device: str

    @classmethod
    def from_options(cls, method: str, options: dict) -> "CalibrationRequest":
        """From the options ``_bits_options`` and ``_calib_options`` add to a command; a bad one is a HarmoqError."""
        from .calibrate import make_method

        config = _quant_config(options["bits"], options["wbits"], options["abits"], options["layers"],
                               options["target"])
        settings = _method_settings(method, options["iters"], options["batch"], options["bias_lr"],
                                    options["weight_lr"], options["weight_bound_lrs"])
        make_method(method, **settings)  # an unknown method or setting fails before any work
        if options["calib"] is None:
            raise HarmoqError(f"--calib DIR is required to calibrate with {method}")
        return cls(method, settings, config, options["calib"], options["crops"], options["patch"], options["seed"],
                   _check_device(options["device"]))


def _calibrated(source, request: CalibrationRequest, checkpoint: Path | None = None):
    """The calibrated model of ``source`` per ``request``, and the method that calibrated it."""
    from .calibrate import calibrate, make_method
    from .data import sample_calibration_crops

    method = make_method(request.method, **request.settings)
    data = sample_calibration_crops(request.calib, request.crops, request.patch, source.scale, request.seed)
    calibrated = calibrate(source, request.config, method, data, seed=request.seed, checkpoint=checkpoint,
                           device=request.device)
    return calibrated, method


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="harmoq-deploy")
def cli():
    """Low-bit post-training quantization and deployment of super-resolution networks."""


@cli.command("eval")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="SR checkpoint.")
@click.option("--method", default=None, help="fp, or a calibration method: " + METHOD_HELP)
@click.option("--artifact", type=click.Path(path_type=Path), help="Evaluate a saved calibration artifact.")
@_bits_options
@_calib_options
@click.option("--datasets", default="Set5,Set14", show_default=True, help="Comma-separated benchmark names.")
@click.option("--data-root", required=True, type=click.Path(path_type=Path), help="Folder holding <Name>/HR.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the scores as JSON.")
def eval_command(model_path, method, artifact, datasets, data_root, json_path, **options):
    """PSNR/SSIM (Y channel, border = scale) of a float, calibrated or saved quantized model."""
    from .calibrate import apply_artifact, load_artifact
    from .eval import evaluate
    from .models import load_model

    if (method is None) == (artifact is None):
        raise HarmoqError("give exactly one of --method (fp or a calibration method) and --artifact")
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    if not names:
        raise HarmoqError("--datasets names no dataset")
    source = load_model(model_path)
    if artifact is not None:
        model = apply_artifact(load_artifact(artifact), source)
    elif method == "fp":
        model = source.module
    else:
        model = _calibrated(source, CalibrationRequest.from_options(method, options))[0].model
    scores = evaluate(model, source.scale, names, data_root)
    table = Table("dataset", "PSNR", "SSIM", "images", title=f"{model_path.name} x{source.scale}")
    for name, score in scores.items():
        table.add_row(name, f"{score.psnr:.3f}", f"{score.ssim:.4f}", str(score.n))
    _out.print(table)
    if json_path is not None:
        write_atomic(json_path, (json.dumps({n: s.to_dict() for n, s in scores.items()}, indent=2) + "\n").encode())


@cli.command("calibrate")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="SR checkpoint.")
@click.option("--method", required=True, help=METHOD_HELP)
@_bits_options
@_calib_options
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Artifact folder to write.")
def calibrate_command(model_path, method, output, **options):
    """Calibrate a quantized model and write its artifact (manifest.json + tensors.safetensors).

    2dquant and harmoq checkpoint their refinement next to the output; interrupted (Ctrl-C),
    the same command resumes from the last checkpoint.
    """
    import time

    from .calibrate import method_record, save_artifact
    from .data import describe_calibration
    from .models import load_model

    request = CalibrationRequest.from_options(method, options)
    config = request.config
    source = load_model(model_path)
    checkpoint = output.parent / f".{output.name}.checkpoint.pt"
    start = time.perf_counter()
    try:
        calibrated, method_obj = _calibrated(source, request, checkpoint)
    except KeyboardInterrupt:
        if checkpoint.is_file():
            _err.print(f"interrupted; run the same command again to resume from {checkpoint}", markup=False)
        raise
    calibration = describe_calibration(request.calib, request.crops, request.patch, source.scale, request.seed)
    save_artifact(output, calibrated.model, source, config, method_record(method_obj, calibrated), calibration,
                  request.seed, corrected_weights=calibrated.corrected_weights, scales=calibrated.scales)
    checkpoint.unlink(missing_ok=True)
    for step in calibrated.steps:
        verdict = "kept" if step.applied else "no change" if step.loss_before == step.loss_after \
            else "rejected (did not lower the held-out loss)"
        losses = " -> ".join("-" if v is None else f"{v:.5f}" for v in (step.loss_before, step.loss_after))
        _out.print(f"{step.name}: {verdict}, loss {losses}, {step.seconds:.0f}s", markup=False)
    from .quant import coverage_report

    _out.print(f"{source.architecture}: {coverage_report(calibrated.model).summary()}", markup=False)
    _out.print(f"wrote {output} ({method} W{config.wbits}A{config.abits}, {source.architecture} x{source.scale}, "
               f"{time.perf_counter() - start:.0f}s)")


@cli.command("coverage")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="SR checkpoint.")
@_bits_options
@click.option("--layers", help="Op kinds to quantize, comma-separated: linear,matmul,conv.")
@click.option("--size", default=64, show_default=True, help="Side of the square LR input the FLOPs are counted at.")
def coverage_command(model_path, bits, wbits, abits, layers, size):
    """List every op the quantizer covers and its share of the model's FLOPs."""
    from .models import load_model
    from .quant import coverage_report, quantize_model

    source = load_model(model_path)
    config = _quant_config(bits or 4, wbits, abits, layers)
    report = coverage_report(quantize_model(source.module, config, source.layout), (size, size))
    _out.print(report.to_markdown())
    for kind, (count, share) in report.by_kind().items():
        _out.print(f"{kind}: {count} ops, {share:.1%} of FLOPs")
    _out.print(f"{source.architecture}: {report.summary()}", markup=False)


def _rebuild(artifact_path: Path, model_path: Path | None):
    """The calibrated model of an artifact, from ``model_path`` or the checkpoint it names."""
    from .calibrate import apply_artifact, load_artifact
    from .models import load_model

    artifact = load_artifact(artifact_path)
    source = load_model(model_path or Path(artifact.manifest["source"]["path"]))
    return artifact, source, apply_artifact(artifact, source)


def _check_writable(path: Path) -> None:
    """Fail before long work when ``path`` cannot be written (the file itself is written atomically)."""
    import os

    folder = path.parent.resolve()
    if not folder.is_dir():
        raise HarmoqError(f"{path}: folder {path.parent} does not exist")
    if not os.access(folder, os.W_OK):
        raise HarmoqError(f"{path}: cannot write in {path.parent}")


@cli.command("export")
@click.option("--artifact", required=True, type=click.Path(path_type=Path), help="Calibration artifact folder.")
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="SR checkpoint (default: the one the artifact was calibrated from).")
@click.option("--tile", type=int, default=DEFAULT_TILE, show_default=True, help="LR tile side the graph is fixed to.")
@click.option("--dynamic", is_flag=True, help="Dynamic height/width instead of a fixed tile (only for "
                                              "architectures whose traced graph supports it).")
@click.option("--format", "graph_format", type=click.Choice(["qdq", "plugin"]), default="qdq", show_default=True,
              help="plugin: quantized Linear/1x1 layers become harmoq::LowBitLinear nodes with packed k-bit weights.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="ONNX file to write.")
def export_command(artifact, model_path, tile, dynamic, graph_format, output):
    """Export a calibrated model to ONNX with TensorRT-legal Q/DQ (checked on every export)."""
    from .export import check_trt_rules, export_calibrated, save_onnx
    from .export.plugin import to_plugin_graph

    _check_writable(output)
    loaded, source, model = _rebuild(artifact, model_path)
    graph = export_calibrated(model, loaded.manifest, None if dynamic else tile)
    detail = ""
    if graph_format == "plugin":
        graph, converted = to_plugin_graph(graph)
        check_trt_rules(graph)
        detail = f", {converted} LowBitLinear layers"
    save_onnx(graph, output)
    quantized = sum(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    _out.print(f"wrote {output} ({len(graph.graph.node)} nodes, {quantized} quantized activations{detail}, "
               f"{'dynamic' if dynamic else f'{tile}x{tile}'} input, TensorRT rules: pass)", markup=False)


@cli.command("validate")
@click.option("--onnx", "onnx_path", required=True, type=click.Path(path_type=Path), help="Exported Q/DQ graph.")
@click.option("--artifact", required=True, type=click.Path(path_type=Path), help="The artifact it was exported from.")
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="SR checkpoint (default: the one the artifact was calibrated from).")
@click.option("--datasets", default="Set5", show_default=True,
              help="Comma-separated benchmark names (skimage: photographs bundled with scikit-image).")
@click.option("--data-root", type=click.Path(path_type=Path), help="Folder holding <Name>/HR.")
@click.option("--tile", type=int, help="LR tile side (default: the graph's; 64 for a dynamic graph).")
@click.option("--overlap", type=int, default=DEFAULT_OVERLAP, show_default=True, help="LR pixels shared by neighbouring tiles.")
@click.option("--threshold", type=float, default=50.0, show_default=True, help="Minimum parity (dB) on every image.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the per-image report as JSON.")
@click.option("--save-images", type=click.Path(path_type=Path), help="Also write the graph's SR outputs (PNG) here.")
def validate_command(onnx_path, artifact, model_path, datasets, data_root, tile, overlap, threshold, json_path,
                     save_images):
    """Run the graph in ONNX Runtime (CPU) and compare it, image by image, with the PyTorch
    fake-quantized model (parity, decisions matched), the float model and HR."""
    from .data import load_datasets
    from .engine import Tiling, validate_graph
    from .engine.validate import summarize
    from .export import graph_metadata, load_onnx

    names = [d.strip() for d in datasets.split(",") if d.strip()]
    if not names:
        raise HarmoqError("--datasets names no dataset")
    if json_path is not None:
        _check_writable(json_path)
    graph = load_onnx(onnx_path)
    meta = graph_metadata(graph)
    loaded, source, model = _rebuild(artifact, model_path)
    if meta.get("source_sha256") not in (None, source.sha256):
        raise HarmoqError(f"{onnx_path} was exported from another checkpoint than {source.path.name}")
    graph_tile = meta.get("tile", "dynamic")
    if tile is None:
        tile = int(graph_tile) if graph_tile != "dynamic" else DEFAULT_TILE
    elif graph_tile not in ("dynamic", str(tile)):
        raise HarmoqError(f"{onnx_path} takes {graph_tile}x{graph_tile} tiles, not --tile {tile}")
    from .models import load_model

    float_model = load_model(source.path).module
    reports = validate_graph(graph, model, float_model, source.scale, load_datasets(names, data_root, source.scale),
                             Tiling(tile, overlap), save_images=save_images)
    table = Table("image", "parity dB", "free dB", "vs FP32 dB", "PSNR/SSIM (ONNX)", "PSNR/SSIM (PyTorch)",
                  "codes differing", title=f"{onnx_path.name}: ONNX Runtime vs PyTorch")
    for r in reports:
        table.add_row(f"{r.dataset}/{r.image}", f"{r.parity_db:.1f}", f"{r.free_parity_db:.1f}", f"{r.vs_fp32_db:.1f}",
                      f"{r.psnr:.3f} / {r.ssim:.4f}", f"{r.torch_psnr:.3f} / {r.torch_ssim:.4f}",
                      f"{r.decisions.differing} of {r.decisions.codes}")
    _out.print(table)
    summary = summarize(reports, threshold)
    for line in summary["lines"]:
        _out.print(line, markup=False)
    if json_path is not None:
        payload = {"onnx": str(onnx_path), "tile": tile, "overlap": overlap, "threshold_db": threshold,
                   "summary": {k: v for k, v in summary.items() if k != "lines"},
                   "images": [r.to_dict() for r in reports]}
        write_atomic(json_path, (json.dumps(payload, indent=2) + "\n").encode())
    if not summary["passed"]:
        raise HarmoqError(summary["failure"])


@cli.command("engine")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="SR checkpoint.")
@_bits_options
@click.option("--method", default="harmoq", show_default=True, help="Calibration method: " + METHOD_HELP)
@click.option("--artifact", type=click.Path(path_type=Path), help="Reuse this calibration artifact instead of calibrating.")
@click.option("--backend", default="auto", show_default=True,
              help="auto (TensorRT when it imports and a CUDA GPU is present, else whichever of OpenVINO and ONNX Runtime "
                   "runs the graph faster here, measured), tensorrt, openvino (CPU: int8 kernels, float ops in bf16 where "
                   "the CPU has it), onnxruntime, or torch (the PyTorch low-bit runtime: packed k-bit Linear layers on "
                   "Triton kernels).")
@click.option("--tile", type=int, default=DEFAULT_TILE, show_default=True, help="LR tile side the engine runs.")
@click.option("--overlap", type=int, default=DEFAULT_OVERLAP, show_default=True, help="LR pixels shared by neighbouring tiles.")
@click.option("--calib", type=click.Path(path_type=Path),
              help="Folder of calibration images (default: the colour photographs bundled with scikit-image).")
@click.option("--crops", type=int, default=DEFAULT_CROPS, show_default=True, help="Number of calibration crops.")
@click.option("--patch", type=int, default=DEFAULT_PATCH, show_default=True, help="LR crop side in pixels.")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Seed of the crop sampler.")
@click.option("--iters", type=int, default=DEFAULT_ITERS, show_default=True, help="2dquant/harmoq: refinement iterations.")
@click.option("--batch", type=int, default=DEFAULT_BATCH, show_default=True, help="2dquant/harmoq: crops per step.")
@_abr_rate_options
@click.option("--datasets", help="Validation sets, comma-separated (default: Set5 when the shared benchmarks "
                                 "are found, else skimage: photographs bundled with scikit-image).")
@click.option("--data-root", type=click.Path(path_type=Path), help="Folder holding <Name>/HR (default: ../shared's).")
@click.option("--threshold", type=float, default=50.0, show_default=True, help="Minimum validation parity (dB).")
@click.option("--hw-compat", default="none", show_default=True,
              help="TensorRT hardware compatibility: none, or ampere+ (an A100 engine built on another Ampere+ GPU).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=Path("engines/.timing-cache"),
              show_default=True, help="TensorRT timing cache, reused across builds.")
@click.option("--format", "graph_format", type=click.Choice(["qdq", "plugin"]), default="qdq", show_default=True,
              help="Engine graph: qdq (INT8 Q/DQ), or plugin (packed 2/3/4-bit layers as harmoq::LowBitLinear, "
                   "the TensorRT plugin; ONNX Runtime runs them as an ONNX function).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Engine folder to write.")
def engine_command(model_path, bits, wbits, abits, method, artifact, backend, tile, overlap, calib, crops, patch, seed,
                   iters, batch, bias_lr, weight_lr, weight_bound_lrs, datasets, data_root, threshold, hw_compat,
                   timing_cache, graph_format, output):
    """Calibrate, export, build and validate: a deployable engine folder (engine, ONNX, artifact, report)."""
    from .engine.pipeline import EngineRequest, build, default_data_root, default_datasets

    if artifact is None:
        config = _quant_config(bits, wbits, abits, None, "tensorrt")
        wbits, abits = config.wbits, config.abits
    settings = _method_settings(method, iters, batch, bias_lr, weight_lr, weight_bound_lrs)
    names = tuple(d.strip() for d in datasets.split(",") if d.strip()) if datasets else default_datasets()
    if not names:
        raise HarmoqError("--datasets names no dataset")
    request = EngineRequest(
        model_path=model_path, output=output, wbits=wbits or 0, abits=abits or 0, method=method, artifact=artifact,
        backend=backend, tile=tile, overlap=overlap, calib=calib, crops=crops, patch=patch, seed=seed,
        method_settings=settings,
        datasets=names, data_root=data_root or default_data_root(), threshold_db=threshold,
        hardware_compatibility=hw_compat, timing_cache=timing_cache, graph_format=graph_format)
    bundle, report = build(request, say=lambda line: _out.print(line, markup=False, highlight=False))
    summary = report["validation"]["summary"]
    _out.print(f"wrote {bundle.path} ({report['backend']['name']} engine, {report['quantization']['method']} "
               f"W{report['quantization']['wbits']}A{report['quantization']['abits']}, parity min "
               f"{summary['min_parity_db']:.1f} dB, PSNR {summary['mean_psnr']:.3f} on "
               f"{', '.join(report['validation']['datasets'])})", markup=False, highlight=False)
    if not report["tensorrt"]["available"]:
        _out.print(f"TensorRT was not available: {report['tensorrt']['status']}", markup=False, highlight=False)


@cli.command("upscale")
@click.option("--engine", "engine_path", required=True, type=click.Path(path_type=Path), help="Engine folder.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Folder for the PNG results.")
@click.option("--threads", type=int, help="CPU threads for ONNX Runtime and OpenVINO (default: all cores).")
def upscale_command(engine_path, inputs, output, threads):
    """Super-resolve images (files or folders, any size; PNG out, alpha and gray kept)."""
    from .engine import Tiling
    from .engine.bundle import open_bundle
    from .engine.upscale import expand_inputs, upscale_file
    from .progress import progress_bar

    bundle = open_bundle(engine_path)
    files = expand_inputs(list(inputs))
    if output.exists() and not output.is_dir():
        raise HarmoqError(f"{output} exists and is not a folder")
    output.mkdir(parents=True, exist_ok=True)
    runner = bundle.runner(threads)
    tiling = Tiling(bundle.tile, bundle.overlap)
    for path in progress_bar(files, "upscaling"):
        written = upscale_file(runner, path, output, bundle.scale, tiling)
        _out.print(f"{path} -> {written}", markup=False, highlight=False)


@cli.command("bench")
@click.option("--engine", "engine_path", required=True, type=click.Path(path_type=Path), help="Engine folder.")
@click.option("--size", default="256x256", show_default=True, help="LR image size HxW to time (tiled like upscale).")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed runs first.")
@click.option("--repeats", type=int, default=10, show_default=True, help="Timed runs.")
@click.option("--threads", type=int, help="CPU threads for ONNX Runtime and OpenVINO (default: all cores).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the results as JSON.")
def bench_command(engine_path, size, warmup, repeats, threads, json_path):
    """Latency (median, spread) and peak memory of the engine and of every float runtime here, in one run."""
    from .engine.bench import as_dict, bench, parse_size

    shape = parse_size(size)
    if json_path is not None:
        _check_writable(json_path)
    bundle, results = bench(engine_path, shape, warmup, repeats, threads)
    table = Table("", "backend", "median ms", "IQR ms", "peak memory MB", title=f"{bundle.path.name}: {size} LR image")
    for r in results:
        table.add_row(r.label, r.backend, f"{r.median_ms:.1f}", f"{r.iqr_ms:.1f}", f"{r.peak_memory_mb:.0f}")
    _out.print(table)
    payload = as_dict(bundle, shape, results)
    ratio = f", memory {payload['memory_ratio']:.2f}x its" if payload["memory_ratio"] else ""
    _out.print(f"CPU: {payload['cpu']['model']} ({', '.join(payload['cpu']['instruction_sets']) or 'no AVX2'})",
               markup=False, highlight=False)
    _out.print(f"speedup over the fastest float runtime ({payload['fastest_float']}): {payload['speedup']:.2f}x{ratio} "
               f"({results[-1].memory_kind})", markup=False, highlight=False)
    if json_path is not None:
        write_atomic(json_path, (json.dumps(payload, indent=2) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="harmoq-build", standalone_mode=False)
    except HarmoqError as exc:
        _err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        _err.print(f"error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        _err.print("error: interrupted", markup=False)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
