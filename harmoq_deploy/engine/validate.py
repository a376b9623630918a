"""Validate an exported graph against the PyTorch models it came from, image by image.

Low-bit networks are chaotic in their rounding: a value that lands within float noise of a
rounding boundary is rounded up by one implementation and down by another, the one-step
difference moves later values across other boundaries, and the outputs drift apart. Measured on
DCTLSA x2 at W3A3, PyTorch on 1 thread versus 2 threads already differs by 32-39 dB PSNR. A
free-running comparison therefore cannot tell an exact export from a wrong one, so parity is
measured with the decisions matched:

1. the graph runs with every activation quantizer's k-bit codes (what its DequantizeLinear reads) exposed;
2. the fake-quantized PyTorch model runs on the same tile with each quantizer returning the
   graph's codes instead of its own, after recording its own codes and how far its input was
   from a rounding boundary;
3. **parity** is the PSNR between the two outputs (of the graph with its codes exposed); the codes
   may differ only by one step, and only where PyTorch's input lay within float noise of a
   boundary (a float tie): ``TIE_TOLERANCE`` steps, or ``RELATIVE_TIE`` of the tensor's magnitude
   (its largest value or bound), whichever is larger.

The free-running comparison is reported too (``free_parity_db``), as are the graph's output
against the float model and against HR (the usual metric, next to PyTorch's).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..data import ImagePair, to_rgb8, to_tensor, write_png
from ..errors import HarmoqError
from ..eval.metrics import psnr_y, ssim_y
from ..export.points import PointGrid, point_grids
from ..progress import progress_bar
from ..quant import quantizers
from .runners import OnnxRuntimeRunner, TorchRunner
from .tiling import TileRunner, Tiling, run_tiled

#: a differing code is a float tie when PyTorch's input lay this close (in steps) to the boundary,
TIE_TOLERANCE = 1e-3
#: or this close relative to the magnitude of the tensor it quantized (its largest |value| or bound):
#: float32 noise scales with the magnitudes a value is computed from, not with the grid step, so
#: at 8 bits it spans more of a step than at 3 (derivation and measurements in docs/export.md)
RELATIVE_TIE = 2.0**-12
_DEQUANTIZE_SUFFIX = "/DequantizeLinear"
_QUANTIZE_SUFFIX = "/QuantizeLinear"


def with_code_outputs(graph: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``graph`` that also outputs the codes of every activation quantizer the exporter
    wrote (the input of its DequantizeLinear: a QuantizeLinear's, or concatenated ones');
    returns it and the quantizer names, in output order after the SR output."""
    probed = onnx.ModelProto()
    probed.CopyFrom(graph)
    constants = {t.name for t in graph.graph.initializer}
    names = []
    for node in graph.graph.node:
        if node.op_type == "DequantizeLinear" and node.name.endswith(_DEQUANTIZE_SUFFIX) \
                and node.input[0] not in constants:
            probed.graph.output.append(onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.INT8, None))
            names.append(node.name[:-len(_DEQUANTIZE_SUFFIX)])
    # plugin-format graphs: a layer packed into LowBitLinear takes its codes straight from the
    # QuantizeLinear, whose DequantizeLinear is gone when that layer was its only consumer
    probed_codes = {o.name for o in probed.graph.output}
    lowbit_inputs = {i for node in graph.graph.node if node.op_type == "LowBitLinear" for i in node.input[:1]}
    lowbit_inputs |= {node.input[0] for node in graph.graph.node
                      if node.op_type == "Transpose" and node.output[0] in lowbit_inputs}
    for node in graph.graph.node:
        if node.op_type == "QuantizeLinear" and node.name.endswith(_QUANTIZE_SUFFIX) \
                and node.output[0] in lowbit_inputs and node.output[0] not in probed_codes:
            probed.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.INT8, None))
            names.append(node.name[:-len(_QUANTIZE_SUFFIX)])
    return probed, names


@dataclass
class DecisionStats:
    """How PyTorch's own k-bit codes compared with the graph's, over everything it quantized."""

    codes: int = 0
    differing: int = 0
    #: differing codes whose input was farther from the boundary than float noise explains
    untied: int = 0
    largest_step_difference: int = 0
    #: of the differing codes, the farthest PyTorch's input lay from a rounding boundary (steps)
    widest_tie: float = 0.0
    #: the quantizer where that was
    widest_tie_at: str = ""

    def add(self, other: "DecisionStats") -> None:
        self.codes += other.codes
        self.differing += other.differing
        self.untied += other.untied
        self.largest_step_difference = max(self.largest_step_difference, other.largest_step_difference)
        if other.widest_tie > self.widest_tie:
            self.widest_tie, self.widest_tie_at = other.widest_tie, other.widest_tie_at

    @property
    def only_ties(self) -> bool:
        return self.largest_step_difference <= 1 and self.untied == 0


