"""harmoq-build engine / upscale / bench on small data, the TensorRT logic that runs without TensorRT,
and bad input: one line, non-zero exit, nothing half-written in the engines folder."""

import json
import sys

import numpy as np
import pytest
from conftest import one_line_error, run_cli, tiny_benchmark
from PIL import Image

from harmoq_deploy.cli import main
from harmoq_deploy.data import imresize, load_datasets
from harmoq_deploy.engine import Tiling
from harmoq_deploy.engine import pipeline as pipeline_module
from harmoq_deploy.engine.bundle import open_bundle
from harmoq_deploy.engine.runners import openvino_bf16
from harmoq_deploy.engine.tensorrt import BuildSettings, config_choices, profile_shapes, tensorrt_status
from harmoq_deploy.engine.validate import compare_engine
from harmoq_deploy.errors import HarmoqError
from harmoq_deploy.models import load_model


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_module):
    """A W3A3 PAN x2 engine built by the CLI with the bundled calibration photographs."""
    shared = shared_module
    root = tmp_path_factory.mktemp("engine")
    tiny_benchmark(shared, root / "bench", ("baby", "bird"), slice(40, 104), slice(30, 100))
    engines = root / "engines"
    engines.mkdir()
    argv = ["engine", "--model", shared / "weights" / "PANx2_DF2K.pth", "--bits", 3, "--method", "minmax",
            "--crops", 4, "--patch", 16, "--tile", 24, "--overlap", 4, "--datasets", "Tiny", "--data-root",
            root / "bench", "--backend", "onnxruntime", "-o", engines / "pan_w3"]
    code = main([str(a) for a in argv])
    assert code == 0
    return {"root": root, "engines": engines, "engine": engines / "pan_w3", "bench": root / "bench", "shared": shared}


def test_engine_folder_holds_a_validated_onnxruntime_engine_and_its_report(built):
    bundle = open_bundle(built["engine"])
    assert bundle.backend == "onnxruntime" and bundle.tile == 24 and bundle.scale == 2
    names = {p.name for p in built["engine"].iterdir()}
    assert {"engine.json", "model.onnx", "fp32.onnx", "artifact", "report.json", "report.md"} <= names
    report = json.loads((built["engine"] / "report.json").read_text())
    assert report["source"]["sha256"] == load_model(built["shared"] / "weights" / "PANx2_DF2K.pth").sha256
    assert report["quantization"]["wbits"] == 3 and report["quantization"]["target"] == "tensorrt"
    assert report["quantization"]["calibration"]["folder"].endswith("skimage/data"), "no --calib: bundled photographs"
    assert report["tensorrt"]["available"] is False and "tensorrt" in report["tensorrt"]["status"]
    assert report["backend"]["name"] == "onnxruntime" and "as requested" in report["backend"]["why"]
    assert report["input"]["shape"] == [1, 3, 24, 24] and report["output"]["shape"] == [1, 3, 48, 48]
    summary = report["validation"]["summary"]
    assert summary["passed"] and summary["min_parity_db"] >= 50 and summary["only_ties"]
    assert len(report["validation"]["images"]) == 2 and set(report["seconds"]) == {"calibrate", "export", "build",
                                                                                   "validate"}
    assert "Parity (decisions matched)" in (built["engine"] / "report.md").read_text()
    assert [p.name for p in built["engines"].iterdir()] == ["pan_w3"], "no staging folder or checkpoint left behind"


