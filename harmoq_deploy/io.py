"""Writing files so that a reader never sees half of one: temp file beside the target, then rename."""

import os
import tempfile
from pathlib import Path

from .errors import HarmoqError


def write_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    if not path.parent.resolve().is_dir():
        raise HarmoqError(f"{path}: folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise HarmoqError(f"{path}: cannot write there ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
