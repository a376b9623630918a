"""harmoq-build export / validate end to end on small data, and their bad input."""

import json

import onnx
import pytest
from conftest import one_line_error, run_cli, tiny_benchmark
from onnx import numpy_helper

from harmoq_deploy.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_module):
    """A W3A3 --target tensorrt artifact of PAN x2 and a two-image benchmark of Set5 crops."""
    shared = shared_module
    root = tmp_path_factory.mktemp("export_cli")
    tiny_benchmark(shared, root / "bench", ("baby", "butterfly"), slice(64, 112), slice(64, 120))
    model = shared / "weights" / "PANx2_DF2K.pth"
    assert main(["calibrate", "--model", str(model), "--method", "minmax", "--bits", "3", "--target", "tensorrt",
                 "--calib", str(shared / "data" / "calib" / "DIV2K_valid_crop256"), "--crops", "4", "--patch", "16",
                 "-o", str(root / "art")]) == 0
    return {"root": root, "model": model, "art": root / "art", "bench": root / "bench", "shared": shared}


def test_export_then_validate_passes_with_per_image_report(workspace, capsys):
    graph, report = workspace["root"] / "pan.onnx", workspace["root"] / "report.json"
    code, out, err = run_cli(["export", "--artifact", workspace["art"], "--tile", 24, "-o", graph], capsys)
    assert code == 0, err
    assert "TensorRT rules: pass" in out and graph.is_file()
    code, out, err = run_cli(["validate", "--onnx", graph, "--artifact", workspace["art"], "--datasets", "Tiny",
                              "--data-root", workspace["bench"], "--overlap", 4, "--json", report], capsys)
    assert code == 0, err
    assert "validation passed" in out
    payload = json.loads(report.read_text())
    assert payload["tile"] == 24 and [r["image"] for r in payload["images"]] == ["baby", "butterfly"]
    for row in payload["images"]:
        assert row["parity_db"] >= 50 and row["decisions"]["only_ties"]
        assert abs(row["psnr"] - row["matched_psnr"]) < 0.01
        assert 10 < row["psnr"] < 50 and 10 < row["vs_fp32_db"] < 80


def test_validate_fails_on_a_graph_that_computes_something_else(workspace, tmp_path, capsys):
    graph = workspace["root"] / "pan.onnx"
    if not graph.is_file():
        assert run_cli(["export", "--artifact", workspace["art"], "--tile", 24, "-o", graph], capsys)[0] == 0
    tampered = onnx.load(str(graph))
    scales = [t for t in tampered.graph.initializer if t.name.endswith("input_quantizer.scale")]
    scales[len(scales) // 2].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scales[len(scales) // 2]) * 1.5,
                                                              scales[len(scales) // 2].name))
    onnx.save(tampered, str(tmp_path / "tampered.onnx"))
    one_line_error(["validate", "--onnx", tmp_path / "tampered.onnx", "--artifact", workspace["art"], "--datasets", "Tiny",
                   "--data-root", workspace["bench"]], capsys, "differ from PyTorch's beyond float ties")


def test_export_bad_input(workspace, swinir_light_checkpoint, tmp_path, capsys):
    art, shared = workspace["art"], workspace["shared"]
    out = tmp_path / "g.onnx"
    one_line_error(["export", "--artifact", art, "--model", shared / "weights" / "IMDN_x2.pth", "-o", out], capsys, "calibrated for")
    one_line_error(["export", "--artifact", tmp_path / "nowhere", "-o", out], capsys, "no such calibration artifact")
    broken = tmp_path / "broken_art"
    broken.mkdir()
    (broken / "manifest.json").write_text((art / "manifest.json").read_text())
    one_line_error(["export", "--artifact", broken, "-o", out], capsys, "tensors.safetensors is missing")
    one_line_error(["export", "--artifact", art, "-o", tmp_path / "missing" / "g.onnx"], capsys, "does not exist")
    assert not out.exists() and not (tmp_path / "missing").exists()
    swin_art = tmp_path / "swin_art"
    assert main(["calibrate", "--model", str(swinir_light_checkpoint), "--method", "minmax", "--bits", "4",
                 "--target", "tensorrt", "--calib", str(shared / "data" / "calib" / "DIV2K_valid_crop256"),
                 "--crops", "2", "--patch", "16", "-o", str(swin_art)]) == 0
    one_line_error(["export", "--artifact", swin_art, "--tile", 4, "-o", out], capsys, "smaller than the model's attention window")
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".g.onnx")] == []


def test_validate_bad_input(workspace, tmp_path, capsys):
    graph = workspace["root"] / "pan.onnx"
    if not graph.is_file():
        assert run_cli(["export", "--artifact", workspace["art"], "--tile", 24, "-o", graph], capsys)[0] == 0
    data = ["--datasets", "Tiny", "--data-root", workspace["bench"]]
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a graph")
    one_line_error(["validate", "--onnx", junk, "--artifact", workspace["art"], *data], capsys, "not a readable ONNX file")
    one_line_error(["validate", "--onnx", tmp_path / "none.onnx", "--artifact", workspace["art"], *data], capsys, "no such ONNX file")
    one_line_error(["validate", "--onnx", graph, "--artifact", workspace["art"], "--tile", 32, *data], capsys, "takes 24x24 tiles")
    other = tmp_path / "other_art"
    assert main(["calibrate", "--model", str(workspace["shared"] / "weights" / "PANx3_DF2K.pth"), "--method", "minmax",
                 "--bits", "3", "--target", "tensorrt", "--calib",
                 str(workspace["shared"] / "data" / "calib" / "DIV2K_valid_crop256"), "--crops", "2", "--patch", "16",
                 "-o", str(other)]) == 0
    one_line_error(["validate", "--onnx", graph, "--artifact", other, *data], capsys, "exported from another checkpoint")
    one_line_error(["validate", "--onnx", graph, "--artifact", workspace["art"], *data, "--json", tmp_path / "no" / "r.json"],
                  capsys, "does not exist")


def test_export_plugin_format_validates_like_the_qdq_graph(workspace, tmp_path, capsys):
    graph = tmp_path / "pan_plugin.onnx"
    code, out, err = run_cli(["export", "--artifact", workspace["art"], "--tile", 24, "--format", "plugin", "-o", graph], capsys)
    assert code == 0, err
    assert "LowBitLinear layers" in out and ", 0 LowBitLinear" not in out, "PAN's 1x1 convs are packed"
    code, out, err = run_cli(["validate", "--onnx", graph, "--artifact", workspace["art"], "--datasets", "Tiny",
                              "--data-root", workspace["bench"], "--overlap", 4], capsys)
    assert code == 0, err
    assert "validation passed" in out