def test_upscale_equals_the_validation_output_and_keeps_alpha_and_gray(built, tmp_path, capsys):
    saved = tmp_path / "validated"
    code, _, err = run_cli(["validate", "--onnx", built["engine"] / "model.onnx", "--artifact", built["engine"] / "artifact",
                            "--datasets", "Tiny", "--data-root", built["bench"], "--overlap", 4, "--save-images", saved],
                           capsys)
    assert code == 0, err
    hr = np.asarray(Image.open(built["bench"] / "Tiny" / "HR" / "baby.png"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    lr = imresize(hr, 1 / 2)
    Image.fromarray(lr).save(inputs / "baby.png")
    Image.fromarray(lr).convert("L").save(inputs / "gray.png")
    rgba = np.dstack([lr, np.full(lr.shape[:2], 100, np.uint8)])
    Image.fromarray(rgba).save(inputs / "rgba.png")
    code, _, err = run_cli(["upscale", "--engine", built["engine"], inputs, "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    upscaled = np.asarray(Image.open(tmp_path / "out" / "baby.png"))
    assert np.array_equal(upscaled, np.asarray(Image.open(saved / "Tiny" / "baby.png")))
    gray, alpha = Image.open(tmp_path / "out" / "gray.png"), Image.open(tmp_path / "out" / "rgba.png")
    assert gray.mode == "L" and gray.size == (2 * lr.shape[1], 2 * lr.shape[0])
    assert alpha.mode == "RGBA" and np.abs(np.asarray(alpha)[..., 3].astype(int) - 100).max() <= 1
    assert np.array_equal(np.asarray(alpha)[..., :3], upscaled)


def test_bench_measures_engine_and_fp32_reference(built, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, stdout, err = run_cli(["bench", "--engine", built["engine"], "--size", "48x40", "--repeats", 2, "--warmup", 1,
                                 "--threads", 1, "--json", out], capsys)
    assert code == 0, err
    payload = json.loads(out.read_text())
    labels = [m["label"] for m in payload["measurements"]]
    assert labels[:2] == ["FP32 graph, ONNX Runtime", "FP32 graph, OpenVINO f32"] and labels[-1] == "quantized engine"
    assert ("FP32 graph, OpenVINO bf16" in labels) == openvino_bf16(), "bf16 timed exactly where the CPU runs it"
    assert all(m["median_ms"] > 0 and m["runs"] == 2 for m in payload["measurements"])
    fastest = min(payload["measurements"][:-1], key=lambda m: m["median_ms"])
    assert payload["fastest_float"] == fastest["label"]
    assert payload["speedup"] == pytest.approx(fastest["median_ms"] / payload["measurements"][-1]["median_ms"])
    assert "AVX2" in payload["cpu"]["instruction_sets"] and "speedup over the fastest float runtime" in stdout


def test_engine_bad_input_writes_nothing(built, tmp_path, capsys):
    engines, shared = tmp_path / "engines", built["shared"]
    engines.mkdir()
    base = ["engine", "--model", shared / "weights" / "PANx2_DF2K.pth", "--method", "minmax", "--crops", 2,
            "--patch", 16, "--datasets", "Tiny", "--data-root", built["bench"], "--tile", 24]
    one_line_error([*base, "--bits", 1, "-o", engines / "a"], capsys, "2 to 8")
    one_line_error([*base, "--bits", 3, "--tile", 512, "-o", engines / "a"], capsys, "larger than every validation image")
    one_line_error([*base, "--bits", 3, "--backend", "tensorrt", "-o", engines / "a"], capsys,
                  "--backend tensorrt: the tensorrt Python package is not installed")
    one_line_error([*base, "--bits", 3, "--backend", "cuda", "-o", engines / "a"], capsys, "--backend must be one of")
    one_line_error([*base, "--bits", 3, "--calib", tmp_path / "nocalib", "-o", engines / "a"], capsys, "nocalib")
    assert list(engines.iterdir()) == []


def test_engine_folder_tampering_is_refused(built, tmp_path, capsys):
    import shutil

    for damage, match in (("missing", "model.onnx is missing"), ("altered", "does not match the sha256"),
                          ("extra", "was not part of the built engine"), ("sidecar", "engine.json is missing")):
        copy = tmp_path / damage
        shutil.copytree(built["engine"], copy)
        if damage == "missing":
            (copy / "model.onnx").unlink()
        elif damage == "altered":
            (copy / "report.md").write_text("edited")
        elif damage == "extra":
            (copy / "notes.txt").write_text("hi")
        else:
            (copy / "engine.json").unlink()
        one_line_error(["upscale", "--engine", copy, built["bench"] / "Tiny" / "HR" / "baby.png", "-o", tmp_path / "o"], capsys,
                      match)
        one_line_error(["bench", "--engine", copy], capsys, match)


def test_upscale_and_bench_bad_input(built, tmp_path, capsys):
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    one_line_error(["upscale", "--engine", built["engine"], junk, "-o", tmp_path / "out"], capsys, "not a readable image")
    one_line_error(["upscale", "--engine", built["engine"], tmp_path / "none.png", "-o", tmp_path / "out"], capsys,
                  "no such image or folder")
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "x.jpg")
    one_line_error(["upscale", "--engine", built["engine"], tmp_path / "a", "-o", tmp_path / "out"], capsys, "would both be written")
    one_line_error(["bench", "--engine", built["engine"], "--size", "16x16"], capsys, "smaller than the engine's 24x24 tile")
    one_line_error(["bench", "--engine", built["engine"], "--size", "big"], capsys, "--size must look like")
    assert not (tmp_path / "out" / "junk.png").exists()


def test_tiny_images_are_padded_up_to_the_tile(built, tmp_path, capsys):
    Image.fromarray(np.full((5, 9, 3), 128, np.uint8)).save(tmp_path / "tiny.png")
    code, _, err = run_cli(["upscale", "--engine", built["engine"], tmp_path / "tiny.png", "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "out" / "tiny.png").size == (18, 10)


def test_compare_engine_runs_any_tile_runner(built):
    bundle = open_bundle(built["engine"])
    from harmoq_deploy.calibrate import apply_artifact, load_artifact

    model = apply_artifact(load_artifact(bundle.file("artifact")), load_model(built["shared"] / "weights" / "PANx2_DF2K.pth"))
    float_model = load_model(built["shared"] / "weights" / "PANx2_DF2K.pth").module
    datasets = load_datasets(["Tiny"], built["bench"], 2)
    rows = compare_engine(bundle.runner(), model, float_model, 2, datasets, Tiling(24, 4))
    assert [r["image"] for r in rows] == ["baby", "bird"]
    assert all(r["free_parity_db"] > 10 and 10 < r["psnr"] < 60 for r in rows)


def test_tensorrt_profile_and_config_choices():
    assert profile_shapes(BuildSettings(tile=64)) == ((1, 3, 64, 64),) * 3
    dynamic = BuildSettings(tile=None, min_side=32, opt_side=128, max_side=512)
    assert profile_shapes(dynamic) == ((1, 3, 32, 32), (1, 3, 128, 128), (1, 3, 512, 512))
    ten = config_choices(BuildSettings(hardware_compatibility="ampere+"), 10)
    assert ten["strongly_typed_flag"] and ten["hardware_compatibility_level"] == "AMPERE_PLUS"
    assert not config_choices(BuildSettings(), 11)["strongly_typed_flag"], "TensorRT 11 networks are always strongly typed"
    with pytest.raises(HarmoqError, match="TensorRT 8.x is too old"):
        config_choices(BuildSettings(), 8)
    with pytest.raises(HarmoqError, match="--hw-compat"):
        BuildSettings(hardware_compatibility="turing")
    with pytest.raises(HarmoqError, match="min <= opt <= max"):
        BuildSettings(tile=None, min_side=64, opt_side=32)


def test_backend_choice_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    available, reason = tensorrt_status()
    assert not available and "not installed" in reason
    choice = pipeline_module.choose_backend("auto")
    assert choice.name == "cpu" and "TensorRT is not available" in choice.why, "auto measures the CPU runtimes later"
    with pytest.raises(HarmoqError, match="--backend tensorrt: the tensorrt Python package is not installed"):
        pipeline_module.choose_backend("tensorrt")
    monkeypatch.setattr(pipeline_module, "tensorrt_status", lambda: (True, "TensorRT 10.9 on NVIDIA A100"))
    choice = pipeline_module.choose_backend("auto")
    assert choice.name == "tensorrt" and "A100" in choice.why
    assert pipeline_module.choose_backend("onnxruntime").name == "onnxruntime"
    assert pipeline_module.choose_backend("openvino").name == "openvino"
    with pytest.raises(HarmoqError, match="--backend must be one of"):
        pipeline_module.choose_backend("openvino-gpu")


def test_torch_backend_runs_the_low_bit_runtime(built, tmp_path, capsys):
    out = tmp_path / "pan_torch"
    code, stdout, err = run_cli(["engine", "--model", built["shared"] / "weights" / "PANx2_DF2K.pth", "--bits", 3,
                                 "--method", "minmax", "--crops", 2, "--patch", 16, "--tile", 24, "--overlap", 4,
                                 "--datasets", "Tiny", "--data-root", built["bench"], "--backend", "torch", "-o", out],
                                capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["backend"]["name"] == "torch" and report["backend"]["lowbit_layers"] > 0
    rows = report["validation"]["engine_free_running"]
    assert len(rows) == 2 and all(r["free_parity_db"] > 20 for r in rows)
    lr = imresize(np.asarray(Image.open(built["bench"] / "Tiny" / "HR" / "bird.png")), 1 / 2)
    Image.fromarray(lr).save(tmp_path / "bird.png")
    code, _, err = run_cli(["upscale", "--engine", out, tmp_path / "bird.png", "-o", tmp_path / "up"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "up" / "bird.png").size == (2 * lr.shape[1], 2 * lr.shape[0])
