"""harmoq-build end to end on small data, and bad input: one line, non-zero exit, nothing half-written."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import one_line_error, run_cli
from PIL import Image



@pytest.fixture
def tiny_benchmarks(shared, tmp_path):
    """A 'Set5'-shaped benchmark of two small crops of real Set5 images (LR generated in code)."""
    root = tmp_path / "bench"
    hr = root / "Tiny" / "HR"
    hr.mkdir(parents=True)
    for name in ("baby", "butterfly"):
        img = np.asarray(Image.open(shared / "data" / "benchmarks" / "Set5" / "HR" / f"{name}.png").convert("RGB"))
        Image.fromarray(img[64:112, 64:120]).save(hr / f"{name}.png")
    return root


def test_eval_fp_writes_the_documented_json(shared, tiny_benchmarks, tmp_path, capsys):
    out_json = tmp_path / "scores.json"
    code, out, err = run_cli(["eval", "--model", shared / "weights" / "PANx2_DF2K.pth", "--method", "fp",
                              "--datasets", "Tiny", "--data-root", tiny_benchmarks, "--json", out_json], capsys)
    assert code == 0, err
    scores = json.loads(out_json.read_text())
    assert set(scores) == {"Tiny"} and set(scores["Tiny"]) == {"psnr", "ssim", "n"}
    assert scores["Tiny"]["n"] == 2 and 25 < scores["Tiny"]["psnr"] < 60
    assert "Tiny" in out and f"{scores['Tiny']['psnr']:.3f}" in out


def test_calibrate_then_eval_artifact_equals_eval_with_method(shared, tiny_benchmarks, tmp_path, capsys):
    model = shared / "weights" / "PANx2_DF2K.pth"
    calib = shared / "data" / "calib" / "DIV2K_valid_crop256"
    common = ["--calib", calib, "--crops", 4, "--patch", 24, "--seed", 1]
    code, _, err = run_cli(["calibrate", "--model", model, "--method", "minmax", "--bits", 4, *common,
                            "-o", tmp_path / "art"], capsys)
    assert code == 0, err
    assert (tmp_path / "art" / "manifest.json").is_file() and (tmp_path / "art" / "tensors.safetensors").is_file()
    via_artifact, via_method = tmp_path / "a.json", tmp_path / "m.json"
    args = ["--datasets", "Tiny", "--data-root", tiny_benchmarks]
    assert run_cli(["eval", "--model", model, "--artifact", tmp_path / "art", *args, "--json", via_artifact], capsys)[0] == 0
    assert run_cli(["eval", "--model", model, "--method", "minmax", "--bits", 4, *common, *args,
                    "--json", via_method], capsys)[0] == 0
    assert json.loads(via_artifact.read_text()) == json.loads(via_method.read_text())


def test_bad_inputs_give_one_line_errors(shared, tiny_benchmarks, tmp_path, capsys):
    pan = shared / "weights" / "PANx2_DF2K.pth"
    calib = shared / "data" / "calib" / "DIV2K_valid_crop256"
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(pan.read_bytes()[:1000])
    data = ["--datasets", "Tiny", "--data-root", tiny_benchmarks]
    one_line_error(["eval", "--model", corrupt, "--method", "fp", *data], capsys, "corrupt.pth")
    one_line_error(["eval", "--model", tmp_path / "none.pth", "--method", "fp", *data], capsys, "no such checkpoint")
    one_line_error(["eval", "--model", pan, "--method", "fp", "--datasets", "Nope", "--data-root", tiny_benchmarks],
                  capsys, "Nope")
    one_line_error(["eval", "--model", pan, "--method", "magic", "--bits", 4, "--calib", calib, *data],
                  capsys, "unknown calibration method")
    one_line_error(["eval", "--model", pan, "--method", "minmax", "--bits", 1, "--calib", calib, *data], capsys, "2 to 8")
    one_line_error(["eval", "--model", pan, "--method", "minmax", "--bits", 9, "--calib", calib, *data], capsys, "2 to 8")
    one_line_error(["eval", "--model", pan, "--method", "fp", "--artifact", tmp_path, *data], capsys, "exactly one")
    one_line_error(["eval", "--model", pan, *data], capsys, "exactly one")
    one_line_error(["eval", "--model", pan, "--method", "fp", "--datasets", "Tiny"], capsys, "--data-root")
    one_line_error(["calibrate", "--model", pan, "--method", "dobi", "--bits", 3, "--calib", tmp_path / "nocalib",
                   "-o", tmp_path / "out"], capsys, "nocalib")
    assert not (tmp_path / "out").exists()


def test_bad_datasets(shared, tmp_path, capsys):
    pan = shared / "weights" / "PANx2_DF2K.pth"
    (tmp_path / "Empty" / "HR").mkdir(parents=True)
    (tmp_path / "Junk" / "HR").mkdir(parents=True)
    (tmp_path / "Junk" / "HR" / "a.png").write_text("not a png")
    (tmp_path / "Small" / "HR").mkdir(parents=True)
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "Small" / "HR" / "s.png")
    for name, match in (("Empty", "no images"), ("Junk", "a.png"), ("Small", "too small")):
        one_line_error(["eval", "--model", pan, "--method", "fp", "--datasets", name, "--data-root", tmp_path], capsys, match)


def test_unwritable_artifact_output_leaves_nothing(shared, tmp_path, capsys):
    pan = shared / "weights" / "PANx2_DF2K.pth"
    calib = shared / "data" / "calib" / "DIV2K_valid_crop256"
    one_line_error(["calibrate", "--model", pan, "--method", "minmax", "--bits", 4, "--calib", calib, "--crops", 2,
                   "--patch", 16, "-o", tmp_path / "missing_parent" / "art"], capsys, "does not exist")
    assert not (tmp_path / "missing_parent").exists()


def test_console_script_prints_no_traceback(tmp_path):
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"junk")
    result = subprocess.run([sys.executable, "-m", "harmoq_deploy.cli", "eval", "--model", str(bad), "--method",
                             "fp", "--data-root", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    help_text = subprocess.run([sys.executable, "-m", "harmoq_deploy.cli", "calibrate", "--help"],
                               capture_output=True, text=True)
    assert help_text.returncode == 0 and "--method" in help_text.stdout


def test_calibrate_harmoq_writes_corrected_weights_and_reports_its_steps(shared, tmp_path, capsys):
    pan = shared / "weights" / "PANx2_DF2K.pth"
    calib = shared / "data" / "calib" / "DIV2K_valid_crop256"
    out = tmp_path / "harmoq_art"
    code, stdout, err = run_cli(["calibrate", "--model", pan, "--method", "harmoq", "--bits", 3, "--calib", calib,
                                 "--crops", 8, "--patch", 16, "--iters", 4, "--batch", 2, "--bias-lr", 2e-3,
                                 "--weight-lr", 5e-4, "--weight-bound-lrs", "3e-3", "--target", "tensorrt", "-o", out],
                                capsys)
    assert code == 0, err
    assert "abr: kept" in stdout and f"wrote {out}" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"]["settings"]["iters"] == 4 and manifest["quant_config"]["target"] == "tensorrt"
    assert manifest["method"]["settings"]["bias_lr"] == 2e-3 and manifest["method"]["settings"]["weight_lr"] == 5e-4
    assert manifest["method"]["settings"]["weight_bound_lrs"] == [3e-3]
    abr = next(step for step in manifest["method"]["steps"] if step["name"] == "abr")
    assert abr["detail"]["weight_bound_lr"] == 3e-3 and not abr["detail"]["weight_bound_lr_trials"], \
        "a single rate is used as given, without trials"
    assert manifest["corrected_weights"] or not any(s["applied"] for s in manifest["method"]["steps"][:2])
    assert not (tmp_path / ".harmoq_art.checkpoint.pt").exists(), "the checkpoint is removed once the artifact is written"


def test_bad_refinement_settings(shared, tmp_path, capsys):
    pan = shared / "weights" / "PANx2_DF2K.pth"
    calib = shared / "data" / "calib" / "DIV2K_valid_crop256"
    base = ["calibrate", "--model", pan, "--method", "harmoq", "--bits", 3, "--calib", calib, "-o", tmp_path / "o"]
    one_line_error([*base, "--iters", -1], capsys, "--iters")
    one_line_error([*base, "--device", "tpu"], capsys, "--device")
    one_line_error([*base, "--bits", 1], capsys, "2 to 8")
    one_line_error([*base, "--bias-lr", -1e-3], capsys, "--bias-lr must be >= 0")
    one_line_error([*base[:4], "2dquant", *base[5:], "--bias-lr", 1e-3], capsys, "--bias-lr is a harmoq setting")
    one_line_error([*base, "--weight-lr", -1e-3], capsys, "--weight-lr must be >= 0")
    one_line_error([*base[:4], "2dquant", *base[5:], "--weight-lr", 1e-3], capsys, "--weight-lr is a harmoq setting")
    for bad_rates in ("", "0.001,", "fast", "0,0.01", "-1e-3", "inf"):
        one_line_error([*base, "--weight-bound-lrs", bad_rates], capsys, "--weight-bound-lrs takes comma-separated")
    one_line_error([*base[:4], "2dquant", *base[5:], "--weight-bound-lrs", "1e-3"], capsys,
                   "--weight-bound-lrs is a harmoq setting")
    assert not (tmp_path / "o").exists()


def test_calibrate_refuses_bad_calibration_folders_and_foreign_artifacts(shared, tiny_benchmarks, tmp_path, capsys):
    pan, imdn = shared / "weights" / "PANx2_DF2K.pth", shared / "weights" / "IMDN_x2.pth"
    empty, junk = tmp_path / "empty", tmp_path / "junk"
    empty.mkdir()
    junk.mkdir()
    (junk / "a.png").write_text("not an image")
    base = ["calibrate", "--model", pan, "--method", "harmoq", "--bits", 3, "-o", tmp_path / "o"]
    one_line_error([*base, "--calib", empty], capsys, "holds no images")
    one_line_error([*base, "--calib", junk], capsys, "a.png")
    assert not (tmp_path / "o").exists()

    artifact = tmp_path / "pan_art"
    code, _, err = run_cli(["calibrate", "--model", pan, "--method", "minmax", "--bits", 3, "--calib",
                            shared / "data" / "calib" / "DIV2K_valid_crop256", "--crops", 2, "--patch", 16,
                            "-o", artifact], capsys)
    assert code == 0, err
    one_line_error(["eval", "--model", imdn, "--artifact", artifact, "--datasets", "Tiny",
                    "--data-root", tiny_benchmarks], capsys, "calibrated for PANx2_DF2K.pth")


def test_the_cli_defaults_are_the_calibration_stage_defaults():
    from harmoq_deploy import cli, defaults
    from harmoq_deploy.calibrate import HarmoQ, TwoDQuant

    harmoq, two_d_quant = HarmoQ(), TwoDQuant()
    assert (harmoq.iters, harmoq.batch, harmoq.bias_lr, harmoq.weight_lr) == \
        (defaults.ITERS, defaults.BATCH, defaults.BIAS_LR, defaults.WEIGHT_LR)
    assert (two_d_quant.iters, two_d_quant.batch, two_d_quant.lr) == (defaults.ITERS, defaults.BATCH, harmoq.lr)
    assert cli._weight_bound_lrs(cli.DEFAULT_WEIGHT_BOUND_LRS) == harmoq.weight_bound_lrs
    options = {p.name: p.default for p in cli.cli.commands["calibrate"].params}
    assert (options["iters"], options["batch"], options["crops"], options["patch"], options["seed"],
            options["target"]) == (defaults.ITERS, defaults.BATCH, defaults.CROPS, defaults.PATCH, defaults.SEED,
                                   defaults.TARGET)


def test_the_defaults_module_does_not_import_torch():
    import subprocess
    code = "import sys, harmoq_deploy.defaults; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
