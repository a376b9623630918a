"""Image I/O, MATLAB-exact bicubic degradation, benchmark sets and calibration patches."""

from .benchmark import ImagePair, available_benchmarks, load_benchmark
from .bundled import BUNDLED, bundled_benchmark, bundled_photos, load_datasets
from .calib import describe_calibration, sample_calibration_crops
from .images import list_image_files, read_image_size, read_rgb8, to_rgb8, to_tensor, write_png
from .imresize import imresize

__all__ = [
    "BUNDLED",
    "bundled_benchmark",
    "bundled_photos",
    "ImagePair",
    "available_benchmarks",
    "describe_calibration",
    "imresize",
    "load_datasets",
    "list_image_files",
    "load_benchmark",
    "read_image_size",
    "read_rgb8",
    "sample_calibration_crops",
    "to_rgb8",
    "to_tensor",
    "write_png",
]