@contextmanager
def forced_decisions(model: nn.Module, grids: dict[str, PointGrid], codes: dict[str, np.ndarray],
                     stats: DecisionStats) -> Iterator[None]:
    """Within the block each activation quantizer named in ``codes`` outputs the value of the
    graph's code instead of its own; ``stats`` collects how the two sets of codes compared."""
    patched = {name: q for name, q in quantizers(model).items() if name in codes}
    used = set()

    def forward(x: torch.Tensor, name: str) -> torch.Tensor:
        if name in used:
            raise HarmoqError(f"{name} quantized twice in one forward pass; decisions cannot be matched")
        used.add(name)
        q, grid = patched[name], grids[name]
        theirs = torch.from_numpy(codes[name].astype(np.int32)).to(x.device)
        if theirs.shape != x.shape:
            raise HarmoqError(f"{name}: the graph quantized a {tuple(theirs.shape)} tensor, PyTorch a {tuple(x.shape)}")
        lower, upper = (q._broadcast(b, x) for b in q.bounds())
        step = q._broadcast(q.step(), x)
        position = (torch.clamp(x, lower, upper) - lower) / step
        ours = torch.round(position).to(torch.int32) + grid.qmin
        differ = ours != theirs
        local = DecisionStats(codes=ours.numel(), differing=int(differ.sum()))
        if local.differing:
            gap = (position - position.floor() - 0.5).abs()
            magnitude = torch.maximum(torch.maximum(lower.abs(), upper.abs()), x.detach().abs().max())
            tolerance = torch.maximum(TIE_TOLERANCE * step, RELATIVE_TIE * magnitude)
            local.untied = int((differ & (gap * step > tolerance)).sum())
            local.largest_step_difference = int((ours - theirs).abs().max())
            local.widest_tie = float(gap[differ].max())
            local.widest_tie_at = name
        stats.add(local)
        return (torch.from_numpy(grid.offset).to(x) + torch.from_numpy(grid.step).to(x) * theirs.to(x))

    for name, q in patched.items():
        q.forward = lambda x, name=name: forward(x, name)
    try:
        yield
    finally:
        for q in patched.values():
            del q.forward
        missing = set(patched) - used
        if missing:
            raise HarmoqError(f"PyTorch never ran quantizer {sorted(missing)[0]} that the graph has")


class ValidationRunner:
    """One tile in, five SR outputs out (stacked along channels): the graph's; the graph's with its
    codes exposed (ONNX Runtime may optimise it differently, so it is its own free-running run)
    and PyTorch's with those codes; PyTorch's free-running; the float checkpoint's (without the
    weights a method corrected)."""

    CHANNELS = {name: slice(3 * i, 3 * i + 3) for i, name in enumerate(("graph", "probed", "forced", "free", "fp32"))}

    def __init__(self, graph: onnx.ModelProto, model: nn.Module, float_model: nn.Module, threads: int | None = None):
        self.graph = OnnxRuntimeRunner(graph, threads)
        probed, self.names = with_code_outputs(graph)
        self.probed = OnnxRuntimeRunner(probed, threads)
        self.model = TorchRunner(model)
        self.float_model = TorchRunner(float_model)
        self.grids = point_grids(model)
        self.decisions = DecisionStats()

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        outputs = []
        for tile in tiles:
            tile = tile[None]
            probed = self.probed.run_all(tile)
            with forced_decisions(self.model.model, self.grids, dict(zip(self.names, probed[1:])), self.decisions):
                forced = self.model(tile)
            outputs.append(np.concatenate([self.graph(tile), probed[0], forced, self.model(tile), self.float_model(tile)],
                                          axis=1))
        return np.concatenate(outputs)


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    return to_rgb8(torch.from_numpy(image))


