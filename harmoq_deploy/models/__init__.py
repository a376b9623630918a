"""Load a pretrained SR checkpoint into a torch module, with its scale and architecture.

One loader for every architecture: spandrel's registry, extended with the architectures this
project defines itself (IMDN, PAN), the way spandrel's own extra-architecture packages do.
"""

import hashlib
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import torch
from torch import nn

from ..errors import HarmoqError, first_line
from ._spandrel import import_spandrel
from .infer import infer_layout
from .layout import SPANDREL_LAYOUTS, ArchLayout

__all__ = ["ArchLayout", "LoadedModel", "arch_layout", "file_sha256", "infer_layout", "load_model"]


@dataclass
class LoadedModel:
    module: nn.Module
    scale: int
    architecture: str
    path: Path
    sha256: str
    _layout: ArchLayout | None = field(default=None, repr=False, compare=False)

    @property
    def layout(self) -> ArchLayout:
        """The hand-written layout of the architecture if it has one, else the one inferred from
        the float network (traced on first use, before anything quantizes it in place)."""
        if self._layout is None:
            self._layout = arch_layout(self.architecture) or infer_layout(self.module, self.architecture)
        return self._layout


@cache
def _registry():
    spandrel = import_spandrel()
    from .imdn import IMDNArch
    from .pan import PANArch

    registry = spandrel.MAIN_REGISTRY.copy()
    registry.add(
        spandrel.ArchSupport.from_architecture(IMDNArch()),
        spandrel.ArchSupport.from_architecture(PANArch()),
    )
    return registry


def arch_layout(architecture: str) -> ArchLayout | None:
    """The hand-written layout of ``architecture``, or None where the network's own is inferred."""
    from .imdn import LAYOUT as IMDN_LAYOUT
    from .pan import LAYOUT as PAN_LAYOUT

    layouts = {**SPANDREL_LAYOUTS, "IMDN": IMDN_LAYOUT, "PAN": PAN_LAYOUT}
    layout = layouts.get(architecture)
    return replace(layout, architecture=architecture) if layout is not None else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(path: str | Path) -> LoadedModel:
    """Load ``path`` on the CPU in eval mode; raise HarmoqError naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise HarmoqError(f"{path}: no such checkpoint file")
    spandrel = import_spandrel()
    loader = spandrel.ModelLoader(device="cpu", registry=_registry())
    try:
        state_dict = loader.load_state_dict_from_file(path)
    except Exception as exc:  # torch/pickle/zip raise many types for corrupt files
        raise HarmoqError(f"{path}: not a readable checkpoint ({first_line(exc)})") from None
    if not isinstance(state_dict, dict) or not state_dict:
        raise HarmoqError(f"{path}: the file holds no state dict")
    try:
        descriptor = loader.load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        raise HarmoqError(f"{path}: unsupported architecture (no known SR network matches its keys)") from None
    except Exception as exc:
        raise HarmoqError(f"{path}: the weights do not fit the detected architecture ({first_line(exc)})") from None
    if descriptor.purpose not in ("SR", "Restoration") or not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise HarmoqError(f"{path}: {descriptor.architecture.name} is a {descriptor.purpose} model, not super-resolution")
    module = descriptor.model.eval()
    bad = [name for name, t in module.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise HarmoqError(f"{path}: non-finite values in {len(bad)} tensor(s), first {bad[0]}")
    return LoadedModel(
        module=module,
        scale=descriptor.scale,
        architecture=descriptor.architecture.id,
        path=path.resolve(),
        sha256=file_sha256(path),
    )
