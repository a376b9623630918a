"""Where the shared weights and data live (``../shared`` beside the project, or ``$HARMOQ_SHARED``)."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_root() -> Path:
    return Path(os.environ.get("HARMOQ_SHARED", PROJECT_ROOT.parent / "shared"))


def shared_weights(name: str) -> Path:
    return shared_root() / "weights" / name


def benchmarks_root() -> Path:
    return shared_root() / "data" / "benchmarks"


def calib_root() -> Path:
    return shared_root() / "data" / "calib" / "DIV2K_valid_crop256"