def output_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (peak 1) between two SR outputs clamped to [0, 1], all pixels and channels."""
    mse = float(np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


@dataclass
class ImageReport:
    dataset: str
    image: str
    parity_db: float
    free_parity_db: float
    vs_fp32_db: float
    psnr: float
    ssim: float
    torch_psnr: float
    torch_ssim: float
    #: HR PSNR of PyTorch run with the graph's decisions (the fake-quant function on the graph's rounding path)
    matched_psnr: float
    decisions: DecisionStats = field(default_factory=DecisionStats)

    def to_dict(self) -> dict:
        row = asdict(self)
        row["decisions"] = {**asdict(self.decisions), "only_ties": self.decisions.only_ties}
        return {k: (round(v, 4) if isinstance(v, float) and np.isfinite(v) else v) for k, v in row.items()}


def validate_graph(graph: onnx.ModelProto, model: nn.Module, float_model: nn.Module, scale: int,
                   datasets: dict[str, list[ImagePair]], tiling: Tiling, threads: int | None = None,
                   save_images: Path | None = None) -> list[ImageReport]:
    """Run ``graph``, the fake-quantized ``model`` and the original ``float_model`` over every
    image of ``datasets`` (``load_datasets``); one report per image. ``save_images``: also write
    the graph's SR outputs there as ``<dataset>/<image>.png``."""
    runner = ValidationRunner(graph, model, float_model, threads)
    reports = []
    for dataset, pairs in datasets.items():
        for pair in progress_bar(pairs, f"validating {dataset}"):
            runner.decisions = DecisionStats()
            out = run_tiled(runner, to_tensor(pair.lr).numpy(), scale, tiling)
            graph_out, probed, forced, free, fp32 = (out[:, s] for s in ValidationRunner.CHANNELS.values())
            graph8, free8, forced8 = _to_rgb8(graph_out), _to_rgb8(free), _to_rgb8(forced)
            if save_images is not None:
                write_png(save_images / dataset / f"{pair.name}.png", graph8)
            reports.append(ImageReport(
                dataset=dataset, image=pair.name, parity_db=output_psnr(probed, forced), free_parity_db=output_psnr(graph_out, free),
                vs_fp32_db=output_psnr(graph_out, fp32), psnr=psnr_y(graph8, pair.hr, scale), ssim=ssim_y(graph8, pair.hr, scale),
                torch_psnr=psnr_y(free8, pair.hr, scale), torch_ssim=ssim_y(free8, pair.hr, scale),
                matched_psnr=psnr_y(forced8, pair.hr, scale),
                decisions=runner.decisions))
    return reports


def summarize(reports: list[ImageReport], threshold_db: float) -> dict:
    """Means, worst cases and the pass/fail verdict of a validation (``lines`` for the console)."""
    worst = min(reports, key=lambda r: r.parity_db)
    untied = [r for r in reports if not r.decisions.only_ties]
    mean = lambda key: float(np.mean([getattr(r, key) for r in reports]))  # noqa: E731
    summary = {
        "images": len(reports), "min_parity_db": worst.parity_db, "min_free_parity_db": min(r.free_parity_db for r in reports),
        "mean_psnr": mean("psnr"), "mean_torch_psnr": mean("torch_psnr"), "mean_matched_psnr": mean("matched_psnr"),
        "psnr_difference_db": mean("psnr") - mean("torch_psnr"),
        "codes": sum(r.decisions.codes for r in reports), "codes_differing": sum(r.decisions.differing for r in reports),
        "only_ties": not untied,
    }
    summary["passed"] = worst.parity_db >= threshold_db and not untied
    if untied:
        summary["failure"] = (f"{untied[0].dataset}/{untied[0].image}: the graph's k-bit codes differ from PyTorch's "
                              f"beyond float ties (by up to {untied[0].decisions.largest_step_difference} steps)")
    elif not summary["passed"]:
        summary["failure"] = (f"{worst.dataset}/{worst.image}: parity {worst.parity_db:.1f} dB is below "
                              f"the {threshold_db:g} dB threshold")
    summary["lines"] = [
        f"parity (decisions matched): min {worst.parity_db:.1f} dB over {len(reports)} images (threshold {threshold_db:g} dB)",
        f"k-bit codes: {summary['codes_differing']} of {summary['codes']} differ from PyTorch's, "
        + ("all float ties" if not untied else "NOT all float ties"),
        f"mean PSNR: ONNX {summary['mean_psnr']:.3f}, PyTorch on the graph's decisions {summary['mean_matched_psnr']:.3f}, "
        f"PyTorch free-running {summary['mean_torch_psnr']:.3f} ({summary['psnr_difference_db']:+.3f} dB; free-running "
        f"parity min {summary['min_free_parity_db']:.1f} dB: rounding ties decided differently, see docs/export.md)",
        "validation " + ("passed" if summary["passed"] else "FAILED"),
    ]
    return summary


def compare_engine(runner: TileRunner, model: nn.Module, float_model: nn.Module, scale: int,
                   datasets: dict[str, list[ImagePair]], tiling: Tiling) -> list[dict]:
    """Free-running comparison of any engine (TensorRT's, whose codes cannot be read out) with the
    fake-quantized and the float PyTorch models: PSNR between outputs and against HR, per image."""
    model_runner, float_runner = TorchRunner(model), TorchRunner(float_model)

    def together(tiles: np.ndarray) -> np.ndarray:
        return np.concatenate([runner(tiles), model_runner(tiles), float_runner(tiles)], axis=1)

    rows = []
    for dataset, pairs in datasets.items():
        for pair in progress_bar(pairs, f"comparing on {dataset}"):
            out = run_tiled(together, to_tensor(pair.lr).numpy(), scale, tiling)
            engine, fake_quant, fp32 = out[:, :3], out[:, 3:6], out[:, 6:]
            engine8 = _to_rgb8(engine)
            rows.append({"dataset": dataset, "image": pair.name, "free_parity_db": output_psnr(engine, fake_quant),
                         "vs_fp32_db": output_psnr(engine, fp32), "psnr": psnr_y(engine8, pair.hr, scale),
                         "ssim": ssim_y(engine8, pair.hr, scale)})
    return rows
