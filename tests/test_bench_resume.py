"""The benchmark scripts: `--resume` continues a results file only from the same settings and host; bad arguments stop them in one line."""

import json
import sys

import pytest

from harmoq_deploy.paths import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
from benchlib import machine, resumable_rows  # noqa: E402

ROW = {"model": "IMDN_x2", "bits": "W3A3", "method": "2dquant", "dataset": "Set5", "psnr": 35.0, "ssim": 0.95,
       "calib_seconds": 75.0}


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "quality.json"
    path.write_text(json.dumps({"meta": {"machine": machine(), "iters": 100}, "rows": [ROW]}))
    return path


def test_same_settings_on_the_same_host_resume(results):
    assert resumable_rows(results, {"machine": machine(), "iters": 100}, ("iters",)) == [ROW]


@pytest.mark.parametrize(("meta", "named"), [
    ({"machine": "a host that is not this one", "iters": 100}, "machine"),
    ({"machine": machine(), "iters": 200}, "iters"),
])
def test_another_host_or_other_settings_are_refused(results, meta, named):
    with pytest.raises(SystemExit, match=f"quality.json was made with other settings \\({named} ") as refused:
        resumable_rows(results, meta, ("iters",))
    assert "\n" not in str(refused.value)


def test_a_file_that_names_no_host_is_refused(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"meta": {"iters": 100}, "rows": [ROW]}))
    with pytest.raises(SystemExit, match="machine None"):
        resumable_rows(path, {"machine": machine(), "iters": 100}, ("iters",))


def test_bit_widths_outside_the_supported_range_are_a_usage_error():
    from argparse import ArgumentTypeError

    from benchlib import bit_widths
    assert bit_widths("4,3,2") == [4, 3, 2]
    for text in ("9", "1,2", "abc"):
        with pytest.raises(ArgumentTypeError):
            bit_widths(text)


def test_an_unknown_method_label_stops_the_bench_before_any_work_in_one_line():
    import subprocess
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "bench_quality.py"), "--methods", "dobi,foo",
                           "--stem", "never_written"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip() == "unknown calibration method 'foo'; choose from minmax, percentile, dobi, 2dquant, harmoq"
    assert not (PROJECT_ROOT / "docs" / "results" / "never_written.json").exists()


def test_margins_are_averaged_per_width_and_per_set_over_the_cells_both_methods_have():
    from bench_quality import margins
    from benchlib import QualityRow

    def row(model, dataset, method, psnr):
        return QualityRow(model, "W2A2", method, dataset, psnr, 0.9, 1.0)

    rows = [row("A", "Set5", "2dquant", 30.0), row("A", "Set5", "harmoq", 30.5),
            row("B", "Set5", "2dquant", 31.0), row("B", "Set5", "harmoq", 31.3),
            row("A", "CBSD68", "2dquant", 28.0), row("A", "CBSD68", "harmoq", 28.3),
            row("B", "CBSD68", "harmoq", 29.0)]
    text = margins(rows, "harmoq", "2dquant")
    assert "W2A2 +0.367 dB over 3 cells" in text
    assert "- W2A2: Set5 +0.400 dB over 2 models, CBSD68 +0.300 dB over 1 model" in text


def test_a_resume_whose_every_cell_exists_computes_nothing_and_leaves_the_file_alone():
    import subprocess
    stem = f"test_resume_{__import__('os').getpid()}"
    path = PROJECT_ROOT / "docs" / "results" / f"{stem}.json"
    meta = {"machine": machine(), "crops": 32, "patch": 64, "seed": 0, "iters": 100, "batch": 4}
    rows = [{**ROW, "bits": "FP", "method": "fp", "calib_seconds": 0.0},
            {**ROW, "bits": "W3A3", "method": "harmoq-frozen-bias@tensorrt"}]
    path.write_text(json.dumps({"meta": meta, "rows": rows}))
    try:
        before = path.read_bytes()
        done = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "bench_quality.py"), "--models", "IMDN_x2",
                               "--bits", "3", "--datasets", "Set5", "--methods", "harmoq-bounds-only@tensorrt",
                               "--stem", stem, "--resume"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "nothing to compute: all 2 requested cells" in done.stdout
        assert path.read_bytes() == before
    finally:
        path.unlink(missing_ok=True)
        path.with_suffix(".md").unlink(missing_ok=True)


def test_older_preset_names_resolve_to_the_current_ones():
    from bench_quality import _method, canonical_label

    from harmoq_deploy.calibrate import presets
    assert canonical_label("harmoq-frozen-bias@tensorrt") == "harmoq-bounds-only@tensorrt"
    assert canonical_label("harmoq@tensorrt") == "harmoq@tensorrt"
    args = type("Args", (), {"iters": 7, "batch": 2})()
    built = _method("harmoq-frozen-bias", args)
    assert (built.bias_lr, built.weight_lr, built.iters, built.batch) == (0.0, 0.0, 7, 2)
    assert built == presets.build("harmoq-bounds-only", iters=7, batch=2)
    unrounded = _method("harmoq-unrounded-frozen-weights", args)
    assert (unrounded.rounding_damping, unrounded.weight_bound_lrs, unrounded.weight_lr) == (None, (None,), 0.0)
