"""The engine folder: everything a deployment needs, sealed by a sidecar of file hashes.

``engines/NAME/`` holds the engine (``model.plan`` for TensorRT; for ONNX Runtime and OpenVINO the
Q/DQ graph itself, which they compile at load; OpenVINO's compiled model is cached outside the folder), the Q/DQ graph it came from (``model.onnx``), the float graph
(``fp32.onnx``, the reference ``bench`` times alongside), the calibration artifact, and
``report.json`` / ``report.md``. ``engine.json`` records the backend, the tiling, the scale and the
sha256 of every other file; opening a folder checks them all, so a missing or altered file is
refused. The folder is assembled in a temporary sibling and renamed into place.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import HarmoqError
from ..io import replace_folder
from ..models import file_sha256

FORMAT, FORMAT_VERSION = "harmoq-engine", 1
SIDECAR = "engine.json"


@dataclass
class EngineBundle:
    path: Path
    sidecar: dict

    @property
    def backend(self) -> str:
        return self.sidecar["backend"]

    @property
    def scale(self) -> int:
        return self.sidecar["scale"]

    @property
    def tile(self) -> int:
        return self.sidecar["tile"]

    @property
    def overlap(self) -> int:
        return self.sidecar["overlap"]

    def file(self, role: str) -> Path:
        return self.path / self.sidecar["roles"][role]

    def runner(self, threads: int | None = None):
        """The engine's TileRunner."""
        if self.backend == "torch":
            from .runners import LowBitTorchRunner

            return LowBitTorchRunner(self.file("engine"), self.source_checkpoint())
        if self.backend == "tensorrt":
            from .tensorrt import TensorRTRunner

            return TensorRTRunner(self.file("engine").read_bytes(), lowbit_plugin=self.sidecar.get("graph_format") == "plugin")
        if self.backend == "openvino":
            from .runners import OpenVinoRunner, openvino_cache_root

            return OpenVinoRunner(self.file("engine"), threads, self.sidecar.get("precision", "auto"),
                                  cache=openvino_cache_root())
        from .runners import OnnxRuntimeRunner

        return OnnxRuntimeRunner(self.file("engine"), threads)

    def source_checkpoint(self) -> Path:
        """The checkpoint the engine was built from (the PyTorch runtime rebuilds the model from it)."""
        path = Path(self.sidecar["source_path"])
        if not path.is_file() or file_sha256(path) != self.sidecar["source_sha256"]:
            raise HarmoqError(f"{self.path}: the torch backend needs the checkpoint it was built from, "
                              f"{path} (sha256 {self.sidecar['source_sha256'][:12]}...), which is missing or changed")
        return path


def _files(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != SIDECAR]


def _hashes(folder: Path) -> dict[str, str]:
    return {name: file_sha256(folder / name) for name in _files(folder)}


def seal(staging: Path, out_dir: Path, sidecar: dict) -> EngineBundle:
    """Hash the staged files, write the sidecar and move the folder to ``out_dir`` (replacing it)."""
    missing = [role for role, name in sidecar["roles"].items() if not (staging / name).exists()]
    if missing:
        raise HarmoqError(f"engine bundle is missing its {missing[0]} file")
    sidecar = {"format": FORMAT, "format_version": FORMAT_VERSION, **sidecar, "files": _hashes(staging)}
    (staging / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    replace_folder(staging, out_dir)
    return EngineBundle(out_dir, sidecar)


def open_bundle(path: str | Path) -> EngineBundle:
    """Open an engine folder after checking every file against the sidecar's sha256."""
    path = Path(path)
    if not path.is_dir():
        raise HarmoqError(f"{path}: no such engine folder")
    if not (path / SIDECAR).is_file():
        raise HarmoqError(f"{path}: not an engine folder ({SIDECAR} is missing)")
    try:
        sidecar = json.loads((path / SIDECAR).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HarmoqError(f"{path}: {SIDECAR} is not valid JSON") from None
    if sidecar.get("format") != FORMAT or sidecar.get("format_version") != FORMAT_VERSION:
        raise HarmoqError(f"{path}: unsupported engine format {sidecar.get('format')!r} v{sidecar.get('format_version')!r}")
    for name, digest in sidecar["files"].items():
        file = path / name
        if not file.is_file():
            raise HarmoqError(f"{path}: {name} is missing")
        if file_sha256(file) != digest:
            raise HarmoqError(f"{path}: {name} does not match the sha256 recorded at build time (altered or corrupted)")
    extra = sorted(set(_files(path)) - set(sidecar["files"]))
    if extra:
        raise HarmoqError(f"{path}: {extra[0]} was not part of the built engine")
    return EngineBundle(path, sidecar)
