"""The calibration artifact: everything the exporter needs to rebuild a calibrated quantized model.

A directory holding ``manifest.json`` (human-readable: source checkpoint and its sha256,
architecture, scale, quantization config, method and settings, calibration data, seed, and one
entry per quantizer) and ``tensors.safetensors`` (per-channel bounds and, for methods that
change them, corrected weights). It is written to a temporary sibling directory and renamed,
so a reader never sees a half-written artifact.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import HarmoqError, first_line
from ..io import replace_folder, staging_folder
from ..models import LoadedModel
from ..quant import QuantConfig, quantize_model, quantizers

FORMAT = "harmoq-calibration"
FORMAT_VERSION = 1
MANIFEST, TENSORS = "manifest.json", "tensors.safetensors"


@dataclass
class Artifact:
    manifest: dict
    tensors: dict[str, torch.Tensor]
    path: Path

    @property
    def config(self) -> QuantConfig:
        return QuantConfig.from_dict(self.manifest["quant_config"])


def _quantizer_entries(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    entries, tensors = {}, {}
    for name, q in quantizers(model).items():
        lower, upper = (b.detach().float().cpu().contiguous() for b in q.bounds())
        entry = {"bits": q.bits, "symmetric": q.symmetric,
                 "granularity": f"per-channel(axis={q.channel_axis})" if q.per_channel else "per-tensor"}
        if q.per_channel:
            tensors[f"{name}.lower"], tensors[f"{name}.upper"] = lower, upper
            entry["lower"], entry["upper"] = f"tensor:{name}.lower", f"tensor:{name}.upper"
        else:
            entry["lower"], entry["upper"] = lower.item(), upper.item()
        entries[name] = entry
    return entries, tensors


def save_artifact(out_dir: str | Path, model: nn.Module, source: LoadedModel, config: QuantConfig,
                  method: dict, calibration: dict, seed: int,
                  corrected_weights: dict[str, torch.Tensor] | None = None,
                  scales: dict[str, dict] | None = None) -> Path:
    """Write the artifact of a calibrated ``model`` atomically to ``out_dir`` (replacing it).

    ``corrected_weights`` (parameter name -> value) are the float parameters the method changed,
    HSO folds included; ``scales`` (producer -> {"scale": tensor, ...}) are the HSO factors
    already folded into them, kept so the exporter and a reader can see what was moved where.
    """
    out_dir = Path(out_dir)
    entries, tensors = _quantizer_entries(model)
    for name, weight in (corrected_weights or {}).items():
        tensors[f"weight:{name}"] = weight.detach().float().cpu().contiguous()
    for producer, entry in (scales or {}).items():
        tensors[f"hso:{producer}"] = entry["scale"].detach().float().cpu().contiguous()
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "source": {"path": str(source.path), "sha256": source.sha256,
                   "architecture": source.architecture, "scale": source.scale},
        "quant_config": config.to_dict(), "method": method, "calibration": calibration, "seed": seed,
        "corrected_weights": sorted(corrected_weights or {}), "quantizers": entries,
    }
    staging = staging_folder(out_dir)
    try:
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        save_file(tensors, str(staging / TENSORS))
        replace_folder(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def load_artifact(path: str | Path) -> Artifact:
    path = Path(path)
    if not path.is_dir():
        raise HarmoqError(f"{path}: no such calibration artifact folder")
    for required in (MANIFEST, TENSORS):
        if not (path / required).is_file():
            raise HarmoqError(f"{path}: not a calibration artifact ({required} is missing)")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        tensors = load_file(str(path / TENSORS))
    except Exception as exc:
        raise HarmoqError(f"{path}: unreadable calibration artifact ({first_line(exc)})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise HarmoqError(f"{path}: unsupported artifact format "
                          f"{manifest.get('format')!r} v{manifest.get('format_version')!r}")
    return Artifact(manifest, tensors, path)


def apply_artifact(artifact: Artifact, source: LoadedModel) -> nn.Module:
    """Rebuild the calibrated quantized model from ``source`` (which the artifact must come from)."""
    expected = artifact.manifest["source"]
    if source.sha256 != expected["sha256"]:
        raise HarmoqError(f"{artifact.path}: calibrated for {Path(expected['path']).name} "
                          f"(sha256 {expected['sha256'][:12]}...), not for {source.path.name} "
                          f"(sha256 {source.sha256[:12]}...)")
    model = source.module
    with torch.no_grad():
        for name in artifact.manifest["corrected_weights"]:
            model.get_parameter(name).copy_(artifact.tensors[f"weight:{name}"])
    quantize_model(model, artifact.config, source.layout)
    built = quantizers(model)
    entries = artifact.manifest["quantizers"]
    if set(built) != set(entries):
        raise HarmoqError(f"{artifact.path}: its quantizers do not match the model "
                          f"({len(entries)} in the artifact, {len(built)} rebuilt)")
    for name, q in built.items():
        entry = entries[name]
        lower, upper = (artifact.tensors[v[len("tensor:"):]] if isinstance(v, str) else torch.tensor(v)
                        for v in (entry["lower"], entry["upper"]))
        q.set_bounds(lower, upper)
    return model
