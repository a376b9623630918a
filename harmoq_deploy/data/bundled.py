"""Colour photographs that ship inside scikit-image: calibration and validation data for a user
who has nothing but a checkpoint (no DIV2K, no benchmark sets, no network)."""

from pathlib import Path

import numpy as np

from .benchmark import ImagePair
from .images import read_rgb8
from .imresize import imresize

#: natural colour photographs of scikit-image's data folder (its gray, synthetic and RGBA files left out)
CALIBRATION_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                      "hubble_deep_field.jpg", "ihc.png", "retina.jpg")
#: the validation set (``BUNDLED``): four of them, centre-cropped
VALIDATION_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
BUNDLED = "skimage"


def bundled_photo_folder() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def bundled_photos(names: tuple[str, ...] = CALIBRATION_PHOTOS) -> list[Path]:
    folder = bundled_photo_folder()
    return [folder / name for name in names]


def bundled_benchmark(scale: int, side: int = 192) -> list[ImagePair]:
    """``VALIDATION_PHOTOS`` as benchmark pairs: a centre ``side x side`` HR crop (a multiple of
    ``scale``) and its MATLAB-bicubic LR image."""
    side -= side % scale
    pairs = []
    for path in bundled_photos(VALIDATION_PHOTOS):
        image = read_rgb8(path)
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        hr = np.ascontiguousarray(image[top:top + side, left:left + side])
        pairs.append(ImagePair(name=path.stem, hr=hr, lr=imresize(hr, 1 / scale)))
    return pairs


def load_datasets(names: list[str], data_root: Path | None, scale: int) -> dict[str, list[ImagePair]]:
    """Benchmark pairs by dataset name: ``BUNDLED`` is the scikit-image set, any other name a
    folder under ``data_root``."""
    from ..errors import HarmoqError
    from .benchmark import load_benchmark

    sets = {}
    for name in names:
        if name == BUNDLED:
            sets[name] = bundled_benchmark(scale)
        elif data_root is None:
            raise HarmoqError(f"dataset {name} needs a benchmark folder (--data-root), or use {BUNDLED}")
        else:
            sets[name] = load_benchmark(data_root, name, scale)
    return sets
