"""Image reading, MATLAB-exact bicubic, benchmark loading and calibration sampling."""

import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from harmoq_deploy.data import (
    available_benchmarks,
    describe_calibration,
    imresize,
    load_benchmark,
    read_rgb8,
    sample_calibration_crops,
    to_rgb8,
    to_tensor,
    write_png,
)
from harmoq_deploy.errors import HarmoqError
from harmoq_deploy.paths import benchmarks_root


def _png16(path, samples: np.ndarray, color_type: int) -> None:
    """Write a 16-bit PNG by hand: PIL cannot write 16-bit RGB, and OpenCV is not a dependency."""
    height, width = samples.shape[:2]
    raw = b"".join(b"\x00" + samples[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _solid_png(path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    Image.new("RGB", size, color).save(path)


# --- MATLAB-exact bicubic ------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_imresize_reproduces_stored_lr_files(shared, dataset, scale):
    folder = benchmarks_root() / dataset
    mismatched = []
    for hr_path in sorted((folder / "HR").glob("*.png")):
        hr = read_rgb8(hr_path)
        hr = hr[:hr.shape[0] - hr.shape[0] % scale, :hr.shape[1] - hr.shape[1] % scale]
        stored = read_rgb8(folder / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png")
        if not np.array_equal(imresize(hr, 1 / scale), stored):
            mismatched.append(hr_path.stem)
    assert not mismatched, f"{dataset} x{scale}: LR differs from the stored file for {mismatched}"


def test_imresize_output_size_and_types():
    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    out8 = imresize(img8, 1 / 3)
    assert out8.dtype == np.uint8 and out8.shape == (13, 17, 3)

    out_float = imresize(img8.astype(np.float64), 1 / 3)
    assert out_float.dtype == np.float64 and out_float.shape == (13, 17, 3)
    assert not np.array_equal(out_float, np.round(out_float)), "float input must not be rounded"

    assert imresize(img8[..., 0], 2).shape == (74, 100)
    np.testing.assert_array_equal(imresize(img8[..., 1], 0.5), imresize(img8, 0.5)[..., 1])


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 2, 3])
def test_imresize_keeps_constant_images_constant(scale):
    img = np.full((24, 30, 3), 173, dtype=np.uint8)
    assert np.all(imresize(img, scale) == 173)


def test_imresize_is_vectorised():
    img = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    start = time.perf_counter()
    imresize(img, 1 / 4)
    # Well under a second in practice; the bound only catches a per-pixel Python loop.
    assert time.perf_counter() - start < 5


# --- reading and writing images ------------------------------------------------------------


def test_read_gray_replicates_channel(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgb = read_rgb8(tmp_path / "gray.png")
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_read_rgba_and_la_drop_alpha(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0  # fully transparent pixels keep their colour, as in OpenCV
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_rgb8(tmp_path / "rgba.png"), rgba[..., :3])

    Image.fromarray(rgba[..., [0, 3]]).save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    np.testing.assert_array_equal(read_rgb8(tmp_path / "la.png"), np.repeat(rgba[..., :1], 3, axis=2))


def test_read_palette_expands_colours(tmp_path):
    palette = [10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6)
    indices = np.array([[0, 1, 1], [1, 0, 0]], dtype=np.uint8)
    img = Image.frombytes("P", (3, 2), indices.tobytes())
    img.putpalette(palette)
    img.save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    expected = np.array([[10, 20, 30], [200, 100, 50]], dtype=np.uint8)[indices]
    np.testing.assert_array_equal(read_rgb8(tmp_path / "palette.png"), expected)


def test_read_16_bit_keeps_high_byte(tmp_path):
    samples = np.array([[[0x1234, 0xABFF, 0x00FF], [0xFF00, 0x8080, 0x7FFF]]], dtype=np.uint16)
    _png16(tmp_path / "rgb16.png", samples, color_type=2)
    np.testing.assert_array_equal(read_rgb8(tmp_path / "rgb16.png"), (samples >> 8).astype(np.uint8))

    Image.fromarray(samples[..., 0]).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    gray = read_rgb8(tmp_path / "gray16.png")
    np.testing.assert_array_equal(gray, np.repeat((samples[..., :1] >> 8).astype(np.uint8), 3, axis=2))


def test_read_rejects_non_images_and_missing_files(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(HarmoqError, match="notes.png"):
        read_rgb8(tmp_path / "notes.png")
    with pytest.raises(HarmoqError, match="absent.png"):
        read_rgb8(tmp_path / "absent.png")


def test_write_png_round_trips_without_leftovers(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    target = tmp_path / "out" / "sr.png"
    write_png(target, rgb)
    np.testing.assert_array_equal(read_rgb8(target), rgb)
    assert [path.name for path in target.parent.iterdir()] == ["sr.png"]


def test_tensor_round_trip_and_clamping():
    rgb = np.random.default_rng(3).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    tensor = to_tensor(rgb)
    assert tensor.shape == (1, 3, 4, 5) and tensor.dtype == torch.float32
    assert 0 <= tensor.min() and tensor.max() <= 1
    np.testing.assert_array_equal(to_rgb8(tensor), rgb)
    np.testing.assert_array_equal(to_rgb8(tensor[0]), rgb)

    out_of_range = torch.tensor([-0.5, 1.5, 0.5]).reshape(3, 1, 1)
    assert to_rgb8(out_of_range)[0, 0].tolist() == [0, 255, 128]
    with pytest.raises(ValueError):
        to_rgb8(torch.zeros(2, 3, 4, 4))


# --- benchmarks ----------------------------------------------------------------------------


def test_available_benchmarks(shared):
    assert {"Set5", "Set14", "Urban100", "CBSD68"} <= set(available_benchmarks(benchmarks_root()))


def test_load_benchmark_uses_stored_lr_and_crops_hr(shared):
    pairs = load_benchmark(benchmarks_root(), "Set14", 3)
    assert [pair.name for pair in pairs][:3] == ["baboon", "barbara", "bridge"]
    assert len(pairs) == 14
    for pair in pairs:
        assert pair.hr.shape == (pair.lr.shape[0] * 3, pair.lr.shape[1] * 3, 3)
        assert pair.hr.dtype == pair.lr.dtype == np.uint8


def test_load_benchmark_generates_lr_like_the_stored_files(shared, tmp_path):
    source = benchmarks_root() / "Set5"
    hr_folder = tmp_path / "Mini" / "HR"
    hr_folder.mkdir(parents=True)
    write_png(hr_folder / "woman.png", read_rgb8(source / "HR" / "woman.png"))
    (pair,) = load_benchmark(tmp_path, "Mini", 4)
    np.testing.assert_array_equal(pair.lr, read_rgb8(source / "LR_bicubic" / "X4" / "womanx4.png"))


def test_load_benchmark_errors(shared, tmp_path):
    with pytest.raises(HarmoqError, match=r"Nope not found.*Set5"):
        load_benchmark(benchmarks_root(), "Nope", 2)

    (tmp_path / "Empty" / "HR").mkdir(parents=True)
    with pytest.raises(HarmoqError, match="holds no images"):
        load_benchmark(tmp_path, "Empty", 2)

    broken = tmp_path / "Broken" / "HR"
    broken.mkdir(parents=True)
    _solid_png(broken / "a.png", (32, 32), (1, 2, 3))
    (broken / "b.png").write_text("not an image")
    with pytest.raises(HarmoqError, match="b.png"):
        load_benchmark(tmp_path, "Broken", 2)

    tiny = tmp_path / "Tiny" / "HR"
    tiny.mkdir(parents=True)
    _solid_png(tiny / "small.png", (20, 40), (1, 2, 3))
    with pytest.raises(HarmoqError, match="small.png.*too small for x4"):
        load_benchmark(tmp_path, "Tiny", 4)

    wrong_lr = tmp_path / "WrongLR"
    (wrong_lr / "HR").mkdir(parents=True)
    (wrong_lr / "LR_bicubic" / "X2").mkdir(parents=True)
    _solid_png(wrong_lr / "HR" / "img.png", (32, 32), (1, 2, 3))
    _solid_png(wrong_lr / "LR_bicubic" / "X2" / "imgx2.png", (15, 16), (1, 2, 3))
    with pytest.raises(HarmoqError, match="imgx2.png"):
        load_benchmark(tmp_path, "WrongLR", 2)


# --- calibration ---------------------------------------------------------------------------


def test_calibration_crops_are_seeded(shared):
    folder = shared / "data" / "calib" / "DIV2K_valid_crop256"
    crops = sample_calibration_crops(folder, count=6, lr_patch=24, scale=3, seed=7)
    assert crops.shape == (6, 3, 24, 24) and crops.dtype == torch.float32
    assert 0 <= crops.min() and crops.max() <= 1
    assert torch.equal(crops, sample_calibration_crops(folder, count=6, lr_patch=24, scale=3, seed=7))
    assert not torch.equal(crops, sample_calibration_crops(folder, count=6, lr_patch=24, scale=3, seed=8))


def test_calibration_cycles_through_every_image_before_repeating(tmp_path):
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    for index, colour in enumerate(colours):
        _solid_png(tmp_path / f"{index}.png", (40, 40), colour)
    crops = sample_calibration_crops(tmp_path, count=7, lr_patch=8, scale=2, seed=0)
    drawn = [to_rgb8(crop)[0, 0].tolist() for crop in crops]
    assert sorted(map(tuple, drawn[:3])) == sorted(colours)
    assert sorted(map(tuple, drawn[3:6])) == sorted(colours)


def test_describe_calibration_fingerprints_the_files(tmp_path):
    _solid_png(tmp_path / "a.png", (40, 40), (1, 2, 3))
    first = describe_calibration(tmp_path, count=4, lr_patch=8, scale=2, seed=0)
    assert first["files"] == 1 and first["count"] == 4 and first["seed"] == 0
    _solid_png(tmp_path / "b.png", (40, 40), (1, 2, 3))
    second = describe_calibration(tmp_path, count=4, lr_patch=8, scale=2, seed=0)
    assert second["files"] == 2 and second["files_sha256"] != first["files_sha256"]


def test_calibration_errors(tmp_path):
    with pytest.raises(HarmoqError, match="missing.*does not exist"):
        sample_calibration_crops(tmp_path / "missing", count=1, lr_patch=8, scale=2, seed=0)
    with pytest.raises(HarmoqError, match="holds no images"):
        sample_calibration_crops(tmp_path, count=1, lr_patch=8, scale=2, seed=0)

    _solid_png(tmp_path / "ok.png", (40, 40), (1, 2, 3))
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(HarmoqError, match="junk.png"):
        sample_calibration_crops(tmp_path, count=1, lr_patch=8, scale=2, seed=0)

    (tmp_path / "junk.png").unlink()
    _solid_png(tmp_path / "small.png", (30, 40), (1, 2, 3))
    with pytest.raises(HarmoqError, match="small.png.*smaller than the 32x32"):
        sample_calibration_crops(tmp_path, count=1, lr_patch=16, scale=2, seed=0)
