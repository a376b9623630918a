"""Writing files so that a reader never sees half of one: temp file beside the target, then rename.

``tempfile`` creates private files and folders (0600/0700); what is renamed into place gets the
permissions a plain ``open``/``mkdir`` would have given it (0666/0777 less the umask).
"""

import os
import shutil
import tempfile
from pathlib import Path

from .errors import HarmoqError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(path: Path, umask: int | None = None) -> None:
    """Give a temp file or folder the permissions a plain create would have."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~(_umask() if umask is None else umask))


def staging_folder(out_dir: Path) -> Path:
    """A fresh temporary folder beside ``out_dir`` to assemble a folder artifact in."""
    parent = out_dir.resolve().parent
    if not parent.is_dir():
        raise HarmoqError(f"{out_dir}: parent folder {out_dir.parent} does not exist")
    try:
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
    except OSError as exc:
        raise HarmoqError(f"{out_dir}: cannot write there ({exc.strerror})") from None


def replace_folder(staging: Path, out_dir: Path) -> None:
    """Move a finished staging folder to ``out_dir`` (replacing it) with plain-create permissions."""
    umask = _umask()
    for path in [staging, *staging.rglob("*")]:
        make_public(path, umask)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)


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
        make_public(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
